//! What every handler shares.

use std::sync::Arc;

use courier_broker::{Publisher, Topology};
use courier_core::catalog::Catalog;
use courier_core::retry::RetryDefaults;
use courier_core::webhook::{Rules, UrlPolicy};
use courier_store::Store;
use sha2::{Digest, Sha256};

/// Shared state of one gateway instance.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub store: Store,
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
}

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

    pub fn is_admin_token(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented == self.admin_token_hash
    }
}
