//! The consumer of `courier.dead.log`, which receives a copy of every message parked
//! in the dead-letter queue (the other copy stays in `courier.dead` for operators).
//!
//! A parked delivery job (unprocessable after too many redeliveries) has its batch
//! marked `failed` in the delivery log, with the reason, so that its tenant sees it
//! among the dead letters and can replay it (unless the tenant was deleted: its log
//! is purged, and nothing is recorded for it). Anything else (an event, an unreadable
//! message) needs nothing here. Either way the copy is acked and the consumer goes
//! on with the next message; only an unreachable Redis hands it back for later.

use courier_broker::dead::{DeadLetter, DEAD_REASON_HEADER};
use courier_broker::headers::text;
use courier_broker::lapin::message::Delivery;
use courier_core::envelope::DeliveryJob;

use crate::consumer::Settle;
use crate::metrics::DeadResult;
use crate::observe::broker_dead_reason;
use crate::Pipeline;

/// Handles one message of `courier.dead.log`.
#[tracing::instrument(skip_all, fields(batch_id, webhook_id))]
pub async fn handle(p: &Pipeline, delivery: &Delivery) -> Settle {
    // What the worker parked itself was counted when it parked it.
    let parked_by_broker = text(&delivery.properties, DEAD_REASON_HEADER).is_none();
    if parked_by_broker {
        let dead = DeadLetter::of(&delivery.properties);
        p.metrics.flow.dead_letter(broker_dead_reason(&dead.reason));
    }
    let Ok(job) = serde_json::from_slice::<DeliveryJob>(&delivery.data) else {
        p.metrics.dead_letter(DeadResult::ignored);
        return Settle::Ack;
    };
    let span = tracing::Span::current();
    span.record("batch_id", job.batch_id.to_string());
    span.record("webhook_id", job.webhook_id.as_str());
    let reason = reason(&DeadLetter::of(&delivery.properties));
    // A deleted tenant's log is purged: nothing is recorded for it any more.
    let marked = match p
        .store
        .tenant_outlived(&job.tenant_id, job.created_at)
        .await
    {
        Ok(true) => Ok(false),
        Ok(false) => p.store.mark_dead(&job, &reason, p.log_retention).await,
        Err(e) => Err(e),
    };
    match marked {
        Ok(marked) => {
            tracing::info!(marked, reason, "a parked delivery job was recorded");
            p.metrics.dead_letter(if marked {
                DeadResult::recorded
            } else {
                DeadResult::ignored
            });
            Settle::Ack
        }
        // The log record cannot be read: the parked job stays in `courier.dead` for
        // an operator; its copy here is done with.
        Err(e) if e.is_permanent() => {
            tracing::error!(error = %e, "a parked delivery job's log record cannot be read; not recorded");
            p.metrics.dead_letter(DeadResult::ignored);
            Settle::Ack
        }
        Err(e) => {
            p.metrics.flow.deps.redis_error();
            tracing::warn!(error = %e, "delivery log unavailable; requeueing the dead letter");
            p.metrics.dead_letter(DeadResult::paused);
            Settle::Retry
        }
    }
}

/// The reason a tenant reads in the log.
fn reason(dead: &DeadLetter) -> String {
    match dead.reason.as_str() {
        "delivery_limit" => {
            "parked in the dead-letter queue: the job was redelivered too many times".into()
        }
        other => format!("parked in the dead-letter queue: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_says_why_the_job_was_parked() {
        let dead = |reason: &str| DeadLetter {
            reason: reason.into(),
            exchange: None,
            routing_key: None,
            queue: None,
            message_id: None,
        };
        assert!(reason(&dead("delivery_limit")).contains("redelivered too many times"));
        assert_eq!(
            reason(&dead("unparseable delivery job")),
            "parked in the dead-letter queue: unparseable delivery job"
        );
    }
}
