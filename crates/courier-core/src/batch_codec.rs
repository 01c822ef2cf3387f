//! How the batch accumulator stores events in Redis: pure encode and decode
//! functions, no I/O.
//!
//! A **waiting event** is one element of its webhook's list:
//!
//! ```text
//! {placedMs}|v2|{record}
//! ```
//!
//! `placedMs` (decimal unix milliseconds, Redis time) is written by the append
//! script, which reads it back from the list's first element to restart the flush
//! deadline. `record` is one JSON object, parsed whole by a JSON parser and never
//! split: `{"acceptedMs":…,"traceparent":…,"tracestate":…,"event":{…}}`, the
//! origin fields present when known ([`EventOrigin`]) and `event` the event as the
//! subscriber receives it, with `data` kept as the text the client sent.
//!
//! A **cut batch** keeps its elements, in order, each framed by its length in
//! bytes: `{len}:{element}{len}:{element}…`. Nothing in an element is ever read as
//! a separator, whatever the event contains.
//!
//! Earlier versions wrote `{placedMs}|{acceptedMs}|{traceparent}|{tracestate}|{event}`
//! (`%`, `|` and newlines of the trace fields escaped) or `{placedMs}|{event}`, and
//! cut batches by joining elements with newlines. Both are still read: a newline
//! inside JSON is whitespace between tokens, and a line of JSON never starts with
//! digits followed by `|` (no JSON value continues that way), so a line that does
//! not start so continues the element before it.

use crate::event::EnvelopeEvent;
use serde::{Deserialize, Serialize};

/// What follows `{placedMs}|` in an element this version writes.
const V2: &[u8] = b"v2|";

/// Where an accumulated event came from: when the gateway accepted it and the trace
/// context of its processing, kept beside it so that the batch's delivery can
/// report its latency and link to every event's trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOrigin {
    /// Unix milliseconds at which the gateway accepted the event.
    pub accepted_at_ms: Option<u64>,
    /// W3C `traceparent` of the span that placed the event.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with it.
    pub tracestate: Option<String>,
}

/// One waiting event as read back.
#[derive(Debug, Clone)]
pub struct WaitingEvent {
    /// When it was placed (Redis time, unix milliseconds).
    pub placed_ms: u64,
    pub origin: EventOrigin,
    pub event: EnvelopeEvent,
}

/// Why stored bytes are not a waiting event or a cut batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RecordOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    event: &'a EnvelopeEvent,
}

/// Fields a later version adds are ignored; one that changes their meaning writes
/// another marker than `v2|`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordIn {
    #[serde(default)]
    accepted_ms: Option<u64>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    tracestate: Option<String>,
    event: EnvelopeEvent,
}

/// The element of a waiting event without its placed time, which the append script
/// puts in front (`{placedMs}|` + this).
pub fn encode_event(
    event: &EnvelopeEvent,
    origin: &EventOrigin,
) -> Result<String, serde_json::Error> {
    let record = serde_json::to_string(&RecordOut {
        accepted_ms: origin.accepted_at_ms,
        traceparent: origin.traceparent.as_deref(),
        tracestate: origin.tracestate.as_deref(),
        event,
    })?;
    let mut element = String::with_capacity(V2.len() + record.len());
    element.push_str("v2|");
    element.push_str(&record);
    Ok(element)
}

/// The leading decimal digits of `bytes` and what follows them.
fn digits(bytes: &[u8]) -> (&[u8], &[u8]) {
    let n = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    bytes.split_at(n)
}

fn number(digits: &[u8], what: &str) -> Result<u64, DecodeError> {
    std::str::from_utf8(digits)
        .ok()
        .filter(|d| !d.is_empty())
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad(format!("bad {what}")))
}

/// Reads a waiting event's element, as this version or an earlier one wrote it.
pub fn decode_event(element: &[u8]) -> Result<WaitingEvent, DecodeError> {
    let (placed, rest) = digits(element);
    let placed_ms = number(placed, "placed time")?;
    let rest = rest
        .strip_prefix(b"|")
        .ok_or_else(|| bad("no placed time"))?;
    let (origin, event) = if let Some(record) = rest.strip_prefix(V2) {
        let record: RecordIn =
            serde_json::from_slice(record).map_err(|e| bad(format!("bad record: {e}")))?;
        let origin = EventOrigin {
            accepted_at_ms: record.accepted_ms,
            traceparent: record.traceparent,
            tracestate: record.tracestate,
        };
        (origin, record.event)
    } else {
        let (origin, json) = legacy_origin(rest)?;
        let event = serde_json::from_slice(json).map_err(|e| bad(format!("bad event: {e}")))?;
        (origin, event)
    };
    Ok(WaitingEvent {
        placed_ms,
        origin,
        event,
    })
}

