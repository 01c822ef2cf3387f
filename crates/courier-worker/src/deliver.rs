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
use courier_core::retry::{self, RetryPolicy};
use courier_core::webhook::Webhook;
use courier_store::{Claim, ClaimRequest, StoreError, UnreadableWebhook};
use opentelemetry::KeyValue;

use crate::carry::Carried;
use crate::consumer::Settle;
use crate::fanout::park;
use crate::inflight::{Ended, Slot};
use crate::metrics::{DeferReason, JobResult, UnreadableResult};
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
    /// Its webhook had its most deliveries in flight; it comes back after this wait
    /// (longer at each deferral).
    Deferred {
        after: Duration,
    },
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
/// delay ladder instead.
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
            let reason = format!("unparseable delivery job: {e}");
            let settle = park(p, delivery, &reason, DeadReason::unparseable).await;
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
    let holder = p.holder("d");
    let carried = Carried::of(&delivery.properties);
    match queued(p, &job, &holder, &carried).await {
        // Stored state the job needs cannot be read: trying again never helps.
        Err(Unavailable::Store(e)) if e.is_permanent() => park_unreadable(p, delivery, &e).await,
        handled => settle(p, handled, Source::Job),
    }
}

/// Parks a job (or an event) that stored state it needs makes unprocessable for
/// good, so that it does not hold a handler slot forever; an operator can requeue it
/// once the state is repaired.
pub async fn park_unreadable(p: &Pipeline, delivery: &Delivery, error: &StoreError) -> Settle {
    tracing::error!(error = %error, "stored state this message needs cannot be read; parking it");
    let reason = format!("stored state cannot be read: {error}");
    let settle = park(p, delivery, &reason, DeadReason::unreadable_state).await;
    if settle == Settle::Ack {
        p.metrics.job_consumed();
    }
    p.metrics.delivery(match settle {
        Settle::Ack => JobResult::parked,
        Settle::Retry => JobResult::paused,
    });
    settle
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
            let waits = matches!(
                outcome,
                Outcome::NotYetDue { .. } | Outcome::Deferred { .. }
            );
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
                Outcome::NotYetDue { .. } => p.metrics.job_deferred(DeferReason::not_due),
                Outcome::Deferred { .. } => p.metrics.job_deferred(DeferReason::saturated),
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

/// A queued job: ended at once if its webhook cannot be read (`failed`) or is gone,
/// disabled or of another generation (`cancelled`); back into the ladder if its
/// hop left it more to wait; around the ladder if its webhook has no free slot
/// ([`schedule::defer`]); else attempted.
async fn queued(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
) -> Result<Outcome, Unavailable> {
    let webhooks = p.webhooks.tenant(&job.tenant_id).await?;
    if let Some(unreadable) = webhooks.unreadable.iter().find(|u| u.id == job.webhook_id) {
        if !unreadable.cancels(job.generation) {
            return fail_unreadable(p, job, unreadable).await;
        }
    }
    let Some(webhook) = webhooks
        .readable
        .iter()
        .find(|w| w.id == job.webhook_id && w.active && w.generation == job.generation)
    else {
        // Its webhook was deleted, disabled or changed generation since the work
        // was created: the job ends now, not after hopping on until it is due.
        return attempt(p, job, holder, carried, None).await;
    };
    let remaining = schedule::left(job, carried, Utc::now());
    if remaining > LOCAL_WAIT {
        schedule::publish(p, job, carried, remaining).await?;
        return Ok(Outcome::NotYetDue { remaining });
    }
    tokio::time::sleep(remaining).await;

    // A webhook with its most deliveries in flight does not get more of this
    // worker's slots: the job comes back later (each time later for a slow one).
    let Some(slot) = p.inflight.acquire_within(&job.webhook_id, SLOT_WAIT).await else {
        let after = schedule::defer(p, job, carried).await?;
        return Ok(Outcome::Deferred { after });
    };
    attempt(p, job, holder, carried, Some((webhook, slot))).await
}

/// Ends `job` `failed` in the delivery log without a POST (nothing can be sent
/// without the webhook's secret and address): its webhook's stored record cannot
/// be read. Waiting would not help, so the job, whatever its attempt, ends now.
pub async fn fail_unreadable(
    p: &Pipeline,
    job: &DeliveryJob,
    webhook: &UnreadableWebhook,
) -> Result<Outcome, Unavailable> {
    let reason = format!(
        "the webhook's stored record cannot be read ({}); nothing was sent",
        webhook.reason
    );
    if !p.store.mark_dead(job, &reason, p.log_retention).await? {
        // Its series already ended (a copy of this job, a redelivered event).
        return Ok(Outcome::Duplicate);
    }
    p.metrics.unreadable(UnreadableResult::failed);
    p.metrics.flow.dead_letter(DeadReason::unreadable_webhook);
    tracing::warn!(batch_id = %job.batch_id, webhook_id = %job.webhook_id, "a delivery ended failed: its webhook's stored record cannot be read");
    Ok(Outcome::GiveUp { reason })
}

/// Attempts a fresh job (attempt 1, due now) at once, from the fan-out, if its
/// webhook is known to answer promptly and it (within [`SLOT_WAIT`]) and the
/// worker have a free delivery slot; `None` leaves the job to be queued instead,
/// so that the fan-out never waits long for a slot, nor on a slow endpoint.
/// `holder` names the consumed event, `carried` what its jobs would carry.
pub async fn now(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
    webhook: &Webhook,
) -> Option<Result<Outcome, Unavailable>> {
    let slot = p
        .inflight
        .acquire_prompt_within(&job.webhook_id, SLOT_WAIT)
        .await?;
    Some(attempt(p, job, holder, carried, Some((webhook, slot))).await)
}

/// One attempt of `job` to its webhook as configured now, holding its delivery slot
/// while it runs; without one (`None`: the webhook was deleted, disabled, or is of
/// another generation) the attempt is claimed and ends `cancelled`.
async fn attempt(
    p: &Pipeline,
    job: &DeliveryJob,
    holder: &str,
    carried: &Carried,
    target: Option<(&Webhook, Slot)>,
) -> Result<Outcome, Unavailable> {
    let (webhook, slot) = target.unzip();
    let span = AttemptSpan::start(p, job, carried);
    // The work of a deleted tenant (or of an earlier tenant with the same id) ends
    // here without a trace: the tenant's log is purged, nobody could read it.
    if webhook.is_none()
        && p.store
            .tenant_outlived(&job.tenant_id, job.created_at)
            .await?
    {
        tracing::info!(tenant = %job.tenant_id, "dropping work of a deleted tenant");
        span.finish("cancelled", None);
        return Ok(Outcome::Cancelled);
    }
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
            .finish(
                job,
                holder,
                None,
                DeliveryStatus::Cancelled,
                p.log_retention,
            )
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
    if let Some(slot) = &slot {
        slot.ended(Ended::of(&sent.result));
    }
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
            // trace. Its wait is lengthened a little at random, so that deliveries
            // that failed together do not come back together.
            let after = retry::jittered(after, rand::random());
            let finished = Utc::now();
            let next = job.next_attempt(schedule::after(finished, after));
            let onward = carried.continuing(p.traces.inject(span.cx()));
            let route = schedule::publish(p, &next, &onward, after).await?;
            p.metrics.flow.retry_scheduled(route);
            p.metrics.jobs_published(1);
            let words = format!("{what}; retrying in {}", in_words(after));
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
        .finish(job, holder, Some(&record), status, p.log_retention)
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

/// A wait in words, to the millisecond (`1m 30s 250ms`).
fn in_words(wait: Duration) -> String {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms)).to_string()
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
