//! Settings shared by both services, read from flags or `COURIER_*` variables.

use std::fmt;

/// Deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Local development: plain http and loopback targets allowed, a default admin token.
    Dev,
    /// Everything else: https targets only, an admin token must be set.
    Production,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of design §9 that gateway and worker share.
#[derive(Clone, clap::Args)]
pub struct SharedSettings {
    /// `dev` allows http and loopback targets and a default admin token; `production`
    /// requires https targets and an explicit admin token.
    #[arg(
        long,
        env = "COURIER_PROFILE",
        value_enum,
        default_value = "production"
    )]
    pub profile: Profile,

    /// RabbitMQ, the durable event and delivery backbone.
    #[arg(
        long,
        env = "COURIER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Redis: webhook configuration, claims, the delivery log.
    #[arg(
        long,
        env = "COURIER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every exchange, queue and Redis key, so that deployments (and tests)
    /// can share one broker and one Redis. Empty by default.
    #[arg(long, env = "COURIER_PREFIX", default_value = "")]
    pub prefix: String,

    /// Log lines as human-readable text or JSON.
    #[arg(long, env = "COURIER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Event catalog file; without it the built-in catalog (catalog/default.json).
    #[arg(long, env = "COURIER_CATALOG_PATH")]
    pub catalog_path: Option<std::path::PathBuf>,

    /// Default retry schedule of webhooks without their own: `schedule[i]` is the
    /// delay before attempt i+1.
    #[arg(long, env = "COURIER_RETRY_SCHEDULE", default_value = "0s,1m,5m,30m,2h", value_parser = courier_core::retry::Schedule::parse_list)]
    pub retry_schedule: courier_core::retry::Schedule,

    /// Most attempts a webhook's retry policy may ask for.
    #[arg(long, env = "COURIER_MAX_ATTEMPTS_LIMIT", default_value_t = 5)]
    pub max_attempts_limit: u32,

    /// Address ranges deliveries may go to although they are not globally routable
    /// (e.g. `10.20.0.0/16,fd00:1::/64`): every other loopback, private, link-local,
    /// CGNAT, unique-local, multicast, documentation or reserved address is refused
    /// (SSRF protection). Empty by default; the dev profile also allows loopback.
    #[arg(long, env = "COURIER_ALLOWED_TARGET_CIDRS", default_value = "", value_parser = parse_target_cidrs)]
    pub allowed_target_cidrs: TargetCidrs,

    /// Keys that encrypt webhook signing secrets and custom header values at rest,
    /// newest first: `id:base64-of-32-bytes,older-id:...`. The newest encrypts; any
    /// listed key decrypts what names it. Required in production; the dev profile
    /// falls back to a fixed, public dev key.
    #[arg(long, env = "COURIER_SECRET_KEYS", hide_env_values = true, value_parser = parse_keyring)]
    pub secret_keys: Option<courier_core::keyring::Keyring>,

    /// Where spans go: the standard `OTEL_*` variables.
    #[command(flatten)]
    pub traces: crate::traces::TraceSettings,
}

impl fmt::Debug for SharedSettings {
    /// URLs may carry passwords, so they are not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSettings")
            .field("profile", &self.profile)
            .field("prefix", &self.prefix)
            .field("log_format", &self.log_format)
            .field("catalog_path", &self.catalog_path)
            .field("allowed_target_cidrs", &self.allowed_target_cidrs.0)
            .field("secret_keys", &self.secret_keys)
            .field("traces", &self.traces)
            .finish_non_exhaustive()
    }
}

impl SharedSettings {
    /// Settings for a process on this machine with the given prefix (tests, tools).
    pub fn local(prefix: &str) -> Self {
        Self {
            profile: Profile::Dev,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: prefix.into(),
            log_format: LogFormat::Text,
            catalog_path: None,
            retry_schedule: courier_core::retry::RetryDefaults::default().schedule,
            max_attempts_limit: 5,
            allowed_target_cidrs: TargetCidrs::default(),
            secret_keys: None,
            traces: crate::traces::TraceSettings::default(),
        }
    }

