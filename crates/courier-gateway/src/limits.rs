//! Request limits that are not about one field: the count and size of request
//! headers (checked before any handler runs), and the per-tenant ingest rate.
//!
//! The others live where their input is parsed: body size in
//! [`crate::extract::LimitedBody`], events per request and the nesting depth of
//! `data` in ingest validation, URL, name and custom-header limits in webhook
//! validation.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use courier_core::ids::TenantId;
use courier_store::{Bucket, Take};

use crate::error::ApiError;
use crate::state::AppState;

/// Most request headers accepted. (The HTTP server itself refuses more than 100
/// with a bare 431 before this check runs.)
pub const MAX_REQUEST_HEADERS: usize = 64;
/// Most bytes of request header names and values together.
pub const MAX_REQUEST_HEADER_BYTES: usize = 8 * 1024;

/// Answers 431 with the JSON error body when a request has more headers, or larger
/// ones, than the limits.
pub async fn header_limits(request: Request, next: Next) -> Response {
    let headers = request.headers();
    if headers.len() > MAX_REQUEST_HEADERS {
        return ApiError::headers_too_large(format!(
            "the request has {} headers; at most {MAX_REQUEST_HEADERS} are accepted",
            headers.len()
        ))
        .into_response();
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_REQUEST_HEADER_BYTES {
        return ApiError::headers_too_large(format!(
            "the request headers take {bytes} bytes; at most {MAX_REQUEST_HEADER_BYTES} are accepted"
        ))
        .into_response();
    }
    next.run(request).await
}

/// `COURIER_TENANT_RATE_LIMIT`: events per second per tenant, with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
}

impl RateLimit {
    /// Reads `1000/s`, `1000` (per second), `60000/m`, `3600/h`, each optionally
    /// followed by `,burst=N`; the burst defaults to 2 seconds' worth (at least 1).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a rate such as 1000/s, 60000/m or 1000/s,burst=5000");
        let (rate, burst) = match s.split_once(',') {
            Some((rate, extra)) => {
                let burst = extra
                    .trim()
                    .strip_prefix("burst=")
                    .and_then(|b| b.trim().parse::<f64>().ok())
                    .filter(|b| b.is_finite() && *b >= 1.0)
                    .ok_or_else(bad)?;
                (rate, Some(burst))
            }
            None => (s, None),
        };
        let (count, per) = rate.trim().split_once('/').unwrap_or((rate.trim(), "s"));
        let seconds = match per.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        let per_second = count
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c > 0.0)
            .ok_or_else(bad)?
            / seconds;
        Ok(Self {
            per_second,
            burst: burst.unwrap_or((per_second * 2.0).max(1.0)),
        })
    }

    pub fn bucket(self) -> Bucket {
        Bucket {
            per_second: self.per_second,
            burst: self.burst,
        }
    }
}

/// Takes one token per event from the tenant's bucket; 429 with `Retry-After`
/// when there are not enough. Unlimited without `COURIER_TENANT_RATE_LIMIT`.
pub async fn take_ingest_tokens(
    state: &AppState,
    tenant: &TenantId,
    events: usize,
) -> Result<(), ApiError> {
    let Some(bucket) = state.tenant_rate_limit else {
        return Ok(());
    };
    match state.store.take_tokens(tenant, events, bucket).await? {
        Take::Taken => Ok(()),
        Take::Limited { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Err(ApiError::rate_limited(
                format!(
                    "this tenant is over its ingest rate of {} events per second; nothing was accepted, retry after {} s",
                    bucket.per_second,
                    secs.max(1)
                ),
                secs.max(1),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rates_read_per_second_minute_and_hour_with_a_default_burst() {
        let r = RateLimit::parse("1000/s").unwrap();
        assert_eq!((r.per_second, r.burst), (1000.0, 2000.0));
        assert_eq!(RateLimit::parse("1000").unwrap(), r);
        let m = RateLimit::parse("60/m").unwrap();
        assert_eq!((m.per_second, m.burst), (1.0, 2.0));
        let h = RateLimit::parse("360/h").unwrap();
        assert!((h.per_second - 0.1).abs() < 1e-9);
        assert_eq!(h.burst, 1.0);
        let b = RateLimit::parse("2/s,burst=3").unwrap();
        assert_eq!((b.per_second, b.burst), (2.0, 3.0));
    }

    #[test]
    fn bad_rates_are_refused() {
        for s in [
            "",
            "0/s",
            "-1/s",
            "10/day",
            "x/s",
            "10/s,burst=0",
            "10/s,max=3",
        ] {
            assert!(RateLimit::parse(s).is_err(), "{s}");
        }
    }
}
