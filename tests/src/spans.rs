//! Spans a service instance exports, kept in memory for tests of tracing: hand
//! [`SpanSink::hook`] to a gateway's or worker's `traces_override`.

use std::time::Duration;

use courier_telemetry::TracesOverride;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

use crate::wait_until;

/// The spans of one service instance.
#[derive(Clone, Default)]
pub struct SpanSink {
    exporter: InMemorySpanExporter,
}

impl SpanSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Exports every span as soon as it ends into this sink. (The instance's
    /// shutdown clears the sink: read it before stopping the service.)
    pub fn hook(&self) -> TracesOverride {
        let exporter = self.exporter.clone();
        TracesOverride::new(move |builder| builder.with_simple_exporter(exporter.clone()))
    }

    /// Every span ended so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap_or_default()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace_id)
            .collect()
    }

    /// Waits until `n` spans of `kind` ended in the trace, and returns them in the
    /// order they started.
    pub async fn wait_kind(&self, trace_id: &str, kind: SpanKind, n: usize) -> Vec<SpanData> {
        wait_until(
            &format!("{n} {kind:?} span(s) in trace {trace_id}"),
            Duration::from_secs(15),
            || async {
                let mut found: Vec<SpanData> = self
                    .trace(trace_id)
                    .into_iter()
                    .filter(|s| s.span_kind == kind)
                    .collect();
                found.sort_by_key(|s| s.start_time);
                (found.len() >= n).then_some(found)
            },
        )
        .await
    }

    /// Waits for the one span of `kind` that matches `pred`, in any trace.
    pub async fn wait_for(
        &self,
        what: &str,
        kind: SpanKind,
        pred: impl Fn(&SpanData) -> bool,
    ) -> SpanData {
        wait_until(what, Duration::from_secs(15), || async {
            self.spans()
                .into_iter()
                .find(|s| s.span_kind == kind && pred(s))
        })
        .await
    }
}

/// An attribute of a span.
pub fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// An attribute as text (strings as they are, numbers printed).
pub fn attr_text(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

/// A fresh W3C `traceparent` (sampled) and its trace id and span id.
pub fn new_traceparent() -> (String, String, String) {
    let trace_id = TraceId::from(uuid::Uuid::new_v4().as_u128()).to_string();
    let span_id = format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64 | 1);
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The trace id and parent span id of a `traceparent`.
pub fn parse_traceparent(header: &str) -> Option<(String, String)> {
    let mut parts = header.split('-');
    let (_version, trace_id, span_id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((trace_id.to_owned(), span_id.to_owned()))
}
