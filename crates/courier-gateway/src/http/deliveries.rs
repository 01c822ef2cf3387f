//! Tenant routes: the delivery log (a webhook's batches, one batch with its payload
//! and attempts, a CSV export of attempts) and replaying a batch.

use std::collections::VecDeque;
use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use courier_core::delivery::{AttemptRecord, DeliveryStatus, TransportError};
use courier_core::errors::FieldErrors;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_core::tenant::Scope;
use courier_store::{BatchAttempts, DeliverySummary, IndexCursor, Span, Store};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{param, ApiPath, ApiQuery, TenantKey};
use crate::replay;
use crate::state::AppState;

/// Batches read from the log per chunk of an export.
const EXPORT_PAGE: usize = 100;

/// The columns of the CSV export, one row per attempt.
const CSV_HEADER: &str =
    "batchId,webhookId,series,attempt,startedAt,statusCode,error,latencyMs,outcome,status\n";

pub fn router() -> OpenApiRouter<AppState> {
    // `/v1/deliveries/export.csv` is a static path: axum matches it before
    // `/v1/deliveries/{batchId}`.
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(export))
        .routes(routes!(read))
        .routes(routes!(replay_one))
}

/// A batch as listings show it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    #[schema(example = "35dfc8b5-bf2e-41df-8706-758aaa42a8b1")]
    batch_id: String,
    webhook_id: String,
    /// `pending`, `retrying`, `delivered`, `failed` or `cancelled`.
    #[schema(example = "delivered")]
    status: String,
    /// 1, then one more for each replay.
    series: u32,
    event_ids: Vec<String>,
    event_count: usize,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Attempts recorded, over every series.
    attempts: usize,
    /// The HTTP status of the latest attempt, if it got an answer.
    last_status_code: Option<u16>,
    /// Why the batch failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<DeliverySummary> for DeliveryView {
    fn from(s: DeliverySummary) -> Self {
        Self {
            batch_id: s.batch_id.to_string(),
            webhook_id: s.webhook_id.to_string(),
            status: s.status.as_str().to_owned(),
            series: s.series,
            event_ids: s.event_ids,
            event_count: s.event_count,
            created_at: s.created_at,
            updated_at: s.updated_at,
            attempts: s.attempts,
            last_status_code: s.last_status_code,
            reason: s.reason,
        }
    }
}

/// A page of a webhook's batches, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    data: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// One attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    series: u32,
    attempt: u32,
    started_at: DateTime<Utc>,
    /// The HTTP status, when an answer came.
    status_code: Option<u16>,
    /// `connect`, `timeout` or `io` when none came; `refused` when the target
    /// policy refused the webhook's address and nothing was sent.
    error: Option<String>,
    latency_ms: u64,
    /// The first 4 KiB of the answer.
    response_body: Option<String>,
    /// What the attempt ended as, in words.
    outcome: String,
}

fn transport_error(e: TransportError) -> &'static str {
    match e {
        TransportError::Connect => "connect",
        TransportError::Timeout => "timeout",
        TransportError::Io => "io",
        TransportError::Refused => "refused",
    }
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            series: a.series,
            attempt: a.attempt,
            started_at: a.started_at,
            status_code: a.status_code,
            error: a.error.map(|e| transport_error(e).to_owned()),
            latency_ms: a.latency_ms,
            response_body: a.response_body,
            outcome: a.outcome,
        }
    }
}

/// A batch with its payload and every attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    batch_id: String,
    webhook_id: String,
    #[schema(example = "delivered")]
    status: String,
    series: u32,
    event_ids: Vec<String>,
    event_count: usize,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The batch envelope as sent: its bytes, keys in the order sent.
    #[schema(value_type = Object)]
    payload: Box<serde_json::value::RawValue>,
    /// Every attempt of every series, oldest first.
    attempts: Vec<AttemptView>,
}

/// A replay on its way.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayAccepted {
    batch_id: String,
    /// The new series; its attempts count from 1.
    series: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only batches in this status: `pending`, `retrying`, `delivered`, `failed`,
    /// `cancelled`.
    status: Option<String>,
    /// 1 to 100, default 20.
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ExportQuery {
    /// One webhook's attempts; all the tenant's webhooks without it.
    webhook_id: Option<String>,
    /// Batches created at or after this time (RFC 3339).
    since: Option<String>,
    /// Batches created at or before this time (RFC 3339).
    until: Option<String>,
}

/// `limit`: 1 to 100, default 20.
pub(crate) fn check_limit(limit: Option<i64>, fields: &mut FieldErrors) -> usize {
    match limit {
        None => 20,
        Some(n @ 1..=100) => usize::try_from(n).unwrap_or(20),
        Some(_) => {
            fields.add("limit", "must be from 1 to 100");
            20
        }
    }
}

pub(crate) fn check_cursor(cursor: Option<&str>, fields: &mut FieldErrors) -> Option<IndexCursor> {
    let token = cursor?;
    let parsed = IndexCursor::parse(token);
    if parsed.is_none() {
        fields.add("cursor", "is not a cursor this API returned");
    }
    parsed
}

