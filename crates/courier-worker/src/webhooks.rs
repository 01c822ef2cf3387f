//! The worker's cache of tenants' webhooks, kept fresh by the configuration
//! channel ([`courier_store::cache`]): a change made through the gateway reaches
//! every worker within milliseconds.

use std::sync::Arc;
use std::time::Duration;

use courier_core::ids::TenantId;
use courier_core::webhook::Webhook;
use courier_store::cache::ConfigCache;
use courier_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// Tenants whose webhooks are kept; past it the cache starts over.
const MAX_TENANTS: usize = 10_000;

/// How long a tenant's webhooks are kept without an announced change.
const MAX_AGE: Duration = Duration::from_secs(60);

pub struct WebhookCache {
    store: Store,
    cache: ConfigCache<TenantId, Arc<Vec<Webhook>>>,
}

impl WebhookCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: ConfigCache::new(MAX_TENANTS, MAX_AGE),
        }
    }

    /// Announced changes from now on (tenant ids). A receiver that lags loses the
    /// oldest; what it missed is caught up by the flush timeout.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<TenantId> {
        self.cache.changes()
    }

    /// The tenant's webhooks.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<Arc<Vec<Webhook>>, StoreError> {
        let read = self
            .cache
            .get(tenant, || async {
                let webhooks = self.store.tenant_webhooks(tenant).await?;
                Ok(Some((tenant.clone(), Arc::new(webhooks))))
            })
            .await?;
        Ok(read.unwrap_or_default())
    }

    /// Follows the configuration channel until `stop`.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        self.cache.follow(&self.store, stop).await;
    }
}
