//! The HTTP API: each area exports its own `router()`.
//!
//! Areas documented in the OpenAPI document return a `utoipa_axum` router whose
//! handlers carry `#[utoipa::path]`; [`router`] merges them and serves the document
//! at `/openapi.json`.

pub mod admin_queue;
pub mod audit;
pub mod catalog;
pub mod dead_letters;
pub mod deliveries;
pub mod events;
pub mod health;
pub mod tenants;
pub mod webhooks;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Courier",
        description = "Self-hosted webhook delivery: ingest events, manage webhooks, read the delivery log.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "events", description = "Event ingest"),
        (name = "webhooks", description = "Webhooks (subscriptions)"),
        (name = "event-types", description = "The event catalog"),
        (name = "tenants", description = "Operator: tenants and API keys"),
        (name = "audit", description = "Audit log of configuration changes"),
        (name = "deliveries", description = "The delivery log and replays"),
        (name = "dead-letters", description = "Failed batches and their replay"),
        (name = "admin", description = "Operator: the dead-letter queue"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("api_key", bearer("A tenant API key (ck_...)"));
        components.add_security_scheme(
            "admin_token",
            bearer("The operator token (COURIER_ADMIN_TOKEN)"),
        );
    }
}

/// The documented routes and their OpenAPI document.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(events::router())
        .merge(tenants::router())
        .merge(webhooks::router())
        .merge(catalog::router())
        .merge(audit::router())
        .merge(deliveries::router())
        .merge(dead_letters::router())
        .merge(admin_queue::router())
        .merge(health::router())
}

/// The OpenAPI document of the API (also kept at `proto-schemas/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().into_openapi()
}

/// Every route of the gateway.
pub fn router(state: AppState) -> Router {
    let (documented, api) = documented().split_for_parts();
    let api = Json(api);
    documented
        .route("/openapi.json", get(move || async move { api.clone() }))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
}
