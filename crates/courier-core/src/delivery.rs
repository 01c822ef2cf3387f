//! Delivery attempts: how an HTTP answer is classified, what an attempt ends as, and
//! the status of a batch in the delivery log.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// Bytes of a response body kept in the log.
pub const RESPONSE_BODY_LOG_LIMIT: usize = 4096;

/// Status of a batch in the delivery log. Within a series it only moves forward:
/// `pending` → `retrying` → one of the final states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Delivered,
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Retrying,
            Self::Delivered,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Order within a series; a status never moves to a lower rank.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Retrying => 1,
            Self::Delivered | Self::Failed | Self::Cancelled => 2,
        }
    }

    pub fn is_final(self) -> bool {
        self.rank() == 2
    }
}

/// Why a POST produced no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportError {
    /// The connection could not be made (refused, DNS, TLS).
    Connect,
    /// No complete answer within the webhook's timeout.
    Timeout,
    /// The connection broke while sending or reading.
    Io,
    /// The target policy refused the webhook's address (SSRF protection): nothing
    /// was sent, and trying again would not help.
    Refused,
}

/// What one POST produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpResult {
    Response {
        status: u16,
        /// Parsed `Retry-After`, if the answer carried one.
        retry_after: Option<Duration>,
    },
    Failed(TransportError),
}

/// The receiver's verdict on an attempt, before any retry policy applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Worth trying again, not before `retry_after` if the receiver said so.
    Temporary {
        retry_after: Option<Duration>,
    },
    /// Trying again would not help.
    Permanent {
        reason: String,
    },
}

/// Classifies an attempt: 2xx succeed; connection errors, timeouts, 408, 429 and 5xx
/// are temporary; 3xx (redirects are never followed) and other 4xx are permanent
/// unless `retry_client_errors`; a target the policy refuses is permanent whatever
/// the webhook asks. `Retry-After` is kept only on 429 and 503.
pub fn classify(result: &HttpResult, retry_client_errors: bool) -> Verdict {
    match *result {
        HttpResult::Failed(TransportError::Refused) => Verdict::Permanent {
            reason: crate::target::REFUSED_REASON.to_owned(),
        },
        HttpResult::Failed(_) => Verdict::Temporary { retry_after: None },
        HttpResult::Response {
            status,
            retry_after,
        } => match status {
            200..=299 => Verdict::Success,
            429 | 503 => Verdict::Temporary { retry_after },
            408 | 500..=599 => Verdict::Temporary { retry_after: None },
            400..=499 if retry_client_errors => Verdict::Temporary { retry_after: None },
            300..=399 => Verdict::Permanent {
                reason: format!("the endpoint answered {status}; redirects are not followed"),
            },
            _ => Verdict::Permanent {
                reason: format!("the endpoint answered {status}"),
            },
        },
    }
}

/// What follows an attempt, once the webhook's retry policy is applied to its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAttempt {
    /// The receiver took the batch.
    Delivered,
    /// Try again after this delay.
    Retry { after: Duration },
    /// The batch ends `failed`.
    GiveUp { reason: String },
}

/// Applies `policy` to the verdict on attempt `attempt` (1-based): a temporary failure
/// is retried while attempts are left, after the scheduled delay (or the receiver's
/// `Retry-After`, up to the schedule's longest).
pub fn after_attempt(verdict: Verdict, policy: &RetryPolicy, attempt: u32) -> AfterAttempt {
    match verdict {
        Verdict::Success => AfterAttempt::Delivered,
        Verdict::Permanent { reason } => AfterAttempt::GiveUp { reason },
        Verdict::Temporary { retry_after } => match policy.next_delay(attempt, retry_after) {
            Some(after) => AfterAttempt::Retry { after },
            None => AfterAttempt::GiveUp {
                reason: format!(
                    "still failing after {attempt} attempt{}",
                    if attempt == 1 { "" } else { "s" }
                ),
            },
        },
    }
}

