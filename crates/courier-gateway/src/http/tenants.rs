//! Operator routes: tenants and their API keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use courier_core::audit::Actor;
use courier_core::errors::FieldErrors;
use courier_core::ids::TenantId;
use courier_core::tenant::{hash_api_key, issue_api_key, ApiKeyRecord, Scope, Tenant};
use courier_store::{CreateTenant as Creation, DeleteTenant as Deletion};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{param, Admin, ApiJson, ApiPath, ApiQuery, PageQuery};
use crate::manage::entry;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, delete))
        .routes(routes!(issue_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 64 characters of a-z, 0-9, `_` and `-`; generated when absent.
    #[schema(example = "acme")]
    id: Option<String>,
    /// Display name, at most 128 characters; the id when absent.
    #[schema(example = "Acme Inc.")]
    name: Option<String>,
    /// Scopes of the first API key; all three when absent.
    scopes: Option<Vec<Scope>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    id: String,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            created_at: t.created_at,
        }
    }
}

/// An API key as listed: never the key itself.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    id: String,
    scopes: Vec<Scope>,
    created_at: DateTime<Utc>,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        Self {
            id: k.id.clone(),
            scopes: k.scopes.clone(),
            created_at: k.created_at,
        }
    }
}

/// A freshly issued key: `key` is shown only here.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedKey {
    #[serde(flatten)]
    view: ApiKeyView,
    #[schema(example = "ck_3f1c...")]
    key: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTenant {
    #[serde(flatten)]
    tenant: TenantView,
    api_key: IssuedKey,
}

/// A deleted tenant.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedTenant {
    id: String,
    /// `purging`: its data is being removed; its id can be used again afterwards.
    #[schema(example = "purging")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    data: Vec<TenantView>,
    total: usize,
    limit: usize,
    offset: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    data: Vec<ApiKeyView>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssueKey {
    /// What the key may do; all three when absent.
    scopes: Option<Vec<Scope>>,
}

fn checked_scopes(scopes: Option<Vec<Scope>>, fields: &mut FieldErrors) -> Vec<Scope> {
    match scopes {
        None => Scope::ALL.to_vec(),
        Some(mut s) => {
            s.sort();
            s.dedup();
            if s.is_empty() {
                fields.add("scopes", "must name at least one of publish, manage, read");
            }
            s
        }
    }
}

/// The tenant id of a path; 400 when it cannot be one.
fn tenant_id(id: &str) -> Result<TenantId, ApiError> {
    param("id", id, TenantId::parse)
}

/// Whether `id` has the form of an API key's id (`key_` and 1 to 64 letters or
/// digits); no other can exist.
fn check_key_id(id: &str) -> Result<(), ApiError> {
    param("key_id", id, |id| {
        id.strip_prefix("key_")
            .filter(|rest| {
                (1..=64).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            })
            .map(|_| ())
            .ok_or("an API key id is 'key_' followed by 1 to 64 letters or digits")
    })
}

/// Issues a key for `tenant` and stores its hash; the plaintext only goes back.
async fn issue(
    state: &AppState,
    tenant: &TenantId,
    scopes: Vec<Scope>,
) -> Result<IssuedKey, ApiError> {
    let key = issue_api_key(tenant, scopes, Utc::now());
    let view = ApiKeyView::from(&key.record);
    let audit = entry(
        &Actor::Operator,
        "apiKey.issued",
        "apiKey",
        &key.record.id,
        tenant,
        None,
        serde_json::to_value(&view).ok(),
    );
    if !state
        .store
        .put_api_key(&hash_api_key(&key.plaintext), &key.record, &audit)
        .await?
    {
        return Err(ApiError::not_found(format!("tenant {tenant} not found")));
    }
    Ok(IssuedKey {
        view,
        key: key.plaintext,
    })
}

/// Create a tenant and its first API key.
#[utoipa::path(
    post, operation_id = "createTenant", path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenant,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created; the key is shown only here", body = CreatedTenant),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The id is taken, or an earlier tenant with it is still being purged", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
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
    let scopes = checked_scopes(body.scopes, &mut fields);
    let (Some(id), true) = (id, fields.is_empty()) else {
        return Err(ApiError::unprocessable("the tenant is invalid", &fields));
    };
    let tenant = Tenant {
        name: if name.is_empty() {
            id.to_string()
        } else {
            name
        },
        id,
        created_at: Utc::now(),
    };
    let view = TenantView::from(&tenant);
    let audit = entry(
        &Actor::Operator,
        "tenant.created",
        "tenant",
        tenant.id.as_str(),
        &tenant.id,
        None,
        serde_json::to_value(&view).ok(),
    );
    match state.store.create_tenant(&tenant, &audit).await? {
        Creation::Created => {}
        Creation::Exists => {
            return Err(ApiError::conflict(format!(
                "tenant {} already exists",
                tenant.id
            )))
        }
        Creation::Purging => {
            return Err(ApiError::conflict(format!(
                "tenant {} was deleted and its data is still being purged; \
                 the id can be used again once that is done",
                tenant.id
            ))
            .with_details(json!({ "purging": true })))
        }
    }
    let api_key = issue(&state, &tenant.id, scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            tenant: view,
            api_key,
        }),
    ))
}

