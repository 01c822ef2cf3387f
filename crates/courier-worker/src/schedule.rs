//! Sending a delivery job on its way so that it is consumed not before its `dueAt`:
//! straight to `courier.deliveries` when it is due, else into the delay ladder
//! (design §5), whose queues dead-letter back to `courier.deliveries`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use courier_broker::topology::DELIVERY_ROUTING_KEY;
use courier_broker::{BrokerError, Message};
use courier_core::envelope::DeliveryJob;
use courier_core::retry::DelayLadder;
use courier_telemetry::metrics::{AmqpOperation, Destination};

use crate::carry::Carried;
use crate::Pipeline;

/// Where a job goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Due now: straight to `courier.deliveries`.
    Now,
    /// Into the delay queue of this rung.
    Rung(Duration),
}

/// The route of a job with `remaining` to wait: the largest rung not longer than it
/// (the smallest if none is), so never early and at most one smallest rung late.
pub fn route(ladder: &DelayLadder, remaining: Duration) -> Route {
    if remaining.is_zero() {
        Route::Now
    } else {
        Route::Rung(ladder.rung_for(remaining))
    }
}

/// How long `job` still has to wait at `now` (zero once due).
pub fn remaining(job: &DeliveryJob, now: DateTime<Utc>) -> Duration {
    (job.due_at - now).to_std().unwrap_or(Duration::ZERO)
}

/// `now` plus `delay`, saturating.
pub fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Publishes `job` on its route at `now`, with what it carries in its headers, and
/// waits for the broker's confirm: a delay queue is addressed through the default
/// exchange by its name (`mandatory`, so a missing queue is an error, not a lost job).
pub async fn publish(
    p: &Pipeline,
    job: &DeliveryJob,
    carried: &Carried,
    now: DateTime<Utc>,
) -> Result<Route, BrokerError> {
    // A job is plain strings, numbers and already-valid raw JSON: it always serializes.
    let body = serde_json::to_vec(job).unwrap_or_default();
    let batch_id = job.batch_id.to_string();
    let route = route(p.topology.ladder(), remaining(job, now));
    let (exchange, routing_key) = match route {
        Route::Now => (p.topology.deliveries(), DELIVERY_ROUTING_KEY.to_owned()),
        Route::Rung(rung) => (String::new(), p.topology.delay_queue(rung)),
    };
    let msg = Message::new(&exchange, &routing_key, &body).with_message_id(&batch_id);
    let destination = match route {
        Route::Now => Destination::deliveries,
        Route::Rung(_) => Destination::delay,
    };
    confirmed(p, destination, p.publisher.publish(carried.add_to(msg))).await?;
    Ok(route)
}

/// Awaits a confirmed publish, counting its latency or its failure.
async fn confirmed(
    p: &Pipeline,
    destination: Destination,
    publish: impl std::future::Future<Output = Result<(), BrokerError>>,
) -> Result<(), BrokerError> {
    let sent_at = std::time::Instant::now();
    let deps = &p.metrics.flow.deps;
    match publish.await {
        Ok(()) => {
            deps.confirmed(destination, sent_at.elapsed());
            Ok(())
        }
        Err(e) => {
            deps.amqp_error(match e {
                BrokerError::Nacked
                | BrokerError::Unroutable(_)
                | BrokerError::ConfirmTimeout(_) => AmqpOperation::confirm,
                _ => AmqpOperation::publish,
            });
            Err(e)
        }
    }
}

/// Sends a due `job` around the smallest rung of the ladder, to be tried again
/// shortly (its webhook has no free delivery slot now).
pub async fn defer(p: &Pipeline, job: &DeliveryJob, carried: &Carried) -> Result<(), BrokerError> {
    let body = serde_json::to_vec(job).unwrap_or_default();
    let batch_id = job.batch_id.to_string();
    let rung = p
        .topology
        .ladder()
        .rungs()
        .first()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    let queue = p.topology.delay_queue(rung);
    let msg = Message::new("", &queue, &body).with_message_id(&batch_id);
    confirmed(
        p,
        Destination::delay,
        p.publisher.publish(carried.add_to(msg)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_jobs_go_straight_to_the_deliveries_and_others_into_a_rung() {
        let ladder = DelayLadder::parse_list("100ms,200ms,500ms,1s").unwrap();
        let ms = Duration::from_millis;
        assert_eq!(route(&ladder, Duration::ZERO), Route::Now);
        assert_eq!(route(&ladder, ms(20)), Route::Rung(ms(100)));
        assert_eq!(route(&ladder, ms(700)), Route::Rung(ms(500)));
        assert_eq!(route(&ladder, ms(3000)), Route::Rung(ms(1000)));
    }

    #[test]
    fn what_remains_is_never_negative() {
        let now = Utc::now();
        let job: DeliveryJob = serde_json::from_value(serde_json::json!({
            "batchId": "35dfc8b5-bf2e-41df-8706-758aaa42a8b1", "tenantId": "acme",
            "webhookId": "wh_1", "generation": 0, "series": 1, "attempt": 2,
            "createdAt": now, "dueAt": now - TimeDelta::seconds(1),
            "events": [{"eventId": "e1", "eventType": "EntityCreated", "objectType": "Prospect",
                        "data": {}, "propertiesUpdated": null, "occurredAt": now}]
        }))
        .unwrap();
        assert_eq!(remaining(&job, now), Duration::ZERO);
        let later = job.next_attempt(after(now, Duration::from_millis(1500)));
        assert_eq!(remaining(&later, now), Duration::from_millis(1500));
        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
