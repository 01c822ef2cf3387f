//! Events: what upstream sends (HTTP body items and AMQP messages), the validated
//! [`Event`] the pipeline works with, and the event as a subscriber sees it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::catalog::{is_type_name, Catalog, EventKey};
use crate::errors::FieldErrors;
use crate::ids::{EventId, TenantId};

/// Most events one ingest request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// Most field names one event's `propertiesUpdated` may list.
pub const MAX_PROPERTIES_UPDATED: usize = 500;

/// Deepest nesting of objects and arrays an event's `data` may have (the `data`
/// object itself is level 1). Receivers' parsers have limits of their own, and deep
/// documents cost every hop of the pipeline.
pub const MAX_DATA_DEPTH: usize = 32;

/// The deepest nesting of objects and arrays in a JSON text, counted with a single
/// pass over its bytes and no recursion (so it is safe on any input, valid or not).
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// One event as upstream sends it, before validation. Fields are kept loose here so
/// that every problem can be reported per field rather than as the first serde error.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestEvent {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    pub object_type: String,
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub properties_updated: Option<Vec<String>>,
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The AMQP message body on `courier.events` (`proto-schemas/event-message.schema.json`).
/// The gateway always fills `id` and `occurredAt`; direct publishers should.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub tenant_id: String,
    pub object_type: String,
    pub event_type: String,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub properties_updated: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
}

/// A validated event of one tenant.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub tenant: TenantId,
    pub key: EventKey,
    pub data: Box<RawValue>,
    pub properties_updated: Option<Vec<String>>,
    pub occurred_at: DateTime<Utc>,
}

/// The event inside a batch envelope, as a subscriber receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvelopeEvent {
    pub event_id: EventId,
    pub event_type: String,
    pub object_type: String,
    pub data: Box<RawValue>,
    pub properties_updated: Option<Vec<String>>,
    pub occurred_at: DateTime<Utc>,
}

fn is_json_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// Checks the fields shared by both entry paths, recording problems under `prefix`.
#[allow(clippy::too_many_arguments)]
fn check_common(
    errors: &mut FieldErrors,
    prefix: &str,
    catalog: &Catalog,
    object_type: &str,
    event_type: &str,
    data: &RawValue,
    properties_updated: Option<&Vec<String>>,
) -> Option<EventKey> {
    let mut names_ok = true;
    if !is_type_name(object_type) {
        errors.add(
            format!("{prefix}objectType"),
            "must be a letter followed by up to 63 letters or digits",
        );
        names_ok = false;
    }
    if !is_type_name(event_type) {
        errors.add(
            format!("{prefix}eventType"),
            "must be a letter followed by up to 63 letters or digits",
        );
        names_ok = false;
    }
    if !is_json_object(data) {
        errors.add(format!("{prefix}data"), "must be a JSON object");
    } else if json_depth(data.get().as_bytes()) > MAX_DATA_DEPTH {
        errors.add(
            format!("{prefix}data"),
            format!("nests objects and arrays more than {MAX_DATA_DEPTH} levels deep"),
        );
    }
    if let Some(props) = properties_updated {
        if props.len() > MAX_PROPERTIES_UPDATED {
            errors.add(
                format!("{prefix}propertiesUpdated"),
                format!(
                    "lists {} field names; at most {MAX_PROPERTIES_UPDATED} are allowed",
                    props.len()
                ),
            );
        } else if props.iter().any(|p| p.is_empty() || p.len() > 128) {
            errors.add(
                format!("{prefix}propertiesUpdated"),
                "field names are 1 to 128 characters",
            );
        }
    }
    if !names_ok {
        return None;
    }
    match EventKey::new(object_type, event_type) {
        Ok(key) if catalog.contains(&key) => Some(key),
        _ => {
            errors.add(
                format!("{prefix}eventType"),
                format!("{object_type}.{event_type} is not an event type of the catalog"),
            );
            None
        }
    }
}

