//! Every API request in a SERVER span (an incoming `traceparent` is its parent)
//! and a tracing span carrying its trace and span ids, so that every log line of
//! the request names them; its duration in the request histogram.
//!
//! The request's OpenTelemetry context is the current one while its handler runs,
//! so the spans started below it (the publish of each event) are its children.
//! Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) are left out.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use courier_telemetry::traces::log_ids;
use courier_telemetry::TraceHeaders;
use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt as _};
use opentelemetry::KeyValue;
use tracing::Instrument as _;

use crate::state::AppState;

/// Paths polled by probes and scrapers: neither traced nor timed.
const UNOBSERVED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Marks an answer caused by a failed Redis operation, for the error counter.
#[derive(Debug, Clone, Copy)]
pub struct RedisFailed;

/// The middleware: `axum::middleware::from_fn_with_state(state, observe::request)`.
pub async fn request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if UNOBSERVED.contains(&path.as_str()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let incoming = TraceHeaders::read(|name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let parent = state.traces.extract(&incoming);
    let attributes = || {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path),
            KeyValue::new("url.scheme", "http"),
        ];
        if let Some(route) = &route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        attributes
    };
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let cx = state
        .traces
        .start_span(name, SpanKind::Server, &parent, attributes, Vec::new);
    let (trace_id, span_id) = log_ids(&cx).unwrap_or_default();
    let log_span = tracing::info_span!(
        "request",
        method = %method,
        route = route.as_deref().unwrap_or(""),
        trace_id,
        span_id
    );
    let started = Instant::now();
    let response = next
        .run(req)
        .with_context(cx.clone())
        .instrument(log_span.clone())
        .await;
    let status = response.status();
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
        span.set_status(Status::error(format!("answered {}", status.as_u16())));
    }
    span.end();
    if response.extensions().get::<RedisFailed>().is_some() {
        state.metrics.deps.redis_error();
    }
    let took = started.elapsed();
    state
        .metrics
        .request(&method, route.as_deref(), status, took);
    log_span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            "request answered"
        );
    });
    response
}

/// `GET /metrics`: this instance's registry in the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            courier_telemetry::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response()
}
