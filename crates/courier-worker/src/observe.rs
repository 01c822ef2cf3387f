//! The worker's spans and the figures of its deliveries.
//!
//! Spans (attribute names of the OpenTelemetry semantic conventions for messaging
//! and HTTP, plus `courier.*`):
//! - a CONSUMER span per event (`process`), child of the gateway's publish span;
//! - a CLIENT span per delivery attempt (`POST`), child of its event's consumer span
//!   (a batch: of its first event's, with links to every event's), or of the
//!   previous attempt's span for a retry.
//!
//! Figures ([`FlowMetrics`]): attempt durations, ingest-to-delivery latency,
//! retries by rung, dead letters by reason, deliveries in flight, and the broker's
//! and Redis's errors.

use std::time::Duration;

use courier_broker::lapin::message::Delivery;
use courier_core::envelope::DeliveryJob;
use courier_telemetry::metrics::{DependencyMetrics, HTTP_BUCKETS};
use courier_telemetry::traces::messaging_attributes;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::carry::Carried;
use crate::schedule::Route;
use crate::Pipeline;

/// Buckets (seconds) from the gateway's accept to the delivery: milliseconds when
/// the receiver answers at once, hours through retries.
const DELIVERED_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    10800.0,
];

/// What an attempt that POSTed ended as.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptOutcome {
    delivered,
    retry,
    failed,
}

/// Why a batch or a message became a dead letter.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeadReason {
    /// A batch whose last attempt failed.
    attempts_exhausted,
    /// A batch the receiver refused for good (3xx, 4xx).
    non_retryable,
    /// A batch whose webhook's stored record cannot be read: nothing was sent.
    unreadable_webhook,
    /// A message the worker could not read, parked in `courier.dead`.
    unparseable,
    /// A message RabbitMQ parked after too many redeliveries.
    delivery_limit,
    /// A message RabbitMQ parked for another reason.
    other,
    /// A batch whose stored record cannot be read (corrupt, or written by a version
    /// that encodes differently).
    unreadable,
    /// A message parked in `courier.dead` because state it needs in Redis cannot be
    /// read (a key of the wrong type, a record a script fails on).
    unreadable_state,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RungLabels {
    /// The rung's delay as configured (`1s`, `5m`), or `now`: a bounded set.
    rung: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: DeadReason,
}

/// Figures of the delivery flow, in the worker's registry.
pub struct FlowMetrics {
    pub deps: DependencyMetrics,
    attempt_duration: Family<AttemptLabels, Histogram>,
    delivered_latency: Histogram,
    retries: Family<RungLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    in_flight: Gauge,
}

