use anyhow::Context as _;
use clap::Parser as _;
use courier_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// jemalloc: every message allocates many small, short-lived buffers (frames, JSON,
/// headers) on one thread and frees them on another; the system allocator spent
/// about a third of the worker's CPU on that (docs/performance.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = WorkerConfig::parse();
    courier_telemetry::logging::init(config.shared.log_format);
    let admin = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_addr))?;
    let shutdown = CancellationToken::new();
    courier_telemetry::shutdown::cancel_on_signal(shutdown.clone());
    courier_worker::run(config, admin, shutdown).await
}
