//! The audit log: every change to tenants, keys and webhooks, newest first.

use axum::extract::State;
use axum::Json;
use courier_core::errors::FieldErrors;
use courier_core::ids::TenantId;
use courier_core::tenant::Scope;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, Caller};
use crate::manage::shown_audit_state;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// 1 to 100, default 50.
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Operator only: one tenant's entries.
    tenant_id: Option<String>,
}

/// One change. `actor` is `{"type":"operator"}` or `{"type":"apiKey","id":"key_..."}`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryView {
    id: String,
    at: chrono::DateTime<chrono::Utc>,
    actor: courier_core::audit::Actor,
    #[schema(example = "webhook.updated")]
    action: String,
    resource_type: String,
    resource_id: String,
    tenant_id: String,
    /// The resource before the change (never secrets, nor custom header values);
    /// absent for a creation.
    before: Option<serde_json::Value>,
    /// The resource after the change (never secrets, nor custom header values);
    /// absent for a deletion.
    after: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    data: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

fn is_stream_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    })
}

/// The audit log, newest first: a tenant key (scope `read`) sees its tenant's
/// changes; the operator sees every tenant's, or one's with `tenantId`.
#[utoipa::path(
    get, operation_id = "listAuditLog", path = "/v1/audit-log", tag = "audit",
    params(AuditQuery),
    security(("api_key" = []), ("admin_token" = [])),
    responses((status = 200, body = AuditPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let mut fields = FieldErrors::default();
    let limit = match q.limit {
        None => 50,
        Some(n @ 1..=100) => usize::try_from(n).unwrap_or(50),
        Some(_) => {
            fields.add("limit", "must be from 1 to 100");
            0
        }
    };
    if q.cursor.as_deref().is_some_and(|c| !is_stream_id(c)) {
        fields.add("cursor", "is not a cursor this API returned");
    }
    let tenant = match (&caller, q.tenant_id.as_deref()) {
        (Caller::Tenant(key), None) => {
            if !key.allows(Scope::Read) {
                return Err(ApiError::forbidden("this key lacks the 'read' scope"));
            }
            Some(key.tenant_id.clone())
        }
        (Caller::Tenant(_), Some(_)) => {
            fields.add("tenantId", "is for the operator only");
            None
        }
        (Caller::Operator, None) => None,
        (Caller::Operator, Some(t)) => match TenantId::parse(t) {
            Ok(t) => Some(t),
            Err(e) => {
                fields.add("tenantId", e.to_string());
                None
            }
        },
    };
    if !fields.is_empty() {
        return Err(ApiError::unprocessable("invalid query parameters", &fields));
    }
    let records = state
        .store
        .audit_log(tenant.as_ref(), q.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(AuditPage {
        data: records
            .into_iter()
            .map(|r| AuditEntryView {
                id: r.id,
                at: r.at,
                actor: r.entry.actor,
                action: r.entry.action,
                resource_type: r.entry.resource_type,
                resource_id: r.entry.resource_id,
                tenant_id: r.entry.tenant_id.to_string(),
                before: shown_audit_state(r.entry.before),
                after: shown_audit_state(r.entry.after),
            })
            .collect(),
        next_cursor,
    }))
}
