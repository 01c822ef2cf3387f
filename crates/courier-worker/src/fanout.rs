//! The fan-out stage: one event in; for each webhook that wants it, a delivery.
//!
//! An event for a webhook without batching is attempted at once when the webhook
//! is known to answer promptly (see [`crate::inflight`]) and it (within 50 ms) and
//! the worker have a free delivery slot: the POST runs here and the event is acked
//! once it is recorded (or its retry is queued), exactly as a delivery job would
//! have been, so the event spares a second trip through the broker. Otherwise (a
//! webhook not seen to answer yet, a slow or stalling endpoint, a busy worker) it
//! becomes a delivery job of `courier.deliveries`: the fan-out waits neither long
//! for a slot nor on an endpoint that is not known to answer within a second.
//! Throttled webhooks' events go into their batches.

use chrono::Utc;
use courier_broker::dead::{ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER};
use courier_broker::lapin::message::Delivery;
use courier_broker::topology::{DEAD_REASON_HEADER, DELIVERY_ROUTING_KEY};
use courier_broker::Message;
use courier_core::envelope::DeliveryJob;
use courier_core::event::Event;

use courier_store::batch::Append;
use courier_telemetry::metrics::{AmqpOperation, Destination};
use futures::future::join_all;
use opentelemetry::trace::{Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};

use crate::batching::hand_on;
use crate::carry::Carried;
use crate::consumer::Settle;
use crate::deliver;
use crate::metrics::{EventResult, UnreadableResult};
use crate::observe::{self, DeadReason};
use crate::Pipeline;

/// Handles one message of `courier.events.q` in a CONSUMER span that continues the
/// publisher's trace. The event is acked only once every job it produced is
/// confirmed by the broker.
#[tracing::instrument(skip_all, fields(tenant, event_id, trace_id, span_id))]
pub async fn handle(p: &Pipeline, delivery: &Delivery) -> Settle {
    let carried = Carried::of(&delivery.properties);
    let cx = observe::consumer_span(p, delivery, &carried);
    let settle = fan_out(p, delivery, &cx, &carried).await;
    let span = cx.span();
    if settle == Settle::Retry {
        span.set_status(Status::error("not handed on; handled again after a pause"));
    }
    span.end();
    settle
}

