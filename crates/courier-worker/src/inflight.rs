//! Caps on the deliveries in flight: in all (`COURIER_DELIVERY_CONCURRENCY`,
//! whether a POST starts from the fan-out or from a queued job), and per webhook, so
//! that one stalling endpoint (answering nothing until its timeout) cannot hold
//! every slot of a worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_core::ids::WebhookId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Webhooks tracked before idle ones are forgotten.
const TRACKED: usize = 10_000;

pub struct InflightLimit {
    per_webhook: usize,
    total: Arc<Semaphore>,
    slots: Mutex<HashMap<WebhookId, Arc<Semaphore>>>,
}

/// Room for one delivery, held until dropped.
pub struct Slot {
    _webhook: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl InflightLimit {
    pub fn new(per_webhook: usize, total: usize) -> Self {
        Self {
            per_webhook: per_webhook.max(1),
            total: Arc::new(Semaphore::new(total.max(1))),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one delivery to `webhook`, waiting at most `wait` for one of the
    /// webhook's to free (a fast endpoint frees slots within milliseconds, a
    /// stalling one does not, and its job is better sent around than waited for),
    /// then as long as it takes for one of the total.
    pub async fn acquire_within(
        &self,
        webhook: &WebhookId,
        wait: std::time::Duration,
    ) -> Option<Slot> {
        let semaphore = self.semaphore(webhook);
        let own = match semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(wait, semaphore.acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        let total = self.total.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _webhook: own,
            _total: total,
        })
    }

    /// A slot for one delivery to `webhook` if one is free now: `None` when the
    /// webhook, or the worker, already has its most deliveries in flight.
    pub fn try_acquire(&self, webhook: &WebhookId) -> Option<Slot> {
        let own = self.semaphore(webhook).try_acquire_owned().ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _webhook: own,
            _total: total,
        })
    }

    fn semaphore(&self, webhook: &WebhookId) -> Arc<Semaphore> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(semaphore) = slots.get(webhook) {
            return semaphore.clone();
        }
        if slots.len() >= TRACKED {
            // Forget webhooks with nothing in flight.
            slots.retain(|_, s| s.available_permits() < self.per_webhook);
        }
        slots
            .entry(webhook.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_webhook)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_webhook_has_its_own_slots() {
        let limit = InflightLimit::new(2, 10);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let first = limit.try_acquire(&a).unwrap();
        let _second = limit.try_acquire(&a).unwrap();
        assert!(limit.try_acquire(&a).is_none(), "a is at its cap");
        assert!(limit.try_acquire(&b).is_some(), "b is not held back by a");
        drop(first);
        assert!(limit.try_acquire(&a).is_some(), "a freed slot is reusable");
    }

    #[tokio::test]
    async fn every_webhook_shares_the_total() {
        let limit = InflightLimit::new(2, 3);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let _a1 = limit.try_acquire(&a).unwrap();
        let a2 = limit.try_acquire(&a).unwrap();
        let _b1 = limit.try_acquire(&b).unwrap();
        assert!(limit.try_acquire(&b).is_none(), "the worker is at its cap");
        let waiting = limit.acquire_within(&b, std::time::Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(a2);
        assert!(waiting.await.is_some(), "a slot freed elsewhere is taken");
    }
}