/// One attempt as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub series: u32,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    /// The HTTP status, when an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The error kind, when none came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TransportError>,
    pub latency_ms: u64,
    /// The first [`RESPONSE_BODY_LOG_LIMIT`] bytes of the answer, lossily as UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// What the attempt ended as, in words.
    pub outcome: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> HttpResult {
        HttpResult::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn success_is_2xx_only() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(&answer(s), false), Verdict::Success);
        }
    }

    #[test]
    fn transport_errors_timeouts_408_429_and_5xx_are_temporary() {
        for r in [
            HttpResult::Failed(TransportError::Connect),
            HttpResult::Failed(TransportError::Timeout),
            HttpResult::Failed(TransportError::Io),
            answer(408),
            answer(429),
            answer(500),
            answer(502),
            answer(503),
            answer(599),
        ] {
            assert!(
                matches!(classify(&r, false), Verdict::Temporary { .. }),
                "{r:?}"
            );
        }
    }

    #[test]
    fn refused_targets_are_permanent_even_when_client_errors_retry() {
        for retry_client_errors in [false, true] {
            assert_eq!(
                classify(
                    &HttpResult::Failed(TransportError::Refused),
                    retry_client_errors
                ),
                Verdict::Permanent {
                    reason: "deliveries there are not allowed".into()
                }
            );
        }
        let record = serde_json::to_value(TransportError::Refused).unwrap();
        assert_eq!(record, "refused");
    }

    #[test]
    fn redirects_and_other_client_errors_are_permanent() {
        for s in [301, 302, 307, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify(&answer(s), false), Verdict::Permanent { .. }),
                "{s}"
            );
        }
    }

    #[test]
    fn client_errors_retry_when_the_webhook_asks() {
        assert!(matches!(
            classify(&answer(404), true),
            Verdict::Temporary { .. }
        ));
        assert!(matches!(
            classify(&answer(302), true),
            Verdict::Permanent { .. }
        ));
    }

    #[test]
    fn retry_after_is_kept_on_429_and_503_only() {
        let after = Some(Duration::from_secs(2));
        for s in [429, 503] {
            let r = HttpResult::Response {
                status: s,
                retry_after: after,
            };
            assert_eq!(
                classify(&r, false),
                Verdict::Temporary { retry_after: after }
            );
        }
        let r = HttpResult::Response {
            status: 500,
            retry_after: after,
        };
        assert_eq!(
            classify(&r, false),
            Verdict::Temporary { retry_after: None }
        );
    }

    fn policy(schedule: &str, max_attempts: u32) -> RetryPolicy {
        let settings = crate::retry::RetrySettings {
            max_attempts: Some(max_attempts),
            schedule: Some(crate::retry::Schedule::parse_list(schedule).unwrap()),
            retry_client_errors: false,
        };
        RetryPolicy::effective(&settings, &crate::retry::RetryDefaults::default())
    }

    #[test]
    fn temporary_failures_retry_on_the_schedule_until_the_last_attempt() {
        let p = policy("0s,200ms,500ms", 3);
        let temporary = || Verdict::Temporary { retry_after: None };
        assert_eq!(
            after_attempt(temporary(), &p, 1),
            AfterAttempt::Retry {
                after: Duration::from_millis(200)
            }
        );
        assert_eq!(
            after_attempt(temporary(), &p, 2),
            AfterAttempt::Retry {
                after: Duration::from_millis(500)
            }
        );
        assert!(matches!(
            after_attempt(temporary(), &p, 3),
            AfterAttempt::GiveUp { reason } if reason.contains("3 attempts")
        ));
        assert_eq!(
            after_attempt(Verdict::Success, &p, 3),
            AfterAttempt::Delivered
        );
    }

    #[test]
    fn permanent_failures_give_up_at_once_and_retry_after_lengthens_the_wait() {
        let p = policy("0s,200ms,3s", 3);
        let reason = "the endpoint answered 404".to_owned();
        assert_eq!(
            after_attempt(
                Verdict::Permanent {
                    reason: reason.clone()
                },
                &p,
                1
            ),
            AfterAttempt::GiveUp { reason }
        );
        let asked = Verdict::Temporary {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            after_attempt(asked, &p, 1),
            AfterAttempt::Retry {
                after: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn status_rank_only_moves_forward() {
        assert!(DeliveryStatus::Pending.rank() < DeliveryStatus::Retrying.rank());
        assert!(DeliveryStatus::Delivered.is_final());
        assert!(!DeliveryStatus::Retrying.is_final());
        for s in ["pending", "retrying", "delivered", "failed", "cancelled"] {
            assert_eq!(DeliveryStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(DeliveryStatus::parse("nope"), None);
    }
}

/// Reads a `Retry-After` value: delay seconds or an HTTP date (relative to `now`).
/// A date in the past means "now"; anything unreadable is ignored.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", SystemTime::now()), None);
    }
}
