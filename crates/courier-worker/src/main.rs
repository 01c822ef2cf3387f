use anyhow::Context as _;
use clap::Parser as _;
use courier_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

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
