//! `POST /v1/events`: ingest.

use std::collections::{HashMap, HashSet};

use axum::extract::{FromRequest as _, Request, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use courier_core::errors::FieldErrors;
use courier_core::event::{json_depth, Event, IngestEvent, MAX_DATA_DEPTH, MAX_EVENTS_PER_REQUEST};
use courier_core::ids::EventId;
use courier_core::tenant::Scope;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{json_error, LimitedBody, TenantKey};
use crate::ingest::{publish_events, Publication};
use crate::limits::take_ingest_tokens;
use crate::metrics::RejectReason;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// One event as upstream sends it (`proto-schemas/ingest-event.schema.json`).
#[derive(ToSchema)]
#[schema(as = IngestEvent)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct IngestEventDoc {
    /// 1–128 characters of `[A-Za-z0-9_.:-]`, the dedupe key within the tenant;
    /// `evt_` + UUIDv7 when absent.
    #[schema(
        example = "evt_0192f1c2-7c1e-7d3a-9a40-1f2e3d4c5b6a",
        min_length = 1,
        max_length = 128
    )]
    id: Option<String>,
    /// Must equal the API key's tenant if given.
    tenant_id: Option<String>,
    #[schema(example = "Prospect")]
    object_type: String,
    #[schema(example = "EntityCreated")]
    event_type: String,
    #[schema(example = json!({"objectId": "prospect_123", "email": "jane@example.com"}))]
    data: serde_json::Map<String, Value>,
    /// Changed fields of an update event: at most 500 names, each 1 to 128
    /// characters.
    #[schema(max_items = 500)]
    properties_updated: Option<Vec<String>>,
    /// Defaults to the time of receipt.
    occurred_at: Option<chrono::DateTime<Utc>>,
}

/// Up to 1000 events in one request.
#[derive(ToSchema)]
#[schema(as = IngestBatch)]
#[allow(dead_code)]
struct IngestBatchDoc {
    #[schema(min_items = 1, max_items = 1000)]
    events: Vec<IngestEventDoc>,
}

/// The body of `POST /v1/events`: one event or `{"events": [...]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = IngestRequest)]
#[serde(untagged)]
enum IngestRequestDoc {
    One(IngestEventDoc),
    Many(IngestBatchDoc),
}

#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    /// The ids of the accepted events, in request order.
    event_ids: Vec<String>,
}

/// Splits the body into its events: `{"events": [...]}` or one event object. Each item
/// keeps the field path its problems are reported under.
fn split_items(bytes: &[u8]) -> Result<Vec<(String, &RawValue)>, ApiError> {
    // Checked before parsing, in one pass without recursion, so that no parser
    // recurses deeper than this; each event's `data` is held to MAX_DATA_DEPTH
    // with its other fields, where the problem is named per event.
    let deepest = 2 * MAX_DATA_DEPTH;
    if json_depth(bytes) > deepest {
        let mut fields = FieldErrors::default();
        fields.add(
            "body",
            format!("nests objects and arrays more than {deepest} levels deep; an event's data may nest {MAX_DATA_DEPTH}"),
        );
        return Err(ApiError::unprocessable("the body nests too deep", &fields));
    }
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

/// Ingest one event or up to 1000. Every event is checked against the catalog; the
/// answer is 202 only once the broker has confirmed every event. A tenant over its
/// ingest rate gets 429 with `Retry-After`, and nothing is accepted.
///
/// A 503 lists every event of the request in `details.events`, in request order,
/// as `{"id", "status"}`: `accepted` (confirmed: it will be delivered),
/// `notAccepted` (certainly not taken: not sent, or refused by the broker) or
/// `unknown` (sent, but the confirm timed out or the connection was lost: the
/// broker may have it). `details.acceptedEventIds` repeats the accepted ones.
/// Retry the events that are not accepted, with the same ids (the ids the
/// gateway generated included): an event the broker had after all is then a
/// duplicate, which is delivered at most once per webhook.
#[utoipa::path(
    post, operation_id = "ingestEvents", path = "/v1/events", tag = "events",
    request_body = IngestRequestDoc,
    security(("api_key" = [])),
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Invalid events, named in details", body = ErrorBody),
        (status = 429, description = "Over the tenant's ingest rate; nothing was accepted", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the request would fit the rate"))),
        (status = 503, description = "Not every event was accepted: details.events lists each event with its status (accepted, notAccepted, unknown), details.acceptedEventIds the accepted ones; retry the others with the same ids", body = ErrorBody),
    )
)]
async fn ingest(
    State(state): State<AppState>,
    key: Result<TenantKey, ApiError>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Every refusal is counted, with the number of events it refused when known.
    let refused = |e: ApiError, events: usize| {
        state
            .metrics
            .events_rejected(RejectReason::of(e.status()), events);
        e
    };
    let key = key.map_err(|e| refused(e, 1))?;
    let key = key.require(Scope::Publish).map_err(|e| refused(e, 1))?;
    // The body is read only once the caller is known.
    let LimitedBody(bytes) = LimitedBody::from_request(request, &state)
        .await
        .map_err(|e| refused(e, 1))?;
    let events = validate(&state, key, &bytes).map_err(|e| {
        let counted = split_items(&bytes).map_or(1, |items| items.len());
        refused(e, counted)
    })?;
    // The events hold everything needed from here on.
    drop(bytes);
    let count = events.len();
    // One token per event; a refused request publishes nothing.
    take_ingest_tokens(&state, &key.tenant_id, count)
        .await
        .map_err(|e| refused(e, count))?;
    let report = publish_events(
        &state.publisher,
        &state.topology,
        events,
        &state.traces,
        &state.metrics,
    )
    .await;
    let accepted: Vec<&EventId> = report.ids(Publication::Accepted).collect();
    state.metrics.events_accepted(accepted.len());
    let Some(failure) = &report.failure else {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "eventIds": accepted }))));
    };
    state
        .metrics
        .events_rejected(RejectReason::unavailable, count - accepted.len());
    let not_accepted = report.ids(Publication::NotAccepted).count();
    let unknown = report.ids(Publication::Unknown).count();
    let cause = if failure.refused() {
        "the broker refused some events"
    } else {
        "the broker is unavailable"
    };
    let events: Vec<Value> = report
        .events
        .iter()
        .map(|(id, status)| json!({ "id": id, "status": status }))
        .collect();
    Err(ApiError::unavailable(format!(
        "{cause}: of {count} event(s), {} accepted, {not_accepted} not accepted, {unknown} unknown (sent, not confirmed); retry those not accepted and unknown with the same ids, duplicates are delivered at most once per webhook",
        accepted.len()
    ))
    .with_details(json!({ "acceptedEventIds": accepted, "events": events })))
}
