//! An in-process cache of tenants' webhooks, kept fresh by the configuration
//! channel: a change made through the gateway reaches every worker within
//! milliseconds. While the subscription is down the cache is bypassed, and it is
//! emptied whenever the subscription (re)connects, since changes announced
//! meanwhile were missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::ids::{TenantId, WebhookId};
use courier_core::webhook::Webhook;
use courier_store::{Store, StoreError};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// Tenants whose webhooks are kept; past it the cache starts over.
const MAX_TENANTS: usize = 10_000;

pub struct WebhookCache {
    store: Store,
    entries: Mutex<HashMap<TenantId, Arc<Vec<Webhook>>>>,
    /// Bumped by every invalidation, so a read that raced one is not cached.
    epoch: AtomicU64,
    live: AtomicBool,
    /// Every announced change (the tenant), for those that act on changes.
    changed: tokio::sync::broadcast::Sender<TenantId>,
}

impl WebhookCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            changed: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Announced changes from now on (tenant ids). A receiver that lags loses the
    /// oldest; what it missed is caught up by the flush timeout.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<TenantId> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Arc<Vec<Webhook>>>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tenant's webhooks.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<Arc<Vec<Webhook>>, StoreError> {
        let live = self.live.load(Ordering::Acquire);
        if live {
            if let Some(hit) = self.lock().get(tenant) {
                return Ok(hit.clone());
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let fetched = Arc::new(self.store.tenant_webhooks(tenant).await?);
        if live && self.epoch.load(Ordering::Acquire) == epoch {
            let mut entries = self.lock();
            if entries.len() >= MAX_TENANTS {
                entries.clear();
            }
            entries.insert(tenant.clone(), fetched.clone());
        }
        Ok(fetched)
    }

    /// One webhook of the tenant, as currently configured.
    pub async fn webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<Option<Webhook>, StoreError> {
        Ok(self
            .tenant(tenant)
            .await?
            .iter()
            .find(|w| &w.id == id)
            .cloned())
    }

    fn forget(&self, tenant: Option<&TenantId>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.lock();
        match tenant {
            Some(t) => {
                entries.remove(t);
            }
            None => entries.clear(),
        }
    }

    /// Follows the configuration channel until `stop`, reconnecting with backoff.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.store.config_changes().await {
                Ok(changes) => {
                    let mut changes = Box::pin(changes);
                    backoff = Duration::from_millis(100);
                    self.forget(None);
                    self.live.store(true, Ordering::Release);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            change = changes.next() => match change {
                                Some(tenant) => match TenantId::parse(&tenant) {
                                    Ok(t) => {
                                        self.forget(Some(&t));
                                        let _ = self.changed.send(t);
                                    }
                                    Err(_) => self.forget(None),
                                },
                                None => break,
                            },
                        }
                    }
                    self.live.store(false, Ordering::Release);
                    self.forget(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "configuration channel unavailable; reading webhooks uncached")
                }
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
