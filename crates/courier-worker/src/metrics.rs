//! The worker's Prometheus metrics. Each instance owns its registry, so two workers
//! in one process (tests) never mix their figures.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What became of a consumed event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventResult {
    /// Every job it produced was confirmed.
    fanned_out,
    /// It could never be processed and went to the dead-letter queue.
    parked,
    /// A dependency failed; it went back to the broker.
    requeued,
}

/// What became of a consumed delivery job.
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
    requeued,
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
    events: Family<EventLabels, Counter>,
    jobs_published: Counter,
    deliveries: Family<JobLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        let jobs_published = Counter::default();
        let deliveries = Family::<JobLabels, Counter>::default();
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
            "courier_deliveries",
            "Delivery jobs consumed, by outcome",
            deliveries.clone(),
        );
        Self {
            registry,
            events,
            jobs_published,
            deliveries,
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

    pub fn delivery(&self, outcome: JobResult) {
        self.deliveries.get_or_create(&JobLabels { outcome }).inc();
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
