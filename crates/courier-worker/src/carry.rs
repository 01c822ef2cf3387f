//! What a message carries beside its body, in AMQP headers, from the gateway to the
//! delivery: the W3C trace context of the span it continues (`traceparent`,
//! `tracestate`), for a batch the contexts of all its events (the delivery span
//! links to each), and when the gateway accepted each event (the ingest-to-delivery
//! latency). A delivery job also carries what is left of its wait once the delay
//! queue it waits in lets it go, and how often it was sent around because its
//! webhook was busy. The job body is fixed by its schema; headers are kept by the
//! delay queues when they dead-letter, so retries keep carrying all of it.

use std::time::Duration;

use chrono::Utc;
use courier_broker::headers::{text, ACCEPTED_AT_HEADER, TRACE_LINKS_HEADER};
use courier_broker::lapin::BasicProperties;
use courier_broker::Message;
use courier_store::batch::{CutBatch, EventOrigin};
use courier_telemetry::TraceHeaders;

/// Most links a job carries (a batch holds at most 10 events).
const MAX_LINKS: usize = 32;

/// On a delivery job: the milliseconds it still has to wait when the queue it was
/// published into lets it go (its wait minus the delay queue's TTL; `0` when it is
/// due then). A wait is thus measured in queue TTLs, never by comparing the
/// clocks of two machines.
pub const WAIT_HEADER: &str = "x-courier-wait-ms";

/// On a delivery job: how many times it was sent around the delay ladder because
/// its webhook had its most deliveries in flight; each time it waits longer.
pub const DEFERRALS_HEADER: &str = "x-courier-deferrals";

/// The headers of an event or a delivery job that the pipeline reads and passes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// The context the next span continues.
    pub trace: TraceHeaders,
    /// A batch's events' contexts (`traceparent`s), for links.
    pub links: Vec<String>,
    /// When the gateway accepted each event (unix ms), where it did.
    pub accepted_at: Vec<u64>,
    /// A delivery job's wait left after its hop ([`WAIT_HEADER`]); `None` on events
    /// and on jobs published without it (by an older version).
    pub wait: Option<Duration>,
    /// A delivery job's deferrals so far ([`DEFERRALS_HEADER`]).
    pub deferrals: u32,
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
            wait: text(properties, WAIT_HEADER)
                .and_then(|ms| ms.trim().parse().ok())
                .map(Duration::from_millis),
            deferrals: text(properties, DEFERRALS_HEADER)
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0),
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
            ..Self::default()
        }
    }

    /// What the jobs of a consumed event carry: the context of its consumer span
    /// (`trace`) and the event's acceptance time; an event brings no links.
    pub fn of_event_jobs(&self, trace: TraceHeaders) -> Self {
        Self {
            trace,
            links: Vec::new(),
            accepted_at: self.accepted_at.iter().take(1).copied().collect(),
            ..Self::default()
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

    /// What the next job of a series carries: the same events' headers, continuing
    /// another span (the next hop's parent); its wait is set when it is published.
    pub fn continuing(&self, trace: TraceHeaders) -> Self {
        Self {
            trace,
            links: self.links.clone(),
            accepted_at: self.accepted_at.clone(),
            ..Self::default()
        }
    }

    /// The same job on a hop that leaves it `wait` to go when its queue lets it
    /// go, after `deferrals` deferrals.
    pub fn hop(&self, wait: Duration, deferrals: u32) -> Self {
        Self {
            wait: Some(wait),
            deferrals,
            ..self.clone()
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
        if let Some(wait) = self.wait {
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            msg = msg.with_header(WAIT_HEADER, ms.to_string());
        }
        if self.deferrals > 0 {
            msg = msg.with_header(DEFERRALS_HEADER, self.deferrals.to_string());
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
            wait: Some(Duration::from_millis(1_500)),
            deferrals: 3,
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
        table.insert(
            WAIT_HEADER.into(),
            AMQPValue::LongString(LongString::from("-5")),
        );
        table.insert(
            DEFERRALS_HEADER.into(),
            AMQPValue::LongString(LongString::from("many")),
        );
        let props = BasicProperties::default().with_headers(table);
        let carried = Carried::of(&props);
        assert_eq!(carried.accepted_at, vec![12, 34]);
        assert_eq!((carried.wait, carried.deferrals), (None, 0));
    }

    #[test]
    fn the_next_job_of_a_series_starts_with_no_wait_or_deferrals() {
        let consumed = Carried {
            accepted_at: vec![7],
            ..Carried::default()
        }
        .hop(Duration::from_secs(2), 4);
        let next = consumed.continuing(TraceHeaders::default());
        assert_eq!((next.wait, next.deferrals), (None, 0));
        assert_eq!(next.accepted_at, vec![7]);
        let zero = Carried::default().hop(Duration::ZERO, 0);
        let msg = zero.add_to(Message::new("x", "k", b"{}"));
        assert!(
            msg.headers
                .iter()
                .any(|(n, v)| *n == WAIT_HEADER && v.as_str() == "0"),
            "a due job says so"
        );
    }
}
