//! Caps on the deliveries in flight: in all (`COURIER_DELIVERY_CONCURRENCY`,
//! whether a POST starts from the fan-out or from a queued job), and per webhook,
//! adaptively, so that stalling endpoints (answering nothing until their timeout)
//! hold only a few slots of a worker each.
//!
//! A webhook's cap follows how its endpoint answers, up to
//! `COURIER_WEBHOOK_CONCURRENCY`:
//! - a webhook this worker has not seen answer yet starts at [`INITIAL_LIMIT`]; its
//!   first answer opens every slot if it came promptly, else the cap grows from
//!   there;
//! - an answer while the webhook uses all its slots adds one (its demand outgrows
//!   its cap and the endpoint keeps up);
//! - a timeout, a failed or broken connection, or a 429 halves it, down to one;
//! - while an attempt in flight has gone on far longer than its answers take
//!   (over [`PROMPT`] and four times its smoothed answer time), the endpoint has
//!   stopped answering: no new attempt starts while one is in flight.
//!
//! A webhook that has never answered thus never holds more than [`INITIAL_LIMIT`]
//! slots, and one that stops answering holds what it had started by then, without
//! starting more, and soon one.
//!
//! A webhook is also known to answer promptly, or not: its last attempt to end took
//! at most [`PROMPT`], and none of its attempts in flight has taken longer yet. The
//! fan-out attempts a delivery itself only for such a webhook, so a slow endpoint
//! never holds the fan-out; its deliveries go through `courier.deliveries`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use courier_core::delivery::{HttpResult, TransportError};
use courier_core::ids::WebhookId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Webhooks tracked before idle ones are forgotten (and start over as new).
const TRACKED: usize = 10_000;

/// The cap of a webhook this worker has not seen answer yet.
pub const INITIAL_LIMIT: usize = 2;

/// The longest an attempt may take for its webhook to count as answering promptly.
pub const PROMPT: Duration = Duration::from_secs(1);

/// An attempt in flight this many times longer than the webhook's smoothed answer
/// time (and longer than [`PROMPT`]) means its endpoint stopped answering.
const STALLED_FACTOR: u32 = 4;

pub struct InflightLimit {
    max_per_webhook: usize,
    total: Arc<Semaphore>,
    webhooks: Mutex<HashMap<WebhookId, Arc<Endpoint>>>,
}

/// One webhook's slots.
struct Endpoint {
    state: Mutex<State>,
    /// Signalled when a slot frees or the cap grows.
    freed: Notify,
}

struct State {
    /// How many deliveries may be in flight now.
    limit: usize,
    /// When each delivery in flight started, by its number.
    started: Vec<(u64, Instant)>,
    next: u64,
    /// Smoothed time of its answered deliveries; `None` before the first answer.
    latency: Option<Duration>,
    /// Whether its last delivery to end took at most [`PROMPT`]; false before any.
    prompt: bool,
}

/// How an attempt ended, as far as the endpoint's capacity is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The endpoint answered (whatever the status but 429): it keeps up.
    Answered,
    /// No answer in time, no connection, a broken one, or 429 Too Many Requests:
    /// it does not keep up.
    Failed,
    /// Nothing was learned (the target policy refused the address).
    Unknown,
}

impl Ended {
    pub fn of(result: &HttpResult) -> Self {
        match result {
            HttpResult::Response { status: 429, .. } => Self::Failed,
            HttpResult::Response { .. } => Self::Answered,
            HttpResult::Failed(TransportError::Refused) => Self::Unknown,
            HttpResult::Failed(_) => Self::Failed,
        }
    }
}

/// Room for one delivery, held until dropped.
pub struct Slot {
    held: Held,
    max: usize,
    _total: OwnedSemaphorePermit,
}

/// A webhook's slot, given back when dropped (also when a wait for the worker's
/// total is abandoned).
struct Held {
    endpoint: Arc<Endpoint>,
    number: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.endpoint.lock();
        state.started.retain(|(n, _)| *n != self.number);
        drop(state);
        self.endpoint.freed.notify_one();
    }
}

