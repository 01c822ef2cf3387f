//! Tenant routes: webhooks.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use courier_core::catalog::Pattern;
use courier_core::ids::WebhookId;
use courier_core::signing::SignatureScheme;
use courier_core::tenant::Scope;
use courier_core::webhook::{PropertyFilters, Webhook, WebhookInput};
use courier_store::CreateWebhook;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{ApiJson, TenantKey};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create))
        .route("/v1/webhooks/{id}", get(read))
}

/// A webhook as the API shows it: never its secrets.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView<'a> {
    id: &'a WebhookId,
    name: &'a str,
    url: &'a str,
    events: &'a [Pattern],
    throttling: u8,
    property_filters: &'a PropertyFilters,
    timeout_ms: u32,
    headers: &'a BTreeMap<String, String>,
    signature_scheme: SignatureScheme,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Webhook> for WebhookView<'a> {
    fn from(w: &'a Webhook) -> Self {
        Self {
            id: &w.id,
            name: &w.name,
            url: w.url.as_str(),
            events: &w.events,
            throttling: w.throttling.get(),
            property_filters: &w.property_filters,
            timeout_ms: w.timeout_ms,
            headers: &w.headers,
            signature_scheme: w.signature_scheme,
            active: w.active,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

async fn create(
    State(state): State<AppState>,
    key: TenantKey,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = key.require(Scope::Manage)?;
    let webhook = input
        .into_webhook(&key.tenant_id, state.rules(), Utc::now())
        .map_err(|fields| ApiError::unprocessable("the webhook is invalid", &fields))?;
    match state
        .store
        .create_webhook(&webhook, state.max_webhooks_per_tenant)
        .await?
    {
        CreateWebhook::Created => {}
        CreateWebhook::LimitReached(limit) => {
            return Err(ApiError::conflict(format!(
                "this tenant already has {limit} webhooks, the most allowed; delete one first"
            ))
            .with_details(json!({ "limit": limit })));
        }
    }
    let mut body = json!(WebhookView::from(&webhook));
    body["secret"] = json!(webhook.secret.as_str());
    Ok((StatusCode::CREATED, Json(body)))
}

async fn read(
    State(state): State<AppState>,
    key: TenantKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = key.require(Scope::Read)?;
    let not_found = || ApiError::not_found(format!("webhook {id} not found"));
    let webhook_id = WebhookId::parse(&id).map_err(|_| not_found())?;
    match state.store.webhook(&webhook_id).await? {
        Some(w) if w.tenant_id == key.tenant_id => Ok(Json(json!(WebhookView::from(&w)))),
        _ => Err(not_found()),
    }
}
