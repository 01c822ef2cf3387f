//! Tenant routes: dead letters, the batches that ended `failed` (a non-retryable
//! answer, every attempt spent, or parked as unprocessable), and replaying them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use courier_core::errors::FieldErrors;
use courier_core::ids::WebhookId;
use courier_core::tenant::Scope;
use courier_store::DeadLetterEntry;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, TenantKey};
use crate::http::deliveries::{check_cursor, check_limit, check_span, DeliveryView};
use crate::replay;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay_all))
}

/// A failed batch.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    #[serde(flatten)]
    delivery: DeliveryView,
    /// When the batch failed.
    failed_at: DateTime<Utc>,
}

impl From<DeadLetterEntry> for DeadLetterView {
    fn from(d: DeadLetterEntry) -> Self {
        Self {
            failed_at: d.failed_at,
            delivery: DeliveryView::from(d.delivery),
        }
    }
}

/// A page of dead letters, the latest failure first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    data: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterQuery {
    /// Only this webhook's.
    webhook_id: Option<String>,
    /// 1 to 100, default 20.
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// Which dead letters to replay; all of the tenant's without a filter.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayFilter {
    /// Only this webhook's.
    webhook_id: Option<String>,
    /// Only batches that failed at or after this time (RFC 3339).
    since: Option<String>,
    /// Only batches that failed at or before this time (RFC 3339).
    until: Option<String>,
}

/// What a bulk replay did.
#[derive(Serialize, ToSchema)]
pub struct BulkReplayed {
    /// Batches replayed: each starts a new series now.
    replayed: usize,
    /// Dead letters left as they are: their webhook is gone or disabled.
    skipped: usize,
}

fn check_webhook(id: Option<&str>, fields: &mut FieldErrors) -> Option<WebhookId> {
    let id = id?;
    match WebhookId::parse(id) {
        Ok(w) => Some(w),
        Err(e) => {
            fields.add("webhookId", e.to_string());
            None
        }
    }
}

/// The tenant's dead letters, the latest failure first.
#[utoipa::path(
    get, operation_id = "listDeadLetters", path = "/v1/dead-letters", tag = "dead-letters",
    params(DeadLetterQuery),
    security(("api_key" = [])),
    responses((status = 200, body = DeadLetterPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    key: TenantKey,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let key = key.require(Scope::Read)?;
    let mut fields = FieldErrors::default();
    let limit = check_limit(q.limit, &mut fields);
    let cursor = check_cursor(q.cursor.as_deref(), &mut fields);
    let webhook = check_webhook(q.webhook_id.as_deref(), &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::bad_parameters(&fields));
    }
    let page = state
        .store
        .dead_letters_page(&key.tenant_id, webhook.as_ref(), cursor.as_ref(), limit)
        .await?;
    Ok(Json(DeadLetterPage {
        data: page.items.into_iter().map(DeadLetterView::from).collect(),
        next_cursor: page.next.map(|c| c.token()),
    }))
}

/// Replay the tenant's dead letters in bulk (at most 10,000 per call), each as a new
/// series now with its batchId.
#[utoipa::path(
    post, operation_id = "replayDeadLetters", path = "/v1/dead-letters/replay", tag = "dead-letters",
    request_body(content = ReplayFilter, description = "Optional: which dead letters"),
    security(("api_key" = [])),
    responses(
        (status = 202, body = BulkReplayed), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn replay_all(
    State(state): State<AppState>,
    key: TenantKey,
    filter: Option<ApiJson<ReplayFilter>>,
) -> Result<(StatusCode, Json<BulkReplayed>), ApiError> {
    let key = key.require(Scope::Manage)?;
    let filter = filter.map(|f| f.0).unwrap_or_default();
    let mut fields = FieldErrors::default();
    let webhook = check_webhook(filter.webhook_id.as_deref(), &mut fields);
    let span = check_span(
        filter.since.as_deref(),
        filter.until.as_deref(),
        &mut fields,
    );
    if !fields.is_empty() {
        return Err(ApiError::unprocessable("the filter is invalid", &fields));
    }
    let done = replay::replay_dead_letters(&state, &key.tenant_id, webhook.as_ref(), span).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BulkReplayed {
            replayed: done.replayed,
            skipped: done.skipped,
        }),
    ))
}
