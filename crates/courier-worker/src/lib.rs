//! Courier's worker: fan-out, signed delivery, the delivery log.
//!
//! - [`config`]: the typed configuration (flags and `COURIER_*` variables).
//! - [`consumer`]: the consume loop every stage shares (bounded, manual acks, orderly stop).
//! - [`fanout`]: events in; for each interested webhook a delivery attempt at once,
//!   a delivery job, or a place in its batch.
//! - [`deliver`]: a delivery attempt: claimed, signed, logged POST.
//! - [`schedule`]: jobs on their way, now or through the delay ladder (retries).
//! - [`dead`]: parked delivery jobs marked `failed` in the log.
//! - [`batching`]: throttled webhooks' batches: flushing due ones, taking over abandoned
//!   ones, re-cutting after configuration changes.
//! - [`inflight`]: the caps on deliveries in flight, in all and per webhook
//!   (adaptive), and which webhooks answer promptly.
//! - [`sender`]: the outbound HTTP request.
//! - [`guard`]: where deliveries may connect (the target policy against SSRF) and
//!   the egress proxy.
//! - [`webhooks`]: the cache of webhook configuration, invalidated by the gateway's announcements.
//! - [`admin`]: health and metrics endpoints.
//! - [`metrics`]: this instance's Prometheus registry.
//! - [`observe`]: the spans of consumption and delivery attempts, and the figures of
//!   the delivery flow.
//! - [`carry`]: what events and jobs carry in AMQP headers (trace context, links,
//!   acceptance times).
//!
//! [`run`] works until a cancellation token fires; the binary and the tests both call it.

pub mod admin;
pub mod batching;
pub mod carry;
pub mod config;
pub mod consumer;
pub mod dead;
pub mod deliver;
pub mod fanout;
pub mod guard;
pub mod inflight;
pub mod metrics;
pub mod observe;
pub mod schedule;
pub mod sender;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use consumer::ConsumeSettings;
use courier_broker::{Broker, BrokerSettings, Publisher, Topology};
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
    /// Deliveries in flight, capped in all and per webhook.
    pub inflight: inflight::InflightLimit,
    /// Production: a Redis that may evict keys makes the worker not ready.
    pub strict_redis: bool,
    /// Flush timeout and lease of throttled webhooks' batches.
    pub batch_timing: courier_store::batch::BatchTiming,
    /// This instance's id, part of every claim it holds.
    pub instance: String,
    /// Messages received so far, numbering each message's claims.
    pub received: std::sync::atomic::AtomicU64,
    /// This instance's tracer provider, tracer and propagator.
    pub traces: courier_telemetry::Traces,
    /// Whether deliveries carry the `traceparent` of their attempt's span.
    pub propagate_traceparent: bool,
}

impl Pipeline {
    /// The holder of the claims made for one received message: unique to it within
    /// the instance, across reconnections (which start delivery tags over), so that
    /// a message delivered again while its first delivery's attempt still runs
    /// waits for that attempt's lease instead of taking it for its own.
    pub fn holder(&self, stage: &str) -> String {
        let n = self
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}:{stage}{n}", self.instance)
    }
}

/// Consumes events, delivery jobs and parked-message copies until `shutdown` fires
/// (then drains in-flight work within the grace period), riding out broker and
/// Redis outages. Health endpoints are served on `admin`.
pub async fn run(
    config: WorkerConfig,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = &config.shared;
    let traces = courier_telemetry::Traces::start(
        &shared.traces,
        "courier-worker",
        config.traces_override.as_ref(),
    )
    .context("setting up tracing")?;
    let catalog = shared.catalog()?;
    let store = Store::new(&shared.redis_url, &shared.prefix)?.with_keyring(shared.keyring()?);
    courier_telemetry::settings::check_eviction_policy(
        store.eviction_policy().await,
        shared.profile,
    );
    let topology = Topology::new(shared.prefix.clone()).with_ladder(config.delay_ladder.clone());
    // The broker may be down now or later: the worker waits for it, reconnects,
    // re-declares and resumes consuming by itself.
    let broker = Broker::start(BrokerSettings {
        url: shared.amqp_url.clone(),
        name: "courier-worker".into(),
        topology: topology.clone(),
        declare_ladder: true,
        connect_timeout: Duration::from_secs(10),
        confirm_timeout: Duration::from_secs(10),
    });
    if !broker.wait_connected(Duration::from_secs(10)).await {
        tracing::warn!("the broker is unreachable; waiting for it");
    }
    let publisher = broker.publisher();
    let pipeline = Arc::new(Pipeline {
        webhooks: Arc::new(webhooks::WebhookCache::new(store.clone())),
        store,
        publisher,
        topology: topology.clone(),
        retry_defaults: shared.retry_defaults(),
        catalog,
        sender: sender::Sender::new(&guard::Egress::from_config(&config))
            .context("building the HTTP client")?,
        log_retention: config.log_retention,
        metrics: metrics::Metrics::default(),
        inflight: inflight::InflightLimit::new(
            config.webhook_concurrency,
            config.delivery_concurrency,
        ),
        strict_redis: shared.profile == courier_telemetry::Profile::Production,
        batch_timing: courier_store::batch::BatchTiming {
            flush_timeout: config.flush_timeout,
            lease: config.batch_lease,
        },
        instance: uuid::Uuid::new_v4().simple().to_string(),
        received: std::sync::atomic::AtomicU64::new(0),
        traces: traces.clone(),
        propagate_traceparent: config.propagate_traceparent,
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
            let limits = courier_telemetry::serve::HttpSettings::default();
            courier_telemetry::serve::serve(admin, app, &limits, stop).await
        })
    };
    let stage = |queue: String, concurrency: usize| ConsumeSettings {
        queue,
        prefetch: config.prefetch,
        concurrency,
        grace: config.shutdown_grace,
    };
    let prefetch = usize::from(config.prefetch);
    // The fan-out makes the first attempt of most deliveries (those of webhooks
    // that answer promptly): it runs as many handlers as there are delivery slots.
    let fanout = {
        let p = pipeline.clone();
        consumer::consume(
            &broker,
            stage(events_queue, config.delivery_concurrency.max(prefetch)),
            stop.clone(),
            move |d| {
                let p = p.clone();
                async move { fanout::handle(&p, &d).await }
            },
        )
    };
    let deliveries = {
        let p = pipeline.clone();
        let settings = stage(deliveries_queue, config.delivery_concurrency);
        consumer::consume(&broker, settings, stop.clone(), move |d| {
            let p = p.clone();
            async move { deliver::handle(&p, &d).await }
        })
    };
    let dead = {
        let p = pipeline.clone();
        consumer::consume(
            &broker,
            stage(dead_log_queue, prefetch),
            stop.clone(),
            move |d| {
                let p = p.clone();
                async move { dead::handle(&p, &d).await }
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
    pipeline.publisher.settle().await;
    broker.shutdown().await;
    traces.shutdown().await;
    tracing::info!("worker stopped");
    a.and(b).and(c)
}