/// An earlier version's `{acceptedMs}|{traceparent}|{tracestate}|{event}`, or the
/// event alone.
fn legacy_origin(rest: &[u8]) -> Result<(EventOrigin, &[u8]), DecodeError> {
    if rest.first() == Some(&b'{') {
        return Ok((EventOrigin::default(), rest));
    }
    let mut fields = rest.splitn(4, |&b| b == b'|');
    let (Some(accepted), Some(traceparent), Some(tracestate), Some(json)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad("unknown element format"));
    };
    let text = |f: &[u8]| -> Result<Option<String>, DecodeError> {
        if f.is_empty() {
            return Ok(None);
        }
        let f = std::str::from_utf8(f).map_err(|_| bad("bad trace context"))?;
        Ok(Some(
            f.replace("%0A", "\n")
                .replace("%7C", "|")
                .replace("%25", "%"),
        ))
    };
    let origin = EventOrigin {
        accepted_at_ms: if accepted.is_empty() {
            None
        } else {
            Some(number(accepted, "acceptance time")?)
        },
        traceparent: text(traceparent)?,
        tracestate: text(tracestate)?,
    };
    Ok((origin, json))
}

/// A cut batch's elements as the cut script stores them.
pub fn frame<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        out.extend_from_slice(element.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(element);
    }
    out
}

/// The elements of a stored cut batch, framed by this version or joined with
/// newlines by an earlier one.
pub fn split_batch(stored: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let (lead, rest) = digits(stored);
    match rest.first() {
        _ if lead.is_empty() => Err(bad("no events")),
        Some(b':') => unframe(stored),
        Some(b'|') => Ok(unjoin(stored)),
        _ => Err(bad("unknown batch format")),
    }
}

fn unframe(mut stored: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut elements = Vec::new();
    while !stored.is_empty() {
        let (len, rest) = digits(stored);
        let rest = rest
            .strip_prefix(b":")
            .ok_or_else(|| bad(format!("bad frame after {} events", elements.len())))?;
        let len = usize::try_from(number(len, "frame length")?)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| bad(format!("event {} is cut short", elements.len() + 1)))?;
        let (element, next) = rest.split_at(len);
        elements.push(element);
        stored = next;
    }
    Ok(elements)
}

/// Newline-joined elements: a line that starts with `digits|` starts an element,
/// any other continues the one before.
fn unjoin(stored: &[u8]) -> Vec<&[u8]> {
    let starts_element = |line: &[u8]| {
        let (lead, rest) = digits(line);
        !lead.is_empty() && rest.first() == Some(&b'|')
    };
    let mut elements = Vec::new();
    let mut start = 0;
    for (i, &b) in stored.iter().enumerate() {
        if b == b'\n' && starts_element(&stored[i + 1..]) {
            elements.push(&stored[start..i]);
            start = i + 1;
        }
    }
    elements.push(&stored[start..]);
    elements
}