impl IngestEvent {
    /// Validates one HTTP event for `tenant`, reporting problems under `prefix`
    /// (e.g. `events[3].`). Without an id one is generated; without `occurredAt`
    /// the receipt time `now` is used.
    pub fn validate(
        self,
        prefix: &str,
        tenant: &TenantId,
        catalog: &Catalog,
        now: DateTime<Utc>,
        errors: &mut FieldErrors,
    ) -> Option<Event> {
        let before = errors.len();
        let id = match self.id.as_deref().map(EventId::parse) {
            None => Some(EventId::generate()),
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                errors.add(format!("{prefix}id"), e.to_string());
                None
            }
        };
        if let Some(given) = &self.tenant_id {
            if given != tenant.as_str() {
                errors.add(
                    format!("{prefix}tenantId"),
                    "differs from the tenant of the API key; omit it over HTTP",
                );
            }
        }
        let key = check_common(
            errors,
            prefix,
            catalog,
            &self.object_type,
            &self.event_type,
            &self.data,
            self.properties_updated.as_ref(),
        );
        match (id, key) {
            (Some(id), Some(key)) if errors.len() == before => Some(Event {
                id,
                tenant: tenant.clone(),
                key,
                data: self.data,
                properties_updated: self.properties_updated,
                occurred_at: self.occurred_at.unwrap_or(now),
            }),
            _ => None,
        }
    }
}

/// Why an AMQP event message cannot be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("the body is not an event message: {0}")]
    Unparseable(String),
    #[error("the event is invalid: {0}")]
    Invalid(FieldErrors),
}

