//! Publishing accepted events to `courier.events`, with confirms, and what is
//! known of each event when not all were confirmed.

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

/// What is known of one event once publishing is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Publication {
    /// The broker confirmed it: it will be delivered.
    Accepted,
    /// Certainly not taken: never sent (no connection, or an earlier event
    /// failed), or refused by the broker (nacked, or returned unroutable).
    NotAccepted,
    /// Sent, but no answer came: the confirm timed out or the connection was lost
    /// after sending. The broker may have it.
    Unknown,
}

impl Publication {
    /// What a failed send says of the message: one whose frames did not all go
    /// out cannot have been taken; one whose send timed out may have gone out
    /// after all.
    fn after_send(e: &BrokerError) -> Self {
        match e {
            BrokerError::ConfirmTimeout(_) => Self::Unknown,
            _ => Self::NotAccepted,
        }
    }

    /// What a failed confirm says of a sent message: only a nack or a return is a
    /// certain refusal.
    fn after_confirm(e: &BrokerError) -> Self {
        if e.refused() {
            Self::NotAccepted
        } else {
            Self::Unknown
        }
    }
}

/// What publishing a request's events came to.
pub struct PublishReport {
    /// Every event of the request, in request order, with what is known of it.
    pub events: Vec<(EventId, Publication)>,
    /// The first failure, if any event was not confirmed.
    pub failure: Option<BrokerError>,
}

impl PublishReport {
    /// The ids of the events in `status`, in request order.
    pub fn ids(&self, status: Publication) -> impl Iterator<Item = &EventId> {
        self.events
            .iter()
            .filter(move |(_, s)| *s == status)
            .map(|(id, _)| id)
    }
}

/// Publishes every event, pipelining the confirms: all are sent, then awaited in
/// order under one deadline, so that confirms that never come cost one confirm
/// timeout, not one per event. The first failure to send stops the sending: the events after it
/// are not sent.
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
    let mut statuses = Vec::with_capacity(events.len());
    let mut failure = None;
    let mut events = events.into_iter();
    while let Some(event) = events.next() {
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
            Ok(confirm) => {
                pending.push((statuses.len(), confirm, cx, sent_at));
                statuses.push((event.id, Publication::Unknown));
            }
            Err(e) => {
                metrics.deps.amqp_error(AmqpOperation::publish);
                fail(&cx, &e);
                statuses.push((event.id, Publication::after_send(&e)));
                statuses.extend(events.map(|e| (e.id, Publication::NotAccepted)));
                failure = Some(e);
                break;
            }
        }
    }
    // The confirms come in the background: awaited in order under one deadline,
    // those that never come cost one timeout together.
    let deadline = tokio::time::Instant::now() + publisher.confirm_timeout();
    for (i, confirm, cx, sent_at) in pending {
        let status = match confirm.wait_until(deadline).await {
            Ok(()) => {
                metrics
                    .deps
                    .confirmed(Destination::events, sent_at.elapsed());
                cx.span().end();
                Publication::Accepted
            }
            Err(e) => {
                metrics.deps.amqp_error(AmqpOperation::confirm);
                fail(&cx, &e);
                let status = Publication::after_confirm(&e);
                failure.get_or_insert(e);
                status
            }
        };
        if let Some(entry) = statuses.get_mut(i) {
            entry.1 = status;
        }
    }
    let report = PublishReport {
        events: statuses,
        failure,
    };
    if let Some(e) = &report.failure {
        tracing::warn!(
            error = %e,
            accepted = report.ids(Publication::Accepted).count(),
            not_accepted = report.ids(Publication::NotAccepted).count(),
            unknown = report.ids(Publication::Unknown).count(),
            "not every event was accepted"
        );
    }
    report
}

/// Ends a publish span as failed.
fn fail(cx: &Context, error: &BrokerError) {
    let span = cx.span();
    span.set_status(Status::error(error.to_string()));
    span.end();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_a_refusal_or_an_unsent_message_is_certainly_not_accepted() {
        let timeout = || BrokerError::ConfirmTimeout(Duration::from_secs(1));
        assert_eq!(
            Publication::after_send(&BrokerError::Disconnected),
            Publication::NotAccepted
        );
        assert_eq!(Publication::after_send(&timeout()), Publication::Unknown);
        assert_eq!(
            Publication::after_confirm(&BrokerError::Nacked),
            Publication::NotAccepted
        );
        assert_eq!(
            Publication::after_confirm(&BrokerError::Unroutable("acme.A.B".into())),
            Publication::NotAccepted
        );
        assert_eq!(Publication::after_confirm(&timeout()), Publication::Unknown);
        assert_eq!(
            Publication::after_confirm(&BrokerError::Disconnected),
            Publication::Unknown
        );
        assert_eq!(
            serde_json::to_value(Publication::NotAccepted).ok(),
            Some(serde_json::json!("notAccepted"))
        );
    }
}
