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
use axum::Router;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::observe;
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
    let mut api = documented().into_openapi();
    common_responses(&mut api);
    api
}

/// Answers every route may give whatever it does: 400 for a malformed body, query
/// or path, 431 for request headers over the limits ([`crate::limits`]), and, for
/// routes that take a body, 408 for one that does not arrive in time.
fn common_responses(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            responses
                .entry("400".into())
                .or_insert_with(|| {
                    error("Malformed request: a body that is not JSON, or a path or query parameter that cannot be used (named in details)")
                });
            responses
                .entry("431".into())
                .or_insert_with(|| error("Too many request headers, or too large"));
            if op.request_body.is_some() {
                responses.entry("408".into()).or_insert_with(|| {
                    error("The body did not arrive within COURIER_HTTP_BODY_TIMEOUT")
                });
            }
        }
    }
}

/// Every route of the gateway, each request traced and timed ([`observe`]).
/// `/metrics` (Prometheus text) is for scrapers, outside the API document.
pub fn router(state: AppState) -> Router {
    let (documented, mut api) = documented().split_for_parts();
    common_responses(&mut api);
    // Serialized once and shared: the router is cloned for every connection.
    let doc: std::sync::Arc<str> = serde_json::to_string(&api).unwrap_or_default().into();
    documented
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.to_string(),
                    )
                }
            }),
        )
        .route("/metrics", get(observe::metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(crate::limits::header_limits))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::request,
        ))
        .with_state(state)
}
