//! A cap on in-flight deliveries per webhook, so one stalling endpoint (answering
//! nothing until its timeout) cannot hold every delivery slot of a worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use courier_core::ids::WebhookId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Webhooks tracked before idle ones are forgotten.
const TRACKED: usize = 10_000;

pub struct InflightLimit {
    per_webhook: usize,
    slots: Mutex<HashMap<WebhookId, Arc<Semaphore>>>,
}

impl InflightLimit {
    pub fn new(per_webhook: usize) -> Self {
        Self {
            per_webhook: per_webhook.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one delivery to `webhook`, held until dropped, waiting at most
    /// `wait` for one to free: a fast endpoint frees slots within milliseconds, a
    /// stalling one does not, and its job is better sent around than waited for.
    pub async fn acquire_within(
        &self,
        webhook: &WebhookId,
        wait: std::time::Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.semaphore(webhook);
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// A slot for one delivery to `webhook`, held until dropped; `None` when the
    /// webhook already has its most deliveries in flight.
    pub fn try_acquire(&self, webhook: &WebhookId) -> Option<OwnedSemaphorePermit> {
        self.semaphore(webhook).try_acquire_owned().ok()
    }

    fn semaphore(&self, webhook: &WebhookId) -> Arc<Semaphore> {
        let semaphore = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= TRACKED {
                // Forget webhooks with nothing in flight.
                slots.retain(|_, s| s.available_permits() < self.per_webhook);
            }
            slots
                .entry(webhook.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_webhook)))
                .clone()
        };
        semaphore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_webhook_has_its_own_slots() {
        let limit = InflightLimit::new(2);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let first = limit.try_acquire(&a).unwrap();
        let _second = limit.try_acquire(&a).unwrap();
        assert!(limit.try_acquire(&a).is_none(), "a is at its cap");
        assert!(limit.try_acquire(&b).is_some(), "b is not held back by a");
        drop(first);
        assert!(limit.try_acquire(&a).is_some(), "a freed slot is reusable");
    }
}
