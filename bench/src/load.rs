//! HTTP load on `POST /v1/events`: as fast as possible over many connections for a
//! time window ([`Load::for_window`]) or a number of events ([`Load::count`]), or
//! at a fixed rate ([`Load::paced`]).
//!
//! Every event is about 300 bytes and carries `data.seq` (its number within the
//! scenario) and `data.sentAtNanos` (the run clock just before its request is sent),
//! which the receiver reads back. Only events answered 202 count as accepted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stats::{nanos, rate, Clock};

/// Longest wait for one ingest request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Appends one event of about 300 bytes.
pub fn push_event(buf: &mut String, seq: u64, sent_at: u64) {
    let _ = write!(
        buf,
        r#"{{"objectType":"Prospect","eventType":"EntityCreated","data":{{"objectId":"prospect_{seq:010}","email":"jane.doe.{seq}@example.com","company":"Example Industries","seq":{seq},"sentAtNanos":{sent_at},"source":"courier-bench","note":"A benchmark event of about three hundred bytes, like a typical CRM change."}}}}"#
    );
}

/// The body of one request: one event object, or `{"events": [...]}` for several.
pub fn body(first: u64, count: u64, sent_at: u64) -> String {
    let mut buf = String::with_capacity(320 * usize::try_from(count).unwrap_or(1) + 16);
    if count == 1 {
        push_event(&mut buf, first, sent_at);
        return buf;
    }
    buf.push_str(r#"{"events":["#);
    for seq in first..first + count {
        if seq > first {
            buf.push(',');
        }
        push_event(&mut buf, seq, sent_at);
    }
    buf.push_str("]}");
    buf
}

/// What a load run came to.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// Events answered 202.
    pub accepted: u64,
    /// Events of requests answered otherwise, or not answered.
    pub rejected: u64,
    /// Accepted events whose request completed inside the measured window.
    pub in_window: u64,
    /// Run clock when the first request was sent.
    pub first_sent: u64,
    /// Run clock when the last accepted request was answered.
    pub last_accepted: u64,
    /// Failed requests by status code or error kind.
    pub errors: BTreeMap<String, u64>,
    /// The first failure, described.
    pub first_error: Option<String>,
    /// Answered requests (paced runs only), one event each.
    pub round_trips: Vec<Trip>,
}

/// One answered request of a paced run: its event and the run clock when it was
/// sent and when its 202 arrived.
#[derive(Debug, Clone, Copy)]
pub struct Trip {
    pub seq: u64,
    pub sent: u64,
    pub answered: u64,
}

impl Trip {
    pub fn nanos(&self) -> u64 {
        self.answered.saturating_sub(self.sent)
    }
}

impl Sent {
    /// Events accepted per second from the first send to the last answer.
    pub fn accept_rate(&self) -> f64 {
        rate(
            self.accepted,
            self.last_accepted.saturating_sub(self.first_sent),
        )
    }

    /// `errors` as one line, e.g. `503 x12, timeout x1`.
    pub fn error_summary(&self) -> Option<String> {
        if self.errors.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        Some(format!("ingest errors: {}", parts.join(", ")))
    }
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    rejected: AtomicU64,
    in_window: AtomicU64,
    first_sent: AtomicU64,
    last_accepted: AtomicU64,
    failures: Mutex<(BTreeMap<String, u64>, Option<String>)>,
    /// Whether request round trips are kept.
    timed: bool,
    round_trips: Mutex<Vec<Trip>>,
}