/// A time bound in RFC 3339, as milliseconds since the epoch.
pub(crate) fn check_time(name: &str, value: Option<&str>, fields: &mut FieldErrors) -> Option<i64> {
    let value = value?;
    match DateTime::parse_from_rfc3339(value) {
        Ok(t) => Some(t.timestamp_millis()),
        Err(_) => {
            fields.add(name, "must be an RFC 3339 time, e.g. 2026-04-23T10:14:00Z");
            None
        }
    }
}

pub(crate) fn check_span(
    since: Option<&str>,
    until: Option<&str>,
    fields: &mut FieldErrors,
) -> Span {
    let span = Span {
        since: check_time("since", since, fields),
        until: check_time("until", until, fields),
    };
    if let (Some(s), Some(u)) = (span.since, span.until) {
        if s > u {
            fields.add("until", "must not be before since");
        }
    }
    span
}

/// The tenant's webhook `id`, given as the parameter `name`: 400 when it cannot be
/// a webhook id, 404 when it is not one of the tenant's.
async fn own_webhook(
    state: &AppState,
    tenant: &TenantId,
    name: &str,
    id: &str,
) -> Result<WebhookId, ApiError> {
    let webhook = param(name, id, WebhookId::parse)?;
    match state.store.webhook(&webhook).await? {
        Some(w) if &w.tenant_id == tenant => Ok(webhook),
        _ => Err(ApiError::not_found(format!("webhook {id} not found"))),
    }
}

/// The batch id of a path.
fn batch_id(batch: &str) -> Result<BatchId, ApiError> {
    param("batchId", batch, |b| {
        BatchId::parse(b).ok_or("a batch id is a UUID, as in the webhook-id header")
    })
}

/// A webhook's batches, newest first.
#[utoipa::path(
    get, operation_id = "listDeliveries", path = "/v1/webhooks/{id}/deliveries", tag = "deliveries",
    params(("id" = String, Path, description = "Webhook id"), ListQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DeliveryPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let key = key.require(Scope::Read)?;
    let mut fields = FieldErrors::default();
    let limit = check_limit(q.limit, &mut fields);
    let cursor = check_cursor(q.cursor.as_deref(), &mut fields);
    let status = q.status.as_deref().and_then(|s| {
        let parsed = DeliveryStatus::parse(s);
        if parsed.is_none() {
            fields.add(
                "status",
                "must be pending, retrying, delivered, failed or cancelled",
            );
        }
        parsed
    });
    if !fields.is_empty() {
        return Err(ApiError::bad_parameters(&fields));
    }
    let webhook = own_webhook(&state, &key.tenant_id, "id", &id).await?;
    let page = state
        .store
        .deliveries_page(&webhook, status, cursor.as_ref(), limit)
        .await?;
    Ok(Json(DeliveryPage {
        data: page.items.into_iter().map(DeliveryView::from).collect(),
        next_cursor: page.next.map(|c| c.token()),
    }))
}

/// One batch with its payload and every attempt.
#[utoipa::path(
    get, operation_id = "getDelivery", path = "/v1/deliveries/{batchId}", tag = "deliveries",
    params(("batchId" = String, Path, description = "The batch id (the webhook-id header)")),
    security(("api_key" = [])),
    responses((status = 200, body = DeliveryDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(batch): ApiPath<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let key = key.require(Scope::Read)?;
    let id = batch_id(&batch)?;
    let r = match state.store.delivery(&id).await? {
        Some(r) if r.tenant_id == key.tenant_id => r,
        _ => return Err(ApiError::not_found(format!("delivery {batch} not found"))),
    };
    Ok(Json(DeliveryDetail {
        batch_id: r.batch_id.to_string(),
        webhook_id: r.webhook_id.to_string(),
        status: r.status.as_str().to_owned(),
        series: r.series,
        event_count: r.event_ids.len(),
        event_ids: r.event_ids,
        created_at: r.created_at,
        updated_at: r.updated_at,
        reason: r.reason,
        payload: r.payload,
        attempts: r.attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

/// Deliver a batch again, now: a new series with the same batchId (and so the same
/// `webhook-id`), to the webhook's current configuration.
#[utoipa::path(
    post, operation_id = "replayDelivery", path = "/v1/deliveries/{batchId}/replay", tag = "deliveries",
    params(("batchId" = String, Path, description = "The batch id")),
    security(("api_key" = [])),
    responses(
        (status = 202, body = ReplayAccepted), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The webhook is gone or disabled", body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn replay_one(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(batch): ApiPath<String>,
) -> Result<(StatusCode, Json<ReplayAccepted>), ApiError> {
    let key = key.require(Scope::Manage)?;
    let id = batch_id(&batch)?;
    let job = replay::replay_batch(&state, &key.tenant_id, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayAccepted {
            batch_id: job.batch_id.to_string(),
            series: job.series,
        }),
    ))
}

/// Every attempt of the tenant's batches (or one webhook's) created in a time range,
/// as CSV, oldest batch first. The export is streamed as it is read.
#[utoipa::path(
    get, operation_id = "exportDeliveries", path = "/v1/deliveries/export.csv", tag = "deliveries",
    params(ExportQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One row per attempt: batchId, webhookId, series, attempt, startedAt, statusCode, error, latencyMs, outcome, status", content_type = "text/csv", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
async fn export(
    State(state): State<AppState>,
    key: TenantKey,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let key = key.require(Scope::Read)?;
    let mut fields = FieldErrors::default();
    let span = check_span(q.since.as_deref(), q.until.as_deref(), &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::bad_parameters(&fields));
    }
    let webhooks: VecDeque<WebhookId> = match q.webhook_id.as_deref() {
        Some(id) => VecDeque::from([own_webhook(&state, &key.tenant_id, "webhookId", id).await?]),
        None => state
            .store
            .tenant_webhooks(&key.tenant_id)
            .await?
            .ids()
            .cloned()
            .collect(),
    };
    let export = Export {
        store: state.store.clone(),
        tenant: key.tenant_id.clone(),
        webhooks,
        span,
        cursor: None,
        started: false,
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"deliveries.csv\"",
            ),
        ],
        Body::from_stream(export.into_stream()),
    )
        .into_response())
}