/// The event's delivery jobs (single events) carry the consumer span's context; its
/// batches keep it beside the event.
async fn fan_out(p: &Pipeline, delivery: &Delivery, cx: &Context, carried: &Carried) -> Settle {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str());
    let event = match Event::from_message(&delivery.data, message_id, &p.catalog, Utc::now()) {
        Ok(e) => e,
        Err(e) => {
            cx.span().set_status(Status::error("unparseable event"));
            let settle = park(p, delivery, &e.to_string(), DeadReason::unparseable).await;
            p.metrics.event(match settle {
                Settle::Ack => EventResult::parked,
                Settle::Retry => EventResult::paused,
            });
            return settle;
        }
    };
    let span = tracing::Span::current();
    span.record("tenant", event.tenant.as_str());
    span.record("event_id", event.id.as_str());
    if cx.span().is_recording() {
        cx.span().set_attributes([
            KeyValue::new("courier.tenant.id", event.tenant.to_string()),
            KeyValue::new("courier.event.id", event.id.to_string()),
            KeyValue::new("courier.event.type", event.key.to_string()),
        ]);
    }
    let onward = carried.of_event_jobs(p.traces.inject(cx));
    let webhooks = match p.webhooks.tenant(&event.tenant).await {
        Ok(w) => w,
        Err(e) => return unavailable(p, delivery, &e, "could not read webhooks").await,
    };
    let now = Utc::now();
    let holder = p.holder("e");
    // A redelivered event may have had attempts under way when its worker died (or
    // lost the broker): everything it gets goes through the queue then, where an
    // attempt waits for a lost one's lease to end instead of holding this stage.
    let redelivered = delivery.redelivered;
    let mut at_once = Vec::new();
    let mut jobs = Vec::new();
    let mut cut = Vec::new();
    // A webhook whose stored record cannot be read gets nothing (without its secret
    // and address nothing can be sent): an event it wants ends failed in the log at
    // once, as a batch of one; the event goes on to every other webhook.
    let mut failed = Vec::new();
    for u in &webhooks.unreadable {
        match u.wants(&event.key, event.properties_updated.as_deref()) {
            Some(true) => failed.push((
                DeliveryJob::single(
                    event.tenant.clone(),
                    u.id.clone(),
                    u.generation.unwrap_or_default(),
                    event.to_envelope_event(),
                    now,
                ),
                u,
            )),
            Some(false) => {}
            None => {
                // Logged as an ERROR when the record was read (webhooks.rs).
                p.metrics.unreadable(UnreadableResult::undecided);
                tracing::warn!(
                    webhook_id = %u.id,
                    "whether an unreadable webhook wants the event is unknown: not delivered to it"
                );
            }
        }
    }
    for (job, u) in &failed {
        let settle = deliver::settle(
            p,
            deliver::fail_unreadable(p, job, u).await,
            deliver::Source::Event,
        );
        if settle == Settle::Retry {
            p.metrics.event(EventResult::paused);
            return Settle::Retry;
        }
    }
    let single = |w: &courier_core::webhook::Webhook| {
        DeliveryJob::single(
            event.tenant.clone(),
            w.id.clone(),
            w.generation,
            event.to_envelope_event(),
            now,
        )
    };
    for w in webhooks
        .readable
        .iter()
        .filter(|w| w.wants(&event.key, event.properties_updated.as_deref()))
    {
        if !w.throttling.batches() {
            let job = single(w);
            if redelivered {
                jobs.push((job, onward.clone()));
            } else {
                at_once.push((job, w));
            }
            continue;
        }
        let placed = p
            .store
            .append_with_origin(
                &w.id,
                &event.tenant,
                w.generation,
                w.throttling.get(),
                &event.to_envelope_event(),
                &onward.origin(),
                p.batch_timing,
            )
            .await;
        match placed {
            Ok(Append::Placed { cut: batches }) => cut.extend(batches),
            Ok(Append::Duplicate) => {}
            // The webhook's batch state is unreadable: the event ends failed for
            // this webhook alone, and goes on to the others.
            Err(e) if e.is_permanent() => {
                let job = single(w);
                tracing::error!(error = %e, webhook_id = %w.id, "a webhook's batch state cannot be read; the event ends failed for it");
                let reason = format!(
                    "the webhook's waiting batch cannot be read ({e}); the event was not placed"
                );
                if let Err(e) = p.store.mark_dead(&job, &reason, p.log_retention).await {
                    return unavailable(p, delivery, &e, "could not record an unplaceable event")
                        .await;
                }
                p.metrics.flow.dead_letter(DeadReason::unreadable);
            }
            Err(e) => {
                return unavailable(p, delivery, &e, "could not place the event in a batch").await
            }
        }
    }
    if redelivered {
        // Attempts this event started for webhooks that no longer take it alone
        // (disabled, deleted, unsubscribed, now batching) must still end.
        let others: Vec<_> = webhooks
            .ids()
            .filter(|id| !jobs.iter().any(|(j, _)| &j.webhook_id == *id))
            .cloned()
            .collect();
        match p
            .store
            .lost_attempts(&event.tenant, &event.id, &others)
            .await
        {
            Ok(lost) => jobs.extend(lost.into_iter().map(|job| (job, onward.clone()))),
            Err(e) => {
                return unavailable(p, delivery, &e, "could not look for lost attempts").await
            }
        }
    }
    // Each attempt made here holds a delivery slot; what finds none, or whose
    // webhook is not known to answer promptly, is queued.
    let attempts = at_once
        .iter()
        .map(|(job, w)| deliver::now(p, job, &holder, &onward, w));
    let mut delivered = true;
    for ((job, _), handled) in at_once.iter().zip(join_all(attempts).await) {
        match handled {
            // Stored state of this attempt cannot be read: its job goes through
            // the queue, which parks it, and the event goes on to the others.
            Some(Err(deliver::Unavailable::Store(e))) if e.is_permanent() => {
                jobs.push((job.clone(), onward.clone()))
            }
            Some(handled) => {
                delivered &= deliver::settle(p, handled, deliver::Source::Event) == Settle::Ack
            }
            None => jobs.push((job.clone(), onward.clone())),
        }
    }
    // Batches this event completed are pending until handed on; if that fails here
    // their lease ends and another replica hands them on.
    if delivered && publish_jobs(p, &jobs).await && hand_on(p, &cut).await {
        tracing::debug!(jobs = jobs.len(), batches = cut.len(), "event fanned out");
        p.metrics.event(EventResult::fanned_out);
        Settle::Ack
    } else {
        p.metrics.event(EventResult::paused);
        Settle::Retry
    }
}

