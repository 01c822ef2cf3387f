//! The delivery stage: one job (a batch for one webhook) in, one claimed, signed,
//! logged POST out.

use std::time::Duration;

use bytes::Bytes;
use courier_broker::lapin::message::Delivery;
use courier_core::delivery::{classify, AttemptRecord, DeliveryStatus, HttpResult, Verdict};
use courier_core::envelope::DeliveryJob;
use courier_core::webhook::Webhook;
use courier_store::{Claim, ClaimRequest, StoreError};

use crate::consumer::Settle;
use crate::fanout::park;
use crate::metrics::JobResult;
use crate::Pipeline;

/// How an attempt ended; the consumer acts on the variant.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    GiveUp {
        reason: String,
    },
    /// The webhook was deleted or disabled since the work was created.
    Cancelled,
    /// Another copy of this job already ran (or is running) this attempt.
    Duplicate,
}

/// Extra time a claim lease lasts beyond the webhook's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Handles one message of `courier.deliveries`.
#[tracing::instrument(skip_all, fields(batch_id, webhook_id, attempt))]
pub async fn handle(p: &Pipeline, delivery: Delivery) -> Settle {
    let job: DeliveryJob = match serde_json::from_slice(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            let settle = park(p, &delivery, &format!("unparseable delivery job: {e}")).await;
            p.metrics.delivery(match settle {
                Settle::Ack => JobResult::parked,
                Settle::Requeue => JobResult::requeued,
            });
            return settle;
        }
    };
    let span = tracing::Span::current();
    span.record("batch_id", job.batch_id.to_string());
    span.record("webhook_id", job.webhook_id.as_str());
    span.record("attempt", job.attempt);
    let holder = format!("{}:{}", p.instance, delivery.delivery_tag);
    match attempt(p, &job, &holder).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "delivery attempt ended");
            p.metrics.delivery(match outcome {
                Outcome::Delivered => JobResult::delivered,
                Outcome::GiveUp { .. } => JobResult::failed,
                Outcome::Cancelled => JobResult::cancelled,
                Outcome::Duplicate => JobResult::duplicate,
            });
            Settle::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "delivery log unavailable; requeueing the job");
            p.metrics.delivery(JobResult::requeued);
            Settle::Requeue
        }
    }
}

async fn attempt(p: &Pipeline, job: &DeliveryJob, holder: &str) -> Result<Outcome, StoreError> {
    let webhook = p.webhooks.webhook(&job.tenant_id, &job.webhook_id).await?;
    let body = Bytes::from(job.envelope().to_body());
    let timeout = webhook.as_ref().map_or(Duration::ZERO, |w| {
        Duration::from_millis(u64::from(w.timeout_ms))
    });
    let lease = timeout + LEASE_MARGIN;
    // Another worker may hold this attempt's lease (a duplicate job, or a holder that
    // died mid-POST): wait for it to finish or expire, never POST twice at once.
    loop {
        let claim = p
            .store
            .claim(ClaimRequest {
                job,
                holder,
                lease,
                payload: &body,
                retention: p.log_retention,
            })
            .await?;
        match claim {
            Claim::Claimed => break,
            Claim::Done => return Ok(Outcome::Duplicate),
            Claim::Busy(left) => {
                tokio::time::sleep(left.clamp(Duration::from_millis(50), Duration::from_secs(1)))
                    .await
            }
        }
    }
    let Some(webhook) = webhook.filter(|w| w.active && w.generation == job.generation) else {
        p.store
            .finish(job, None, DeliveryStatus::Cancelled, p.log_retention)
            .await?;
        return Ok(Outcome::Cancelled);
    };
    let (outcome, record) = post(p, &webhook, job, body).await;
    let status = match outcome {
        Outcome::Delivered => DeliveryStatus::Delivered,
        _ => DeliveryStatus::Failed,
    };
    p.store
        .finish(job, Some(&record), status, p.log_retention)
        .await?;
    Ok(outcome)
}

async fn post(
    p: &Pipeline,
    webhook: &Webhook,
    job: &DeliveryJob,
    body: Bytes,
) -> (Outcome, AttemptRecord) {
    let sent = p.sender.post(webhook, job, body).await;
    let (outcome, words) = match classify(&sent.result, false) {
        Verdict::Success => (Outcome::Delivered, "delivered".to_owned()),
        // Temporary failures end the batch `failed` (visible in the log) until
        // retries through the delay ladder exist.
        Verdict::Temporary { .. } => {
            let reason = "temporary failure; no retry is scheduled".to_owned();
            (
                Outcome::GiveUp {
                    reason: reason.clone(),
                },
                reason,
            )
        }
        Verdict::Permanent { reason } => (
            Outcome::GiveUp {
                reason: reason.clone(),
            },
            reason,
        ),
    };
    let (status_code, error) = match sent.result {
        HttpResult::Response { status, .. } => (Some(status), None),
        HttpResult::Failed(kind) => (None, Some(kind)),
    };
    let record = AttemptRecord {
        series: job.series,
        attempt: job.attempt,
        started_at: sent.started_at,
        status_code,
        error,
        latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        response_body: sent.body_prefix,
        outcome: words,
    };
    (outcome, record)
}
