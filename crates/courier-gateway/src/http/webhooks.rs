//! Tenant routes: webhooks (create, list, read, update, delete, rotate the secret,
//! send a test delivery).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use courier_core::audit::Actor;
use courier_core::catalog::EventKey;
use courier_core::envelope::DeliveryJob;
use courier_core::event::EnvelopeEvent;
use courier_core::ids::EventId;
use courier_core::signing::{Secret, SignatureScheme};
use courier_core::tenant::Scope;
use courier_core::webhook::{Webhook, WebhookInput, WebhookPatch};
use courier_store::CreateWebhook;
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery, PageQuery, TenantKey};
use crate::limits::take_ingest_tokens;
use crate::manage::{self, audit_view, change_webhook, entry, find_webhook};
use crate::replay::publish_jobs;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update, delete))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test))
}

/// A webhook's own retry settings; what it leaves out follows the deployment.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicyView {
    max_attempts: Option<u32>,
    /// Delays before each attempt; absent means the deployment's default schedule.
    schedule: Option<Vec<String>>,
    retry_client_errors: bool,
}

/// A webhook as the API shows it: never its secrets (the signing secret, the values
/// of its custom headers).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    #[schema(example = "wh_0192f1c27d4b7e0a8c3b5d6e7f809a1b")]
    id: String,
    name: String,
    url: String,
    events: Vec<String>,
    throttling: u8,
    property_filters: BTreeMap<String, Vec<String>>,
    retry_policy: RetryPolicyView,
    timeout_ms: u32,
    /// Names of the custom headers sent with every delivery. Their values are
    /// secrets, never shown; PATCH `headers` sets, replaces or removes them by name.
    #[schema(example = json!(["Authorization"]))]
    header_names: Vec<String>,
    signature_scheme: SignatureScheme,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        let retry = &w.retry_policy;
        Self {
            id: w.id.to_string(),
            name: w.name.clone(),
            // A password in a URL stored before such URLs were refused stays hidden.
            url: w.url.shown().into_owned(),
            events: w.events.iter().map(|p| p.as_str().to_owned()).collect(),
            throttling: w.throttling.get(),
            property_filters: w
                .property_filters
                .iter()
                .map(|(key, names)| (key.clone(), names.as_slice().to_vec()))
                .collect(),
            retry_policy: RetryPolicyView {
                max_attempts: retry.max_attempts,
                schedule: retry.schedule.as_ref().and_then(|s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| serde_json::from_value(v).ok())
                }),
                retry_client_errors: retry.retry_client_errors,
            },
            timeout_ms: w.timeout_ms,
            header_names: w.headers.names().map(str::to_owned).collect(),
            signature_scheme: w.signature_scheme,
            active: w.active,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A created webhook, with its signing secret (shown only here and by rotation).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWebhook {
    #[serde(flatten)]
    webhook: WebhookView,
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
}

/// A page of webhooks.
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    data: Vec<WebhookView>,
    total: usize,
    limit: usize,
    offset: usize,
    /// Ids of webhooks whose stored configuration this deployment cannot read (for
    /// example, it was encrypted under a key the operator has since removed). They
    /// are left out of `data` and `total`, receive nothing, and their deliveries end
    /// `failed` until an operator repairs them. Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!([]))]
    unreadable: Vec<String>,
}

fn actor(key: &courier_core::tenant::ApiKeyRecord) -> Actor {
    Actor::ApiKey { id: key.id.clone() }
}

/// Create a webhook.
#[utoipa::path(
    post, operation_id = "createWebhook", path = "/v1/webhooks", tag = "webhooks",
    request_body = WebhookInput,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created; the secret is shown only here", body = CreatedWebhook),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The tenant has its most webhooks", body = ErrorBody),
        (status = 422, description = "Invalid fields, named in details", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    key: TenantKey,
    ApiJson(input): ApiJson<WebhookInput>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let key = key.require(Scope::Manage)?;
    let webhook = input
        .into_webhook(&key.tenant_id, state.rules(), Utc::now())
        .map_err(|fields| ApiError::unprocessable("the webhook is invalid", &fields))?;
    let audit = entry(
        &actor(key),
        "webhook.created",
        "webhook",
        webhook.id.as_str(),
        &key.tenant_id,
        None,
        Some(audit_view(&webhook)),
    );
    match state
        .store
        .create_webhook(&webhook, state.max_webhooks_per_tenant, &audit)
        .await?
    {
        CreateWebhook::Created => {}
        // The tenant was deleted while the request ran: its key is no longer valid.
        CreateWebhook::TenantGone => return Err(ApiError::tenant_key_required()),
        CreateWebhook::LimitReached(limit) => {
            return Err(ApiError::conflict(format!(
                "this tenant already has {limit} webhooks, the most allowed; delete one first"
            ))
            .with_details(json!({ "limit": limit })));
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: WebhookView::from(&webhook),
            secret: webhook.secret.as_str().to_owned(),
        }),
    ))
}

