//! Identifiers that cross the wire: tenants, events, webhooks, batches, API keys.
//!
//! Each is a newtype with a `parse` constructor, so a value that exists is valid.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an event id is 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'")]
    EventId,
    #[error("a tenant id is 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")]
    TenantId,
    #[error("a webhook id is 'wh_' followed by 1 to 64 letters or digits")]
    WebhookId,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts the string only if it has the documented form.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err($err)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_event_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn is_tenant_id(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=64).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

fn is_webhook_id(s: &str) -> bool {
    s.strip_prefix("wh_").is_some_and(|rest| {
        (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

string_id!(
    /// An event id, unique per tenant: the dedupe key of the event. Client-supplied or
    /// generated as `evt_` + UUIDv7.
    EventId,
    is_event_id,
    IdError::EventId
);
string_id!(
    /// A tenant's id. It appears in AMQP routing keys, so it never contains a dot.
    TenantId,
    is_tenant_id,
    IdError::TenantId
);
string_id!(
    /// A webhook's id: `wh_` + the simple form of a UUIDv7.
    WebhookId,
    is_webhook_id,
    IdError::WebhookId
);

impl EventId {
    pub fn generate() -> Self {
        Self(format!("evt_{}", Uuid::now_v7()))
    }
}

impl TenantId {
    pub fn generate() -> Self {
        Self(format!("ten_{}", Uuid::now_v7().simple()))
    }
}

impl WebhookId {
    pub fn generate() -> Self {
        Self(format!("wh_{}", Uuid::now_v7().simple()))
    }
}

/// Namespace of the UUIDv5 batch ids of single-event deliveries.
const BATCH_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a57_9d0e_4b8a_a1f3_5c7e_2d94_b60e);

/// A batch's id: the `webhook-id` header, the same on every retry and replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(Uuid);

impl BatchId {
    /// The deterministic id of a delivery that carries one event alone: the same event
    /// for the same webhook always gets the same id, so duplicates share a `webhook-id`.
    pub fn for_single(webhook: &WebhookId, event: &EventId) -> Self {
        let name = format!("{webhook}\n{event}");
        Self(Uuid::new_v5(&BATCH_NAMESPACE, name.as_bytes()))
    }

    /// The id that earlier versions gave a webhook's `seq`-th accumulated batch, when
    /// a per-webhook counter numbered them. Only for reading the batches such a
    /// version left pending: a counter can repeat (a Redis failover rolls it back), so
    /// new batches take a fresh id ([`BatchId::generate`]) at their cut.
    pub fn counted(webhook: &WebhookId, seq: u64) -> Self {
        let name = format!("{webhook}\nbatch:{seq}");
        Self(Uuid::new_v5(&BATCH_NAMESPACE, name.as_bytes()))
    }

    /// A fresh time-ordered id (UUIDv7: the time in milliseconds, then random bits).
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as 32 hex digits, the form the batch accumulator's scripts take.
    pub fn simple(&self) -> String {
        self.0.simple().to_string()
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_accept_the_documented_alphabet_only() {
        assert!(EventId::parse("evt_0192f1c2-7c1e.a:b").is_ok());
        assert!(EventId::parse(&"a".repeat(128)).is_ok());
        assert!(EventId::parse(&"a".repeat(129)).is_err());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("has space").is_err());
        assert!(EventId::parse("slash/no").is_err());
        assert!(EventId::generate().as_str().starts_with("evt_"));
    }

    #[test]
    fn tenant_ids_never_contain_dots_or_capitals() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("acme-2_b").is_ok());
        assert!(TenantId::parse("acme.eu").is_err());
        assert!(TenantId::parse("Acme").is_err());
        assert!(TenantId::parse("-acme").is_err());
        assert!(TenantId::parse(&"a".repeat(65)).is_err());
        assert!(TenantId::parse(TenantId::generate().as_str()).is_ok());
    }

    #[test]
    fn webhook_ids_have_the_wh_prefix() {
        assert!(WebhookId::parse("wh_123").is_ok());
        assert!(WebhookId::parse("wh_").is_err());
        assert!(WebhookId::parse("123").is_err());
        assert!(WebhookId::parse(WebhookId::generate().as_str()).is_ok());
    }

    #[test]
    fn single_event_batch_ids_are_deterministic_per_webhook_and_event() {
        let wh = WebhookId::parse("wh_1").unwrap();
        let other = WebhookId::parse("wh_2").unwrap();
        let evt = EventId::parse("evt_a").unwrap();
        let a = BatchId::for_single(&wh, &evt);
        assert_eq!(a, BatchId::for_single(&wh, &evt));
        assert_ne!(a, BatchId::for_single(&other, &evt));
        assert_eq!(a.as_uuid().get_version_num(), 5);
        assert_eq!(BatchId::parse(&a.to_string()), Some(a));
        // What earlier versions derived from their counter, read back unchanged.
        assert_eq!(
            BatchId::counted(&wh, 7).to_string(),
            "2f061f13-acb0-55f3-a53d-c7e3203788b1"
        );
        assert_ne!(BatchId::counted(&wh, 7), BatchId::counted(&wh, 8));
        assert_ne!(BatchId::counted(&wh, 7), BatchId::counted(&other, 7));
    }

    #[test]
    fn generated_batch_ids_are_time_ordered_and_read_back_from_their_simple_form() {
        let a = BatchId::generate();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.simple().len(), 32);
        assert_eq!(BatchId::parse(&a.simple()), Some(a));
        assert_ne!(a, BatchId::generate());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        assert!(serde_json::from_str::<TenantId>("\"a.b\"").is_err());
        assert!(serde_json::from_str::<TenantId>("\"ab\"").is_ok());
    }
}
