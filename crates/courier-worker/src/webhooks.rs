//! The worker's cache of tenants' webhooks, kept fresh by the configuration
//! channel ([`courier_store::cache`]): a change made through the gateway reaches
//! every worker within milliseconds.
//!
//! A webhook whose stored record cannot be read is logged as an ERROR each time the
//! tenant's webhooks are read from Redis (at most once a minute per worker while
//! the configuration channel is followed), not for each event it misses.

use std::sync::Arc;
use std::time::Duration;

use courier_core::ids::TenantId;
use courier_store::cache::ConfigCache;
use courier_store::{Store, StoreError, TenantWebhooks};
use tokio_util::sync::CancellationToken;

/// Tenants whose webhooks are kept; past it the cache starts over.
const MAX_TENANTS: usize = 10_000;

/// How long a tenant's webhooks are kept without an announced change.
const MAX_AGE: Duration = Duration::from_secs(60);

pub struct WebhookCache {
    store: Store,
    cache: ConfigCache<TenantId, Arc<TenantWebhooks>>,
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

    /// The tenant's webhooks: an error only when Redis is unavailable.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<Arc<TenantWebhooks>, StoreError> {
        let read = self
            .cache
            .get(tenant, || async {
                let webhooks = self.store.tenant_webhooks(tenant).await?;
                for u in &webhooks.unreadable {
                    let what = if u.subscription.is_some() {
                        "the events it wants end failed"
                    } else {
                        "not even its subscription reads, so it gets no event (and none is logged)"
                    };
                    tracing::error!(
                        %tenant,
                        webhook_id = %u.id,
                        reason = %u.reason,
                        "a webhook's stored record cannot be read: {what} until an operator repairs it (e.g. restores its key to COURIER_SECRET_KEYS)"
                    );
                }
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
