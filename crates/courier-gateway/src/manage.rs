//! The management operations behind the handlers: each validates through the
//! domain, applies through the store (atomically, with its audit entry) and
//! answers in domain terms.

use chrono::Utc;
use courier_core::audit::{Actor, AuditEntry};
use courier_core::ids::{TenantId, WebhookId};
use courier_core::webhook::{Webhook, WebhookPatch};
use courier_store::Versioned;
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::param;
use crate::http::webhooks::WebhookView;
use crate::state::AppState;

/// Tries of a compare-and-set before the caller is told to retry.
const SWAP_TRIES: usize = 5;

/// An audit entry of a change by `actor`.
pub fn entry(
    actor: &Actor,
    action: &str,
    resource_type: &str,
    resource_id: &str,
    tenant: &TenantId,
    before: Option<Value>,
    after: Option<Value>,
) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: action.to_owned(),
        resource_type: resource_type.to_owned(),
        resource_id: resource_id.to_owned(),
        tenant_id: tenant.clone(),
        before,
        after,
    }
}

/// What the audit log shows of a webhook: its API view, never its secrets.
pub fn audit_view(w: &Webhook) -> Value {
    serde_json::to_value(WebhookView::from(w)).unwrap_or(Value::Null)
}

/// A state recorded in the audit log, as the API shows it. Entries recorded before
/// custom header values became secrets hold a webhook's `headers` with their
/// values: only the names are shown, as in today's entries (`headerNames`).
pub fn shown_audit_state(state: Option<Value>) -> Option<Value> {
    let Some(Value::Object(mut map)) = state else {
        return state;
    };
    if let Some(headers) = map.remove("headers") {
        let names = headers
            .as_object()
            .map(|h| h.keys().cloned().map(Value::String).collect())
            .unwrap_or_default();
        map.entry("headerNames")
            .or_insert_with(|| Value::Array(names));
    }
    Some(Value::Object(map))
}

/// The tenant's webhook `id`, with its version; 404 for another tenant's, 400 for
/// a path parameter that cannot be a webhook id.
pub async fn find_webhook(
    state: &AppState,
    tenant: &TenantId,
    id: &str,
) -> Result<Versioned, ApiError> {
    let webhook = param("id", id, WebhookId::parse)?;
    match state.store.webhook_versioned(&webhook).await {
        Ok(Some(v)) if &v.webhook.tenant_id == tenant => Ok(v),
        Ok(_) => Err(not_found(id)),
        // A record that can never be read is no outage: it stays so until the
        // webhook is deleted (which works) or an operator restores the key.
        Err(e) if e.is_permanent() => {
            if !state.store.is_tenant_webhook(tenant, &webhook).await? {
                return Err(not_found(id));
            }
            tracing::error!(error = %e, webhook_id = %webhook, "a webhook's stored record cannot be read");
            Err(ApiError::conflict(format!(
                "webhook {id}'s stored record cannot be read ({e}); it can only be deleted"
            ))
            .with_details(serde_json::json!({"unreadable": true})))
        }
        Err(e) => Err(e.into()),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook {id} not found"))
}

/// DELETE: removes the tenant's webhook `id`, and one whose stored record cannot
/// be read too (as it is stored, audited with what is known of it).
pub async fn delete_webhook(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    id: &str,
) -> Result<(), ApiError> {
    match change_webhook(state, actor, tenant, id, |_| Ok((None, "webhook.deleted"))).await {
        Ok(_) => Ok(()),
        Err(e) if e.details().get("unreadable").is_some() => {
            let webhook = param("id", id, WebhookId::parse)?;
            let before = serde_json::json!({"id": id, "unreadable": true});
            let audit = entry(
                actor,
                "webhook.deleted",
                "webhook",
                id,
                tenant,
                Some(before),
                None,
            );
            if state
                .store
                .delete_stored_webhook(tenant, &webhook, &audit)
                .await?
            {
                Ok(())
            } else {
                Err(ApiError::conflict(format!(
                    "webhook {id} is being changed by another request; retry"
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// Applies `change` to the tenant's webhook `id` with compare-and-set, retrying when
/// another writer got there first. `change` returns the next state (`None` deletes)
/// and the audit action.
pub async fn change_webhook<F>(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    id: &str,
    mut change: F,
) -> Result<Option<Webhook>, ApiError>
where
    F: FnMut(&Webhook) -> Result<(Option<Webhook>, &'static str), ApiError>,
{
    for _ in 0..SWAP_TRIES {
        let current = find_webhook(state, tenant, id).await?;
        let (next, action) = change(&current.webhook)?;
        let audit = entry(
            actor,
            action,
            "webhook",
            id,
            tenant,
            Some(audit_view(&current.webhook)),
            next.as_ref().map(audit_view),
        );
        if state
            .store
            .swap_webhook(&current, next.as_ref(), &audit)
            .await?
        {
            return Ok(next);
        }
    }
    Err(ApiError::conflict(format!(
        "webhook {id} is being changed by another request; retry"
    )))
}

/// PATCH: the webhook with `patch` applied.
pub async fn patch_webhook(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantId,
    id: &str,
    patch: &WebhookPatch,
) -> Result<Webhook, ApiError> {
    let changed = change_webhook(state, actor, tenant, id, |current| {
        let next = patch
            .clone()
            .apply(current, state.rules(), Utc::now())
            .map_err(|f| ApiError::unprocessable("the webhook is invalid", &f))?;
        Ok((Some(next), "webhook.updated"))
    })
    .await?;
    changed.ok_or_else(|| ApiError::not_found(format!("webhook {id} not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_states_of_old_entries_show_header_names_only() {
        let old = serde_json::json!({
            "id": "wh_1", "name": "crm",
            "headers": {"Authorization": "Bearer secret-1", "X-Team": "sales"}
        });
        let shown = shown_audit_state(Some(old));
        assert_eq!(
            shown,
            Some(serde_json::json!({
                "id": "wh_1", "name": "crm", "headerNames": ["Authorization", "X-Team"]
            }))
        );
        let current = serde_json::json!({"id": "wh_1", "headerNames": ["X-Team"]});
        assert_eq!(shown_audit_state(Some(current.clone())), Some(current));
        assert_eq!(shown_audit_state(None), None);
    }
}
