//! The outbound POST: headers of design §3, a timeout, no redirects, the egress
//! proxy only if one is configured, targets checked by [`crate::guard`], and the
//! first bytes of the answer for the log.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use courier_core::delivery::{
    parse_retry_after, HttpResult, TransportError, RESPONSE_BODY_LOG_LIMIT,
};
use courier_core::envelope::DeliveryJob;
use courier_core::signing::{sign_hex, signature_header, SignatureScheme};
use courier_core::webhook::Webhook;
use courier_telemetry::TraceHeaders;

use crate::guard::{refusal_of, Blocked, Egress, Guard};

/// `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("Courier/", env!("CARGO_PKG_VERSION"));

/// What one POST produced, with what the log keeps of it.
pub struct Sent {
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub result: HttpResult,
    pub body_prefix: Option<String>,
    /// Why the target policy refused the webhook's address, in words for the log.
    pub refusal: Option<String>,
}

/// The HTTP client of deliveries.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    /// Where deliveries may connect (see [`crate::guard`]).
    guard: Guard,
}

impl Sender {
    /// The client of deliveries: through `egress`'s proxy if it has one (and never
    /// through the environment's proxy variables), connecting only to addresses
    /// its target policy allows.
    pub fn new(egress: &Egress) -> Result<Self, reqwest::Error> {
        let guard = Guard::new(egress);
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10));
        let builder = match &egress.proxy {
            // The proxy resolves targets; `preflight` checks them first.
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.as_str())?),
            None => builder
                .no_proxy()
                .dns_resolver(Arc::new(guard.connect_resolver())),
        };
        Ok(Self {
            client: builder.build()?,
            guard,
        })
    }

    /// POSTs `body` (the job's envelope, serialized once) to the webhook, signed,
    /// with the W3C trace context of the attempt when `trace` is given.
    #[tracing::instrument(skip_all, fields(batch_id = %job.batch_id, webhook_id = %webhook.id, attempt = job.attempt))]
    pub async fn post(
        &self,
        webhook: &Webhook,
        job: &DeliveryJob,
        body: Bytes,
        trace: Option<&TraceHeaders>,
    ) -> Sent {
        let started_at = Utc::now();
        let clock = Instant::now();
        if let Err(blocked) = self.guard.preflight(&webhook.url).await {
            return blocked_before_sending(blocked, started_at, clock.elapsed());
        }
        let timestamp = started_at.timestamp();
        let msg_id = job.batch_id.to_string();
        let mut req = self
            .client
            .post(webhook.url.as_str())
            .timeout(Duration::from_millis(u64::from(webhook.timeout_ms)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("x-courier-delivery-id", &msg_id)
            .header("x-courier-attempt", job.attempt.to_string());
        match webhook.signature_scheme {
            SignatureScheme::Standard => {
                let sig = signature_header(
                    webhook.signing_secrets(started_at),
                    &msg_id,
                    timestamp,
                    &body,
                );
                req = req.header("webhook-signature", sig);
            }
            SignatureScheme::HmacSha256Hex => {
                let mut secrets = webhook.signing_secrets(started_at);
                if let Some(current) = secrets.next() {
                    req = req.header("x-courier-signature", sign_hex(current, &body));
                }
                if let Some(previous) = secrets.next() {
                    req = req.header("x-courier-signature-previous", sign_hex(previous, &body));
                }
            }
        }
        for (name, value) in webhook.headers.iter() {
            req = req.header(name, value);
        }
        // `traceparent` is reserved; a webhook's own `tracestate` is left alone.
        for (name, value) in trace.iter().flat_map(|t| t.pairs()) {
            if !webhook.headers.contains(name) {
                req = req.header(name, value);
            }
        }
        let clock = Instant::now();
        let mut refusal = None;
        let (result, body_prefix) = match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let prefix = read_prefix(resp).await;
                (
                    HttpResult::Response {
                        status,
                        retry_after,
                    },
                    prefix,
                )
            }
            Err(e) => match refusal_of(&e) {
                Some(refused) => {
                    refusal = Some(refused.words().to_owned());
                    (HttpResult::Failed(TransportError::Refused), None)
                }
                None => (HttpResult::Failed(transport_error(&e)), Some(describe(&e))),
            },
        };
        Sent {
            started_at,
            latency: clock.elapsed(),
            result,
            body_prefix,
            refusal,
        }
    }
}

/// The attempt of a request the guard stopped before it was sent.
fn blocked_before_sending(blocked: Blocked, started_at: DateTime<Utc>, latency: Duration) -> Sent {
    let (result, refusal, body_prefix) = match blocked {
        Blocked::Refused(refused) => (
            HttpResult::Failed(TransportError::Refused),
            Some(refused.words().to_owned()),
            None,
        ),
        Blocked::Unresolved => (
            HttpResult::Failed(TransportError::Connect),
            None,
            Some("the webhook's host name could not be resolved".to_owned()),
        ),
    };
    Sent {
        started_at,
        latency,
        result,
        body_prefix,
        refusal,
    }
}

/// Reads at most [`RESPONSE_BODY_LOG_LIMIT`] bytes of the answer.
async fn read_prefix(mut resp: reqwest::Response) -> Option<String> {
    let mut kept = Vec::new();
    while kept.len() < RESPONSE_BODY_LOG_LIMIT {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_BODY_LOG_LIMIT - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into_owned())
}

fn transport_error(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() {
        TransportError::Timeout
    } else if e.is_connect() {
        TransportError::Connect
    } else {
        TransportError::Io
    }
}

/// A short description of a transport error for the log, without internals.
fn describe(e: &reqwest::Error) -> String {
    match transport_error(e) {
        TransportError::Timeout => "no complete answer within the webhook's timeout".into(),
        TransportError::Connect => "the connection to the endpoint could not be made".into(),
        TransportError::Io => "the connection broke while sending or reading".into(),
        TransportError::Refused => "the webhook's address is not an allowed target".into(),
    }
}
