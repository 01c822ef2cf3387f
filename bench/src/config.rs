//! Command-line flags, the scenarios, and the sizes of one run (full or `--quick`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;

/// Benchmark of Courier on this machine: starts the release gateway and worker as
/// child processes against the local RabbitMQ and Redis, drives load over HTTP and
/// AMQP, prints a table and writes the figures as JSON. A missed target is reported
/// as MISS and does not fail the run; a crashed service or a scenario that delivers
/// nothing does.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "courier-bench", version)]
pub struct Args {
    /// Scenarios to run, comma-separated (default: all, in the documented order).
    /// Ratios to the broker ceiling need `ceiling` in the list.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,

    /// Shorter durations and smaller counts: a smoke run of about two minutes.
    #[arg(long)]
    pub quick: bool,

    /// Where the JSON results go (default: bench-results.json at the repository root).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Directory holding the courier-gateway and courier-worker binaries to measure;
    /// relative paths are taken from the repository root.
    #[arg(long, env = "COURIER_BIN_DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// RabbitMQ of the run (loopback).
    #[arg(
        long,
        env = "COURIER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Redis of the run (loopback).
    #[arg(
        long,
        env = "COURIER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// COURIER_DELIVERY_CONCURRENCY given to the worker; the slow-receiver target
    /// is derived from it.
    #[arg(long, default_value_t = 256)]
    pub delivery_concurrency: usize,

    /// COURIER_WEBHOOK_CONCURRENCY given to the worker (most deliveries in flight to
    /// one webhook); default: the delivery concurrency, so that the one webhook of
    /// the slow-receiver scenario can use all of it. The product's default is 16.
    #[arg(long)]
    pub webhook_concurrency: Option<usize>,

    /// COURIER_PREFETCH given to the worker.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,

    /// Concurrent HTTP connections of the ingest load generator.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// Events queued before the worker starts in the backlog scenario
    /// (default 200000, or 20000 with --quick).
    #[arg(long)]
    pub backlog_events: Option<u64>,
}

/// The scenarios, in the order a run performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// The raw broker: confirmed persistent publishes into a quorum queue, consumed
    /// with manual acks. No Courier code on the path.
    Ceiling,
    /// 100 events per request over many connections; no worker.
    IngestBatched,
    /// One event per request over many connections; no worker.
    IngestSingle,
    /// Events delivered per second to one webhook with throttling 0.
    #[value(name = "e2e-t0")]
    E2eT0,
    /// Events delivered per second to one webhook with throttling 10.
    #[value(name = "e2e-t10")]
    E2eT10,
    /// Deliveries per second when every event goes to three webhooks.
    #[value(name = "fanout-3")]
    Fanout3,
    /// Latency percentiles at a steady 1,000 events per second.
    #[value(name = "latency-1k")]
    Latency1k,
    /// Deliveries per second against a receiver that answers after 100 ms.
    SlowReceiver,
    /// Draining a backlog queued while the worker was stopped.
    Backlog,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Ceiling,
        Scenario::IngestBatched,
        Scenario::IngestSingle,
        Scenario::E2eT0,
        Scenario::E2eT10,
        Scenario::Fanout3,
        Scenario::Latency1k,
        Scenario::SlowReceiver,
        Scenario::Backlog,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ceiling => "ceiling",
            Scenario::IngestBatched => "ingest-batched",
            Scenario::IngestSingle => "ingest-single",
            Scenario::E2eT0 => "e2e-t0",
            Scenario::E2eT10 => "e2e-t10",
            Scenario::Fanout3 => "fanout-3",
            Scenario::Latency1k => "latency-1k",
            Scenario::SlowReceiver => "slow-receiver",
            Scenario::Backlog => "backlog",
        }
    }
}

/// Durations and counts of one run.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Ceiling and ingest: load before the measured window.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Ceiling and ingest: the measured window.
    #[serde(with = "secs")]
    pub window: Duration,
    /// e2e-t0 and e2e-t10: events sent.
    pub e2e_events: u64,
    /// fanout-3: events sent (each becomes three deliveries).
    pub fanout_events: u64,
    /// latency-1k: how long events are sent at 1,000 per second.
    #[serde(with = "secs")]
    pub latency_duration: Duration,
    /// slow-receiver: deliveries ignored after the first one arrives.
    #[serde(with = "secs")]
    pub slow_warmup: Duration,
    /// slow-receiver: the measured window.
    #[serde(with = "secs")]
    pub slow_window: Duration,
    /// backlog: events queued before the worker starts.
    pub backlog_events: u64,
    /// Longest wait for the last delivery of a count-bound scenario.
    #[serde(with = "secs")]
    pub drain_deadline: Duration,
    /// Longest wait for the backlog to drain.
    #[serde(with = "secs")]
    pub backlog_deadline: Duration,
    /// Longest time spent sending the events of a count-bound scenario.
    #[serde(with = "secs")]
    pub send_deadline: Duration,
    /// The whole run's time: waits are cut to fit it, and scenarios that no
    /// longer fit are skipped.
    #[serde(with = "secs")]
    pub budget: Duration,
}

impl Plan {
    pub fn new(args: &Args) -> Self {
        if args.quick {
            Self {
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(4),
                e2e_events: 3_000,
                fanout_events: 1_000,
                latency_duration: Duration::from_secs(5),
                slow_warmup: Duration::from_secs(1),
                slow_window: Duration::from_secs(4),
                backlog_events: args.backlog_events.unwrap_or(20_000),
                drain_deadline: Duration::from_secs(30),
                backlog_deadline: Duration::from_secs(60),
                send_deadline: Duration::from_secs(30),
                budget: Duration::from_secs(240),
            }
        } else {
            Self {
                warmup: Duration::from_secs(3),
                window: Duration::from_secs(15),
                e2e_events: 30_000,
                fanout_events: 10_000,
                latency_duration: Duration::from_secs(30),
                slow_warmup: Duration::from_secs(3),
                slow_window: Duration::from_secs(15),
                backlog_events: args.backlog_events.unwrap_or(200_000),
                drain_deadline: Duration::from_secs(60),
                backlog_deadline: Duration::from_secs(180),
                send_deadline: Duration::from_secs(60),
                budget: Duration::from_secs(570),
            }
        }
    }
}

/// The repository root: this package's parent directory.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `path` as is when absolute, else under the repository root.
pub fn from_root(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        repo_root().join(path)
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Args {
    /// The per-webhook concurrency the worker gets.
    pub fn webhook_concurrency(&self) -> usize {
        self.webhook_concurrency
            .unwrap_or(self.delivery_concurrency)
    }
}
