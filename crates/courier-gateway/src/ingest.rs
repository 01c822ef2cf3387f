//! Publishing accepted events to `courier.events`, with confirms.

use std::time::Instant;

use chrono::Utc;
use courier_broker::headers::ACCEPTED_AT_HEADER;
use courier_broker::{BrokerError, Message, Publisher, Topology};
use courier_core::event::Event;
use courier_core::ids::EventId;
use courier_telemetry::metrics::{AmqpOperation, Destination};
use courier_telemetry::traces::messaging_attributes;
use courier_telemetry::Traces;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};

use crate::metrics::Metrics;

/// What publishing a request's events came to.
pub struct PublishReport {
    /// Events the broker confirmed, in request order.
    pub accepted: Vec<EventId>,
    /// The first failure, if any event was not confirmed.
    pub failure: Option<BrokerError>,
}

/// Publishes every event, pipelining the confirms: all are sent, then all awaited.
/// Each publish is a PRODUCER span, a child of the current context (the request's
/// span), and its message carries that span's W3C context and the time of
/// acceptance in its headers. An event is dropped once sent: only its id waits
/// for the confirm.
#[tracing::instrument(skip_all, fields(events = events.len()))]
pub async fn publish_events(
    publisher: &Publisher,
    topology: &Topology,
    events: Vec<Event>,
    traces: &Traces,
    metrics: &Metrics,
) -> PublishReport {
    let exchange = topology.events_exchange();
    let parent = Context::current();
    let accepted_at = Utc::now().timestamp_millis().to_string();
    let mut pending = Vec::with_capacity(events.len());
    let mut failure = None;
    for event in events {
        let body = event.message_body();
        let routing_key = event.routing_key();
        let cx = traces.start_span(
            format!("publish {exchange}"),
            SpanKind::Producer,
            &parent,
            || {
                let mut attributes = messaging_attributes(
                    "publish",
                    &exchange,
                    &routing_key,
                    Some(event.id.to_string()),
                    body.len(),
                );
                attributes.push(KeyValue::new("courier.tenant.id", event.tenant.to_string()));
                attributes.push(KeyValue::new("courier.event.type", event.key.to_string()));
                attributes
            },
            Vec::new,
        );
        let mut msg = Message::new(&exchange, &routing_key, &body)
            .with_message_id(event.id.as_str())
            .with_header(ACCEPTED_AT_HEADER, accepted_at.clone());
        for (name, value) in traces.inject(&cx).pairs() {
            msg = msg.with_header(name, value.to_owned());
        }
        let sent_at = Instant::now();
        match publisher.send(msg).await {
            Ok(confirm) => pending.push((event.id, confirm, cx, sent_at)),
            Err(e) => {
                metrics.deps.amqp_error(AmqpOperation::publish);
                fail(&cx, &e);
                failure = Some(e);
                break;
            }
        }
    }
    let mut accepted = Vec::with_capacity(pending.len());
    for (id, confirm, cx, sent_at) in pending {
        match confirm.wait().await {
            Ok(()) => {
                metrics
                    .deps
                    .confirmed(Destination::events, sent_at.elapsed());
                cx.span().end();
                accepted.push(id);
            }
            Err(e) => {
                metrics.deps.amqp_error(AmqpOperation::confirm);
                fail(&cx, &e);
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &failure {
        tracing::warn!(error = %e, accepted = accepted.len(), "not every event was accepted");
    }
    PublishReport { accepted, failure }
}

/// Ends a publish span as failed.
fn fail(cx: &Context, error: &BrokerError) {
    let span = cx.span();
    span.set_status(Status::error(error.to_string()));
    span.end();
}
