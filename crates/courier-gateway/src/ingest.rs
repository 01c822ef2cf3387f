//! Publishing accepted events to `courier.events`, with confirms.

use courier_broker::{BrokerError, Message, Publisher, Topology};
use courier_core::event::Event;
use courier_core::ids::EventId;

/// What publishing a request's events came to.
pub struct PublishReport {
    /// Events the broker confirmed, in request order.
    pub accepted: Vec<EventId>,
    /// The first failure, if any event was not confirmed.
    pub failure: Option<BrokerError>,
}

/// Publishes every event, pipelining the confirms: all are sent, then all awaited.
#[tracing::instrument(skip_all, fields(events = events.len()))]
pub async fn publish_events(
    publisher: &Publisher,
    topology: &Topology,
    events: &[Event],
) -> PublishReport {
    let exchange = topology.events_exchange();
    let mut pending = Vec::with_capacity(events.len());
    let mut failure = None;
    for event in events {
        let body = match serde_json::to_vec(&event.to_message()) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "event did not serialize");
                break;
            }
        };
        let routing_key = event.routing_key();
        let msg = Message::new(&exchange, &routing_key, &body).with_message_id(event.id.as_str());
        match publisher.send(msg).await {
            Ok(confirm) => pending.push((&event.id, confirm)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut accepted = Vec::with_capacity(pending.len());
    for (id, confirm) in pending {
        match confirm.wait().await {
            Ok(()) => accepted.push(id.clone()),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &failure {
        tracing::warn!(error = %e, accepted = accepted.len(), "not every event was accepted");
    }
    PublishReport { accepted, failure }
}
