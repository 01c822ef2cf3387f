//! Courier's Redis adapter.
//!
//! - [`batch`]: the batch accumulator of throttled webhooks; [`batch::codec`] is how
//!   it stores events (pure encode and decode functions).
//! - [`cache`]: in-process caches of configuration, kept fresh by the configuration
//!   channel.
//! - [`keys`]: every key name, under the deployment's prefix.
//! - [`scripts`]: the Lua scripts that make multi-key updates atomic; they take the
//!   time from Redis `TIME`, never from a replica's clock.
//! - [`repo`]: tenants, API keys and webhooks.
//! - [`purge`]: removing everything of a deleted tenant, in pages, resumably.
//! - [`log`]: attempt claims and the delivery log record (design §6).
//! - [`history`]: the delivery log in pages: listings, dead letters, export, imports.
//! - [`sealed`]: webhook records with their signing secrets and custom header
//!   values encrypted at rest, and their re-encryption under the newest key.
//! - [`ratelimit`]: the per-tenant ingest token bucket shared by gateway replicas.
//! - [`lease`]: names held by one holder at a time across replicas (operator
//!   operations that must not run twice at once).
//!
//! [`Store`] is the one handle both services use: one multiplexed connection plus
//! the key names.

pub mod batch;
pub mod cache;
pub mod history;
pub mod keys;
pub mod lease;
pub mod log;
pub mod purge;
pub mod ratelimit;
pub mod repo;
mod scripts;
pub mod sealed;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use history::{BatchAttempts, DeadLetterEntry, DeliverySummary, IndexCursor, Page, Span};
pub use keys::Keys;
pub use log::{Claim, ClaimRequest, DeliveryRecord};
pub use purge::{PassEnd, PurgePass};
pub use ratelimit::{Bucket, Take};
pub use repo::{AuditRecord, CreateTenant, CreateWebhook, DeleteTenant, TenantWebhooks, Versioned};
pub use sealed::{ReencryptReport, Subscription, UnreadableWebhook};

/// Errors at the Redis boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis configuration: {0}")]
    Config(String),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again can never help: the stored data itself is unreadable
    /// (corrupt, of the wrong type, or failing a script that reads it), as opposed
    /// to Redis being unreachable, slow, loading, failing over or out of memory,
    /// which passes. A permanent error ends the work it hit (`failed` in the log,
    /// or parked) instead of pausing it forever.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Corrupt(_) => true,
            Self::Config(_) => false,
            Self::Redis(e) => {
                e.kind() == redis::ErrorKind::TypeError
                    || e.code() == Some("WRONGTYPE")
                    || (e.kind() == redis::ErrorKind::ResponseError
                        && e.detail().is_some_and(|d| d.contains("user_script")))
            }
        }
    }
}

/// What readiness needs to know about Redis.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisHealth {
    pub reachable: bool,
    pub eviction_policy: Option<String>,
}

impl RedisHealth {
    /// Keys (webhooks, batches, claims) must never be evicted: anything but
    /// `noeviction` makes a production deployment not ready. An unreadable policy
    /// is not held against it.
    pub fn acceptable(&self, strict: bool) -> bool {
        self.reachable
            && (!strict
                || self
                    .eviction_policy
                    .as_deref()
                    .is_none_or(|p| p == "noeviction"))
    }
}

