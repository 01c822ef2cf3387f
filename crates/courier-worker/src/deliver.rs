//! Delivery attempts: a batch for one webhook in, one claimed, signed, logged POST
//! out, and after a temporary failure the next attempt on its way through the delay
//! ladder. An attempt starts from a job of `courier.deliveries` ([`handle`]), or
//! straight from the fan-out for a fresh event when a slot is free ([`now`]), which
//! spares the event a second trip through the broker.
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
    TransportError, Verdict,
};
use courier_core::envelope::DeliveryJob;
use courier_core::retry::RetryPolicy;
use courier_core::webhook::Webhook;
use courier_store::{Claim, ClaimRequest, StoreError};
use opentelemetry::KeyValue;

use crate::carry::Carried;
use crate::consumer::Settle;
use crate::fanout::park;
use crate::inflight::Slot;
use crate::metrics::JobResult;
use crate::observe::{server_attributes, AttemptOutcome, AttemptSpan, DeadReason};
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
    /// Its webhook had its most deliveries in flight; it comes back shortly.
    Deferred,
}

/// Why a job could not be handled now; it is handled again after a pause.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("delivery log unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("could not queue the next attempt: {0}")]
    Broker(#[from] BrokerError),
}

/// How long a job waits for a free slot of its webhook before it is sent around the
/// smallest rung instead.
const SLOT_WAIT: Duration = Duration::from_millis(50);

/// Extra time a claim lease lasts beyond the webhook's timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A job due within this long waits in the worker rather than take a ladder hop
/// (which would make it a whole smallest rung late).
const LOCAL_WAIT: Duration = Duration::from_millis(50);

/// Handles one message of `courier.deliveries`. An attempt runs in a CLIENT span
/// that continues the trace the job carries.
#[tracing::instrument(
    skip_all,
    fields(batch_id, webhook_id, series, attempt, trace_id, span_id)
)]
pub async fn handle(p: &Pipeline, delivery: &Delivery) -> Settle {
    let job: DeliveryJob = match serde_json::from_slice(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            let settle = park(p, delivery, &format!("unparseable delivery job: {e}")).await;
            if settle == Settle::Ack {
                p.metrics.job_consumed();
            }
            p.metrics.delivery(match settle {
                Settle::Ack => JobResult::parked,
                Settle::Retry => JobResult::paused,
            });
            return settle;
        }
    };
    let span = tracing::Span::current();
    span.record("batch_id", job.batch_id.to_string());
    span.record("webhook_id", job.webhook_id.as_str());
    span.record("series", job.series);
    span.record("attempt", job.attempt);
    let holder = format!("{}:d{}", p.instance, delivery.delivery_tag);
    let carried = Carried::of(&delivery.properties);
    settle(p, queued(p, &job, &holder, &carried).await, Source::Job)
}

/// Where a delivery started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A job of `courier.deliveries`.
    Job,
    /// An event, straight from the fan-out.
    Event,
}

/// Counts how handling a job (or a delivery from the fan-out) ended: the job is
/// acked unless a dependency failed.
pub fn settle(p: &Pipeline, handled: Result<Outcome, Unavailable>, source: Source) -> Settle {
    match handled {
        Ok(outcome) => {
            tracing::debug!(?outcome, "delivery handled");
            let waits = matches!(outcome, Outcome::NotYetDue { .. } | Outcome::Deferred);
            if source == Source::Job && !waits {
                p.metrics.job_consumed();
            }
            match outcome {
                Outcome::Delivered => p.metrics.delivery(JobResult::delivered),
                Outcome::Retry { .. } => p.metrics.delivery(JobResult::retry),
                Outcome::GiveUp { .. } => p.metrics.delivery(JobResult::failed),
                Outcome::Cancelled => p.metrics.delivery(JobResult::cancelled),
                Outcome::Duplicate | Outcome::Superseded => {
                    p.metrics.delivery(JobResult::duplicate)
                }
                // The same job goes on waiting: neither ended nor a new one.
                Outcome::NotYetDue { .. } | Outcome::Deferred => p.metrics.job_deferred(),
            }
            Settle::Ack
        }
        Err(e) => {
            if matches!(e, Unavailable::Store(_)) {
                p.metrics.flow.deps.redis_error();
            }
            tracing::warn!(error = %e, "delivery not handled; trying again after a pause");
            p.metrics.delivery(JobResult::paused);
            Settle::Retry
        }
    }
}