/// List the tenant's webhooks, oldest first.
#[utoipa::path(
    get, operation_id = "listWebhooks", path = "/v1/webhooks", tag = "webhooks",
    params(PageQuery),
    security(("api_key" = [])),
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody))
)]
async fn list(
    State(state): State<AppState>,
    key: TenantKey,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let key = key.require(Scope::Read)?;
    let (offset, limit) = page.checked()?;
    let all = state.store.tenant_webhooks(&key.tenant_id).await?;
    Ok(Json(WebhookList {
        total: all.readable.len(),
        data: all
            .readable
            .iter()
            .skip(offset)
            .take(limit)
            .map(WebhookView::from)
            .collect(),
        limit,
        offset,
        unreadable: all.unreadable.iter().map(|u| u.id.to_string()).collect(),
    }))
}

/// Read a webhook.
#[utoipa::path(
    get, operation_id = "getWebhook", path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = WebhookView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The stored record cannot be read (`details.unreadable`): it can only be deleted", body = ErrorBody),
    )
)]
async fn read(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let key = key.require(Scope::Read)?;
    let found = find_webhook(&state, &key.tenant_id, &id).await?;
    Ok(Json(WebhookView::from(&found.webhook)))
}

/// Change any subset of a webhook's mutable fields. Disabling it cancels work
/// created before.
#[utoipa::path(
    patch, operation_id = "updateWebhook", path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = WebhookPatch,
    security(("api_key" = [])),
    responses(
        (status = 200, body = WebhookView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<WebhookPatch>,
) -> Result<Json<WebhookView>, ApiError> {
    let key = key.require(Scope::Manage)?;
    let updated = manage::patch_webhook(&state, &actor(key), &key.tenant_id, &id, &patch).await?;
    Ok(Json(WebhookView::from(&updated)))
}

/// Delete a webhook; work waiting for it ends cancelled.
#[utoipa::path(
    delete, operation_id = "deleteWebhook", path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted, also when its stored record cannot be read"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let key = key.require(Scope::Manage)?;
    manage::delete_webhook(&state, &actor(key), &key.tenant_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of a secret rotation.
#[derive(Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the current secret keeps signing beside the new one, e.g. `24h`
    /// (the default) or `0s` to revoke it at once (a leaked secret).
    #[schema(example = "24h")]
    previous_secret_ttl: Option<String>,
    /// A client-supplied new secret; generated when absent.
    secret: Option<String>,
}

/// Leaves the secret out, so a logged body never shows it.
impl std::fmt::Debug for RotateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateSecret")
            .field("previous_secret_ttl", &self.previous_secret_ttl)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The new secret.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret {
    secret: String,
    /// Until when the previous secret still signs; absent when it stopped at once.
    previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// Rotate the signing secret. The new secret signs at once; the previous one keeps
/// signing beside it until its TTL ends (at most 3 previous secrets).
#[utoipa::path(
    post, operation_id = "rotateWebhookSecret", path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body(content = RotateSecret, description = "Optional"),
    security(("api_key" = [])),
    responses((status = 200, body = RotatedSecret), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody))
)]
async fn rotate_secret(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<RotateSecret>>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let key = key.require(Scope::Manage)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let mut fields = courier_core::errors::FieldErrors::default();
    let ttl = match body
        .previous_secret_ttl
        .as_deref()
        .map(humantime::parse_duration)
    {
        None => Some(std::time::Duration::from_secs(24 * 3600)),
        Some(Ok(d)) if d <= std::time::Duration::from_secs(30 * 24 * 3600) => Some(d),
        Some(_) => {
            fields.add(
                "previousSecretTtl",
                "must be a duration from 0s to 30d, e.g. 24h",
            );
            None
        }
    };
    let secret = match body.secret.as_deref().map(Secret::parse) {
        None => Some(Secret::generate()),
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            fields.add("secret", e.to_string());
            None
        }
    };
    let (Some(ttl), Some(secret)) = (ttl, secret) else {
        return Err(ApiError::unprocessable("the rotation is invalid", &fields));
    };
    let ttl = chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::zero());
    let now = Utc::now();
    change_webhook(&state, &actor(key), &key.tenant_id, &id, |current| {
        let mut next = current.clone();
        next.rotate_secret(secret.clone(), ttl, now);
        Ok((Some(next), "webhook.secretRotated"))
    })
    .await?;
    Ok(Json(RotatedSecret {
        secret: secret.as_str().to_owned(),
        previous_secret_expires_at: (ttl > chrono::Duration::zero()).then(|| now + ttl),
    }))
}