impl Endpoint {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State {
                limit,
                started: Vec::new(),
                next: 0,
                latency: None,
                prompt: false,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves counts that are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot if one is free (and, for `prompt_only`, if the webhook answers
    /// promptly).
    fn take(self: &Arc<Self>, prompt_only: bool) -> Result<Held, Busy> {
        let mut state = self.lock();
        let oldest = state.oldest();
        if prompt_only && !(state.prompt && oldest <= PROMPT) {
            return Err(Busy::NotPrompt);
        }
        if state.started.len() >= state.cap(oldest) {
            return Err(Busy::Full);
        }
        let number = state.next;
        state.next += 1;
        state.started.push((number, Instant::now()));
        Ok(Held {
            endpoint: self.clone(),
            number,
        })
    }

    /// A slot, waiting at most `wait` for one to free (for `prompt_only`, only while
    /// the webhook answers promptly).
    async fn take_within(self: &Arc<Self>, wait: Duration, prompt_only: bool) -> Option<Held> {
        let deadline = Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.take(prompt_only) {
                Ok(held) => return Some(held),
                Err(Busy::Full) => {}
                Err(Busy::NotPrompt) => {
                    // A slot freed for this waiter goes to the next one.
                    self.freed.notify_one();
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, freed).await.ok()?;
        }
    }

    /// The delivery `number` starts now (it may have waited for the worker's total).
    fn restart(&self, number: u64) {
        if let Some(entry) = self.lock().started.iter_mut().find(|(n, _)| *n == number) {
            entry.1 = Instant::now();
        }
    }

    fn in_flight(&self) -> usize {
        self.lock().started.len()
    }

    fn prompt(&self) -> bool {
        self.lock().answers_promptly()
    }
}

impl State {
    /// How long its oldest delivery in flight has been going on (zero for none).
    fn oldest(&self) -> Duration {
        self.started
            .iter()
            .map(|(_, at)| *at)
            .min()
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Its last delivery to end took at most [`PROMPT`], and none in flight has
    /// taken longer yet.
    fn answers_promptly(&self) -> bool {
        self.prompt && self.oldest() <= PROMPT
    }

    /// How many deliveries may be in flight, `oldest` being the age of the oldest:
    /// one while the endpoint seems to have stopped answering, else the limit.
    fn cap(&self, oldest: Duration) -> usize {
        let usual = self.latency.unwrap_or_default() * STALLED_FACTOR;
        if oldest > PROMPT.max(usual) {
            1
        } else {
            self.limit
        }
    }
}

/// Why no slot was taken.
enum Busy {
    Full,
    NotPrompt,
}

impl Slot {
    /// Adapts the webhook's cap and promptness to how this delivery ended.
    pub fn ended(&self, how: Ended) {
        let endpoint = &self.held.endpoint;
        let mut state = endpoint.lock();
        let took = state
            .started
            .iter()
            .find(|(n, _)| *n == self.held.number)
            .map_or(Duration::ZERO, |(_, at)| at.elapsed());
        state.prompt = took <= PROMPT;
        match how {
            Ended::Answered => {
                let first = state.latency.is_none();
                state.latency = Some(match state.latency {
                    None => took,
                    Some(smoothed) => smoothed.mul_f64(0.875) + took.mul_f64(0.125),
                });
                let before = state.limit;
                if first && state.prompt {
                    state.limit = self.max;
                } else if state.started.len() >= state.limit {
                    state.limit = (state.limit + 1).min(self.max);
                }
                let opened = state.limit.saturating_sub(before);
                drop(state);
                for _ in 0..opened {
                    endpoint.freed.notify_one();
                }
            }
            Ended::Failed => state.limit = (state.limit / 2).max(1),
            Ended::Unknown => {}
        }
    }
}

impl InflightLimit {
    pub fn new(per_webhook: usize, total: usize) -> Self {
        Self {
            max_per_webhook: per_webhook.max(1),
            total: Arc::new(Semaphore::new(total.max(1))),
            webhooks: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one delivery to `webhook`, waiting at most `wait` for one of the
    /// webhook's to free (a fast endpoint frees slots within milliseconds, a
    /// stalling one does not, and its job is better sent around than waited for),
    /// then as long as it takes for one of the total.
    pub async fn acquire_within(&self, webhook: &WebhookId, wait: Duration) -> Option<Slot> {
        let endpoint = self.endpoint(webhook);
        let held = endpoint.take_within(wait, false).await?;
        let total = self.total.clone().acquire_owned().await.ok()?;
        endpoint.restart(held.number);
        Some(self.slot(held, total))
    }

    /// For the fan-out: a slot for one delivery to `webhook` if the webhook is known
    /// to answer promptly, waiting at most `wait` for one of its slots to free (it
    /// frees one within a second, usually within milliseconds) and not at all for
    /// one of the worker's total. `None` when it does not answer promptly, or when
    /// it or the worker has its most deliveries in flight.
    pub async fn acquire_prompt_within(&self, webhook: &WebhookId, wait: Duration) -> Option<Slot> {
        let held = self.endpoint(webhook).take_within(wait, true).await?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(self.slot(held, total))
    }

    /// [`InflightLimit::acquire_prompt_within`] without waiting.
    pub fn try_acquire_prompt(&self, webhook: &WebhookId) -> Option<Slot> {
        let held = self.endpoint(webhook).take(true).ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some(self.slot(held, total))
    }

    fn slot(&self, held: Held, total: OwnedSemaphorePermit) -> Slot {
        Slot {
            held,
            max: self.max_per_webhook,
            _total: total,
        }
    }

    fn endpoint(&self, webhook: &WebhookId) -> Arc<Endpoint> {
        let mut webhooks = self.webhooks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(endpoint) = webhooks.get(webhook) {
            return endpoint.clone();
        }
        if webhooks.len() >= TRACKED {
            // Forget webhooks with nothing in flight.
            webhooks.retain(|_, e| e.in_flight() > 0);
        }
        let initial = INITIAL_LIMIT.min(self.max_per_webhook);
        webhooks
            .entry(webhook.clone())
            .or_insert_with(|| Arc::new(Endpoint::new(initial)))
            .clone()
    }

    /// Whether `webhook` is known to answer promptly: its last delivery to end took
    /// at most [`PROMPT`], and none in flight has taken longer yet.
    pub fn answers_promptly(&self, webhook: &WebhookId) -> bool {
        self.endpoint(webhook).prompt()
    }

    /// The cap of `webhook` now (tests and diagnostics).
    pub fn limit(&self, webhook: &WebhookId) -> usize {
        self.endpoint(webhook).lock().limit
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: Duration = Duration::ZERO;

    /// A webhook that has answered promptly once, so the fan-out may use it.
    async fn known(limit: &InflightLimit, webhook: &WebhookId) {
        let slot = limit.acquire_within(webhook, NOW).await.unwrap();
        slot.ended(Ended::Answered);
    }

    #[test]
    fn answers_but_429_count_as_keeping_up() {
        let answer = |status| HttpResult::Response {
            status,
            retry_after: None,
        };
        assert_eq!(Ended::of(&answer(200)), Ended::Answered);
        assert_eq!(Ended::of(&answer(500)), Ended::Answered);
        assert_eq!(Ended::of(&answer(429)), Ended::Failed);
        for (kind, ended) in [
            (TransportError::Timeout, Ended::Failed),
            (TransportError::Connect, Ended::Failed),
            (TransportError::Io, Ended::Failed),
            (TransportError::Refused, Ended::Unknown),
        ] {
            assert_eq!(Ended::of(&HttpResult::Failed(kind)), ended);
        }
    }

    #[tokio::test]
    async fn new_webhooks_start_small_and_each_has_its_own_slots() {
        let limit = InflightLimit::new(16, 100);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let first = limit.acquire_within(&a, NOW).await.unwrap();
        let _second = limit.acquire_within(&a, NOW).await.unwrap();
        assert!(
            limit.acquire_within(&a, NOW).await.is_none(),
            "a new webhook has {INITIAL_LIMIT} slots"
        );
        assert!(
            limit.acquire_within(&b, NOW).await.is_some(),
            "b is not held back by a"
        );
        drop(first);
        assert!(
            limit.acquire_within(&a, NOW).await.is_some(),
            "a freed slot is reusable"
        );
    }

    /// Takes every slot of `webhook` free now.
    async fn fill(limit: &InflightLimit, webhook: &WebhookId) -> Vec<Slot> {
        let mut slots = Vec::new();
        while let Some(slot) = limit.acquire_within(webhook, NOW).await {
            slots.push(slot);
        }
        slots
    }

    #[tokio::test]
    async fn a_first_prompt_answer_opens_every_slot_and_failures_halve_them() {
        let limit = InflightLimit::new(6, 100);
        let a = WebhookId::generate();
        let slots = fill(&limit, &a).await;
        assert_eq!(slots.len(), INITIAL_LIMIT);
        slots[0].ended(Ended::Answered);
        assert_eq!(limit.limit(&a), 6);
        drop(slots);
        assert_eq!(fill(&limit, &a).await.len(), 6);
        let one = limit.acquire_within(&a, NOW).await.unwrap();
        for expected in [3, 1, 1] {
            one.ended(Ended::Failed);
            assert_eq!(limit.limit(&a), expected);
        }
        one.ended(Ended::Unknown);
        assert_eq!(limit.limit(&a), 1);
        drop(one);
        let _only = limit.acquire_within(&a, NOW).await.unwrap();
        assert!(limit.acquire_within(&a, NOW).await.is_none(), "down to one");
    }

    #[tokio::test]
    async fn answers_under_load_grow_the_cap_back_by_one_up_to_the_most() {
        let limit = InflightLimit::new(6, 100);
        let a = WebhookId::generate();
        known(&limit, &a).await;
        let one = limit.acquire_within(&a, NOW).await.unwrap();
        for _ in 0..3 {
            one.ended(Ended::Failed);
        }
        drop(one);
        assert_eq!(limit.limit(&a), 1);
        for expected in [2, 3, 4, 5, 6, 6] {
            let slots = fill(&limit, &a).await;
            slots[0].ended(Ended::Answered);
            assert_eq!(limit.limit(&a), expected);
        }
        // Answers while the webhook uses fewer slots than it may leave it alone.
        let one = limit.acquire_within(&a, NOW).await.unwrap();
        one.ended(Ended::Answered);
        assert_eq!(limit.limit(&a), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_answer_grows_the_cap_by_one_only() {
        let limit = InflightLimit::new(6, 100);
        let a = WebhookId::generate();
        let slots = fill(&limit, &a).await;
        tokio::time::advance(PROMPT * 2).await;
        slots[0].ended(Ended::Answered);
        assert_eq!(limit.limit(&a), INITIAL_LIMIT + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_stops_answering_gets_no_new_attempt() {
        let limit = InflightLimit::new(16, 100);
        let a = WebhookId::generate();
        known(&limit, &a).await;
        let slots: Vec<_> = (0..3)
            .map(|_| limit.try_acquire_prompt(&a).unwrap())
            .collect();
        assert_eq!(limit.limit(&a), 16);
        // Its answers took no time; one in flight for more than PROMPT is stuck.
        tokio::time::advance(PROMPT + Duration::from_millis(10)).await;
        assert!(limit.acquire_within(&a, NOW).await.is_none(), "stalled");
        drop(slots);
        let probe = limit.acquire_within(&a, NOW).await.unwrap();
        assert!(
            limit.acquire_within(&a, NOW).await.is_some(),
            "none in flight is stuck: its cap again"
        );
        drop(probe);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fan_out_gets_slots_only_of_webhooks_known_to_answer_promptly() {
        let limit = InflightLimit::new(16, 100);
        let a = WebhookId::generate();
        assert!(
            limit.try_acquire_prompt(&a).is_none(),
            "never seen to answer"
        );
        known(&limit, &a).await;
        assert!(limit.answers_promptly(&a));
        let slow = limit.try_acquire_prompt(&a).unwrap();
        // An attempt in flight longer than PROMPT: no more from the fan-out, even
        // before it ends.
        tokio::time::advance(PROMPT + Duration::from_millis(20)).await;
        assert!(limit.try_acquire_prompt(&a).is_none());
        assert!(!limit.answers_promptly(&a));
        assert!(
            limit.acquire_within(&a, NOW).await.is_none(),
            "nor queued jobs: it seems to have stopped answering"
        );
        slow.ended(Ended::Answered);
        drop(slow);
        assert!(
            limit.try_acquire_prompt(&a).is_none(),
            "its last attempt was slow"
        );
        known(&limit, &a).await;
        assert!(limit.try_acquire_prompt(&a).is_some(), "prompt again");
    }

    #[tokio::test]
    async fn a_waiting_job_takes_a_slot_freed_meanwhile_or_gives_up() {
        let limit = InflightLimit::new(1, 10);
        let a = WebhookId::generate();
        let held = limit.acquire_within(&a, NOW).await.unwrap();
        let gave_up = limit.acquire_within(&a, Duration::from_millis(20)).await;
        assert!(gave_up.is_none());
        let waiting = limit.acquire_within(&a, Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(held);
        assert!(waiting.await.is_some(), "the freed slot is taken");
    }

    #[tokio::test]
    async fn the_fan_out_waits_a_little_for_a_prompt_webhooks_slot_only() {
        let limit = InflightLimit::new(1, 10);
        let a = WebhookId::generate();
        let never = limit.acquire_within(&a, NOW).await.unwrap();
        assert!(
            limit
                .acquire_prompt_within(&a, Duration::from_secs(5))
                .await
                .is_none(),
            "not known to answer promptly: no wait at all"
        );
        never.ended(Ended::Answered);
        let busy = never;
        let waiting = limit.acquire_prompt_within(&a, Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "at its cap: waits"
        );
        drop(busy);
        let _held = waiting.await.expect("takes the freed slot");
        assert!(
            limit
                .acquire_prompt_within(&a, Duration::from_millis(20))
                .await
                .is_none(),
            "gives up after its wait"
        );
    }

    #[tokio::test]
    async fn every_webhook_shares_the_total() {
        let limit = InflightLimit::new(2, 3);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        known(&limit, &a).await;
        known(&limit, &b).await;
        let _a1 = limit.try_acquire_prompt(&a).unwrap();
        let a2 = limit.try_acquire_prompt(&a).unwrap();
        let _b1 = limit.try_acquire_prompt(&b).unwrap();
        assert!(
            limit.try_acquire_prompt(&b).is_none(),
            "the worker is at its cap"
        );
        let waiting = limit.acquire_within(&b, Duration::from_secs(5));
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(a2);
        assert!(waiting.await.is_some(), "a slot freed elsewhere is taken");
    }

    #[tokio::test]
    async fn a_wait_for_the_total_abandoned_gives_the_webhooks_slot_back() {
        let limit = InflightLimit::new(1, 1);
        let (a, b) = (WebhookId::generate(), WebhookId::generate());
        let _total = limit.acquire_within(&a, NOW).await.unwrap();
        let mut waiting = Box::pin(limit.acquire_within(&b, NOW));
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "waits for the total"
        );
        assert_eq!(limit.endpoint(&b).in_flight(), 1);
        drop(waiting);
        assert_eq!(limit.endpoint(&b).in_flight(), 0);
    }
}