/// An export in progress: which webhooks are left and where in the current one's
/// index it stands.
struct Export {
    store: Store,
    tenant: TenantId,
    webhooks: VecDeque<WebhookId>,
    span: Span,
    cursor: Option<IndexCursor>,
    started: bool,
}

impl Export {
    /// The CSV in chunks of at most [`EXPORT_PAGE`] batches: the header first, then
    /// the rows. A failure mid-way ends the body with an error, so the client sees a
    /// broken transfer rather than a short file that looks complete.
    fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::unfold(Some(self), |export| async move {
            let mut export = export?;
            if !export.started {
                export.started = true;
                return Some((Ok(Bytes::from_static(CSV_HEADER.as_bytes())), Some(export)));
            }
            loop {
                let webhook = export.webhooks.front()?.clone();
                let page = match export
                    .store
                    .export_page(&webhook, export.span, export.cursor.as_ref(), EXPORT_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::error!(error = %e, "the delivery export stopped");
                        return Some((Err(std::io::Error::other("storage unavailable")), None));
                    }
                };
                export.cursor = page.next;
                if page.next.is_none() {
                    export.webhooks.pop_front();
                }
                let mut chunk = String::new();
                for batch in page.items.iter().filter(|b| b.tenant_id == export.tenant) {
                    rows(&mut chunk, batch);
                }
                if !chunk.is_empty() {
                    return Some((Ok(Bytes::from(chunk)), Some(export)));
                }
            }
        })
    }
}

/// Appends one CSV row per attempt of `batch`.
fn rows(out: &mut String, batch: &BatchAttempts) {
    let batch_id = batch.batch_id.to_string();
    for a in &batch.attempts {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{}",
            batch_id,
            batch.webhook_id,
            a.series,
            a.attempt,
            a.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            a.status_code.map(|c| c.to_string()).unwrap_or_default(),
            a.error.map(transport_error).unwrap_or_default(),
            a.latency_ms,
            csv_field(&a.outcome),
            batch.status.as_str(),
        );
    }
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("delivered"), "delivered");
        assert_eq!(
            csv_field("the endpoint answered 503; retrying in 1s"),
            "the endpoint answered 503; retrying in 1s"
        );
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }

    #[test]
    fn each_attempt_is_one_row() {
        let batch = BatchAttempts {
            batch_id: BatchId::generate(),
            tenant_id: TenantId::parse("acme").unwrap(),
            webhook_id: WebhookId::parse("wh_1").unwrap(),
            status: DeliveryStatus::Delivered,
            attempts: vec![
                AttemptRecord {
                    series: 1,
                    attempt: 1,
                    started_at: DateTime::from_timestamp_millis(1_776_939_300_000).unwrap(),
                    status_code: None,
                    error: Some(TransportError::Timeout),
                    latency_ms: 1000,
                    response_body: None,
                    outcome: "no answer, retrying".into(),
                },
                AttemptRecord {
                    series: 1,
                    attempt: 2,
                    started_at: DateTime::from_timestamp_millis(1_776_939_301_000).unwrap(),
                    status_code: Some(200),
                    error: None,
                    latency_ms: 5,
                    response_body: Some("ok".into()),
                    outcome: "delivered".into(),
                },
            ],
        };
        let mut out = String::new();
        rows(&mut out, &batch);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            format!(
                "{},wh_1,1,1,2026-04-23T10:15:00.000Z,,timeout,1000,\"no answer, retrying\",delivered",
                batch.batch_id
            )
        );
        assert!(lines[1].ends_with(",200,,5,delivered,delivered"));
        assert_eq!(CSV_HEADER.matches(',').count(), 9);
    }
}
