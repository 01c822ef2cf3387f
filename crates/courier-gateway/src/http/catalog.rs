//! The event catalog: the keys events may have, with descriptions and examples.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use courier_core::catalog::EventKey;
use courier_core::envelope::BatchEnvelope;
use courier_core::event::EnvelopeEvent;
use courier_core::ids::{BatchId, EventId};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{param, ApiPath};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(example))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeView {
    #[schema(example = "Prospect.EntityCreated")]
    key: String,
    description: String,
    /// An example of the event's `data`, keys in the catalog's order.
    #[schema(value_type = Object)]
    example: courier_core::catalog::Example,
    #[serde(skip_serializing_if = "Option::is_none")]
    example_properties_updated: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    data: Vec<EventTypeView>,
}

/// List the catalog's event types.
#[utoipa::path(get, operation_id = "listEventTypes", path = "/v1/event-types", tag = "event-types", responses((status = 200, body = EventTypeList)))]
async fn list(State(state): State<AppState>) -> Json<EventTypeList> {
    Json(EventTypeList {
        data: state
            .catalog
            .entries()
            .map(|e| EventTypeView {
                key: e.key.clone(),
                description: e.description.clone(),
                example: e.example.clone(),
                example_properties_updated: e.example_properties_updated.clone(),
            })
            .collect(),
    })
}

/// A batch envelope exactly as a subscriber would receive it for one event of `key`
/// (see `proto-schemas/batch-envelope.schema.json`): the body's bytes, keys in the
/// order sent.
#[utoipa::path(
    get, operation_id = "getEventTypeExample", path = "/v1/event-types/{key}/example", tag = "event-types",
    params(("key" = String, Path, description = "Event key, e.g. Prospect.EntityCreated")),
    responses(
        (status = 200, description = "A batch envelope", body = Object),
        (status = 400, description = "Not an event key", body = ErrorBody),
        (status = 404, description = "Not a key of the catalog", body = ErrorBody),
    )
)]
async fn example(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String>,
) -> Result<Response, ApiError> {
    let event_key = param("key", &key, EventKey::parse)?;
    let entry = state
        .catalog
        .get(&event_key)
        .ok_or_else(|| ApiError::not_found(format!("{key} is not an event type of the catalog")))?;
    let now = Utc::now();
    let event = EnvelopeEvent {
        event_id: EventId::generate(),
        event_type: event_key.event_type().to_owned(),
        object_type: event_key.object_type().to_owned(),
        data: entry.example.raw().to_owned(),
        properties_updated: entry.example_properties_updated.clone(),
        occurred_at: now,
    };
    let events = [event];
    let body = BatchEnvelope::new(BatchId::generate(), now, &events).to_body();
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
