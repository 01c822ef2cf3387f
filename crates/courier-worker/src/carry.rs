//! What a message carries beside its body, in AMQP headers, from the gateway to the
//! delivery: the W3C trace context of the span it continues (`traceparent`,
//! `tracestate`), for a batch the contexts of all its events (the delivery span
//! links to each), and when the gateway accepted each event (the ingest-to-delivery
//! latency). The job body is fixed by its schema; headers are kept by the delay
//! queues when they dead-letter, so retries keep carrying all of it.

use chrono::Utc;
use courier_broker::headers::{text, ACCEPTED_AT_HEADER, TRACE_LINKS_HEADER};
use courier_broker::lapin::BasicProperties;
use courier_broker::Message;
use courier_store::batch::{CutBatch, EventOrigin};
use courier_telemetry::TraceHeaders;

/// Most links a job carries (a batch holds at most 10 events).
const MAX_LINKS: usize = 32;

/// The headers of an event or a delivery job that the pipeline reads and passes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// The context the next span continues.
    pub trace: TraceHeaders,
    /// A batch's events' contexts (`traceparent`s), for links.
    pub links: Vec<String>,
    /// When the gateway accepted each event (unix ms), where it did.
    pub accepted_at: Vec<u64>,
}

impl Carried {
    /// Reads the headers of a consumed message; what is missing or malformed is
    /// left out.
    pub fn of(properties: &BasicProperties) -> Self {
        let list = |name: &str| -> Vec<String> {
            text(properties, name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .take(MAX_LINKS)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            trace: TraceHeaders::read(|name| text(properties, name)),
            links: list(TRACE_LINKS_HEADER),
            accepted_at: list(ACCEPTED_AT_HEADER)
                .iter()
                .filter_map(|ms| ms.parse().ok())
                .collect(),
        }
    }

    /// The first job of a cut batch: its first event's context, links to every
    /// event's, and the acceptance times that are known.
    pub fn of_batch(batch: &CutBatch) -> Self {
        let first = batch.origins.first();
        Self {
            trace: TraceHeaders {
                traceparent: first.and_then(|o| o.traceparent.clone()),
                tracestate: first.and_then(|o| o.tracestate.clone()),
            },
            links: batch
                .origins
                .iter()
                .filter_map(|o| o.traceparent.clone())
                .take(MAX_LINKS)
                .collect(),
            accepted_at: batch
                .origins
                .iter()
                .filter_map(|o| o.accepted_at_ms)
                .collect(),
        }
    }

    /// What the jobs of a consumed event carry: the context of its consumer span
    /// (`trace`) and the event's acceptance time; an event brings no links.
    pub fn of_event_jobs(&self, trace: TraceHeaders) -> Self {
        Self {
            trace,
            links: Vec::new(),
            accepted_at: self.accepted_at.iter().take(1).copied().collect(),
        }
    }

    /// What an event placed in a batch keeps beside it: the context its delivery
    /// continues (or links to) and when it was accepted.
    pub fn origin(&self) -> EventOrigin {
        EventOrigin {
            accepted_at_ms: self.accepted_at.first().copied(),
            traceparent: self.trace.traceparent.clone(),
            tracestate: self.trace.tracestate.clone(),
        }
    }

    /// The same, continuing another span (the next hop's parent).
    pub fn continuing(&self, trace: TraceHeaders) -> Self {
        Self {
            trace,
            links: self.links.clone(),
            accepted_at: self.accepted_at.clone(),
        }
    }

    /// Adds the headers to a message to publish.
    pub fn add_to<'a>(&self, mut msg: Message<'a>) -> Message<'a> {
        for (name, value) in self.trace.pairs() {
            msg = msg.with_header(name, value.to_owned());
        }
        if !self.links.is_empty() {
            msg = msg.with_header(TRACE_LINKS_HEADER, self.links.join(","));
        }
        if !self.accepted_at.is_empty() {
            let list: Vec<String> = self.accepted_at.iter().map(u64::to_string).collect();
            msg = msg.with_header(ACCEPTED_AT_HEADER, list.join(","));
        }
        msg
    }

    /// How long ago each event was accepted, for the ingest-to-delivery latency.
    pub fn ages(&self) -> impl Iterator<Item = std::time::Duration> + '_ {
        let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
        self.accepted_at
            .iter()
            .map(move |at| std::time::Duration::from_millis(now.saturating_sub(*at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_broker::lapin::types::{AMQPValue, FieldTable, LongString};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn what_a_job_carries_survives_a_hop() {
        let carried = Carried {
            trace: TraceHeaders {
                traceparent: Some(TP.into()),
                tracestate: None,
            },
            links: vec![TP.into(), TP.replace("b7-01", "b8-01")],
            accepted_at: vec![1_000, 2_000],
        };
        let msg = carried.add_to(Message::new("x", "k", b"{}"));
        let mut table = FieldTable::default();
        for (name, value) in msg.headers {
            table.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(Carried::of(&props), carried);
    }

    #[test]
    fn a_message_without_headers_carries_nothing_and_garbage_is_dropped() {
        assert_eq!(Carried::of(&BasicProperties::default()), Carried::default());
        let mut table = FieldTable::default();
        table.insert(
            ACCEPTED_AT_HEADER.into(),
            AMQPValue::LongString(LongString::from("12,soon, 34")),
        );
        let props = BasicProperties::default().with_headers(table);
        assert_eq!(Carried::of(&props).accepted_at, vec![12, 34]);
    }
}
