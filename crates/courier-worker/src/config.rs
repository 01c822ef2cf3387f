//! The worker's typed configuration.

use std::net::SocketAddr;
use std::time::Duration;

use courier_core::retry::DelayLadder;
use courier_telemetry::settings::parse_duration;
use courier_telemetry::SharedSettings;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "courier-worker",
    version,
    about = "Courier's fan-out and delivery worker"
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub shared: SharedSettings,

    /// Address of the worker's health endpoints.
    #[arg(
        long,
        env = "COURIER_WORKER_ADMIN_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_addr: SocketAddr,

    /// Messages the broker hands each consumer beyond those it is working on, so
    /// that the next one is at hand when one ends (a consumer's prefetch is its
    /// concurrency plus this).
    #[arg(long, env = "COURIER_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,

    /// Most outbound POSTs in flight in this process.
    #[arg(long, env = "COURIER_DELIVERY_CONCURRENCY", default_value_t = 256)]
    pub delivery_concurrency: usize,

    /// Most deliveries in flight to one webhook in this process. A webhook's own cap
    /// adapts below it: 2 until it first answers (a prompt first answer opens it
    /// fully), one more with each answer while all its slots are in use, halved at
    /// each timeout, failed connection or 429, and no new attempt while one has gone
    /// on far longer than its answers take; so a stalling endpoint holds few slots.
    /// The rest of its jobs wait in the delay ladder, longer each time (1 s, 5 s,
    /// then 30 s with the default ladder) unless it answers promptly and is only busy.
    #[arg(long, env = "COURIER_WEBHOOK_CONCURRENCY", default_value_t = 16)]
    pub webhook_concurrency: usize,

    /// How long delivery log records are kept.
    #[arg(long, env = "COURIER_LOG_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub log_retention: Duration,

    /// TTLs of the delay queues (`courier.delay.{ms}`, one per rung) that carry
    /// retries to their due time. A job waits in the largest rung not longer than
    /// what remains of its delay, so it is never early and at most one smallest rung
    /// late; a delay longer than the top rung takes several hops.
    #[arg(long, env = "COURIER_DELAY_LADDER", default_value = "1s,5s,30s,1m,5m,30m,1h,2h,6h", value_parser = DelayLadder::parse_list)]
    pub delay_ladder: DelayLadder,

    /// How long in-flight deliveries may finish after SIGTERM before they are
    /// abandoned (and redelivered by the broker).
    #[arg(long, env = "COURIER_SHUTDOWN_GRACE", default_value = "35s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long the oldest event waiting in a throttled webhook's batch may wait
    /// before what waits is sent, fewer than N or not.
    #[arg(long, env = "COURIER_FLUSH_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub flush_timeout: Duration,

    /// How long a cut batch may stay unhanded (its replica died between cutting it
    /// and publishing its delivery job) before another replica takes it over.
    #[arg(long, env = "COURIER_BATCH_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub batch_lease: Duration,

    /// Whether deliveries carry the `traceparent` of their attempt's span, so that
    /// receivers can continue the trace. On by default; `false` keeps the trace
    /// context inside the deployment.
    #[arg(
        long,
        env = "COURIER_PROPAGATE_TRACEPARENT",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub propagate_traceparent: bool,

    /// Tests: span processors of this instance's tracer provider in place of the
    /// OTLP exporter.
    #[arg(skip)]
    pub traces_override: Option<courier_telemetry::TracesOverride>,

    /// HTTP(S) proxy every delivery goes through (e.g. `http://egress:3128`), so
    /// that egress leaves from known addresses. Unset: deliveries connect directly
    /// and the environment's proxy variables are ignored. The target policy still
    /// applies to the webhook's host (see the README's security section).
    #[arg(long, env = "COURIER_EGRESS_PROXY", hide_env_values = true, value_parser = crate::guard::ProxyUrl::parse)]
    pub egress_proxy: Option<crate::guard::ProxyUrl>,

    /// Tests: whether loopback targets are allowed, in place of the profile's
    /// choice (allowed in dev only).
    #[arg(skip)]
    pub allow_loopback: Option<bool>,

    /// Tests: the resolver of webhook host names, in place of the system's.
    #[arg(skip)]
    pub resolver: Option<crate::guard::Resolver>,
}

impl WorkerConfig {
    /// Defaults for a worker on this machine under `prefix` (tests and tools).
    pub fn local(prefix: &str) -> Self {
        Self {
            shared: SharedSettings::local(prefix),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            prefetch: 64,
            delivery_concurrency: 64,
            webhook_concurrency: 16,
            log_retention: Duration::from_secs(7 * 24 * 3600),
            delay_ladder: DelayLadder::default(),
            shutdown_grace: Duration::from_secs(35),
            flush_timeout: Duration::from_secs(300),
            batch_lease: Duration::from_secs(30),
            propagate_traceparent: true,
            traces_override: None,
            egress_proxy: None,
            allow_loopback: None,
            resolver: None,
        }
    }
}
