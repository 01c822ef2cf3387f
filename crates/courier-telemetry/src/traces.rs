//! Distributed tracing with OpenTelemetry, one tracer provider per service instance.
//!
//! [`Traces`] is what a gateway or worker instance builds in its `run()`: its own
//! provider (an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, none
//! otherwise), a tracer and a W3C trace-context propagator. Nothing is installed
//! process-wide, so two instances in one process (tests) never mix their spans.
//! Without an exporter spans are still created and their context still travels, so
//! receivers get a `traceparent` that continues their caller's trace.
//!
//! [`TraceHeaders`] is the W3C context as it travels in AMQP and HTTP headers
//! (`traceparent`, `tracestate`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, TraceContextExt as _, TraceFlags, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, SdkTracer, SdkTracerProvider,
    ShouldSample as _, TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;

/// Name of the header of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Name of the header of vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// How long the provider may take to flush its last spans at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go, read from the standard OpenTelemetry variables.
#[derive(Clone, Default, clap::Args)]
pub struct TraceSettings {
    /// OTLP collector that receives this instance's spans (gRPC, e.g.
    /// `http://otel-collector:4317`, or HTTP with `OTEL_EXPORTER_OTLP_PROTOCOL`).
    /// Unset: no span is exported; trace context is still propagated.
    #[arg(long = "otel-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// `grpc` (the default, port 4317) or `http/protobuf` (port 4318).
    #[arg(
        long = "otel-protocol",
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// `service.name` of the spans; defaults to the binary's name
    /// (`courier-gateway`, `courier-worker`).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Sampler: `parentbased_always_on` (default), `parentbased_always_off`,
    /// `parentbased_traceidratio`, `always_on`, `always_off`, `traceidratio`.
    #[arg(long = "otel-sampler", env = "OTEL_TRACES_SAMPLER")]
    pub sampler: Option<String>,

    /// The sampler's argument: the ratio (0 to 1) of the `traceidratio` samplers.
    #[arg(long = "otel-sampler-arg", env = "OTEL_TRACES_SAMPLER_ARG")]
    pub sampler_arg: Option<String>,
}

impl fmt::Debug for TraceSettings {
    /// The endpoint may carry credentials in its URL, so it is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceSettings")
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_ref().map(|_| "<set>"),
            )
            .field("otlp_protocol", &self.otlp_protocol)
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler)
            .field("sampler_arg", &self.sampler_arg)
            .finish()
    }
}

/// Transport of the OTLP exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    #[default]
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// The sampler named by `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
/// (`parentbased_always_on` when unset; a ratio defaults to 1).
pub fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        match arg.map(str::trim).filter(|a| !a.is_empty()) {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, not {a:?}"
                )),
            },
        }
    };
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match name.map(str::trim).unwrap_or("") {
        "" | "parentbased_always_on" => Ok(parent_based(Sampler::AlwaysOn)),
        "parentbased_always_off" => Ok(parent_based(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Ok(parent_based(Sampler::TraceIdRatioBased(ratio()?))),
        "always_on" => Ok(Sampler::AlwaysOn),
        "always_off" => Ok(Sampler::AlwaysOff),
        "traceidratio" => Ok(Sampler::TraceIdRatioBased(ratio()?)),
        other => Err(format!(
            "OTEL_TRACES_SAMPLER {other:?} is not supported; use parentbased_always_on, \
             parentbased_always_off, parentbased_traceidratio, always_on, always_off or traceidratio"
        )),
    }
}

type Configure = dyn Fn(TracerProviderBuilder) -> TracerProviderBuilder + Send + Sync;

/// Replaces the OTLP exporter of an instance's provider: it is handed the builder
/// and adds its own span processors (tests export into memory this way).
#[derive(Clone)]
pub struct TracesOverride(Arc<Configure>);

impl TracesOverride {
    pub fn new(
        configure: impl Fn(TracerProviderBuilder) -> TracerProviderBuilder + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(configure))
    }
}

impl fmt::Debug for TracesOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracesOverride(..)")
    }
}

