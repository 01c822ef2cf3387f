//! The HTTP API: each area exports its own `router()`.

pub mod catalog;
pub mod events;
pub mod health;
pub mod tenants;
pub mod webhooks;

use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the gateway.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(events::router())
        .merge(tenants::router())
        .merge(webhooks::router())
        .merge(catalog::router())
        .merge(health::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}