/// A queued job: back into the ladder if it is early, around the smallest rung if
/// its webhook has no free slot, else attempted.
async fn queued(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
) -> Result<Outcome, Unavailable> {
    let now = Utc::now();
    let remaining = schedule::remaining(job, now);
    if remaining > LOCAL_WAIT {
        schedule::publish(p, job, carried, now).await?;
        return Ok(Outcome::NotYetDue { remaining });
    }
    tokio::time::sleep(remaining).await;

    let webhooks = p.webhooks.tenant(&job.tenant_id).await?;
    // A webhook with its most deliveries in flight (a stalling endpoint) does not
    // get more of this worker's slots: the job comes back after the smallest rung.
    let Some(slot) = p.inflight.acquire_within(&job.webhook_id, SLOT_WAIT).await else {
        schedule::defer(p, job, carried).await?;
        return Ok(Outcome::Deferred);
    };
    let webhook = webhooks.iter().find(|w| w.id == job.webhook_id);
    attempt(p, job, holder, carried, webhook, slot).await
}

/// Attempts a fresh job (attempt 1, due now) at once, from the fan-out, if its
/// webhook and the worker have a free delivery slot; `None` leaves the job to be
/// queued instead. `holder` names the consumed event, `carried` what its jobs
/// would carry.
pub async fn now(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
    webhook: &Webhook,
) -> Option<Result<Outcome, Unavailable>> {
    let slot = p.inflight.try_acquire(&job.webhook_id)?;
    Some(attempt(p, job, holder, carried, Some(webhook), slot).await)
}

/// One attempt of `job` to `webhook` as configured now (`None`: deleted), holding
/// `_slot` while it runs.
async fn attempt(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
    webhook: Option<&Webhook>,
    _slot: Slot,
) -> Result<Outcome, Unavailable> {
    let span = AttemptSpan::start(p, job, carried);
    let body = Bytes::from(job.envelope().to_body());
    let timeout = webhook.map_or(Duration::ZERO, |w| {
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
            Claim::Done => {
                span.finish("duplicate", None);
                return Ok(Outcome::Duplicate);
            }
            Claim::Superseded => {
                span.finish("superseded", None);
                return Ok(Outcome::Superseded);
            }
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
        span.finish("cancelled", None);
        return Ok(Outcome::Cancelled);
    };

    let policy = RetryPolicy::effective(&webhook.retry_policy, &p.retry_defaults);
    span.set_attributes(|| server_attributes(webhook.url.as_str()));
    let trace = p.propagate_traceparent.then(|| p.traces.inject(span.cx()));
    let sent = {
        let _busy = p.metrics.flow.in_flight();
        p.sender.post(webhook, job, body, trace.as_ref()).await
    };
    let verdict = classify(&sent.result, policy.retry_client_errors);
    let permanent = matches!(verdict, Verdict::Permanent { .. });
    // A refused target says which address and why (the target policy).
    let what = sent.refusal.clone().unwrap_or_else(|| answer(&sent.result));
    let error_type = match sent.result {
        HttpResult::Response { status, .. } => {
            span.set_attributes(|| {
                [KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                )]
            });
            (!(200..300).contains(&status)).then(|| status.to_string())
        }
        // The kind's wire name: `timeout`, `connect`, ...
        HttpResult::Failed(kind) => Some(
            serde_json::to_value(kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "transport".to_owned()),
        ),
    };
    if let Some(error_type) = &error_type {
        span.set_attributes(|| [KeyValue::new("error.type", error_type.clone())]);
    }
    let (outcome, status, words) = match after_attempt(verdict, &policy, job.attempt) {
        AfterAttempt::Delivered => (
            Outcome::Delivered,
            DeliveryStatus::Delivered,
            "delivered".to_owned(),
        ),
        AfterAttempt::Retry { after } => {
            // The next attempt is confirmed by the broker before this one is recorded
            // and acked: nothing can lose it in between. It continues this attempt's
            // trace.
            let finished = Utc::now();
            let next = job.next_attempt(schedule::after(finished, after));
            let onward = carried.continuing(p.traces.inject(span.cx()));
            let route = schedule::publish(p, &next, &onward, finished).await?;
            p.metrics.flow.retry_scheduled(route);
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
    let flow = &p.metrics.flow;
    let latency = sent.latency;
    let record = attempt_record(job, sent, words);
    p.store
        .finish(job, Some(&record), status, p.log_retention)
        .await?;
    match &outcome {
        Outcome::Delivered => {
            flow.attempt(AttemptOutcome::delivered, latency);
            flow.delivered(carried);
            span.finish("delivered", None);
        }
        Outcome::Retry { .. } => {
            flow.attempt(AttemptOutcome::retry, latency);
            span.finish("retry", Some(what));
        }
        _ => {
            flow.attempt(AttemptOutcome::failed, latency);
            flow.dead_letter(if permanent {
                DeadReason::non_retryable
            } else {
                DeadReason::attempts_exhausted
            });
            span.finish("failed", Some(what));
        }
    }
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
        HttpResult::Failed(TransportError::Refused) => {
            "the webhook's address is not an allowed target".into()
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