/// One service instance's tracing: its provider, its tracer and a W3C propagator.
/// Cheap to clone; clones share the provider.
#[derive(Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: Arc<TraceContextPropagator>,
    /// Without an exporter (or a test's processors) spans are not recorded: only
    /// their context is made, so that it still travels (see [`Traces::start_span`]).
    recording: bool,
    /// The sampler, for contexts made without recording.
    sampler: Arc<Sampler>,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Builds this instance's provider: the override's processors if any, else an
    /// OTLP exporter when an endpoint is set, else none. Must run inside the tokio
    /// runtime (the gRPC exporter's channel lives there).
    pub fn start(
        settings: &TraceSettings,
        default_service: &'static str,
        override_with: Option<&TracesOverride>,
    ) -> anyhow::Result<Self> {
        let sampler = sampler(settings.sampler.as_deref(), settings.sampler_arg.as_deref())
            .map_err(anyhow::Error::msg)?;
        let service = settings
            .service_name
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| default_service.to_owned());
        let resource = Resource::builder().with_service_name(service).build();
        let mut builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler.clone());
        let endpoint = settings
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        let recording = override_with.is_some() || endpoint.is_some();
        if let Some(configure) = override_with {
            builder = (configure.0)(builder);
        } else if let Some(endpoint) = endpoint {
            builder = builder.with_batch_exporter(otlp_exporter(endpoint, settings.otlp_protocol)?);
        }
        let provider = builder.build();
        let scope = InstrumentationScope::builder(default_service)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Self {
            tracer: provider.tracer_with_scope(scope),
            provider,
            propagator: Arc::new(TraceContextPropagator::new()),
            recording,
            sampler: Arc::new(sampler),
        })
    }

    /// A provider that exports nothing (tools, and tests that do not look at spans).
    pub fn disabled() -> Self {
        let provider = SdkTracerProvider::builder().build();
        Self {
            tracer: provider.tracer("courier"),
            provider,
            propagator: Arc::new(TraceContextPropagator::new()),
            recording: false,
            sampler: Arc::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
        }
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Starts a span under `parent` and returns the context that holds it; end it
    /// with `cx.span().end()` (or let the context drop).
    ///
    /// Attributes and links are made only for a span that is recorded. Without an
    /// exporter none is (nothing is kept until it ends): the context only gets a new span
    /// id in the parent's trace (a new trace for a root), sampled as the sampler
    /// decides, which is all that the `traceparent` it passes on needs.
    pub fn start_span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: &Context,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        links: impl FnOnce() -> Vec<Link>,
    ) -> Context {
        if !self.recording {
            return self.context_only(name.into(), kind, parent);
        }
        let links = links();
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes());
        if !links.is_empty() {
            builder = builder.with_links(links);
        }
        let span = builder.start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    fn context_only(&self, name: Cow<'static, str>, kind: SpanKind, parent: &Context) -> Context {
        let ids = RandomIdGenerator::default();
        let parent_span = parent.span();
        let parent_sc = parent_span.span_context();
        let trace_id = if parent_sc.is_valid() {
            parent_sc.trace_id()
        } else {
            ids.new_trace_id()
        };
        let sampled = self
            .sampler
            .should_sample(Some(parent), trace_id, &name, &kind, &[], &[]);
        let flags = match sampled.decision {
            SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
            SamplingDecision::RecordOnly | SamplingDecision::Drop => TraceFlags::default(),
        };
        let sc = SpanContext::new(
            trace_id,
            ids.new_span_id(),
            flags,
            false,
            sampled.trace_state,
        );
        parent.with_remote_span_context(sc)
    }

    /// The context carried by `headers` (an empty one if they carry none, or a
    /// malformed one).
    pub fn extract(&self, headers: &TraceHeaders) -> Context {
        self.propagator.extract(headers)
    }

    /// The headers that carry `cx` to the next hop (none for a context without a
    /// valid span).
    pub fn inject(&self, cx: &Context) -> TraceHeaders {
        let mut headers = TraceHeaders::default();
        self.propagator.inject_context(cx, &mut headers);
        headers
    }

    /// The span context of the span the headers name, for a link.
    pub fn link_to(&self, headers: &TraceHeaders) -> Option<Link> {
        let cx = self.extract(headers);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| Link::with_context(sc))
    }

    /// Flushes what is still buffered and stops exporting; spans started afterwards
    /// are dropped. Blocks a thread of its own, not the runtime.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush the last spans"),
            Err(e) => tracing::warn!(error = %e, "could not flush the last spans"),
        }
    }
}

fn otlp_exporter(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        // Like the standard variable: the signal's path is appended to the base URL.
        OtlpProtocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig as _;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(crate::otlp_http::BlockingClient::new()?)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
        }
    };
    exporter.with_context(|| format!("configuring the OTLP exporter ({protocol:?})"))
}

/// The trace and span ids of the span in `cx`, as log fields (hex); `None` without
/// a valid span.
pub fn log_ids(cx: &Context) -> Option<(String, String)> {
    let span = cx.span();
    let sc: &SpanContext = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The messaging attributes of a span that publishes (`operation` "publish") or
/// processes ("process") one AMQP message.
pub fn messaging_attributes(
    operation: &'static str,
    exchange: &str,
    routing_key: &str,
    message_id: Option<String>,
    body_size: usize,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.destination.name", exchange.to_owned()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            routing_key.to_owned(),
        ),
        KeyValue::new(
            "messaging.message.body.size",
            i64::try_from(body_size).unwrap_or(i64::MAX),
        ),
    ];
    if let Some(id) = message_id {
        attributes.push(KeyValue::new("messaging.message.id", id));
    }
    attributes
}

