use anyhow::Context as _;
use clap::Parser as _;
use courier_gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

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