/// List tenants, oldest first.
#[utoipa::path(
    get, operation_id = "listTenants", path = "/v1/tenants", tag = "tenants",
    params(PageQuery),
    security(("admin_token" = [])),
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<TenantList>, ApiError> {
    let (offset, limit) = page.checked()?;
    let (tenants, total) = state.store.tenants(offset, limit).await?;
    Ok(Json(TenantList {
        data: tenants.iter().map(TenantView::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// Read a tenant.
#[utoipa::path(
    get, operation_id = "getTenant", path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    security(("admin_token" = [])),
    responses((status = 200, body = TenantView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn read(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tid = tenant_id(&id)?;
    let tenant = state
        .store
        .tenant(&tid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {id} not found")))?;
    Ok(Json(TenantView::from(&tenant)))
}

/// Delete a tenant. Its API keys stop working and its webhooks stop receiving at
/// once; everything else it had (keys, webhooks, waiting batches, delivery log,
/// dead letters, audit log, rate limit state) is purged in the background. Until
/// that is done, creating a tenant with the same id answers 409; afterwards a new
/// tenant with that id sees none of the old data. The operators' audit log keeps
/// the deletion's entry. Deleting a tenant whose purge is running answers 202 again.
#[utoipa::path(
    delete, operation_id = "deleteTenant", path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Deleted; its data is being purged", body = DeletedTenant),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeletedTenant>), ApiError> {
    let tid = tenant_id(&id)?;
    let before = state
        .store
        .tenant(&tid)
        .await?
        .map(|t| json!(TenantView::from(&t)));
    let audit = entry(
        &Actor::Operator,
        "tenant.deleted",
        "tenant",
        &id,
        &tid,
        before,
        None,
    );
    match state.store.delete_tenant(&tid, &audit).await? {
        Deletion::Deleted | Deletion::Purging => {
            // Other replicas drop the tenant's keys on the announcement; this one now.
            state.api_keys.forget_tenant(&tid);
            Ok((
                StatusCode::ACCEPTED,
                Json(DeletedTenant {
                    id: tid.to_string(),
                    status: "purging",
                }),
            ))
        }
        Deletion::Missing => Err(ApiError::not_found(format!("tenant {id} not found"))),
    }
}

/// Issue another API key for a tenant.
#[utoipa::path(
    post, operation_id = "issueApiKey", path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    request_body(content = IssueKey, description = "Optional"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Issued; the key is shown only here", body = IssuedKey),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
async fn issue_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<IssueKey>>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let tid = tenant_id(&id)?;
    let mut fields = FieldErrors::default();
    let scopes = checked_scopes(body.and_then(|b| b.0.scopes), &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::unprocessable("the key is invalid", &fields));
    }
    Ok((
        StatusCode::CREATED,
        Json(issue(&state, &tid, scopes).await?),
    ))
}

/// List a tenant's API keys (never the keys themselves).
#[utoipa::path(
    get, operation_id = "listApiKeys", path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    security(("admin_token" = [])),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let tid = tenant_id(&id)?;
    if state.store.tenant(&tid).await?.is_none() {
        return Err(ApiError::not_found(format!("tenant {id} not found")));
    }
    let keys = state.store.api_keys(&tid).await?;
    Ok(Json(ApiKeyList {
        data: keys.iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revoke an API key: it stops working at once.
#[utoipa::path(
    delete, operation_id = "revokeApiKey", path = "/v1/tenants/{id}/keys/{key_id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"), ("key_id" = String, Path, description = "Key id")),
    security(("admin_token" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn revoke_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath((id, key_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tid = tenant_id(&id)?;
    check_key_id(&key_id)?;
    let audit = entry(
        &Actor::Operator,
        "apiKey.revoked",
        "apiKey",
        &key_id,
        &tid,
        None,
        None,
    );
    if state.store.revoke_api_key(&tid, &key_id, &audit).await? {
        // Other replicas drop the key on the announcement; this one now.
        state.api_keys.forget_tenant(&tid);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "key {key_id} of tenant {id} not found"
        )))
    }
}
