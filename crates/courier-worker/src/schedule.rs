//! Sending a delivery job on its way so that it is consumed not before it is due:
//! straight to `courier.deliveries` when it is due, else into the delay ladder
//! (design §5), whose queues dead-letter back to `courier.deliveries`.
//!
//! One clock per comparison: a job carries what is left of its wait after the hop
//! it is on ([`WAIT_HEADER`](crate::carry::WAIT_HEADER): its wait minus the delay
//! queue's TTL), so the worker that consumes it reads how long it still has to wait
//! without comparing its own clock with the clock that set the due time (another
//! worker's, or Redis's for a cut batch). The queues may hold a job longer than
//! their TTL (never shorter), so a job is late at worst, never early.

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

/// What is left of a wait of `remaining` once the job leaves `route`.
pub fn left_after(route: Route, remaining: Duration) -> Duration {
    match route {
        Route::Now => Duration::ZERO,
        Route::Rung(rung) => remaining.saturating_sub(rung),
    }
}

/// How long a consumed job still has to wait: what its hop left of its wait. A job
/// without that header is from an older version, or a first attempt (from the
/// fan-out, a cut batch, a replay): a first attempt is due at once whatever its
/// timestamps say, as they come from other clocks (the gateway's, Redis's); any
/// other falls back to its `dueAt` against `now`.
pub fn left(job: &DeliveryJob, carried: &Carried, now: DateTime<Utc>) -> Duration {
    match carried.wait {
        Some(wait) => wait,
        None if job.attempt <= 1 => Duration::ZERO,
        None => remaining(job, now),
    }
}

/// How long `job` still has to wait at `now` by its `dueAt` (zero once due).
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

/// Publishes `job` to be consumed once `wait` has passed, on its route, with what
/// it carries in its headers and what its hop leaves of the wait, and waits for the
/// broker's confirm: a delay queue is addressed through the default exchange by
/// its name (`mandatory`, so a missing queue is an error, not a lost job).
pub async fn publish(
    p: &Pipeline,
    job: &DeliveryJob,
    carried: &Carried,
    wait: Duration,
) -> Result<Route, BrokerError> {
    let route = route(p.topology.ladder(), wait);
    let carried = carried.hop(left_after(route, wait), carried.deferrals);
    send(p, job, &carried, route).await?;
    Ok(route)
}

