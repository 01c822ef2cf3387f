//! `/healthz` (alive) and `/readyz` (dependencies reachable now).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    ready: bool,
    broker: bool,
    redis: bool,
    /// Redis's `maxmemory-policy`; anything but `noeviction` is not ready in production.
    redis_eviction_policy: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// RabbitMQ and Redis are reachable now (and, in production, Redis never evicts keys).
#[utoipa::path(
    get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let broker = state.publisher.is_open();
    let redis = state.store.health().await;
    let ready = broker && redis.acceptable(state.strict_redis);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            broker,
            redis: redis.reachable,
            redis_eviction_policy: redis.eviction_policy,
        }),
    )
}
