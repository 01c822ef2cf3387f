//! What both services set up the same way.
//!
//! - [`settings`]: the settings of design §9 that gateway and worker share.
//! - [`logging`]: the tracing subscriber (text or JSON lines).
//! - [`traces`]: OpenTelemetry spans, one tracer provider per service instance, and
//!   the W3C trace context in message and HTTP headers.
//! - [`otlp_http`]: the HTTP client of the `http/protobuf` OTLP exporter.
//! - [`metrics`]: Prometheus pieces both services use (broker and Redis figures).
//! - [`shutdown`]: SIGTERM and SIGINT as a cancellation token.
//! - [`serve`]: HTTP serving with header, body and idle deadlines, a cap on
//!   connections and a bounded graceful shutdown.

pub mod logging;
pub mod metrics;
pub mod otlp_http;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod traces;

pub use settings::{LogFormat, Profile, SharedSettings};
pub use traces::{TraceHeaders, TraceSettings, Traces, TracesOverride};
