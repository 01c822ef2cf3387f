//! In-process caches of configuration (a worker's webhooks, a gateway's API keys),
//! kept fresh by the configuration channel.
//!
//! Every change to a tenant's webhooks or keys is announced on the channel (the
//! tenant's id) by the script that makes it, so a cache drops what it holds of that
//! tenant within milliseconds. While the subscription is down the cache is bypassed,
//! and it is emptied whenever the subscription (re)connects, since changes announced
//! meanwhile were missed. Entries also expire after a maximum age, so that nothing
//! stays cached for long even if an announcement were lost.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use courier_core::ids::TenantId;
use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{Store, StoreError};

struct Entry<V> {
    tenant: TenantId,
    value: V,
    at: Instant,
}

/// Values of `K` read from Redis, each belonging to one tenant.
pub struct ConfigCache<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    /// Bumped by every invalidation, so a read that raced one is not cached.
    epoch: AtomicU64,
    live: AtomicBool,
    max_entries: usize,
    max_age: Duration,
    /// Every announced change (the tenant), for those that act on changes.
    changed: broadcast::Sender<TenantId>,
}

impl<K: Eq + Hash + Clone, V: Clone> ConfigCache<K, V> {
    /// A cache of at most `max_entries` (past it, it starts over), each kept at most
    /// `max_age`. It caches nothing until [`ConfigCache::follow`] runs.
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            max_entries,
            max_age,
            changed: broadcast::channel(1024).0,
        }
    }

    /// Announced changes from now on (tenant ids). A receiver that lags loses the
    /// oldest.
    pub fn changes(&self) -> broadcast::Receiver<TenantId> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`: cached, or read by `fetch` (which gives the tenant it
    /// belongs to; `None`, e.g. an unknown API key, is never cached).
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<Option<V>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<(TenantId, V)>, StoreError>>,
    {
        let live = self.live.load(Ordering::Acquire);
        if live {
            if let Some(hit) = self.lock().get(key) {
                if hit.at.elapsed() < self.max_age {
                    return Ok(Some(hit.value.clone()));
                }
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some((tenant, value)) = fetch().await? else {
            return Ok(None);
        };
        if live && self.epoch.load(Ordering::Acquire) == epoch {
            let mut entries = self.lock();
            if entries.len() >= self.max_entries {
                entries.clear();
            }
            entries.insert(
                key.clone(),
                Entry {
                    tenant,
                    value: value.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok(Some(value))
    }

    /// Drops what is cached of `tenant` (after this process changed it: the
    /// announcement reaches it a moment later).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        self.forget(Some(tenant));
    }

    fn forget(&self, tenant: Option<&TenantId>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.lock();
        match tenant {
            Some(t) => entries.retain(|_, e| &e.tenant != t),
            None => entries.clear(),
        }
    }

    /// Follows the configuration channel until `stop`, reconnecting with backoff.
    pub async fn follow(&self, store: &Store, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match store.config_changes().await {
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
                    tracing::warn!(error = %e, "configuration channel unavailable; reading configuration uncached")
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    async fn read(cache: &ConfigCache<String, u32>, key: &str, value: u32) -> u32 {
        cache
            .get(
                &key.to_owned(),
                || async move { Ok(Some((tenant(key), value))) },
            )
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn nothing_is_cached_while_the_channel_is_not_followed() {
        let cache = ConfigCache::new(10, Duration::from_secs(60));
        assert_eq!(read(&cache, "acme", 1).await, 1);
        assert_eq!(read(&cache, "acme", 2).await, 2);
    }

    #[tokio::test]
    async fn a_change_of_a_tenant_drops_only_its_entries() {
        let cache = ConfigCache::new(10, Duration::from_secs(60));
        cache.live.store(true, Ordering::Release);
        assert_eq!(read(&cache, "acme", 1).await, 1);
        assert_eq!(read(&cache, "globex", 1).await, 1);
        assert_eq!(read(&cache, "acme", 2).await, 1, "cached");
        cache.forget(Some(&tenant("acme")));
        assert_eq!(read(&cache, "acme", 2).await, 2, "read again");
        assert_eq!(read(&cache, "globex", 2).await, 1, "still cached");
    }

    #[tokio::test]
    async fn entries_expire_and_unknown_keys_are_not_cached() {
        let cache = ConfigCache::<String, u32>::new(10, Duration::ZERO);
        cache.live.store(true, Ordering::Release);
        assert_eq!(read(&cache, "acme", 1).await, 1);
        assert_eq!(read(&cache, "acme", 2).await, 2, "expired at once");
        let missing = cache
            .get(&"nobody".to_owned(), || async { Ok(None) })
            .await
            .unwrap();
        assert_eq!(missing, None);
        assert!(!cache.lock().contains_key("nobody"));
    }
}
