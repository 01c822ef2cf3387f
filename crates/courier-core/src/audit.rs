//! Audit log entries: who changed what configuration, with the state before and
//! after (never secrets).

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Actor {
    /// The operator, with the admin token.
    Operator,
    /// A tenant API key.
    ApiKey { id: String },
}

/// One change, as recorded. The time is the entry's position in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub actor: Actor,
    /// e.g. `webhook.updated`, `tenant.created`, `apiKey.revoked`.
    pub action: String,
    /// The changed resource's kind and id.
    pub resource_type: String,
    pub resource_id: String,
    pub tenant_id: TenantId,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}
