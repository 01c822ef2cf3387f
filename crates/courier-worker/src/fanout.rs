//! The fan-out stage: one event in, one delivery job per webhook that wants it out.

use chrono::Utc;
use courier_broker::dead::{ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER};
use courier_broker::lapin::message::Delivery;
use courier_broker::topology::{DEAD_REASON_HEADER, DELIVERY_ROUTING_KEY};
use courier_broker::Message;
use courier_core::envelope::DeliveryJob;
use courier_core::event::Event;
use courier_core::ids::BatchId;

use courier_store::batch::Append;

use crate::batching::hand_on;
use crate::consumer::Settle;
use crate::metrics::EventResult;
use crate::Pipeline;

/// Handles one message of `courier.events.q`. The event is acked only once every
/// job it produced is confirmed by the broker.
#[tracing::instrument(skip_all, fields(tenant, event_id))]
pub async fn handle(p: &Pipeline, delivery: Delivery) -> Settle {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str());
    let event = match Event::from_message(&delivery.data, message_id, &p.catalog, Utc::now()) {
        Ok(e) => e,
        Err(e) => {
            let settle = park(p, &delivery, &e.to_string()).await;
            p.metrics.event(match settle {
                Settle::Ack => EventResult::parked,
                Settle::Requeue => EventResult::requeued,
            });
            return settle;
        }
    };
    let span = tracing::Span::current();
    span.record("tenant", event.tenant.as_str());
    span.record("event_id", event.id.as_str());
    let webhooks = match p.webhooks.tenant(&event.tenant).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "could not read webhooks; requeueing the event");
            p.metrics.event(EventResult::requeued);
            return Settle::Requeue;
        }
    };
    let now = Utc::now();
    let mut jobs = Vec::new();
    let mut cut = Vec::new();
    for w in webhooks
        .iter()
        .filter(|w| w.wants(&event.key, event.properties_updated.as_deref()))
    {
        if !w.throttling.batches() {
            jobs.push(DeliveryJob {
                batch_id: BatchId::for_single(&w.id, &event.id),
                tenant_id: event.tenant.clone(),
                webhook_id: w.id.clone(),
                generation: w.generation,
                series: 1,
                attempt: 1,
                created_at: now,
                due_at: now,
                events: vec![event.to_envelope_event()],
            });
            continue;
        }
        let placed = p
            .store
            .append_to_batch(
                &w.id,
                &event.tenant,
                w.generation,
                w.throttling.get(),
                &event.to_envelope_event(),
                p.batch_timing,
            )
            .await;
        match placed {
            Ok(Append::Placed { cut: batches }) => cut.extend(batches),
            Ok(Append::Duplicate) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not place the event in a batch; requeueing it");
                p.metrics.event(EventResult::requeued);
                return Settle::Requeue;
            }
        }
    }
    // Batches this event completed are pending until handed on; if that fails here
    // their lease ends and another replica hands them on.
    if publish_jobs(p, &jobs).await && hand_on(p, &cut).await {
        tracing::debug!(jobs = jobs.len(), batches = cut.len(), "event fanned out");
        p.metrics.event(EventResult::fanned_out);
        Settle::Ack
    } else {
        p.metrics.event(EventResult::requeued);
        Settle::Requeue
    }
}

/// Publishes delivery jobs with pipelined confirms; true when all were confirmed.
pub async fn publish_jobs(p: &Pipeline, jobs: &[DeliveryJob]) -> bool {
    let exchange = p.topology.deliveries();
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs {
        let Ok(body) = serde_json::to_vec(job) else {
            return false;
        };
        let batch_id = job.batch_id.to_string();
        let msg = Message::new(&exchange, DELIVERY_ROUTING_KEY, &body).with_message_id(&batch_id);
        match p.publisher.send(msg).await {
            Ok(confirm) => pending.push(confirm),
            Err(e) => {
                tracing::warn!(error = %e, "could not publish a delivery job");
                return false;
            }
        }
    }
    let mut confirmed = 0;
    for confirm in pending {
        match confirm.wait().await {
            Ok(()) => confirmed += 1,
            Err(e) => tracing::warn!(error = %e, "a delivery job was not confirmed"),
        }
    }
    p.metrics.jobs_published(confirmed);
    confirmed == jobs.len()
}

/// Moves a message that can never be processed to `courier.dead` (through its
/// fanout exchange, which also feeds the delivery log's copy), with the reason and
/// where it came from, so that an operator can requeue it.
pub async fn park(p: &Pipeline, delivery: &Delivery, reason: &str) -> Settle {
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
    match p.publisher.publish(msg).await {
        Ok(()) => Settle::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "could not park the message; requeueing it");
            Settle::Requeue
        }
    }
}