/// A Redis failure while fanning an event out: the event is handled again after a
/// pause, unless the stored state it needs is unreadable for good, in which case it
/// is parked (an ERROR) rather than held forever.
async fn unavailable(
    p: &Pipeline,
    delivery: &Delivery,
    error: &courier_store::StoreError,
    what: &str,
) -> Settle {
    if error.is_permanent() {
        tracing::error!(error = %error, "{what}: stored state cannot be read; parking the event");
        let reason = format!("{what}: stored state cannot be read: {error}");
        let settle = park(p, delivery, &reason, DeadReason::unreadable_state).await;
        p.metrics.event(match settle {
            Settle::Ack => EventResult::parked,
            Settle::Retry => EventResult::paused,
        });
        return settle;
    }
    p.metrics.flow.deps.redis_error();
    tracing::warn!(error = %error, "{what}; requeueing the event");
    p.metrics.event(EventResult::paused);
    Settle::Retry
}

/// Publishes delivery jobs, each with what it carries in its headers, with
/// pipelined confirms; true when all were confirmed.
pub async fn publish_jobs(p: &Pipeline, jobs: &[(DeliveryJob, Carried)]) -> bool {
    let exchange = p.topology.deliveries();
    let deps = &p.metrics.flow.deps;
    let mut pending = Vec::with_capacity(jobs.len());
    for (job, carried) in jobs {
        let Ok(body) = serde_json::to_vec(job) else {
            return false;
        };
        let batch_id = job.batch_id.to_string();
        let msg = Message::new(&exchange, DELIVERY_ROUTING_KEY, &body).with_message_id(&batch_id);
        let sent_at = std::time::Instant::now();
        match p.publisher.send(carried.add_to(msg)).await {
            Ok(confirm) => pending.push((confirm, sent_at)),
            Err(e) => {
                deps.amqp_error(AmqpOperation::publish);
                tracing::warn!(error = %e, "could not publish a delivery job");
                return false;
            }
        }
    }
    let mut confirmed = 0;
    for (confirm, sent_at) in pending {
        match confirm.wait().await {
            Ok(()) => {
                deps.confirmed(Destination::deliveries, sent_at.elapsed());
                confirmed += 1;
            }
            Err(e) => {
                deps.amqp_error(AmqpOperation::confirm);
                tracing::warn!(error = %e, "a delivery job was not confirmed");
            }
        }
    }
    p.metrics.jobs_published(confirmed);
    confirmed == jobs.len()
}

/// Moves a message that can never be processed to `courier.dead` (through its
/// fanout exchange, which also feeds the delivery log's copy), with the reason and
/// where it came from, so that an operator can requeue it; `why` is what the metric
/// counts it as.
pub async fn park(p: &Pipeline, delivery: &Delivery, reason: &str, why: DeadReason) -> Settle {
    tracing::warn!(
        reason,
        "parking an unprocessable message in the dead-letter queue"
    );
    let dead = p.topology.dead_exchange();
    let mut msg = Message::new(&dead, "", &delivery.data)
        .with_header(DEAD_REASON_HEADER, reason.to_owned())
        .with_header(ORIGINAL_EXCHANGE_HEADER, delivery.exchange.to_string())
        .with_header(
            ORIGINAL_ROUTING_KEY_HEADER,
            delivery.routing_key.to_string(),
        );
    if let Some(id) = delivery.properties.message_id() {
        msg = msg.with_message_id(id.as_str());
    }
    // Sent back by an operator, it continues the trace it came with.
    let msg = Carried::of(&delivery.properties).add_to(msg);
    let sent_at = std::time::Instant::now();
    match p.publisher.publish(msg).await {
        Ok(()) => {
            p.metrics
                .flow
                .deps
                .confirmed(Destination::dead, sent_at.elapsed());
            p.metrics.flow.dead_letter(why);
            Settle::Ack
        }
        Err(e) => {
            p.metrics.flow.deps.amqp_error(AmqpOperation::publish);
            tracing::warn!(error = %e, "could not park the message; requeueing it");
            Settle::Retry
        }
    }
}
