//! The delivery stage: one job (a batch for one webhook) in, one claimed, signed,
//! logged POST out, and after a temporary failure the next attempt on its way
//! through the delay ladder.
//!
//! The order of effects is what makes a retry safe: the next attempt is published
//! and confirmed, then this attempt is recorded (`retrying`), then the job is acked.
//! A crash anywhere before the ack redelivers the job, whose claim (held, then
//! `done`) keeps it from POSTing twice; a next attempt published twice is deduplicated
//! by its own claim.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use courier_broker::lapin::message::Delivery;
use courier_broker::BrokerError;
use courier_core::delivery::{
    after_attempt, classify, AfterAttempt, AttemptRecord, DeliveryStatus, HttpResult,
    TransportError,
};
use courier_core::envelope::DeliveryJob;
use courier_core::retry::RetryPolicy;
use courier_store::{Claim, ClaimRequest, StoreError};

use crate::consumer::Settle;
use crate::fanout::park;
use crate::metrics::JobResult;
use crate::sender::Sent;
use crate::{schedule, Pipeline};

/// How handling a job ended; the consumer acts on the variant.
#[derive(Debug)]
pub enum Outcome {
    Delivered,
    /// A temporary failure: the next attempt is queued to run after this delay.
    Retry {
        after: Duration,
    },
    /// The batch ended `failed`: a permanent failure, or the last attempt failed.
    GiveUp {
        reason: String,
    },
    /// The webhook was deleted or disabled since the work was created.
    Cancelled,
    /// Another copy of this job already ran (or is running) this attempt, or its
    /// series has already ended.
    Duplicate,
    /// A newer series of the batch (a replay) has started; this job is obsolete.
    Superseded,
    /// It came out of the delay ladder before its due time and went back in; it still
    /// had this long to wait.
    NotYetDue {
        remaining: Duration,
    },
}

/// Why a job could not be handled now; it goes back to the broker.
#[derive(Debug, thiserror::Error)]
enum Unavailable {
    #[error("delivery log unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("could not queue the next attempt: {0}")]
    Broker(#[from] BrokerError),
}

/// Extra time a claim lease lasts beyond the webhook's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A job due within this long waits in the worker rather than take a ladder hop
/// (which would make it a whole smallest rung late).
const LOCAL_WAIT: Duration = Duration::from_millis(50);

/// Handles one message of `courier.deliveries`.
#[tracing::instrument(skip_all, fields(batch_id, webhook_id, series, attempt))]
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
    span.record("series", job.series);
    span.record("attempt", job.attempt);
    let holder = format!("{}:{}", p.instance, delivery.delivery_tag);
    match attempt(p, &job, &holder).await {
        Ok(outcome) => {
            tracing::debug!(?outcome, "delivery job handled");
            match outcome {
                Outcome::Delivered => p.metrics.delivery(JobResult::delivered),
                Outcome::Retry { .. } => p.metrics.delivery(JobResult::retry),
                Outcome::GiveUp { .. } => p.metrics.delivery(JobResult::failed),
                Outcome::Cancelled => p.metrics.delivery(JobResult::cancelled),
                Outcome::Duplicate | Outcome::Superseded => {
                    p.metrics.delivery(JobResult::duplicate)
                }
                // The same job goes on waiting: neither ended nor a new one.
                Outcome::NotYetDue { .. } => p.metrics.job_deferred(),
            }
            Settle::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "requeueing the delivery job");
            p.metrics.delivery(JobResult::requeued);
            Settle::Requeue
        }
    }
}

async fn attempt(p: &Pipeline, job: &DeliveryJob, holder: &str) -> Result<Outcome, Unavailable> {
    let now = Utc::now();
    let remaining = schedule::remaining(job, now);
    if remaining > LOCAL_WAIT {
        schedule::publish(p, job, now).await?;
        return Ok(Outcome::NotYetDue { remaining });
    }
    tokio::time::sleep(remaining).await;

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
            Claim::Superseded => return Ok(Outcome::Superseded),
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

    let policy = RetryPolicy::effective(&webhook.retry_policy, &p.retry_defaults);
    let sent = p.sender.post(&webhook, job, body).await;
    let verdict = classify(&sent.result, policy.retry_client_errors);
    let what = answer(&sent.result);
    let (outcome, status, words) = match after_attempt(verdict, &policy, job.attempt) {
        AfterAttempt::Delivered => (
            Outcome::Delivered,
            DeliveryStatus::Delivered,
            "delivered".to_owned(),
        ),
        AfterAttempt::Retry { after } => {
            // The next attempt is confirmed by the broker before this one is recorded
            // and acked: nothing can lose it in between.
            let finished = Utc::now();
            let next = job.next_attempt(schedule::after(finished, after));
            schedule::publish(p, &next, finished).await?;
            p.metrics.jobs_published(1);
            let words = format!("{what}; retrying in {}", humantime::format_duration(after));
            (Outcome::Retry { after }, DeliveryStatus::Retrying, words)
        }
        AfterAttempt::GiveUp { reason } => {
            let words = if reason.starts_with(&what) {
                reason.clone()
            } else {
                format!("{what}; {reason}")
            };
            (Outcome::GiveUp { reason }, DeliveryStatus::Failed, words)
        }
    };
    let record = attempt_record(job, sent, words);
    p.store
        .finish(job, Some(&record), status, p.log_retention)
        .await?;
    Ok(outcome)
}

/// What the endpoint did, in words.
fn answer(result: &HttpResult) -> String {
    match result {
        HttpResult::Response { status, .. } => format!("the endpoint answered {status}"),
        HttpResult::Failed(TransportError::Timeout) => {
            "no complete answer within the webhook's timeout".into()
        }
        HttpResult::Failed(TransportError::Connect) => {
            "the connection to the endpoint could not be made".into()
        }
        HttpResult::Failed(TransportError::Io) => {
            "the connection broke while sending or reading".into()
        }
    }
}

fn attempt_record(job: &DeliveryJob, sent: Sent, outcome: String) -> AttemptRecord {
    let (status_code, error) = match sent.result {
        HttpResult::Response { status, .. } => (Some(status), None),
        HttpResult::Failed(kind) => (None, Some(kind)),
    };
    AttemptRecord {
        series: job.series,
        attempt: job.attempt,
        started_at: sent.started_at,
        status_code,
        error,
        latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        response_body: sent.body_prefix,
        outcome,
    }
}
