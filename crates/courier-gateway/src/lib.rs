//! Courier's gateway: the ingest API and the management API.
//!
//! - [`config`]: the typed configuration (flags and `COURIER_*` variables).
//! - [`http`]: the routes, one module (and `router()`) per area.
//! - [`extract`]: callers (tenant keys, the operator) and size-limited JSON bodies.
//! - [`ingest`]: publishing accepted events with confirms.
//! - [`replay`]: replaying logged batches as new series (the port that publishes them).
//! - [`dead_queue`]: the operator's port on the dead-letter queue.
//! - [`manage`]: management operations (compare-and-set changes with their audit entries).
//! - [`error`]: the JSON error body of every failure.
//! - [`state`]: what handlers share.
//!
//! [`run`] serves on a given listener until a cancellation token fires; the binary
//! and the tests both call it.

pub mod config;
pub mod dead_queue;
pub mod error;
pub mod extract;
pub mod http;
pub mod ingest;
pub mod manage;
pub mod replay;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_broker::{Publisher, Topology};
use courier_core::webhook::UrlPolicy;
use courier_store::Store;
use courier_telemetry::Profile;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use http::openapi;
use state::{AppState, Inner};

/// Connects to RabbitMQ and Redis, declares the topology, and serves the API on
/// `listener` until `shutdown` is cancelled; in-flight requests then finish.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let admin_token = config.effective_admin_token()?;
    let catalog = config.shared.catalog()?;
    let shared = &config.shared;
    let store = Store::new(&shared.redis_url, &shared.prefix, shared.redis_pool_size)?;
    courier_telemetry::settings::check_eviction_policy(
        store.eviction_policy().await,
        shared.profile,
    );
    let topology = Topology::new(shared.prefix.clone());
    let conn =
        courier_broker::connect(&shared.amqp_url, "courier-gateway", Duration::from_secs(10))
            .await
            .context("connecting to RabbitMQ")?;
    topology
        .declare(&conn)
        .await
        .context("declaring the topology")?;
    let publisher = Publisher::new(&conn, config.publish_timeout)
        .await
        .context("opening the publishing channel")?;
    let state = AppState {
        inner: Arc::new(Inner {
            store,
            publisher,
            topology,
            catalog,
            url_policy: UrlPolicy {
                allow_http: shared.profile == Profile::Dev,
            },
            retry_defaults: shared.retry_defaults(),
            max_body_bytes: config.max_body_bytes,
            max_webhooks_per_tenant: config.max_webhooks_per_tenant,
            strict_redis: shared.profile == Profile::Production,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
        }),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let publisher = state.publisher.clone();
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving HTTP")?;
    publisher.close().await;
    let _ = conn.close(200, "shutting down").await;
    tracing::info!("gateway stopped");
    Ok(())
}
