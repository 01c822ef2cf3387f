//! Operator routes: tenants and their API keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use courier_core::errors::FieldErrors;
use courier_core::ids::TenantId;
use courier_core::tenant::{hash_api_key, issue_api_key, Scope, Tenant};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::extract::{Admin, ApiJson};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenants", post(create))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateTenant {
    id: Option<String>,
    name: Option<String>,
}

/// Creates a tenant and its first API key (all scopes), shown only in this answer.
async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut fields = FieldErrors::default();
    let id = match body.id.as_deref().map(TenantId::parse) {
        None => Some(TenantId::generate()),
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => {
            fields.add("id", e.to_string());
            None
        }
    };
    let name = body.name.unwrap_or_default().trim().to_owned();
    if name.chars().count() > 128 {
        fields.add("name", "must be at most 128 characters");
    }
    let (Some(id), true) = (id, fields.is_empty()) else {
        return Err(ApiError::unprocessable("the tenant is invalid", &fields));
    };
    let now = Utc::now();
    let tenant = Tenant {
        name: if name.is_empty() {
            id.to_string()
        } else {
            name
        },
        id,
        created_at: now,
    };
    if !state.store.create_tenant(&tenant).await? {
        return Err(ApiError::conflict(format!(
            "tenant {} already exists",
            tenant.id
        )));
    }
    let key = issue_api_key(&tenant.id, Scope::ALL.to_vec(), now);
    state
        .store
        .put_api_key(&hash_api_key(&key.plaintext), &key.record)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": tenant.id,
            "name": tenant.name,
            "createdAt": tenant.created_at,
            "apiKey": { "id": key.record.id, "key": key.plaintext, "scopes": key.record.scopes },
        })),
    ))
}