/// A handle on the deployment's Redis data. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    redis: Redis,
    keys: Keys,
    url: String,
    /// Seals and opens webhook signing secrets and custom header values.
    keyring: sealed::SharedKeyring,
    /// Claims made through this store, to trim log indexes every so often.
    claims: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a connection attempt may take before the command that needed it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for its answer: a Redis that stops answering (a cut
/// network) fails commands instead of hanging the callers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One multiplexed connection shared by every task of the process, made on first
/// use and remade by redis-rs's [`ConnectionManager`] after it breaks.
///
/// Commands from concurrent tasks are pipelined on the one socket, so a command
/// costs no checkout: a pool of connections would pay a round trip per checkout
/// to check the connection (deadpool-redis sends UNWATCH and PING) and spread the
/// same commands over many sockets. No caller needs a connection of its own (no
/// MULTI/WATCH, no blocking command); pub/sub has its own.
#[derive(Clone)]
struct Redis {
    client: redis::Client,
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
}

impl Redis {
    fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// The shared connection; while Redis is unreachable each call fails fast
    /// (one connection attempt at a time) and the manager keeps trying to reconnect.
    async fn get(&self) -> Result<Conn, StoreError> {
        let manager = self
            .conn
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_max_delay(500)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(Conn(manager.clone()))
    }
}

/// A handle on the shared connection, used as `&mut *conn` in commands.
struct Conn(ConnectionManager);

impl std::ops::Deref for Conn {
    type Target = ConnectionManager;

    fn deref(&self) -> &ConnectionManager {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ConnectionManager {
        &mut self.0
    }
}

impl Store {
    /// A store on the Redis at `url`; the connection is made on first use. Secrets
    /// are sealed with the dev profile's fixed key until [`Store::with_keyring`]
    /// gives the deployment's keyring (both services always do).
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            redis: Redis::new(url)?,
            keys: Keys::new(prefix),
            url: url.to_owned(),
            keyring: Arc::new(courier_core::keyring::Keyring::dev()),
            claims: Arc::default(),
        })
    }

    /// The same store sealing webhook secrets and header values with `keyring`
    /// (newest key first).
    pub fn with_keyring(mut self, keyring: courier_core::keyring::Keyring) -> Self {
        self.keyring = Arc::new(keyring);
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.redis.get().await
    }

    /// The tenant ids of configuration changes as they are announced, on a
    /// connection of its own. The stream ends when that connection drops; changes
    /// made meanwhile are not replayed, so a subscriber must forget what it cached.
    pub async fn config_changes(
        &self,
    ) -> Result<impl futures::Stream<Item = String> + Send + 'static, StoreError> {
        use futures::StreamExt as _;
        let client = redis::Client::open(self.url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.keys.config_channel()).await?;
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move { msg.get_payload::<String>().ok() }))
    }

    /// Round trip to Redis.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut *conn).await?;
        Ok(())
    }

    /// Redis's `maxmemory-policy`: Courier needs `noeviction`, or keys (webhooks,
    /// batches, claims) could vanish under memory pressure.
    pub async fn eviction_policy(&self) -> Result<String, StoreError> {
        let mut conn = self.conn().await?;
        let (_, policy): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut *conn)
            .await?;
        Ok(policy)
    }

    /// Redis as readiness sees it: reachable now, and its eviction policy (`None`
    /// when the server does not let clients read it, as some managed services do).
    pub async fn health(&self) -> RedisHealth {
        match self.eviction_policy().await {
            Ok(policy) => RedisHealth {
                reachable: true,
                eviction_policy: Some(policy),
            },
            Err(_) => RedisHealth {
                reachable: self.ping().await.is_ok(),
                eviction_policy: None,
            },
        }
    }

    /// Deletes every key under the prefix (tests and teardown). Refuses an empty prefix.
    pub async fn delete_all(&self) -> Result<usize, StoreError> {
        if self.keys.prefix().is_empty() {
            return Err(StoreError::Config(
                "refusing to delete every key without a prefix".into(),
            ));
        }
        let mut conn = self.conn().await?;
        let pattern = format!("{}*", self.keys.prefix());
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut *conn)
                .await?;
            if !batch.is_empty() {
                deleted += batch.len();
                redis::cmd("DEL")
                    .arg(&batch)
                    .query_async::<()>(&mut *conn)
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError};

    /// The error a server answer (`-CODE detail`) becomes.
    fn server(line: &str) -> StoreError {
        let value = redis::parse_redis_value(format!("{line}\r\n").as_bytes())
            .and_then(redis::Value::extract_error);
        match value {
            Err(e) => e.into(),
            Ok(v) => panic!("{line} is not an error: {v:?}"),
        }
    }

    #[test]
    fn unreadable_data_is_permanent_and_an_unwell_redis_is_not() {
        let permanent = [
            StoreError::Corrupt("bad record".into()),
            RedisError::from((ErrorKind::TypeError, "response was of incompatible type")).into(),
            server("-WRONGTYPE Operation against a key holding the wrong kind of value"),
            server(
                "-ERR user_script:12: attempt to perform arithmetic on a nil value script: 1f0b",
            ),
        ];
        for e in &permanent {
            assert!(e.is_permanent(), "{e}");
        }
        let transient = [
            StoreError::Redis(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()),
            RedisError::from((ErrorKind::BusyLoadingError, "loading")).into(),
            RedisError::from((ErrorKind::ReadOnly, "replica")).into(),
            server("-OOM command not allowed when used memory > 'maxmemory'."),
            server("-LOADING Redis is loading the dataset in memory"),
            server("-READONLY You can't write against a read only replica."),
            StoreError::Config("no prefix".into()),
        ];
        for e in &transient {
            assert!(!e.is_permanent(), "{e}");
        }
    }
}
