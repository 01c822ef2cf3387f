//! Operator commands the gateway binary runs instead of serving, with the same
//! configuration (flags and `COURIER_*` variables):
//!
//! - `courier-gateway reencrypt-secrets`: re-encrypts every webhook signing secret
//!   and custom header value under the newest key of `COURIER_SECRET_KEYS`, the
//!   step of a key rotation between deploying `new,old` and dropping `old` (and of
//!   an upgrade from a version that stored header values in plaintext).
//! - `courier-gateway reset`: deletes every queue, exchange and Redis key under
//!   `COURIER_PREFIX`, in the dev profile only (`make reset`).

use anyhow::Context as _;
use courier_broker::Topology;
use courier_core::retry::DelayLadder;
use courier_store::{ReencryptReport, Store};
use courier_telemetry::Profile;

use crate::GatewayConfig;

/// A command run instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Re-encrypt every webhook signing secret and custom header value under the
    /// newest key of COURIER_SECRET_KEYS, print the counts, and exit (non-zero if
    /// any record failed). Safe while the services serve, and safe to run again.
    ReencryptSecrets,
    /// Delete every queue, exchange and Redis key under COURIER_PREFIX, print what
    /// went, and exit: a fresh start for a development setup. Dev profile only, with
    /// a non-empty prefix; stop the services first.
    Reset {
        /// The worker's delay ladder, to find its delay queues.
        #[arg(long, env = "COURIER_DELAY_LADDER", default_value = "1s,5s,30s,1m,5m,30m,1h,2h,6h", value_parser = DelayLadder::parse_list)]
        delay_ladder: DelayLadder,
    },
}

/// Runs `command`; the binary exits with its result.
pub async fn run(config: &GatewayConfig, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::ReencryptSecrets => {
            let report = reencrypt_secrets(config).await?;
            println!(
                "re-encrypted {} webhook record(s) under key {}; {} already current, {} failed, {} scanned",
                report.reencrypted,
                config.shared.keyring()?.newest_id(),
                report.current,
                report.failed,
                report.scanned
            );
            anyhow::ensure!(
                report.failed == 0,
                "{} webhook record(s) could not be re-encrypted (see the log: a key missing from COURIER_SECRET_KEYS?)",
                report.failed
            );
            Ok(())
        }
        Command::Reset { delay_ladder } => reset(config, delay_ladder).await,
    }
}

/// Deletes the deployment's queues, exchanges and Redis keys (dev profile only).
async fn reset(config: &GatewayConfig, ladder: &DelayLadder) -> anyhow::Result<()> {
    let shared = &config.shared;
    anyhow::ensure!(
        shared.profile == Profile::Dev,
        "reset deletes everything under COURIER_PREFIX: it runs in the dev profile only (COURIER_PROFILE=dev)"
    );
    anyhow::ensure!(
        !shared.prefix.is_empty(),
        "reset needs a COURIER_PREFIX: without one it would delete the names of every deployment on this broker and Redis"
    );
    let topology = Topology::new(shared.prefix.clone()).with_ladder(ladder.clone());
    let conn = courier_broker::connect(
        &shared.amqp_url,
        "courier-gateway reset",
        std::time::Duration::from_secs(10),
    )
    .await
    .context("connecting to RabbitMQ")?;
    topology
        .delete(&conn)
        .await
        .context("deleting the queues and exchanges")?;
    let _ = conn.close(200, "reset").await;
    let keys = Store::new(&shared.redis_url, &shared.prefix)?
        .delete_all()
        .await
        .context("deleting the Redis keys")?;
    println!(
        "reset prefix '{}': its queues and exchanges are gone, and {keys} Redis key(s)",
        shared.prefix
    );
    Ok(())
}

/// Re-encrypts every webhook record of the deployment under the newest key.
pub async fn reencrypt_secrets(config: &GatewayConfig) -> anyhow::Result<ReencryptReport> {
    let shared = &config.shared;
    let store = Store::new(&shared.redis_url, &shared.prefix)?.with_keyring(shared.keyring()?);
    store
        .reencrypt_webhooks()
        .await
        .context("re-encrypting webhook secrets")
}
