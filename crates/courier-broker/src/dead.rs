//! Reading a parked message: why it was parked and where it came from.
//!
//! A message reaches `courier.dead` in one of two ways: the worker parks it (it could
//! never be processed) with [`DEAD_REASON_HEADER`] and the original exchange and
//! routing key in headers of its own; or RabbitMQ dead-letters it (past
//! `x-delivery-limit`), recording the death in `x-death`, newest first.

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

pub use crate::topology::DEAD_REASON_HEADER;

/// Header of a parked message: the exchange it was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-courier-original-exchange";

/// Header of a parked message: the routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-courier-original-routing-key";

/// What a parked message's properties say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why: the worker's reason, or RabbitMQ's (`delivery_limit`, `rejected`, ...).
    pub reason: String,
    /// The exchange it was published to before it was parked.
    pub exchange: Option<String>,
    /// The routing key it was published with before it was parked.
    pub routing_key: Option<String>,
    /// The queue it was parked from, when RabbitMQ dead-lettered it.
    pub queue: Option<String>,
    pub message_id: Option<String>,
}

impl DeadLetter {
    pub fn of(properties: &BasicProperties) -> Self {
        let message_id = properties.message_id().as_ref().map(|m| m.to_string());
        let headers = properties.headers().as_ref();
        let header = |name: &str| headers.and_then(|h| text(h.inner().get(name)?));
        if let Some(reason) = header(DEAD_REASON_HEADER) {
            return Self {
                reason,
                exchange: header(ORIGINAL_EXCHANGE_HEADER),
                routing_key: header(ORIGINAL_ROUTING_KEY_HEADER),
                queue: None,
                message_id,
            };
        }
        // The newest death comes first; earlier ones may be the delay queues' expiries.
        let latest = headers
            .and_then(|h| match h.inner().get("x-death")? {
                AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
                _ => None,
            })
            .and_then(|d| match d {
                AMQPValue::FieldTable(t) => Some(t),
                _ => None,
            });
        let field = |t: &FieldTable, name: &str| text(t.inner().get(name)?);
        match latest {
            Some(death) => Self {
                reason: field(&death, "reason").unwrap_or_else(|| "unknown".into()),
                exchange: field(&death, "exchange"),
                routing_key: match death.inner().get("routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(text),
                    _ => None,
                },
                queue: field(&death, "queue"),
                message_id,
            },
            None => Self {
                reason: "unknown".into(),
                exchange: None,
                routing_key: None,
                queue: None,
                message_id,
            },
        }
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn a_message_parked_by_the_worker_names_its_reason_and_origin() {
        let mut h = FieldTable::default();
        h.insert(DEAD_REASON_HEADER.into(), long("unparseable event"));
        h.insert(ORIGINAL_EXCHANGE_HEADER.into(), long("p.courier.events"));
        h.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), long("acme.Prospect.X"));
        let props = BasicProperties::default()
            .with_headers(h)
            .with_message_id(ShortString::from("m1"));
        let d = DeadLetter::of(&props);
        assert_eq!(d.reason, "unparseable event");
        assert_eq!(d.exchange.as_deref(), Some("p.courier.events"));
        assert_eq!(d.routing_key.as_deref(), Some("acme.Prospect.X"));
        assert_eq!(d.message_id.as_deref(), Some("m1"));
    }

    #[test]
    fn a_message_dead_lettered_by_rabbitmq_is_read_from_its_latest_death() {
        let death = |reason: &str, queue: &str, exchange: &str, key: &str| {
            let mut t = FieldTable::default();
            t.insert("reason".into(), long(reason));
            t.insert("queue".into(), long(queue));
            t.insert("exchange".into(), long(exchange));
            let mut keys = FieldArray::default();
            keys.push(long(key));
            t.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            AMQPValue::FieldTable(t)
        };
        let mut deaths = FieldArray::default();
        deaths.push(death(
            "delivery_limit",
            "p.courier.deliveries",
            "p.courier.deliveries",
            "deliver",
        ));
        deaths.push(death(
            "expired",
            "p.courier.delay.1000",
            "",
            "p.courier.delay.1000",
        ));
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(deaths));
        h.insert("x-first-death-reason".into(), long("expired"));
        let d = DeadLetter::of(&BasicProperties::default().with_headers(h));
        assert_eq!(d.reason, "delivery_limit");
        assert_eq!(d.queue.as_deref(), Some("p.courier.deliveries"));
        assert_eq!(d.exchange.as_deref(), Some("p.courier.deliveries"));
        assert_eq!(d.routing_key.as_deref(), Some("deliver"));
        assert_eq!(
            DeadLetter::of(&BasicProperties::default()).reason,
            "unknown"
        );
    }
}