impl FlowMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let deps = DependencyMetrics::register(registry);
        let attempt_duration = Family::<AttemptLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(HTTP_BUCKETS)
        });
        registry.register(
            "courier_delivery_attempt_duration_seconds",
            "Time of one delivery POST, from sending to the end of the answer, by outcome",
            attempt_duration.clone(),
        );
        let delivered_latency = Histogram::new(DELIVERED_BUCKETS);
        registry.register(
            "courier_event_delivered_latency_seconds",
            "Time from the gateway accepting an event to its delivery, retries included (one per event)",
            delivered_latency.clone(),
        );
        let retries = Family::<RungLabels, Counter>::default();
        registry.register(
            "courier_retries_scheduled",
            "Next attempts queued after a temporary failure, by the delay-ladder rung they wait in",
            retries.clone(),
        );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "courier_dead_letters",
            "Batches that ended failed and messages parked in the dead-letter queue, by reason",
            dead_letters.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "courier_deliveries_in_flight",
            "Delivery POSTs under way in this worker",
            in_flight.clone(),
        );
        Self {
            deps,
            attempt_duration,
            delivered_latency,
            retries,
            dead_letters,
            in_flight,
        }
    }

    pub fn attempt(&self, outcome: AttemptOutcome, took: Duration) {
        self.attempt_duration
            .get_or_create(&AttemptLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// A batch was delivered: one observation per event whose acceptance is known.
    pub fn delivered(&self, carried: &Carried) {
        for age in carried.ages() {
            self.delivered_latency.observe(age.as_secs_f64());
        }
    }

    pub fn retry_scheduled(&self, route: Route) {
        let rung = match route {
            Route::Now => "now".to_owned(),
            Route::Rung(d) => humantime::format_duration(d).to_string(),
        };
        self.retries.get_or_create(&RungLabels { rung }).inc();
    }

    pub fn dead_letter(&self, reason: DeadReason) {
        self.dead_letters
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a POST in flight until the guard drops (also when its task is
    /// abandoned at shutdown).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }
}

/// A delivery POST under way.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The reason RabbitMQ gave for parking a message, as a bounded label.
pub fn broker_dead_reason(reason: &str) -> DeadReason {
    match reason {
        "delivery_limit" => DeadReason::delivery_limit,
        _ => DeadReason::other,
    }
}

/// Starts the CONSUMER span of a consumed message, continuing the context it
/// carries, and records its ids on the current tracing span for the logs.
pub fn consumer_span(p: &Pipeline, delivery: &Delivery, carried: &Carried) -> Context {
    let parent = p.traces.extract(&carried.trace);
    let exchange = delivery.exchange.as_str();
    let attributes = || {
        messaging_attributes(
            "process",
            exchange,
            delivery.routing_key.as_str(),
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            delivery.data.len(),
        )
    };
    let cx = p.traces.start_span(
        format!("process {exchange}"),
        SpanKind::Consumer,
        &parent,
        attributes,
        Vec::new,
    );
    courier_telemetry::traces::record_log_ids(&cx);
    cx
}

/// The CLIENT span of a delivery attempt. It ends when dropped: with an error
/// status unless [`AttemptSpan::finish`] said how the attempt ended (a dependency
/// failed and the job will be handled again).
pub struct AttemptSpan {
    cx: Context,
    finished: bool,
}

impl AttemptSpan {
    pub fn start(p: &Pipeline, job: &DeliveryJob, carried: &Carried) -> Self {
        Self {
            cx: attempt_span(p, job, carried),
            finished: false,
        }
    }

    pub fn cx(&self) -> &Context {
        &self.cx
    }

    /// Adds the attributes `make` gives, if the span is recorded.
    pub fn set_attributes<I: IntoIterator<Item = KeyValue>>(&self, make: impl FnOnce() -> I) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attributes(make());
        }
    }

    /// Records how the attempt ended (`delivered`, `retry`, `failed`, `cancelled`,
    /// `duplicate`, `superseded`), with an error status for a failed POST.
    pub fn finish(mut self, outcome: &'static str, error: Option<String>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("courier.outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        self.finished = true;
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        let span = self.cx.span();
        if !self.finished {
            span.set_status(Status::error(
                "interrupted: a dependency is unavailable; the job is handled again",
            ));
        }
        span.end();
    }
}

/// Starts the CLIENT span of a delivery attempt: a child of the context the job
/// carries, linked to each of its events' spans.
fn attempt_span(p: &Pipeline, job: &DeliveryJob, carried: &Carried) -> Context {
    let parent = p.traces.extract(&carried.trace);
    let links = || {
        carried
            .links
            .iter()
            .filter_map(|traceparent| {
                p.traces.link_to(&courier_telemetry::TraceHeaders {
                    traceparent: Some(traceparent.clone()),
                    tracestate: None,
                })
            })
            .collect()
    };
    let attributes = || {
        vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("courier.batch.id", job.batch_id.to_string()),
            KeyValue::new("courier.webhook.id", job.webhook_id.to_string()),
            KeyValue::new("courier.tenant.id", job.tenant_id.to_string()),
            KeyValue::new("courier.series", i64::from(job.series)),
            KeyValue::new("courier.attempt", i64::from(job.attempt)),
            KeyValue::new(
                "courier.batch.event_count",
                i64::try_from(job.events.len()).unwrap_or(i64::MAX),
            ),
        ]
    };
    let cx = p
        .traces
        .start_span("POST", SpanKind::Client, &parent, attributes, links);
    courier_telemetry::traces::record_log_ids(&cx);
    cx
}

/// The address and port of a webhook URL, as span attributes (never the path or
/// query, which may hold secrets).
pub fn server_attributes(url: &str) -> Vec<KeyValue> {
    let Ok(url) = url::Url::parse(url) else {
        return Vec::new();
    };
    let mut attributes = Vec::with_capacity(2);
    if let Some(host) = url.host_str() {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    if let Some(port) = url.port_or_known_default() {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_render_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = FlowMetrics::register(&mut registry);
        m.attempt(AttemptOutcome::delivered, Duration::from_millis(20));
        m.retry_scheduled(Route::Rung(Duration::from_millis(200)));
        m.retry_scheduled(Route::Rung(Duration::from_secs(60)));
        m.retry_scheduled(Route::Now);
        m.dead_letter(broker_dead_reason("delivery_limit"));
        m.dead_letter(broker_dead_reason("expired"));
        {
            let _a = m.in_flight();
            let _b = m.in_flight();
        }
        let text = courier_telemetry::metrics::render(&registry);
        for line in [
            "courier_delivery_attempt_duration_seconds_count{outcome=\"delivered\"} 1",
            "courier_retries_scheduled_total{rung=\"200ms\"} 1",
            "courier_retries_scheduled_total{rung=\"1m\"} 1",
            "courier_retries_scheduled_total{rung=\"now\"} 1",
            "courier_dead_letters_total{reason=\"delivery_limit\"} 1",
            "courier_dead_letters_total{reason=\"other\"} 1",
            "courier_deliveries_in_flight 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
