//! `POST /v1/events`: ingest.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use courier_core::errors::FieldErrors;
use courier_core::event::{Event, IngestEvent, MAX_EVENTS_PER_REQUEST};
use courier_core::tenant::Scope;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{json_error, LimitedBody, TenantKey};
use crate::ingest::publish_events;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", post(ingest))
}

/// Splits the body into its events: `{"events": [...]}` or one event object. Each item
/// keeps the field path its problems are reported under.
fn split_items(bytes: &[u8]) -> Result<Vec<(String, &RawValue)>, ApiError> {
    let top: HashMap<String, &RawValue> = serde_json::from_slice(bytes).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            let mut fields = FieldErrors::default();
            fields.add("body", "must be an event object or {\"events\": [...]}");
            ApiError::unprocessable("the body does not have the expected shape", &fields)
        } else {
            json_error(&e, "body")
        }
    })?;
    let items = match top.get("events") {
        Some(list) if top.len() == 1 => {
            let list: Vec<&RawValue> =
                serde_json::from_str(list.get()).map_err(|e| json_error(&e, "events"))?;
            list.into_iter()
                .enumerate()
                .map(|(i, raw)| (format!("events[{i}]"), raw))
                .collect()
        }
        _ => {
            let whole: &RawValue =
                serde_json::from_slice(bytes).map_err(|e| json_error(&e, "body"))?;
            vec![(String::new(), whole)]
        }
    };
    if items.is_empty() || items.len() > MAX_EVENTS_PER_REQUEST {
        let mut fields = FieldErrors::default();
        fields.add(
            "events",
            format!("must hold 1 to {MAX_EVENTS_PER_REQUEST} events"),
        );
        return Err(ApiError::unprocessable("wrong number of events", &fields));
    }
    Ok(items)
}

/// Validates every event, reporting every problem at once.
fn validate(
    state: &AppState,
    key: &courier_core::tenant::ApiKeyRecord,
    bytes: &[u8],
) -> Result<Vec<Event>, ApiError> {
    let items = split_items(bytes)?;
    let now = Utc::now();
    let mut fields = FieldErrors::default();
    let mut events = Vec::with_capacity(items.len());
    let mut seen = HashSet::with_capacity(items.len());
    for (path, raw) in items {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}.")
        };
        match serde_json::from_str::<IngestEvent>(raw.get()) {
            Ok(item) => {
                if let Some(event) =
                    item.validate(&prefix, &key.tenant_id, &state.catalog, now, &mut fields)
                {
                    if !seen.insert(event.id.clone()) {
                        fields.add(
                            format!("{prefix}id"),
                            format!("{} appears twice in this request", event.id),
                        );
                    }
                    events.push(event);
                }
            }
            Err(e) => fields.add(
                if path.is_empty() { "body".into() } else { path },
                e.to_string(),
            ),
        }
    }
    if fields.is_empty() {
        return Ok(events);
    }
    let mut details = json!(fields);
    if fields.fields().any(|f| f.ends_with("eventType")) {
        let valid: Vec<&str> = state.catalog.keys().map(|k| k.as_str()).collect();
        details["validEventTypes"] = json!(valid);
    }
    Err(ApiError::unprocessable(
        format!(
            "{} problem(s) in the events; nothing was accepted",
            fields.len()
        ),
        &fields,
    )
    .with_details(details))
}

async fn ingest(
    State(state): State<AppState>,
    key: TenantKey,
    LimitedBody(bytes): LimitedBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = key.require(Scope::Publish)?;
    let events = validate(&state, key, &bytes)?;
    let report = publish_events(&state.publisher, &state.topology, &events).await;
    match report.failure {
        None => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "eventIds": report.accepted })),
        )),
        Some(e) => {
            let message = if e.refused() {
                "the broker refused some events; the ones not in acceptedEventIds were not accepted, retry them with the same ids"
            } else {
                "the broker is unavailable; the events not in acceptedEventIds were not accepted, retry them with the same ids"
            };
            Err(ApiError::unavailable(message)
                .with_details(json!({ "acceptedEventIds": report.accepted })))
        }
    }
}