/// Publishes `job` on `route` with `carried` in its headers, confirmed.
async fn send(
    p: &Pipeline,
    job: &DeliveryJob,
    carried: &Carried,
    route: Route,
) -> Result<(), BrokerError> {
    // A job is plain strings, numbers and already-valid raw JSON: it always serializes.
    let body = serde_json::to_vec(job).unwrap_or_default();
    let batch_id = job.batch_id.to_string();
    let (exchange, routing_key) = match route {
        Route::Now => (p.topology.deliveries(), DELIVERY_ROUTING_KEY.to_owned()),
        Route::Rung(rung) => (String::new(), p.topology.delay_queue(rung)),
    };
    let msg = Message::new(&exchange, &routing_key, &body).with_message_id(&batch_id);
    let destination = match route {
        Route::Now => Destination::deliveries,
        Route::Rung(_) => Destination::delay,
    };
    confirmed(p, destination, p.publisher.publish(carried.add_to(msg))).await
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

/// The longest a deferred job waits: its webhook frees a slot at the latest when
/// an attempt times out (at most 30 s), so waiting longer would only add latency.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(30);

/// The rung a job waits in at its `n`-th deferral (1-based). For a webhook that
/// answers promptly and is only busy, the smallest rung: its slots free within a
/// second. For one that does not (a slow or stalling endpoint, one never seen to
/// answer), the ladder's rungs up to [`MAX_DEFERRAL`] one after the other, then the
/// last of them again (1 s, 5 s, 30 s, 30 s, ... with the default ladder; the
/// smallest rung if it is longer). Each deferral is one message, however long its
/// wait.
pub fn deferral_rung(ladder: &DelayLadder, n: u32, prompt: bool) -> Duration {
    let rungs = ladder.rungs();
    let usable = rungs
        .iter()
        .take_while(|r| **r <= MAX_DEFERRAL)
        .count()
        .max(1);
    let i = if prompt {
        0
    } else {
        usize::try_from(n.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(usable - 1)
    };
    rungs.get(i).copied().unwrap_or(Duration::from_secs(1))
}

/// Sends a due `job` around the ladder, its webhook having no free delivery slot
/// now, for as long as [`deferral_rung`] says: the backlog of a webhook that holds
/// its slots for long does not circle every second. It is due when it comes out.
/// Returns how long it waits.
pub async fn defer(
    p: &Pipeline,
    job: &DeliveryJob,
    carried: &Carried,
) -> Result<Duration, BrokerError> {
    let n = carried.deferrals.saturating_add(1);
    let prompt = p.inflight.answers_promptly(&job.webhook_id);
    let rung = deferral_rung(p.topology.ladder(), n, prompt);
    send(p, job, &carried.hop(Duration::ZERO, n), Route::Rung(rung)).await?;
    Ok(rung)
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

    fn job(attempt: u32, due_at: DateTime<Utc>) -> DeliveryJob {
        let now = Utc::now();
        serde_json::from_value(serde_json::json!({
            "batchId": "35dfc8b5-bf2e-41df-8706-758aaa42a8b1", "tenantId": "acme",
            "webhookId": "wh_1", "generation": 0, "series": 1, "attempt": attempt,
            "createdAt": now, "dueAt": due_at,
            "events": [{"eventId": "e1", "eventType": "EntityCreated", "objectType": "Prospect",
                        "data": {}, "propertiesUpdated": null, "occurredAt": now}]
        }))
        .unwrap()
    }

    #[test]
    fn each_deferral_of_a_slow_webhook_waits_in_a_longer_rung_up_to_thirty_seconds() {
        let waits = |ladder: &DelayLadder, prompt: bool| -> Vec<u64> {
            (1..=6)
                .map(|n| deferral_rung(ladder, n, prompt).as_millis() as u64)
                .collect()
        };
        assert_eq!(
            waits(&DelayLadder::default(), false),
            [1_000, 5_000, 30_000, 30_000, 30_000, 30_000]
        );
        let short = DelayLadder::parse_list("100ms,200ms,500ms,1s").unwrap();
        assert_eq!(waits(&short, false), [100, 200, 500, 1_000, 1_000, 1_000]);
        let long = DelayLadder::parse_list("1m,5m").unwrap();
        assert_eq!(
            waits(&long, false),
            [60_000; 6],
            "the smallest rung if none fits"
        );
        assert_eq!(deferral_rung(&short, 0, false), Duration::from_millis(100));
        assert_eq!(
            deferral_rung(&short, u32::MAX, false),
            Duration::from_secs(1)
        );
        // A prompt webhook is only busy: its jobs come back soon.
        assert_eq!(waits(&DelayLadder::default(), true), [1_000; 6]);
    }

    #[test]
    fn the_wait_a_hop_leaves_is_read_without_a_clock() {
        let ms = Duration::from_millis;
        let now = Utc::now();
        // Due times set by clocks an hour apart from this worker's.
        let ahead = now + TimeDelta::hours(1);
        let behind = now - TimeDelta::hours(1);
        for due_at in [ahead, behind, now] {
            for attempt in [1, 2, 5] {
                let j = job(attempt, due_at);
                let after_hop = Carried::default().hop(ms(1_200), 0);
                assert_eq!(left(&j, &after_hop, now), ms(1_200));
                let due = Carried::default().hop(Duration::ZERO, 0);
                assert_eq!(left(&j, &due, now), Duration::ZERO);
            }
            // A first attempt (fan-out, cut batch, replay) is due at once.
            assert_eq!(
                left(&job(1, due_at), &Carried::default(), now),
                Duration::ZERO
            );
        }
        // Jobs of older versions fall back to their due time.
        assert_eq!(
            left(&job(2, ahead), &Carried::default(), now),
            Duration::from_secs(3600)
        );
        assert_eq!(
            left(&job(2, behind), &Carried::default(), now),
            Duration::ZERO
        );
    }

    #[test]
    fn each_hop_takes_its_rung_off_the_wait_and_is_never_early() {
        let ladder = DelayLadder::parse_list("100ms,200ms,500ms,1s").unwrap();
        let ms = Duration::from_millis;
        // A 3.7 s wait: 1s, 1s, 1s, 500ms, 200ms, and out with nothing left.
        let mut wait = ms(3_700);
        let mut hops = Vec::new();
        while !wait.is_zero() {
            let r = route(&ladder, wait);
            let Route::Rung(rung) = r else {
                panic!("{wait:?}")
            };
            hops.push(rung);
            wait = left_after(r, wait);
        }
        assert_eq!(hops, [ms(1000), ms(1000), ms(1000), ms(500), ms(200)]);
        assert_eq!(hops.iter().sum::<Duration>(), ms(3_700));
        // Less than the smallest rung: one smallest rung, late rather than early.
        assert_eq!(route(&ladder, ms(30)), Route::Rung(ms(100)));
        assert_eq!(left_after(Route::Rung(ms(100)), ms(30)), Duration::ZERO);
        assert_eq!(left_after(Route::Now, ms(30)), Duration::ZERO);
    }
}
