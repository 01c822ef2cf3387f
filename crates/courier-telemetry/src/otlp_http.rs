//! The HTTP client of the `http/protobuf` OTLP exporter: the services' own reqwest
//! (blocking), instead of the one opentelemetry-otlp would bring, another major
//! version of reqwest compiled beside ours.
//!
//! The exporter's batch processor runs on a thread of its own, outside the tokio
//! runtime, and waits there for each export: a blocking client fits it. The
//! timeout follows the OTLP exporter specification, as the exporter's own client
//! would: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (milliseconds), else 10 s.

use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// The largest collector answer read; anything longer is an error.
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// The timeout of one export request when no variable sets it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking reqwest client for the exporter.
#[derive(Debug)]
pub struct BlockingClient(reqwest::blocking::Client);

impl BlockingClient {
    /// Builds the client with the specification's timeout. A blocking client starts
    /// a runtime of its own, which may not happen inside tokio's: it is built on a
    /// short-lived thread.
    pub fn new() -> anyhow::Result<Self> {
        let timeout = timeout(|name| std::env::var(name).ok());
        std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread building the OTLP HTTP client panicked"))?
        .map(Self)
        .context("building the OTLP HTTP client")
    }
}

/// The export timeout from the variables `var` reads.
fn timeout(var: impl Fn(&str) -> Option<String>) -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|name| var(name)?.trim().parse::<u64>().ok())
    .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::blocking::Request::try_from(request)?;
        let mut response = self.0.execute(request)?;
        let mut answer = Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = std::mem::take(response.headers_mut());
        }
        let mut body = Vec::new();
        response
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut body)?;
        if body.len() as u64 > MAX_RESPONSE_BYTES {
            return Err("the collector's answer is larger than 4 MiB".into());
        }
        Ok(answer.body(Bytes::from(body))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_follows_the_specification() {
        let vars = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(timeout(vars(&[])), Duration::from_secs(10));
        assert_eq!(
            timeout(vars(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])),
            Duration::from_millis(2500)
        );
        assert_eq!(
            timeout(vars(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")
            ])),
            Duration::from_millis(700)
        );
        assert_eq!(
            timeout(vars(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])),
            Duration::from_secs(10)
        );
    }
}
