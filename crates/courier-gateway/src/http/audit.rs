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

/// A position in the audit log: the id (`{ms}-{seq}`, two 64-bit numbers) of the
/// last entry of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    ms: u64,
    seq: u64,
}

impl Cursor {
    fn parse(s: &str) -> Result<Self, &'static str> {
        const NOT_OURS: &str = "is not a cursor this API returned";
        let (ms, seq) = s.split_once('-').ok_or(NOT_OURS)?;
        let number = |n: &str| {
            if n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()) {
                return Err(NOT_OURS);
            }
            n.parse::<u64>().map_err(|_| NOT_OURS)
        };
        Ok(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }

    /// Whether no entry can come before it.
    fn is_first(self) -> bool {
        self == Self { ms: 0, seq: 0 }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The audit log, newest first: a tenant key (scope `read`) sees its tenant's
/// changes; the operator sees every tenant's, or one's with `tenantId`.
#[utoipa::path(
    get, operation_id = "listAuditLog", path = "/v1/audit-log", tag = "audit",
    params(AuditQuery),
    security(("api_key" = []), ("admin_token" = [])),
    responses((status = 200, body = AuditPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody))
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
    let cursor = match q.cursor.as_deref().map(Cursor::parse) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            fields.add("cursor", e);
            None
        }
    };
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
        return Err(ApiError::bad_parameters(&fields));
    }
    if cursor.is_some_and(Cursor::is_first) {
        // Nothing comes before the log's first possible entry.
        return Ok(Json(AuditPage {
            data: Vec::new(),
            next_cursor: None,
        }));
    }
    let cursor = cursor.map(|c| c.to_string());
    let records = state
        .store
        .audit_log(tenant.as_ref(), cursor.as_deref(), limit)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_two_64_bit_numbers() {
        assert_eq!(
            Cursor::parse("1714000000000-3"),
            Ok(Cursor {
                ms: 1_714_000_000_000,
                seq: 3
            })
        );
        assert!(Cursor::parse("0-0").is_ok_and(Cursor::is_first));
        assert!(!Cursor::parse("0-1").is_ok_and(Cursor::is_first));
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(Cursor::parse(&max).map(|c| c.to_string()), Ok(max));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "nope",
            "+1-0",
            "1-+0",
            "1-2-3",
            "99999999999999999999-0",
            "0-18446744073709551616",
            "１-0",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
