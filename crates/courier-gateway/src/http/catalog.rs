//! `GET /v1/event-types`: the event catalog.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/event-types", get(list))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .catalog
        .entries()
        .map(|e| json!({ "key": e.key, "description": e.description, "example": e.example }))
        .collect();
    Json(json!({ "data": data }))
}
