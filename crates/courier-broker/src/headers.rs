//! Text headers of a message, as publishers set them (`LongString`, or the
//! `ShortString` some clients use): the W3C trace context (`traceparent`,
//! `tracestate`) and Courier's own `x-courier-*` headers.

use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// Unix milliseconds at which the gateway accepted the event. The gateway sets it
/// on an event; a delivery job carries those of its events, comma-separated. The
/// time from it to the delivery is a metric.
pub const ACCEPTED_AT_HEADER: &str = "x-courier-accepted-at";

/// On a delivery job of a batch: the `traceparent` of each event's span,
/// comma-separated, which the delivery spans link to.
pub const TRACE_LINKS_HEADER: &str = "x-courier-trace-links";

/// The header `name` of a message, if it is text.
pub fn text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    #[test]
    fn text_headers_are_read_whatever_string_type_they_came_as() {
        let mut h = FieldTable::default();
        h.insert(
            "traceparent".into(),
            AMQPValue::LongString(LongString::from("00-a")),
        );
        h.insert(
            "tracestate".into(),
            AMQPValue::ShortString(ShortString::from("k=v")),
        );
        h.insert("x-number".into(), AMQPValue::LongLongInt(7));
        let props = BasicProperties::default().with_headers(h);
        assert_eq!(text(&props, "traceparent").as_deref(), Some("00-a"));
        assert_eq!(text(&props, "tracestate").as_deref(), Some("k=v"));
        assert_eq!(text(&props, "x-number"), None);
        assert_eq!(text(&props, "absent"), None);
        assert_eq!(text(&BasicProperties::default(), "traceparent"), None);
    }
}
