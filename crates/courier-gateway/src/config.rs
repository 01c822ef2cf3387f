//! The gateway's typed configuration.

use std::fmt;
use std::net::SocketAddr;

use courier_telemetry::serve::HttpSettings;
use courier_telemetry::{Profile, SharedSettings};

/// Token accepted as the operator's in the dev profile when none is set.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token";

#[derive(Clone, clap::Parser)]
#[command(
    name = "courier-gateway",
    version,
    about = "Courier's ingest and management API"
)]
pub struct GatewayConfig {
    #[command(flatten)]
    pub shared: SharedSettings,

    /// Address the HTTP API listens on.
    #[arg(long, env = "COURIER_GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// Deadlines for reading requests, the idle keep-alive timeout, the cap on
    /// open connections and the shutdown grace of the HTTP server.
    #[command(flatten)]
    pub http: HttpSettings,

    /// Operator token for tenant administration. Required outside the dev profile,
    /// where it defaults to `dev-admin-token`.
    #[arg(long, env = "COURIER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "COURIER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most webhooks one tenant may have, enforced atomically across replicas.
    #[arg(long, env = "COURIER_MAX_WEBHOOKS_PER_TENANT", default_value_t = 3)]
    pub max_webhooks_per_tenant: usize,

    /// Longest wait for the broker to confirm a publish before answering 503.
    #[arg(long, env = "COURIER_PUBLISH_TIMEOUT", default_value = "10s", value_parser = courier_telemetry::settings::parse_duration)]
    pub publish_timeout: std::time::Duration,

    /// Events per second each tenant may ingest, shared by every gateway replica:
    /// `1000/s` (or `1000`, `60000/m`), with a burst of 2 seconds' worth unless given
    /// as `1000/s,burst=5000`. Over it, ingest answers 429 with `Retry-After`.
    /// Unset: unlimited.
    #[arg(long, env = "COURIER_TENANT_RATE_LIMIT", value_parser = crate::limits::RateLimit::parse)]
    pub tenant_rate_limit: Option<crate::limits::RateLimit>,

    /// How long after a deleted tenant's data was first purged the purge goes over
    /// it once more, removing what work in flight at the deletion wrote meanwhile;
    /// the tenant's id can be used again after that. Longer than a delivery
    /// attempt (the largest `timeoutMs` and then some), a batch lease and the
    /// services' configuration caches (60 s).
    #[arg(long, env = "COURIER_TENANT_PURGE_SETTLE", default_value = "2m", value_parser = courier_telemetry::settings::parse_duration)]
    pub tenant_purge_settle: std::time::Duration,

    /// An operator command to run instead of serving.
    #[command(subcommand)]
    pub command: Option<crate::maintenance::Command>,

    /// Tests: span processors of this instance's tracer provider in place of the
    /// OTLP exporter.
    #[arg(skip)]
    pub traces_override: Option<courier_telemetry::TracesOverride>,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("shared", &self.shared)
            .field("addr", &self.addr)
            .field("http", &self.http)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_webhooks_per_tenant", &self.max_webhooks_per_tenant)
            .field("tenant_rate_limit", &self.tenant_rate_limit)
            .field("tenant_purge_settle", &self.tenant_purge_settle)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Defaults for a gateway on this machine under `prefix` (tests and tools).
    pub fn local(prefix: &str) -> Self {
        Self {
            shared: SharedSettings::local(prefix),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: HttpSettings::default(),
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            max_webhooks_per_tenant: 3,
            publish_timeout: std::time::Duration::from_secs(10),
            tenant_rate_limit: None,
            tenant_purge_settle: std::time::Duration::from_secs(120),
            command: None,
            traces_override: None,
        }
    }

    /// The operator token in force, or why there is none.
    pub fn effective_admin_token(&self) -> anyhow::Result<String> {
        match (&self.admin_token, self.shared.profile) {
            (Some(t), _) if t.len() >= 16 || self.shared.profile == Profile::Dev => Ok(t.clone()),
            (Some(_), _) => anyhow::bail!("COURIER_ADMIN_TOKEN must be at least 16 characters"),
            (None, Profile::Dev) => Ok(DEV_ADMIN_TOKEN.to_owned()),
            (None, Profile::Production) => {
                anyhow::bail!("COURIER_ADMIN_TOKEN is required outside the dev profile")
            }
        }
    }
}
