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
pub struct Readiness {
    ready: bool,
    broker: bool,
    redis: bool,
}

/// The process is alive.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// RabbitMQ and Redis are reachable now.
#[utoipa::path(
    get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let broker = state.publisher.is_open();
    let redis = state.store.ping().await.is_ok();
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready: broker && redis,
            broker,
            redis,
        }),
    )
}
