//! The gateway's Prometheus metrics. Each instance owns its registry, so two
//! gateways in one process (tests) never mix their figures.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use courier_telemetry::metrics::{DependencyMetrics, HTTP_BUCKETS};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why events were refused at ingest.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RejectReason {
    /// 422: an event breaks the schema or names a key outside the catalog.
    invalid,
    /// 400: the body is not JSON.
    malformed,
    /// 413: the body is larger than `COURIER_MAX_BODY_BYTES`.
    too_large,
    /// 401: no valid API key.
    unauthorized,
    /// 403: the key lacks the `publish` scope.
    forbidden,
    /// 503: the broker did not confirm them.
    unavailable,
    /// 429: the tenant is over its ingest rate.
    rate_limited,
    /// 408: the body did not arrive within `COURIER_HTTP_BODY_TIMEOUT`.
    timed_out,
}

impl RejectReason {
    /// The reason of an error answer of the ingest route.
    pub fn of(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::malformed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large,
            StatusCode::UNAUTHORIZED => Self::unauthorized,
            StatusCode::FORBIDDEN => Self::forbidden,
            StatusCode::SERVICE_UNAVAILABLE => Self::unavailable,
            StatusCode::TOO_MANY_REQUESTS => Self::rate_limited,
            StatusCode::REQUEST_TIMEOUT => Self::timed_out,
            _ => Self::invalid,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: RejectReason,
}

/// How a pass of a deleted tenant's purge ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PurgePassResult {
    /// Everything found was removed.
    done,
    /// A dependency failed; the pass runs again when its lease ends.
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PurgeLabels {
    result: PurgePassResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The standard methods, else `other`.
    method: String,
    /// The route template (`/v1/webhooks/{id}`), `unmatched` for unknown paths.
    route: String,
    status: u16,
}

/// The gateway's figures and its registry.
pub struct Metrics {
    registry: Registry,
    /// Broker confirms and errors, Redis errors.
    pub deps: DependencyMetrics,
    events_accepted: Counter,
    events_rejected: Family<RejectLabels, Counter>,
    requests: Family<RequestLabels, Histogram>,
    purge_passes: Family<PurgeLabels, Counter>,
    tenants_purged: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let deps = DependencyMetrics::register(&mut registry);
        let events_accepted = Counter::default();
        registry.register(
            "courier_events_accepted",
            "Events the broker confirmed at ingest (answered 202, or listed in acceptedEventIds)",
            events_accepted.clone(),
        );
        let events_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "courier_events_rejected",
            "Events refused at ingest, by reason; a request whose events cannot be counted counts as one",
            events_rejected.clone(),
        );
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(HTTP_BUCKETS)
        });
        registry.register(
            "courier_http_request_duration_seconds",
            "Time to answer an API request, by method, route template and status",
            requests.clone(),
        );
        let purge_passes = Family::<PurgeLabels, Counter>::default();
        registry.register(
            "courier_tenant_purge_passes",
            "Passes of deleted tenants' purges this gateway ran, by result",
            purge_passes.clone(),
        );
        let tenants_purged = Counter::default();
        registry.register(
            "courier_tenants_purged",
            "Deleted tenants whose purge this gateway finished (their ids free again)",
            tenants_purged.clone(),
        );
        Self {
            registry,
            deps,
            events_accepted,
            events_rejected,
            requests,
            purge_passes,
            tenants_purged,
        }
    }
}

impl Metrics {
    pub fn events_accepted(&self, n: usize) {
        self.events_accepted
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    pub fn events_rejected(&self, reason: RejectReason, n: usize) {
        self.events_rejected
            .get_or_create(&RejectLabels { reason })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    pub fn request(
        &self,
        method: &Method,
        route: Option<&str>,
        status: StatusCode,
        took: Duration,
    ) {
        let method = match *method {
            Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS => method.as_str(),
            _ => "other",
        };
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.unwrap_or("unmatched").to_owned(),
            status: status.as_u16(),
        };
        self.requests
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn purge_pass(&self, result: PurgePassResult) {
        self.purge_passes
            .get_or_create(&PurgeLabels { result })
            .inc();
    }

    pub fn tenant_purged(&self) {
        self.tenants_purged.inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        courier_telemetry::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_figures_render_with_bounded_labels() {
        let m = Metrics::default();
        m.events_accepted(3);
        m.events_rejected(RejectReason::of(StatusCode::UNPROCESSABLE_ENTITY), 2);
        m.events_rejected(RejectReason::of(StatusCode::UNAUTHORIZED), 1);
        let odd = Method::from_bytes(b"BREW").unwrap();
        m.request(&odd, None, StatusCode::NOT_FOUND, Duration::from_millis(1));
        let text = m.render();
        for line in [
            "courier_events_accepted_total 3",
            "courier_events_rejected_total{reason=\"invalid\"} 2",
            "courier_events_rejected_total{reason=\"unauthorized\"} 1",
            "courier_http_request_duration_seconds_count{method=\"other\",route=\"unmatched\",status=\"404\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
