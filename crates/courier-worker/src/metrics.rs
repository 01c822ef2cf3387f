//! The worker's Prometheus metrics. Each instance owns its registry, so two workers
//! in one process (tests) never mix their figures.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What became of a consumed event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventResult {
    /// Every job it produced was confirmed.
    fanned_out,
    /// It could never be processed and went to the dead-letter queue.
    parked,
    /// A dependency failed; it is handled again after a pause.
    paused,
}

/// What became of a delivery (a consumed job, or an attempt from the fan-out).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum JobResult {
    delivered,
    retry,
    failed,
    cancelled,
    /// Another copy of the job already ran this attempt; nothing was sent.
    duplicate,
    parked,
    /// A dependency failed; it is handled again after a pause.
    paused,
}

/// What became of a delivery whose webhook's stored record cannot be read.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UnreadableResult {
    /// It ended `failed` in the delivery log, without a POST.
    failed,
    /// Not even the webhook's subscription reads, so whether it wants the event is
    /// unknown: nothing was delivered or logged.
    undecided,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnreadableLabels {
    result: UnreadableResult,
}

/// Why a delivery job went back into the delay ladder without an attempt (each
/// time one more message through the broker).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeferReason {
    /// Its wait was not over when it came out of a delay queue.
    not_due,
    /// Its webhook had its most deliveries in flight in this worker.
    saturated,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeferLabels {
    reason: DeferReason,
}

/// What became of a copy of a parked message (`courier.dead.log`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeadResult {
    /// A delivery job whose batch was marked `failed` in the log.
    recorded,
    /// Nothing to record: not a delivery job, or its series had already ended.
    ignored,
    /// Redis was unavailable; it is handled again after a pause.
    paused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLabels {
    result: DeadResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    result: EventResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    outcome: JobResult,
}

/// The worker's counters and its registry.
pub struct Metrics {
    registry: Registry,
    batch_size: Histogram,
    events: Family<EventLabels, Counter>,
    jobs_published: Counter,
    jobs_consumed: Counter,
    deliveries: Family<JobLabels, Counter>,
    jobs_deferred: Family<DeferLabels, Counter>,
    unreadable: Family<UnreadableLabels, Counter>,
    dead_letters: Family<DeadLabels, Counter>,
    /// Attempt durations, latencies, retries, dead letters, dependency errors.
    pub flow: crate::observe::FlowMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        let jobs_published = Counter::default();
        let jobs_consumed = Counter::default();
        let deliveries = Family::<JobLabels, Counter>::default();
        let batch_size = Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0, 10.0]);
        registry.register(
            "courier_batch_size",
            "Events per batch handed on for throttled webhooks",
            batch_size.clone(),
        );
        let jobs_deferred = Family::<DeferLabels, Counter>::default();
        let dead_letters = Family::<DeadLabels, Counter>::default();
        let unreadable = Family::<UnreadableLabels, Counter>::default();
        registry.register(
            "courier_unreadable_webhook_deliveries",
            "Deliveries for webhooks whose stored record cannot be read: failed (ended failed in the log without a POST), undecided (not even its subscription reads; not delivered)",
            unreadable.clone(),
        );
        registry.register(
            "courier_events_consumed",
            "Events consumed from the intake queue, by result",
            events.clone(),
        );
        registry.register(
            "courier_jobs_published",
            "Delivery jobs published and confirmed by the broker",
            jobs_published.clone(),
        );
        registry.register(
            "courier_jobs_consumed",
            "Delivery jobs consumed to their end (attempted, found done, cancelled or parked)",
            jobs_consumed.clone(),
        );
        registry.register(
            "courier_deliveries",
            "Deliveries handled, from delivery jobs or straight from the fan-out, by outcome",
            deliveries.clone(),
        );
        registry.register(
            "courier_jobs_deferred",
            "Delivery jobs sent back into the delay ladder without an attempt, each one broker message: not_due (their wait was not over), saturated (their webhook had its most deliveries in flight)",
            jobs_deferred.clone(),
        );
        registry.register(
            "courier_dead_letter_copies",
            "Copies of parked messages consumed to update the delivery log, by result",
            dead_letters.clone(),
        );
        let flow = crate::observe::FlowMetrics::register(&mut registry);
        Self {
            registry,
            batch_size,
            events,
            jobs_published,
            jobs_consumed,
            deliveries,
            jobs_deferred,
            unreadable,
            dead_letters,
            flow,
        }
    }
}

impl Metrics {
    pub fn event(&self, result: EventResult) {
        self.events.get_or_create(&EventLabels { result }).inc();
    }

    pub fn jobs_published(&self, n: usize) {
        self.jobs_published
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    pub fn job_consumed(&self) {
        self.jobs_consumed.inc();
    }

    pub fn delivery(&self, outcome: JobResult) {
        self.deliveries.get_or_create(&JobLabels { outcome }).inc();
    }

    pub fn job_deferred(&self, reason: DeferReason) {
        self.jobs_deferred
            .get_or_create(&DeferLabels { reason })
            .inc();
    }

    pub fn unreadable(&self, result: UnreadableResult) {
        self.unreadable
            .get_or_create(&UnreadableLabels { result })
            .inc();
    }

    pub fn dead_letter(&self, result: DeadResult) {
        self.dead_letters
            .get_or_create(&DeadLabels { result })
            .inc();
    }

    pub fn batch_sent(&self, events: usize) {
        self.batch_size.observe(events as f64);
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
