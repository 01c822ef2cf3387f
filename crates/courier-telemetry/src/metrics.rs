//! Prometheus pieces both services use: label values of broker operations, the
//! buckets of latency histograms, and rendering a registry.
//!
//! Each service instance owns its own `Registry` (no process-wide default), so two
//! instances in one process never mix their figures.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets (seconds) of broker round trips: a confirm takes milliseconds, an
/// outage up to the publish timeout.
pub const CONFIRM_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Buckets (seconds) of HTTP exchanges: an answer within milliseconds up to a
/// webhook's longest timeout (30 s).
pub const HTTP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
];

/// A broker operation that failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AmqpOperation {
    /// A message could not be sent (no channel, lost connection).
    publish,
    /// A sent message was not confirmed: nack, unroutable, timeout, lost connection.
    confirm,
}

/// Where a confirmed publish went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Destination {
    /// `courier.events`.
    events,
    /// `courier.deliveries`: delivery jobs due now.
    deliveries,
    /// A delay queue of the ladder: retries and jobs not yet due.
    delay,
    /// `courier.dead`: parked messages.
    dead,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AmqpLabels {
    operation: AmqpOperation,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: Destination,
}

/// What both services count about their dependencies.
#[derive(Clone)]
pub struct DependencyMetrics {
    confirm_latency: Family<DestinationLabels, Histogram>,
    amqp_errors: Family<AmqpLabels, Counter>,
    redis_errors: Counter,
}

impl DependencyMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let confirm_latency = Family::<DestinationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(CONFIRM_BUCKETS)
        });
        registry.register(
            "courier_publish_confirm_duration_seconds",
            "Time from sending a message to the broker's confirm, by destination",
            confirm_latency.clone(),
        );
        let amqp_errors = Family::<AmqpLabels, Counter>::default();
        registry.register(
            "courier_amqp_errors",
            "Broker operations that failed, by operation",
            amqp_errors.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "courier_redis_errors",
            "Redis operations that failed (unreachable, timed out, refused)",
            redis_errors.clone(),
        );
        Self {
            confirm_latency,
            amqp_errors,
            redis_errors,
        }
    }

    pub fn confirmed(&self, destination: Destination, latency: std::time::Duration) {
        self.confirm_latency
            .get_or_create(&DestinationLabels { destination })
            .observe(latency.as_secs_f64());
    }

    pub fn amqp_error(&self, operation: AmqpOperation) {
        self.amqp_errors
            .get_or_create(&AmqpLabels { operation })
            .inc();
    }

    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }
}

/// The registry in the text format of `/metrics`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_metrics_render_with_conventional_names() {
        let mut registry = Registry::default();
        let m = DependencyMetrics::register(&mut registry);
        m.confirmed(Destination::events, std::time::Duration::from_millis(3));
        m.amqp_error(AmqpOperation::confirm);
        m.redis_error();
        let text = render(&registry);
        assert!(text
            .contains("courier_publish_confirm_duration_seconds_count{destination=\"events\"} 1"));
        assert!(text.contains("courier_amqp_errors_total{operation=\"confirm\"} 1"));
        assert!(text.contains("courier_redis_errors_total 1"));
    }
}
