//! What every handler shares.

use std::sync::Arc;

use courier_broker::{Broker, Publisher, Topology};
use courier_core::catalog::Catalog;
use courier_core::retry::RetryDefaults;
use courier_core::tenant::{hash_api_key, ApiKeyRecord};
use courier_core::webhook::{Rules, UrlPolicy};
use courier_store::cache::ConfigCache;
use courier_store::{Store, StoreError};
use sha2::{Digest, Sha256};

/// Shared state of one gateway instance.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub store: Store,
    /// The supervised broker connection (operator passes through `courier.dead`
    /// open channels of their own on it).
    pub broker: Broker,
    pub publisher: Publisher,
    pub topology: Topology,
    pub catalog: Catalog,
    pub url_policy: UrlPolicy,
    pub retry_defaults: RetryDefaults,
    pub max_body_bytes: usize,
    pub max_webhooks_per_tenant: usize,
    /// Production: a Redis that may evict keys makes the service not ready.
    pub strict_redis: bool,
    /// SHA-256 of the operator token, compared as hashes so timing reveals nothing.
    pub admin_token_hash: [u8; 32],
    /// This instance's tracer provider, tracer and propagator.
    pub traces: courier_telemetry::Traces,
    /// This instance's Prometheus registry.
    pub metrics: crate::metrics::Metrics,
    /// Events per second each tenant may ingest (`COURIER_TENANT_RATE_LIMIT`);
    /// `None` is unlimited.
    pub tenant_rate_limit: Option<courier_store::Bucket>,
    /// API keys by the hash of their plaintext, so that a request costs no Redis
    /// round trip to authenticate; a revoked key (or deleted tenant) is announced
    /// on the configuration channel and dropped at once.
    pub api_keys: ConfigCache<String, ApiKeyRecord>,
    /// Work that outlives its request (operations on the dead-letter queue) or
    /// runs beside the requests; the gateway waits for it when it stops.
    pub tasks: tokio_util::task::TaskTracker,
}

/// API keys a gateway keeps; past it the cache starts over.
pub const CACHED_API_KEYS: usize = 10_000;
/// How long a key is kept without an announced change.
pub const API_KEY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    /// What webhooks are validated against.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            catalog: &self.catalog,
            urls: &self.url_policy,
            retry: &self.retry_defaults,
        }
    }

    /// The record of a presented tenant API key, if it is a valid one.
    pub async fn api_key(&self, presented: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_keys
            .get(&hash_api_key(presented), || async {
                let record = self.store.api_key(presented).await?;
                Ok(record.map(|r| (r.tenant_id.clone(), r)))
            })
            .await
    }

    pub fn is_admin_token(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented == self.admin_token_hash
    }
}