impl Event {
    /// Reads an AMQP message body. `fallback_id` (the AMQP `message_id`) is used when
    /// the body has no id; without either a fresh id is generated, which defeats dedupe.
    pub fn from_message(
        body: &[u8],
        fallback_id: Option<&str>,
        catalog: &Catalog,
        now: DateTime<Utc>,
    ) -> Result<Self, InvalidEvent> {
        let msg: EventMessage =
            serde_json::from_slice(body).map_err(|e| InvalidEvent::Unparseable(e.to_string()))?;
        let mut errors = FieldErrors::default();
        let id = match msg.id.as_deref().or(fallback_id).map(EventId::parse) {
            None => Some(EventId::generate()),
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                errors.add("id", e.to_string());
                None
            }
        };
        let tenant = TenantId::parse(&msg.tenant_id)
            .map_err(|e| errors.add("tenantId", e.to_string()))
            .ok();
        let key = check_common(
            &mut errors,
            "",
            catalog,
            &msg.object_type,
            &msg.event_type,
            &msg.data,
            msg.properties_updated.as_ref(),
        );
        match (id, tenant, key) {
            (Some(id), Some(tenant), Some(key)) if errors.is_empty() => Ok(Self {
                id,
                tenant,
                key,
                data: msg.data,
                properties_updated: msg.properties_updated,
                occurred_at: msg.occurred_at.unwrap_or(now),
            }),
            _ => Err(InvalidEvent::Invalid(errors)),
        }
    }

    /// The message the gateway publishes for this event.
    /// The body of its message on `courier.events` (an [`EventMessage`]), written
    /// straight from the event without copying it first.
    pub fn message_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct View<'a> {
            id: &'a str,
            tenant_id: &'a str,
            object_type: &'a str,
            event_type: &'a str,
            data: &'a RawValue,
            properties_updated: Option<&'a [String]>,
            occurred_at: DateTime<Utc>,
        }
        let view = View {
            id: self.id.as_str(),
            tenant_id: self.tenant.as_str(),
            object_type: self.key.object_type(),
            event_type: self.key.event_type(),
            data: &self.data,
            properties_updated: self.properties_updated.as_deref(),
            occurred_at: self.occurred_at,
        };
        // Strings, a timestamp and already-valid raw JSON: it always serializes.
        serde_json::to_vec(&view).unwrap_or_default()
    }

    /// The AMQP routing key: `{tenantId}.{objectType}.{eventType}`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.tenant, self.key)
    }

    pub fn to_envelope_event(&self) -> EnvelopeEvent {
        EnvelopeEvent {
            event_id: self.id.clone(),
            event_type: self.key.event_type().to_owned(),
            object_type: self.key.object_type().to_owned(),
            data: self.data.clone(),
            properties_updated: self.properties_updated.clone(),
            occurred_at: self.occurred_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    fn ingest(json: &str) -> Result<Event, FieldErrors> {
        let ev: IngestEvent = serde_json::from_str(json).unwrap();
        let mut errors = FieldErrors::default();
        ev.validate("", &tenant(), &Catalog::builtin(), Utc::now(), &mut errors)
            .ok_or(errors)
    }

    #[test]
    fn a_valid_event_without_id_gets_one_and_the_receipt_time() {
        let e = ingest(r#"{"objectType":"Prospect","eventType":"EntityCreated","data":{"a":1}}"#)
            .unwrap();
        assert!(e.id.as_str().starts_with("evt_"));
        assert_eq!(e.routing_key(), "acme.Prospect.EntityCreated");
        assert_eq!(e.data.get(), r#"{"a":1}"#);
    }

    #[test]
    fn unknown_keys_bad_ids_and_non_object_data_are_reported_per_field() {
        let errs = ingest(
            r#"{"id":"bad id","objectType":"Prospect","eventType":"EntityExploded","data":[1]}"#,
        )
        .unwrap_err();
        let fields: Vec<_> = errs.fields().collect();
        assert_eq!(fields, ["data", "eventType", "id"]);
    }

    fn nested(depth: usize) -> String {
        // `{"a":` depth-1 times, then an array at the bottom: `depth` levels in all.
        format!(
            "{}[1]{}",
            r#"{"a":"#.repeat(depth - 1),
            "}".repeat(depth - 1)
        )
    }

    #[test]
    fn json_depth_counts_objects_and_arrays_but_not_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"{[{[\"{"}"#), 1);
        assert_eq!(json_depth(nested(40).as_bytes()), 40);
        assert_eq!(
            json_depth(b"]]]]{"),
            1,
            "garbage neither panics nor underflows"
        );
    }

    #[test]
    fn data_nested_deeper_than_the_limit_is_refused() {
        let event = |data: &str| {
            format!(r#"{{"objectType":"Prospect","eventType":"EntityCreated","data":{data}}}"#)
        };
        assert!(ingest(&event(&nested(MAX_DATA_DEPTH))).is_ok());
        let errs = ingest(&event(&nested(MAX_DATA_DEPTH + 1))).unwrap_err();
        assert_eq!(
            errs.get("data"),
            Some("nests objects and arrays more than 32 levels deep")
        );
    }

    #[test]
    fn properties_updated_lists_at_most_its_limit_over_http_and_amqp() {
        let event = |n: usize| {
            let props: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            serde_json::json!({
                "tenantId": "acme", "objectType": "Prospect", "eventType": "EntityUpdated",
                "data": {}, "propertiesUpdated": props
            })
        };
        let at = event(MAX_PROPERTIES_UPDATED);
        assert!(ingest(&at.to_string()).is_ok());
        let over = event(MAX_PROPERTIES_UPDATED + 1);
        let errs = ingest(&over.to_string()).unwrap_err();
        assert_eq!(
            errs.get("propertiesUpdated"),
            Some("lists 501 field names; at most 500 are allowed")
        );
        let body = serde_json::to_vec(&event(100_000)).unwrap();
        match Event::from_message(&body, None, &Catalog::builtin(), Utc::now()) {
            Err(InvalidEvent::Invalid(errs)) => assert_eq!(
                errs.get("propertiesUpdated"),
                Some("lists 100000 field names; at most 500 are allowed")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_foreign_tenant_id_over_http_is_refused() {
        let errs = ingest(
            r#"{"tenantId":"other","objectType":"Prospect","eventType":"EntityCreated","data":{}}"#,
        )
        .unwrap_err();
        assert!(errs.fields().any(|f| f == "tenantId"));
    }

    #[test]
    fn messages_round_trip_and_keep_ids() {
        let e = ingest(
            r#"{"id":"e1","objectType":"Account","eventType":"EntityUpdated","data":{"x":"y"},"propertiesUpdated":["x"],"occurredAt":"2026-04-23T10:14:10Z"}"#,
        )
        .unwrap();
        let body = e.message_body();
        let back = Event::from_message(&body, None, &Catalog::builtin(), Utc::now()).unwrap();
        assert_eq!(back.id, e.id);
        assert_eq!(back.tenant, e.tenant);
        assert_eq!(back.key, e.key);
        assert_eq!(back.occurred_at, e.occurred_at);
        assert_eq!(back.properties_updated, Some(vec!["x".to_owned()]));
    }

    #[test]
    fn messages_without_an_id_fall_back_to_the_message_id() {
        let body =
            br#"{"tenantId":"acme","objectType":"Lead","eventType":"EntityDeleted","data":{}}"#;
        let e = Event::from_message(body, Some("m-1"), &Catalog::builtin(), Utc::now()).unwrap();
        assert_eq!(e.id.as_str(), "m-1");
    }

    #[test]
    fn garbage_messages_are_unparseable() {
        let r = Event::from_message(b"not json", None, &Catalog::builtin(), Utc::now());
        assert!(matches!(r, Err(InvalidEvent::Unparseable(_))));
        let r = Event::from_message(
            br#"{"tenantId":"a.b","objectType":"Lead","eventType":"EntityDeleted","data":{}}"#,
            None,
            &Catalog::builtin(),
            Utc::now(),
        );
        assert!(matches!(r, Err(InvalidEvent::Invalid(_))));
    }
}
