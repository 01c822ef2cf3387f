use anyhow::Context as _;
use clap::Parser as _;
use courier_gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

/// jemalloc: every message allocates many small, short-lived buffers (frames, JSON,
/// headers) on one thread and frees them on another; the system allocator spent
/// about a third of the worker's CPU on that (docs/performance.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    courier_telemetry::logging::init(config.shared.log_format);
    if let Some(command) = &config.command {
        return courier_gateway::maintenance::run(&config, command).await;
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let shutdown = CancellationToken::new();
    courier_telemetry::shutdown::cancel_on_signal(shutdown.clone());
    courier_gateway::run(config, listener, shutdown).await
}