    /// The retry defaults of the deployment.
    pub fn retry_defaults(&self) -> courier_core::retry::RetryDefaults {
        courier_core::retry::RetryDefaults {
            schedule: self.retry_schedule.clone(),
            max_attempts_limit: self.max_attempts_limit,
        }
    }

    /// Reads the catalog file, or the built-in catalog without one.
    pub fn catalog(&self) -> anyhow::Result<courier_core::catalog::Catalog> {
        use anyhow::Context as _;
        let Some(path) = &self.catalog_path else {
            return Ok(courier_core::catalog::Catalog::builtin());
        };
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading catalog {}", path.display()))?;
        courier_core::catalog::Catalog::from_json(&json)
            .with_context(|| format!("loading catalog {}", path.display()))
    }
}

/// The ranges of `COURIER_ALLOWED_TARGET_CIDRS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetCidrs(pub Vec<ipnet::IpNet>);

fn parse_target_cidrs(s: &str) -> Result<TargetCidrs, String> {
    courier_core::target::parse_cidrs(s).map(TargetCidrs)
}

fn parse_keyring(s: &str) -> Result<courier_core::keyring::Keyring, String> {
    courier_core::keyring::Keyring::parse(s).map_err(|e| e.to_string())
}

impl SharedSettings {
    /// The addresses deliveries may go to: global ones, the allowed ranges, and
    /// loopback in the dev profile.
    pub fn target_policy(&self) -> courier_core::target::TargetPolicy {
        courier_core::target::TargetPolicy {
            allow_loopback: self.profile == Profile::Dev,
            allowed: self.allowed_target_cidrs.0.clone(),
        }
    }

    /// What webhook URLs may be: https only outside the dev profile, IP literals
    /// within the target policy.
    pub fn url_policy(&self) -> courier_core::webhook::UrlPolicy {
        courier_core::webhook::UrlPolicy {
            allow_http: self.profile == Profile::Dev,
            targets: self.target_policy(),
        }
    }

    /// The keyring of secrets at rest: `COURIER_SECRET_KEYS`, or in the dev profile
    /// the fixed dev key; production refuses to start without keys.
    pub fn keyring(&self) -> anyhow::Result<courier_core::keyring::Keyring> {
        match (&self.secret_keys, self.profile) {
            (Some(keys), _) => Ok(keys.clone()),
            (None, Profile::Dev) => {
                tracing::warn!(
                    "COURIER_SECRET_KEYS is not set: webhook secrets are encrypted with the public dev key (dev profile only)"
                );
                Ok(courier_core::keyring::Keyring::dev())
            }
            (None, Profile::Production) => anyhow::bail!(
                "COURIER_SECRET_KEYS is required outside the dev profile: id:base64-of-32-bytes (e.g. k1:$(openssl rand -base64 32))"
            ),
        }
    }
}

/// Parses durations such as `500ms`, `5m`, `7d` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Logs at start what readiness will say of Redis's eviction policy: Courier needs
/// `noeviction` (keys of webhooks, batches and claims must never vanish).
pub fn check_eviction_policy<E: std::fmt::Display>(policy: Result<String, E>, profile: Profile) {
    match (policy, profile) {
        (Ok(p), _) if p == "noeviction" => {}
        (Ok(p), Profile::Dev) => {
            tracing::warn!(policy = %p, "Redis maxmemory-policy should be noeviction; tolerated in the dev profile")
        }
        (Ok(p), Profile::Production) => tracing::error!(
            policy = %p,
            "Redis maxmemory-policy must be noeviction; this instance reports not ready until it is"
        ),
        (Err(e), _) => {
            tracing::warn!(error = %e, "could not read Redis maxmemory-policy (CONFIG GET refused?)")
        }
    }
}