impl Tally {
    fn new() -> Self {
        Self {
            first_sent: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }

    fn timed(expected: u64) -> Self {
        Self {
            timed: true,
            round_trips: Mutex::new(Vec::with_capacity(usize::try_from(expected).unwrap_or(0))),
            ..Self::new()
        }
    }

    fn failed(&self, events: u64, kind: String, detail: String) {
        self.rejected.fetch_add(events, Ordering::Relaxed);
        if let Ok(mut f) = self.failures.lock() {
            *f.0.entry(kind).or_default() += 1;
            f.1.get_or_insert(detail);
        }
    }

    fn into_sent(self) -> Sent {
        let (errors, first_error) = self.failures.into_inner().unwrap_or_default();
        Sent {
            accepted: self.accepted.into_inner(),
            rejected: self.rejected.into_inner(),
            in_window: self.in_window.into_inner(),
            first_sent: self.first_sent.into_inner(),
            last_accepted: self.last_accepted.into_inner(),
            errors,
            first_error,
            round_trips: self.round_trips.into_inner().unwrap_or_default(),
        }
    }
}

/// A load generator for one tenant on one gateway.
#[derive(Clone)]
pub struct Load {
    http: reqwest::Client,
    url: String,
    key: String,
    clock: Clock,
}

impl Load {
    pub fn new(gateway: &str, key: &str, clock: Clock) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            url: format!("{gateway}/v1/events"),
            key: key.to_owned(),
            clock,
        })
    }

    /// Posts events `first..first + count`, stamped now; records the outcome.
    async fn post(&self, tally: &Tally, first: u64, count: u64, window: Option<(u64, u64)>) {
        let sent_at = self.clock.now_nanos();
        tally.first_sent.fetch_min(sent_at, Ordering::Relaxed);
        let result = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body(first, count, sent_at))
            .send()
            .await;
        let done = self.clock.now_nanos();
        match result {
            Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => {
                // Drain the answer so the connection is reused.
                let _ = resp.bytes().await;
                tally.accepted.fetch_add(count, Ordering::Relaxed);
                tally.last_accepted.fetch_max(done, Ordering::Relaxed);
                if window.is_some_and(|(from, to)| (from..to).contains(&done)) {
                    tally.in_window.fetch_add(count, Ordering::Relaxed);
                }
                if tally.timed {
                    if let Ok(mut rt) = tally.round_trips.lock() {
                        rt.push(Trip {
                            seq: first,
                            sent: sent_at,
                            answered: done,
                        });
                    }
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let detail: String = text.chars().take(300).collect();
                tally.failed(
                    count,
                    status.as_u16().to_string(),
                    format!("{status}: {detail}"),
                );
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect error"
                } else {
                    "transport error"
                };
                tally.failed(count, kind.to_owned(), e.to_string());
            }
        }
    }

    /// Posts as fast as `connections` connections allow for `warmup + window`,
    /// `batch` events per request; `in_window` counts what was accepted in the window.
    pub async fn for_window(
        &self,
        connections: usize,
        batch: u64,
        warmup: Duration,
        window: Duration,
    ) -> Sent {
        let tally = Arc::new(Tally::new());
        let from = self.clock.now_nanos() + nanos(warmup);
        let to = from + nanos(window);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..connections {
            let (load, tally, next) = (self.clone(), tally.clone(), next.clone());
            tasks.spawn(async move {
                while load.clock.now_nanos() < to {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    load.post(&tally, first, batch, Some((from, to))).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Arc::try_unwrap(tally)
            .map(Tally::into_sent)
            .unwrap_or_default()
    }

    /// Posts events `0..total`, `batch` per request over `connections` connections,
    /// starting no request after `deadline`.
    pub async fn count(
        &self,
        connections: usize,
        batch: u64,
        total: u64,
        deadline: Duration,
    ) -> Sent {
        let tally = Arc::new(Tally::new());
        let stop = self.clock.now_nanos() + nanos(deadline);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..connections {
            let (load, tally, next) = (self.clone(), tally.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= total || load.clock.now_nanos() > stop {
                        break;
                    }
                    let count = batch.min(total - first);
                    load.post(&tally, first, count, None).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Arc::try_unwrap(tally)
            .map(Tally::into_sent)
            .unwrap_or_default()
    }

    /// Sends one event every `1 / per_second` for `duration` (open loop: a slow
    /// answer does not delay the next send), at most `in_flight` requests at once.
    pub async fn paced(&self, per_second: u64, duration: Duration, in_flight: usize) -> Sent {
        let total = per_second * duration.as_secs();
        let tally = Arc::new(Tally::timed(total));
        let slots = Arc::new(Semaphore::new(in_flight));
        let mut ticks =
            tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second.max(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = JoinSet::new();
        for seq in 0..total {
            ticks.tick().await;
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (load, tally) = (self.clone(), tally.clone());
            tasks.spawn(async move {
                load.post(&tally, seq, 1, None).await;
                drop(permit);
            });
            // Reap finished tasks as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        Arc::try_unwrap(tally)
            .map(Tally::into_sent)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_about_300_bytes_of_json() {
        let mut buf = String::new();
        push_event(&mut buf, 123_456, 987_654_321_000);
        let v: serde_json::Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(v["data"]["seq"], 123_456);
        assert_eq!(v["data"]["sentAtNanos"], 987_654_321_000u64);
        assert!((270..=330).contains(&buf.len()), "{} bytes", buf.len());
    }

    #[test]
    fn a_batch_body_lists_consecutive_events() {
        let v: serde_json::Value = serde_json::from_str(&body(10, 3, 5)).unwrap();
        let seqs: Vec<u64> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [10, 11, 12]);
    }

    #[test]
    fn a_single_body_is_one_event_object() {
        let v: serde_json::Value = serde_json::from_str(&body(7, 1, 5)).unwrap();
        assert_eq!(v["data"]["seq"], 7);
    }
}