/// Records the ids of the span in `cx` as the `trace_id` and `span_id` fields of
/// the current tracing span (declared empty by its `#[instrument]`), so that every
/// log line inside carries them.
pub fn record_log_ids(cx: &Context) {
    if let Some((trace_id, span_id)) = log_ids(cx) {
        let current = tracing::Span::current();
        current.record("trace_id", trace_id);
        current.record("span_id", span_id);
    }
}

/// W3C trace context as it travels in message or HTTP headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// Reads the two headers through `get` (case as given: AMQP names are exact,
    /// HTTP header maps are case-insensitive by themselves).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            traceparent: get(TRACEPARENT),
            tracestate: get(TRACESTATE),
        }
    }

    /// The headers that are set, as `(name, value)`.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (TRACEPARENT, self.traceparent.as_deref()),
            (TRACESTATE, self.tracestate.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none()
    }

    /// The headers of the current OpenTelemetry context (the span a handler runs
    /// in), for a message published outside a span of its own.
    pub fn current() -> Self {
        let mut headers = Self::default();
        TraceContextPropagator::new().inject_context(&Context::current(), &mut headers);
        headers
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key.to_ascii_lowercase().as_str() {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.pairs().map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_span_continues_the_trace_of_the_headers_it_came_with() {
        let traces = Traces::disabled();
        let incoming = TraceHeaders {
            traceparent: Some(PARENT.into()),
            tracestate: Some("vendor=x".into()),
        };
        let parent = traces.extract(&incoming);
        let cx = traces.start_span("work", SpanKind::Consumer, &parent, Vec::new, Vec::new);
        let out = traces.inject(&cx);
        let traceparent = out.traceparent.unwrap();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id");
        assert!(traceparent.ends_with("-01"), "sampled, as its parent");
        assert_eq!(out.tracestate.as_deref(), Some("vendor=x"));
        let (trace_id, _) = log_ids(&cx).unwrap();
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn without_an_exporter_spans_carry_context_but_record_nothing() {
        let traces = Traces::disabled();
        let root = traces.start_span(
            "root",
            SpanKind::Server,
            &Context::new(),
            Vec::new,
            Vec::new,
        );
        assert!(!root.span().is_recording());
        let child = traces.start_span(
            "child",
            SpanKind::Producer,
            &root,
            || vec![KeyValue::new("k", "v")],
            Vec::new,
        );
        let (root_sc, child_sc) = (
            root.span().span_context().clone(),
            child.span().span_context().clone(),
        );
        assert!(root_sc.is_sampled() && child_sc.is_sampled());
        assert_eq!(child_sc.trace_id(), root_sc.trace_id());
        assert_ne!(child_sc.span_id(), root_sc.span_id());
    }

    #[test]
    fn without_headers_a_span_starts_a_trace_and_garbage_is_ignored() {
        let traces = Traces::disabled();
        assert!(traces.inject(&Context::new()).is_empty());
        let garbage = TraceHeaders {
            traceparent: Some("not a traceparent".into()),
            tracestate: None,
        };
        let parent = traces.extract(&garbage);
        assert!(!parent.span().span_context().is_valid());
        assert!(traces.link_to(&garbage).is_none());
        let cx = traces.start_span("root", SpanKind::Server, &parent, Vec::new, Vec::new);
        assert!(cx.span().span_context().is_valid());
        let link = traces
            .link_to(&TraceHeaders {
                traceparent: Some(PARENT.into()),
                tracestate: None,
            })
            .unwrap();
        assert_eq!(link.span_context.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn samplers_follow_the_standard_variables() {
        assert!(matches!(sampler(None, None), Ok(Sampler::ParentBased(_))));
        assert!(matches!(
            sampler(Some("always_off"), None),
            Ok(Sampler::AlwaysOff)
        ));
        assert!(matches!(
            sampler(Some("traceidratio"), Some("0.25")),
            Ok(Sampler::TraceIdRatioBased(r)) if (r - 0.25).abs() < f64::EPSILON
        ));
        assert!(matches!(
            sampler(Some("traceidratio"), None),
            Ok(Sampler::TraceIdRatioBased(r)) if (r - 1.0).abs() < f64::EPSILON
        ));
        assert!(sampler(Some("parentbased_traceidratio"), Some("2")).is_err());
        assert!(sampler(Some("xray"), None).is_err());
    }
}
