//! Operator routes: the dead-letter queue `courier.dead`, which keeps every message
//! that could not be processed (unparseable, or redelivered past the delivery
//! limit): list it, send messages back, or discard them.

use std::collections::HashSet;

use axum::extract::State;
use axum::Json;
use courier_core::errors::FieldErrors;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dead_queue::{self, ParkedMessage, QueueError, Selection};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Admin, ApiJson, ApiQuery};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(requeue))
        .routes(routes!(discard))
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Store(e) => e.into(),
            QueueError::Busy => ApiError::conflict(e.to_string()),
            other => ApiError::dependency("the broker", &other),
        }
    }
}

/// A parked message.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParkedView {
    /// What requeue and discard select it by: its message id, or `sha256:` and the
    /// start of its body's digest when it has none.
    id: String,
    message_id: Option<String>,
    /// Why it was parked: the worker's reason, or RabbitMQ's (`delivery_limit`).
    #[schema(example = "delivery_limit")]
    reason: String,
    /// The exchange it was published to before.
    exchange: Option<String>,
    /// The routing key it was published with before.
    routing_key: Option<String>,
    /// The queue RabbitMQ parked it from, if it did.
    queue: Option<String>,
    /// Whether the broker handed it out before without its being settled (an
    /// operation that stopped half-way); reading the queue never does.
    redelivered: bool,
    /// The body: JSON when it parses, else a string.
    body: Value,
}

impl From<ParkedMessage> for ParkedView {
    fn from(m: ParkedMessage) -> Self {
        Self {
            id: m.id,
            message_id: m.message_id,
            reason: m.dead.reason,
            exchange: m.dead.exchange,
            routing_key: m.dead.routing_key,
            queue: m.dead.queue,
            redelivered: m.redelivered,
            body: m.body,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ParkedList {
    /// From the head of the queue; the messages stay in it, in the same order,
    /// and are not counted as redelivered.
    data: Vec<ParkedView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// 1 to 100, default 20.
    limit: Option<i64>,
}

/// Which messages: `ids` (as listed) or `all: true`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectionBody {
    ids: Option<Vec<String>>,
    all: Option<bool>,
}

impl SelectionBody {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.ids, self.all) {
            (Some(ids), None | Some(false)) if !ids.is_empty() => {
                Ok(Selection::Ids(ids.into_iter().collect::<HashSet<_>>()))
            }
            (None, Some(true)) => Ok(Selection::All),
            _ => {
                let mut fields = FieldErrors::default();
                fields.add("ids", "give a non-empty list of ids, or \"all\": true");
                Err(ApiError::unprocessable("nothing is selected", &fields))
            }
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RequeuedView {
    /// Messages sent back: events to `courier.events`, delivery jobs as a new series
    /// of their batch.
    requeued: usize,
    /// Selected but left in the queue: nowhere known to send them, or (delivery
    /// jobs) their webhook is gone or disabled.
    skipped: usize,
}

#[derive(Serialize, ToSchema)]
pub struct DiscardedView {
    discarded: usize,
}

/// List the dead-letter queue's first messages without removing them.
#[utoipa::path(
    get, operation_id = "listDeadLetterQueue", path = "/v1/admin/dead-letter-queue", tag = "admin",
    params(QueueQuery),
    security(("admin_token" = [])),
    responses((status = 200, body = ParkedList), (status = 401, body = ErrorBody), (status = 409, description = "Another operation on the queue is running", body = ErrorBody), (status = 503, body = ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<QueueQuery>,
) -> Result<Json<ParkedList>, ApiError> {
    let mut fields = FieldErrors::default();
    let limit = crate::http::deliveries::check_limit(q.limit, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::bad_parameters(&fields));
    }
    let messages = dead_queue::list(&state, limit).await?;
    Ok(Json(ParkedList {
        data: messages.into_iter().map(ParkedView::from).collect(),
    }))
}

/// Send messages of the dead-letter queue back where they came from.
#[utoipa::path(
    post, operation_id = "requeueDeadLetterQueue", path = "/v1/admin/dead-letter-queue/requeue", tag = "admin",
    request_body = SelectionBody,
    security(("admin_token" = [])),
    responses((status = 200, body = RequeuedView), (status = 401, body = ErrorBody), (status = 409, description = "Another operation on the queue is running", body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody))
)]
async fn requeue(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<SelectionBody>,
) -> Result<Json<RequeuedView>, ApiError> {
    let done = dead_queue::requeue(&state, body.selection()?).await?;
    Ok(Json(RequeuedView {
        requeued: done.requeued,
        skipped: done.skipped,
    }))
}

/// Remove messages of the dead-letter queue for good.
#[utoipa::path(
    post, operation_id = "discardDeadLetterQueue", path = "/v1/admin/dead-letter-queue/discard", tag = "admin",
    request_body = SelectionBody,
    security(("admin_token" = [])),
    responses((status = 200, body = DiscardedView), (status = 401, body = ErrorBody), (status = 409, description = "Another operation on the queue is running", body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody))
)]
async fn discard(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<SelectionBody>,
) -> Result<Json<DiscardedView>, ApiError> {
    let discarded = dead_queue::discard(&state, body.selection()?).await?;
    Ok(Json(DiscardedView { discarded }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> SelectionBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_selection_is_some_ids_or_everything_and_never_nothing() {
        assert!(matches!(
            body(serde_json::json!({"ids": ["a", "b"]})).selection(),
            Ok(Selection::Ids(ids)) if ids.len() == 2
        ));
        assert!(matches!(
            body(serde_json::json!({"all": true})).selection(),
            Ok(Selection::All)
        ));
        for nothing in [
            serde_json::json!({}),
            serde_json::json!({"ids": []}),
            serde_json::json!({"all": false}),
            serde_json::json!({"ids": ["a"], "all": true}),
        ] {
            let err = body(nothing.clone()).selection().unwrap_err();
            assert_eq!(err.status().as_u16(), 422, "{nothing}");
        }
    }
}