/// Every event of a stored cut batch, in order.
pub fn decode_batch(stored: &[u8]) -> Result<Vec<WaitingEvent>, DecodeError> {
    split_batch(stored)?
        .into_iter()
        .enumerate()
        .map(|(i, element)| {
            decode_event(element).map_err(|e| bad(format!("event {}: {}", i + 1, e.0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: &str, data: &str) -> EnvelopeEvent {
        serde_json::from_str(&format!(
            r#"{{"eventId":"{id}","eventType":"EntityCreated","objectType":"Prospect","data":{data},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}}"#
        ))
        .unwrap()
    }

    /// What the append script stores: the placed time in front.
    fn placed(ms: u64, event: &EnvelopeEvent, origin: &EventOrigin) -> Vec<u8> {
        format!("{ms}|{}", encode_event(event, origin).unwrap()).into_bytes()
    }

    const PRETTY: &str = "{\n  \"note\": \"a|b\\nc\",\t\n  \"n\": 1.50e3,\n  \"s\": \"\u{2028}\\ud83d\\ude00\\t\"\n}";

    #[test]
    fn pretty_printed_data_survives_a_cut_batch_as_sent() {
        let origin = EventOrigin {
            accepted_at_ms: Some(1_776_939_300_123),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("a=1|2,b=50%\n".into()),
        };
        let elements = [
            placed(7, &event("e1", PRETTY), &origin),
            placed(8, &event("e2", "{}"), &EventOrigin::default()),
        ];
        let stored = frame(elements.iter().map(Vec::as_slice));
        let back = decode_batch(&stored).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].event.data.get(), PRETTY);
        assert_eq!(back[0].origin, origin);
        assert_eq!(back[0].placed_ms, 7);
        assert_eq!(back[1].event.event_id.as_str(), "e2");
        assert_eq!(back[1].origin, EventOrigin::default());
    }

    #[test]
    fn elements_and_batches_of_the_earlier_format_are_read() {
        let with_origin = r#"1776939300000|1776939299000|00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01|a=1%7C2,b=50%25|{"eventId":"old1","eventType":"EntityCreated","objectType":"Prospect","data":{"x":"|"},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}"#;
        let bare = r#"1776939300001|{"eventId":"old2","eventType":"EntityCreated","objectType":"Prospect","data":{"a":1},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}"#;
        // The earlier version's batches joined elements with newlines, including
        // those inside pretty-printed data.
        let pretty = format!(
            "1776939300002||||{}",
            serde_json::to_string(&event("old3", "{\n  \"a\": [\n    1,\n    2\n  ]\n}")).unwrap()
        );
        let joined = [with_origin, bare, pretty.as_str()].join("\n");
        let back = decode_batch(joined.as_bytes()).unwrap();
        let ids: Vec<_> = back.iter().map(|w| w.event.event_id.as_str()).collect();
        assert_eq!(ids, ["old1", "old2", "old3"]);
        assert_eq!(back[0].origin.tracestate.as_deref(), Some("a=1|2,b=50%"));
        assert_eq!(back[0].origin.accepted_at_ms, Some(1_776_939_299_000));
        assert_eq!(back[1].origin, EventOrigin::default());
        assert_eq!(
            back[2].event.data.get(),
            "{\n  \"a\": [\n    1,\n    2\n  ]\n}"
        );
        assert_eq!(back[2].origin, EventOrigin::default());
    }

    #[test]
    fn garbage_is_refused_with_a_reason_and_never_panics() {
        for stored in [
            &b""[..],
            b"garbage",
            b"12",
            b"5:abc",
            b"3:abc",
            b"99999999999999999999999:x",
            b"1|x",
            b"1|v2|{}",
            b"1|v3|{}",
            b"x|{}",
            b"\xff\xfe",
            b"3:1|{",
        ] {
            let err = decode_batch(stored).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        assert!(decode_event(b"1||||{}").is_err());
        assert!(decode_event(b"1|x|||{}").is_err());
    }

    /// Strings with everything JSON can carry: separators, line breaks, U+2028,
    /// astral characters, quotes and backslashes.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                any::<char>(),
                Just('\n'),
                Just('|'),
                Just(':'),
                Just('\u{2028}'),
                Just('\u{1F600}'),
                Just('"'),
                Just('\\'),
            ],
            0..24,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(text(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn origin() -> impl Strategy<Value = EventOrigin> {
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(accepted_at_ms, traceparent, tracestate)| EventOrigin {
                accepted_at_ms,
                traceparent,
                tracestate,
            })
    }

    proptest! {
        #[test]
        fn any_events_round_trip_through_a_cut_batch(
            items in proptest::collection::vec((json(), any::<bool>(), origin(), any::<u64>()), 1..10)
        ) {
            let events: Vec<(String, EnvelopeEvent, EventOrigin, u64)> = items
                .into_iter()
                .enumerate()
                .map(|(i, (value, pretty, origin, at))| {
                    let inner = if pretty {
                        serde_json::to_string_pretty(&value).unwrap()
                    } else {
                        serde_json::to_string(&value).unwrap()
                    };
                    let data = format!("{{\"v\": {inner}}}");
                    let e = event(&format!("e{i}"), &data);
                    (data, e, origin, at)
                })
                .collect();
            let elements: Vec<Vec<u8>> = events.iter().map(|(_, e, o, at)| placed(*at, e, o)).collect();
            let stored = frame(elements.iter().map(Vec::as_slice));
            let back = decode_batch(&stored).unwrap();
            prop_assert_eq!(back.len(), events.len());
            for (w, (data, e, origin, at)) in back.iter().zip(&events) {
                prop_assert_eq!(w.event.data.get(), data.as_str());
                prop_assert_eq!(&w.event.event_id, &e.event_id);
                prop_assert_eq!(&w.origin, origin);
                prop_assert_eq!(w.placed_ms, *at);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_batch(&bytes);
            let _ = decode_event(&bytes);
        }
    }
}
