//! Courier's worker: fan-out, signed delivery, the delivery log.
//!
//! - [`config`]: the typed configuration (flags and `COURIER_*` variables).
//! - [`consumer`]: the consume loop every stage shares (bounded, manual acks, orderly stop).
//! - [`fanout`]: events in, one delivery job per interested webhook out.
//! - [`deliver`]: a job in, a claimed, signed, logged POST out.
//! - [`sender`]: the outbound HTTP request.
//! - [`webhooks`]: the cache of webhook configuration, invalidated by the gateway's announcements.
//! - [`admin`]: health and metrics endpoints.
//! - [`metrics`]: this instance's Prometheus registry.
//!
//! [`run`] works until a cancellation token fires; the binary and the tests both call it.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod deliver;
pub mod fanout;
pub mod metrics;
pub mod sender;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_broker::{Publisher, Topology};
use courier_core::catalog::Catalog;
use courier_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;

/// What every stage of one worker instance shares.
pub struct Pipeline {
    pub store: Store,
    pub webhooks: Arc<webhooks::WebhookCache>,
    pub publisher: Publisher,
    pub topology: Topology,
    pub catalog: Catalog,
    pub sender: sender::Sender,
    pub log_retention: Duration,
    pub metrics: metrics::Metrics,
    /// This instance's id, part of every claim it holds.
    pub instance: String,
}

/// Connects, declares the topology, and consumes events and delivery jobs until
/// `shutdown` fires (then drains in-flight work within the grace period) or a
/// consumer fails. Health endpoints are served on `admin`.
pub async fn run(
    config: WorkerConfig,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = &config.shared;
    let catalog = shared.catalog()?;
    let store = Store::new(&shared.redis_url, &shared.prefix, shared.redis_pool_size)?;
    match store.eviction_policy().await {
        Ok(p) if p == "noeviction" => {}
        Ok(p) => tracing::warn!(policy = %p, "Redis maxmemory-policy should be noeviction"),
        Err(e) => tracing::warn!(error = %e, "could not read Redis maxmemory-policy"),
    }
    let topology = Topology::new(shared.prefix.clone());
    let conn = courier_broker::connect(&shared.amqp_url, "courier-worker", Duration::from_secs(10))
        .await
        .context("connecting to RabbitMQ")?;
    topology
        .declare(&conn)
        .await
        .context("declaring the topology")?;
    let publisher = Publisher::new(&conn, Duration::from_secs(10))
        .await
        .context("opening the publishing channel")?;
    let pipeline = Arc::new(Pipeline {
        webhooks: Arc::new(webhooks::WebhookCache::new(store.clone())),
        store,
        publisher,
        topology: topology.clone(),
        catalog,
        sender: sender::Sender::new().context("building the HTTP client")?,
        log_retention: config.log_retention,
        metrics: metrics::Metrics::default(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
    });

    // A failing stage stops the others, so the process exits and is restarted.
    let stop = shutdown.child_token();
    let admin_addr = admin.local_addr()?;
    let (events_queue, deliveries_queue) = (topology.events_queue(), topology.deliveries());
    let following = tokio::spawn(pipeline.webhooks.clone().follow(stop.clone()));
    let admin_server = {
        let stop = stop.clone();
        let app = admin::router(pipeline.clone());
        tokio::spawn(async move {
            axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };
    let fanout = {
        let p = pipeline.clone();
        consumer::consume(
            &conn,
            &events_queue,
            config.prefetch,
            usize::from(config.prefetch),
            config.shutdown_grace,
            stop.clone(),
            move |d| {
                let p = p.clone();
                async move { fanout::handle(&p, d).await }
            },
        )
    };
    let deliveries = {
        let p = pipeline.clone();
        consumer::consume(
            &conn,
            &deliveries_queue,
            config.prefetch,
            config.delivery_concurrency,
            config.shutdown_grace,
            stop.clone(),
            move |d| {
                let p = p.clone();
                async move { deliver::handle(&p, d).await }
            },
        )
    };
    tracing::info!(admin = %admin_addr, "worker started");
    let stopping = |r: anyhow::Result<()>| {
        stop.cancel();
        r
    };
    let (a, b) = tokio::join!(async { stopping(fanout.await) }, async {
        stopping(deliveries.await)
    });
    let _ = admin_server.await;
    let _ = following.await;
    pipeline.publisher.close().await;
    let _ = conn.close(200, "shutting down").await;
    tracing::info!("worker stopped");
    a.and(b)
}
