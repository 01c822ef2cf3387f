//! The worker's own HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::Pipeline;

pub fn router(pipeline: Arc<Pipeline>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(pipeline)
}

async fn ready(State(p): State<Arc<Pipeline>>) -> (StatusCode, Json<Value>) {
    let broker = p.publisher.is_open();
    let redis = p.store.health().await;
    let ready = broker && redis.acceptable(p.strict_redis);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "broker": broker,
            "redis": redis.reachable,
            "redisEvictionPolicy": redis.eviction_policy,
        })),
    )
}

async fn metrics(State(p): State<Arc<Pipeline>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics.render(),
    )
}