/// Body of a test delivery.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestDelivery {
    /// The event key to send (one the webhook subscribes to); the first such key of
    /// the catalog when absent.
    #[schema(example = "Prospect.EntityCreated")]
    event_type: Option<String>,
}

/// A test delivery on its way.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSent {
    event_id: String,
    event_type: String,
    /// The delivery's batch id: its `webhook-id` header, and its id in the
    /// delivery log (`GET /v1/deliveries/{batchId}`).
    #[schema(example = "35dfc8b5-bf2e-41df-8706-758aaa42a8b1")]
    batch_id: String,
}

/// Deliver the catalog's example event of one of the webhook's keys to this webhook
/// only (never to the tenant's other webhooks): signed, logged and retried like
/// any delivery. It takes one event of the tenant's ingest rate; over it the answer
/// is 429 with `Retry-After` and nothing is sent.
#[utoipa::path(
    post, operation_id = "sendTestEvent", path = "/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body(content = TestDelivery, description = "Optional"),
    security(("api_key" = [])),
    responses(
        (status = 202, body = TestSent), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The webhook is disabled", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "Over the tenant's ingest rate; nothing was sent", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the rate allows it"))),
        (status = 503, body = ErrorBody),
    )
)]
async fn send_test(
    State(state): State<AppState>,
    key: TenantKey,
    ApiPath(id): ApiPath<String>,
    body: Option<ApiJson<TestDelivery>>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let key = key.require(Scope::Manage)?;
    let webhook = find_webhook(&state, &key.tenant_id, &id).await?.webhook;
    if !webhook.active {
        return Err(ApiError::conflict(format!("webhook {id} is disabled")));
    }
    let subscribed = |k: &EventKey| webhook.events.iter().any(|p| p.matches(k));
    let wanted = body.and_then(|b| b.0.event_type);
    let event_key = match wanted.as_deref().map(EventKey::parse) {
        None => state.catalog.keys().find(|k| subscribed(k)).cloned(),
        Some(Ok(k)) if state.catalog.contains(&k) && subscribed(&k) => Some(k),
        Some(_) => None,
    }
    .ok_or_else(|| {
        let mut f = courier_core::errors::FieldErrors::default();
        f.add(
            "eventType",
            "must be a catalog key this webhook subscribes to",
        );
        ApiError::unprocessable("no event to send", &f)
    })?;
    let example = state
        .catalog
        .get(&event_key)
        .map_or_else(|| "{}".into(), |e| e.example.json().to_owned());
    let now = Utc::now();
    let event_id = EventId::generate();
    let event = EnvelopeEvent {
        event_id: event_id.clone(),
        event_type: event_key.event_type().to_owned(),
        object_type: event_key.object_type().to_owned(),
        data: RawValue::from_string(example).map_err(|e| ApiError::dependency("catalog", &e))?,
        properties_updated: None,
        occurred_at: now,
    };
    // A delivery job for this webhook alone, straight to `courier.deliveries`: no
    // other webhook of the tenant sees it.
    let job = DeliveryJob::single(
        key.tenant_id.clone(),
        webhook.id.clone(),
        webhook.generation,
        event,
        now,
    );
    take_ingest_tokens(&state, &key.tenant_id, 1).await?;
    publish_jobs(
        &state.publisher,
        &state.topology,
        std::slice::from_ref(&job),
    )
    .await
    .map_err(|e| ApiError::dependency("the broker", &e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestSent {
            event_id: event_id.to_string(),
            event_type: event_key.to_string(),
            batch_id: job.batch_id.to_string(),
        }),
    ))
}
