//! Courier's gateway: the ingest API and the management API.
//!
//! - [`config`]: the typed configuration (flags and `COURIER_*` variables).
//! - [`http`]: the routes, one module (and `router()`) per area.
//! - [`extract`]: callers (tenant keys, the operator) and size-limited JSON bodies.
//! - [`ingest`]: publishing accepted events with confirms.
//! - [`replay`]: replaying logged batches as new series (the port that publishes them).
//! - [`dead_queue`]: the operator's port on the dead-letter queue.
//! - [`limits`]: request limits: header count and size, the per-tenant ingest rate.
//! - [`maintenance`]: operator commands run instead of serving (`reencrypt-secrets`).
//! - [`manage`]: management operations (compare-and-set changes with their audit entries).
//! - [`purge`]: the background purge of deleted tenants' data.
//! - [`error`]: the JSON error body of every failure.
//! - [`state`]: what handlers share.
//! - [`observe`]: every request in a server span, with its trace ids in the logs and
//!   its duration in the metrics; `/metrics`.
//! - [`metrics`]: this instance's Prometheus registry.
//!
//! [`run`] serves on a given listener until a cancellation token fires; the binary
//! and the tests both call it.

pub mod config;
pub mod dead_queue;
pub mod error;
pub mod extract;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod maintenance;
pub mod manage;
pub mod metrics;
pub mod observe;
pub mod purge;
pub mod replay;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_broker::{Broker, BrokerSettings, Topology};
use courier_store::cache::ConfigCache;
use courier_store::Store;
use courier_telemetry::Profile;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use http::openapi;
use state::{AppState, Inner};

/// How long a stop waits for work that outlives its request.
const TASKS_GRACE: Duration = Duration::from_secs(30);

/// Connects to RabbitMQ and Redis, declares the topology, and serves the API on
/// `listener` (and runs deleted tenants' purges) until `shutdown` is cancelled;
/// requests in progress then finish within the HTTP shutdown grace
/// ([`courier_telemetry::serve`]), background work finishes, and the broker
/// connection closes last.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let admin_token = config.effective_admin_token()?;
    let traces = courier_telemetry::Traces::start(
        &config.shared.traces,
        "courier-gateway",
        config.traces_override.as_ref(),
    )
    .context("setting up tracing")?;
    let catalog = config.shared.catalog()?;
    let shared = &config.shared;
    let store = Store::new(&shared.redis_url, &shared.prefix)?.with_keyring(shared.keyring()?);
    courier_telemetry::settings::check_eviction_policy(
        store.eviction_policy().await,
        shared.profile,
    );
    let topology = Topology::new(shared.prefix.clone());
    // The broker may be down now or later: the gateway serves anyway, answering 503
    // where it needs the broker and reporting not ready, until it reconnects.
    let broker = Broker::start(BrokerSettings {
        url: shared.amqp_url.clone(),
        name: "courier-gateway".into(),
        topology: topology.clone(),
        declare_ladder: false,
        connect_timeout: Duration::from_secs(10),
        confirm_timeout: config.publish_timeout,
    });
    if !broker.wait_connected(Duration::from_secs(10)).await {
        tracing::warn!("the broker is unreachable; serving anyway and retrying");
    }
    let publisher = broker.publisher();
    let state = AppState {
        inner: Arc::new(Inner {
            store,
            broker: broker.clone(),
            publisher,
            topology,
            catalog,
            url_policy: shared.url_policy(),
            tenant_rate_limit: config.tenant_rate_limit.map(|r| r.bucket()),
            retry_defaults: shared.retry_defaults(),
            max_body_bytes: config.max_body_bytes,
            max_webhooks_per_tenant: config.max_webhooks_per_tenant,
            strict_redis: shared.profile == Profile::Production,
            admin_token_hash: Sha256::digest(admin_token.as_bytes()).into(),
            traces: traces.clone(),
            metrics: metrics::Metrics::default(),
            api_keys: ConfigCache::new(state::CACHED_API_KEYS, state::API_KEY_MAX_AGE),
            tasks: tokio_util::task::TaskTracker::new(),
        }),
    };
    let following = {
        let (state, stop) = (state.clone(), shutdown.clone());
        tokio::spawn(async move { state.api_keys.follow(&state.store, stop).await })
    };
    state.tasks.spawn(purge::run(
        state.clone(),
        config.tenant_purge_settle,
        shutdown.clone(),
    ));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "gateway listening");
    let (publisher, tasks) = (state.publisher.clone(), state.tasks.clone());
    courier_telemetry::serve::serve(listener, http::router(state), &config.http, shutdown)
        .await
        .context("serving HTTP")?;
    let _ = following.await;
    // What outlives requests ends before the broker connection closes under it.
    tasks.close();
    if tokio::time::timeout(TASKS_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background work did not end within {TASKS_GRACE:?}; stopping anyway");
    }
    publisher.settle().await;
    broker.shutdown().await;
    traces.shutdown().await;
    tracing::info!("gateway stopped");
    Ok(())
}
