//! Courier's worker: fan-out, signed delivery, the delivery log.
//!
//! - [`config`]: the typed configuration (flags and `COURIER_*` variables).
//! - [`consumer`]: the consume loop every stage shares (bounded, manual acks, orderly stop).
//! - [`fanout`]: events in, one delivery job per interested webhook out.
//! - [`deliver`]: a job in, a claimed, signed, logged POST out.
//! - [`schedule`]: jobs on their way, now or through the delay ladder (retries).
//! - [`dead`]: parked delivery jobs marked `failed` in the log.
//! - [`batching`]: throttled webhooks' batches: flushing due ones, taking over abandoned
//!   ones, re-cutting after configuration changes.
//! - [`sender`]: the outbound HTTP request.
//! - [`webhooks`]: the cache of webhook configuration, invalidated by the gateway's announcements.
//! - [`admin`]: health and metrics endpoints.
//! - [`metrics`]: this instance's Prometheus registry.
//!
//! [`run`] works until a cancellation token fires; the binary and the tests both call it.

pub mod admin;
pub mod batching;
pub mod config;
pub mod consumer;
pub mod dead;
pub mod deliver;
pub mod fanout;
pub mod metrics;
pub mod schedule;
pub mod sender;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use courier_broker::{Publisher, Topology};
use courier_core::catalog::Catalog;
use courier_core::retry::RetryDefaults;
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
    /// The deployment's retry schedule and attempt limit, under each webhook's own.
    pub retry_defaults: RetryDefaults,
    pub catalog: Catalog,
    pub sender: sender::Sender,
    pub log_retention: Duration,
    pub metrics: metrics::Metrics,
    /// Production: a Redis that may evict keys makes the worker not ready.
    pub strict_redis: bool,
    /// Flush timeout and lease of throttled webhooks' batches.
    pub batch_timing: courier_store::batch::BatchTiming,
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
    courier_telemetry::settings::check_eviction_policy(
        store.eviction_policy().await,
        shared.profile,
    );
    let topology = Topology::new(shared.prefix.clone());
    let topology = topology.with_ladder(config.delay_ladder.clone());
    let conn = courier_broker::connect(&shared.amqp_url, "courier-worker", Duration::from_secs(10))
        .await
        .context("connecting to RabbitMQ")?;
    topology
        .declare(&conn)
        .await
        .context("declaring the topology")?;
    topology
        .declare_ladder(&conn)
        .await
        .context("declaring the delay queues")?;
    let publisher = Publisher::new(&conn, Duration::from_secs(10))
        .await
        .context("opening the publishing channel")?;
    let pipeline = Arc::new(Pipeline {
        webhooks: Arc::new(webhooks::WebhookCache::new(store.clone())),
        store,
        publisher,
        topology: topology.clone(),
        retry_defaults: shared.retry_defaults(),
        catalog,
        sender: sender::Sender::new().context("building the HTTP client")?,
        log_retention: config.log_retention,
        metrics: metrics::Metrics::default(),
        strict_redis: shared.profile == courier_telemetry::Profile::Production,
        batch_timing: courier_store::batch::BatchTiming {
            flush_timeout: config.flush_timeout,
            lease: config.batch_lease,
        },
        instance: uuid::Uuid::new_v4().simple().to_string(),
    });

    // A failing stage stops the others, so the process exits and is restarted.
    let stop = shutdown.child_token();
    let admin_addr = admin.local_addr()?;
    let (events_queue, deliveries_queue) = (topology.events_queue(), topology.deliveries());
    let dead_log_queue = topology.dead_log_queue();
    let changes = pipeline.webhooks.changes();
    let following = tokio::spawn(pipeline.webhooks.clone().follow(stop.clone()));
    let flushing = tokio::spawn(batching::flush(pipeline.clone(), stop.clone()));
    let recutting = tokio::spawn(batching::follow_changes(
        pipeline.clone(),
        changes,
        stop.clone(),
    ));
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
    let dead = {
        let p = pipeline.clone();
        consumer::consume(
            &conn,
            &dead_log_queue,
            config.prefetch,
            usize::from(config.prefetch),
            config.shutdown_grace,
            stop.clone(),
            move |d| {
                let p = p.clone();
                async move { dead::handle(&p, d).await }
            },
        )
    };
    tracing::info!(admin = %admin_addr, "worker started");
    let stopping = |r: anyhow::Result<()>| {
        stop.cancel();
        r
    };
    let (a, b, c) = tokio::join!(
        async { stopping(fanout.await) },
        async { stopping(deliveries.await) },
        async { stopping(dead.await) }
    );
    let _ = admin_server.await;
    let _ = following.await;
    let _ = flushing.await;
    let _ = recutting.await;
    pipeline.publisher.close().await;
    let _ = conn.close(200, "shutting down").await;
    tracing::info!("worker stopped");
    a.and(b).and(c)
}
