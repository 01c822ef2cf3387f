//! Operator commands the gateway binary runs instead of serving, with the same
//! configuration (flags and `COURIER_*` variables):
//!
//! - `courier-gateway reencrypt-secrets`: re-encrypts every webhook signing secret
//!   and custom header value under the newest key of `COURIER_SECRET_KEYS`, the
//!   step of a key rotation between deploying `new,old` and dropping `old` (and of
//!   an upgrade from a version that stored header values in plaintext).

use anyhow::Context as _;
use courier_store::{ReencryptReport, Store};

use crate::GatewayConfig;

/// A command run instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Re-encrypt every webhook signing secret and custom header value under the
    /// newest key of COURIER_SECRET_KEYS, print the counts, and exit (non-zero if
    /// any record failed). Safe while the services serve, and safe to run again.
    ReencryptSecrets,
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
    }
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
