//! The subscriber endpoint: an axum server on loopback that counts what arrives,
//! notes when each event first arrives and how long after it was sent, and checks
//! the Standard Webhooks signature of one request in [`VERIFY_EVERY`].
//!
//! Webhook `i` of a scenario posts to `/hooks/{i}`. Events carry `data.seq` (their
//! number within the scenario) and `data.sentAtNanos` (the run clock when the load
//! generator sent them); `(webhook, seq)` identifies one delivery, so duplicates
//! (at-least-once) are counted apart rather than inflating the figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use courier_core::signing::{self, Secret};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::stats::Clock;

/// One request in this many has its signature verified.
pub const VERIFY_EVERY: u64 = 100;

/// One delivery of one event, as first seen.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The event's `data.seq`.
    pub seq: u64,
    /// Run clock on arrival.
    pub at: u64,
    /// Arrival minus `data.sentAtNanos`.
    pub latency: u64,
}

/// What the receiver has counted so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub requests: u64,
    /// Deliveries of an event not seen before for that webhook.
    pub unique: u64,
    /// Deliveries of an event already seen for that webhook.
    pub duplicates: u64,
    /// The largest `eventCount` of one envelope.
    pub max_batch: u64,
    pub verified: u64,
    pub bad_signatures: u64,
    /// Bodies that are not a batch envelope of bench events.
    pub malformed: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    event_count: usize,
    events: Vec<EnvelopeEvent>,
}

#[derive(Deserialize)]
struct EnvelopeEvent {
    data: EventData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventData {
    seq: u64,
    sent_at_nanos: u64,
}

struct Shared {
    clock: Clock,
    delay: Duration,
    /// Events each webhook may receive: `seq` is below it.
    capacity: u64,
    /// One bit per (webhook, seq).
    seen: Vec<AtomicU64>,
    secrets: RwLock<Vec<Option<Secret>>>,
    arrivals: Mutex<Vec<Arrival>>,
    requests: AtomicU64,
    unique: AtomicU64,
    duplicates: AtomicU64,
    max_batch: AtomicU64,
    verified: AtomicU64,
    bad_signatures: AtomicU64,
    malformed: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

/// A running receiver; the server stops when this is dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Serves `webhooks` endpoints, each expecting events numbered below `capacity`,
    /// answering 204 after `delay`.
    pub async fn start(
        clock: Clock,
        webhooks: usize,
        capacity: u64,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        let bits = (webhooks as u64 * capacity).div_ceil(64);
        let shared = Arc::new(Shared {
            clock,
            delay,
            capacity,
            seen: (0..bits).map(|_| AtomicU64::new(0)).collect(),
            secrets: RwLock::new(vec![None; webhooks]),
            arrivals: Mutex::new(Vec::with_capacity(
                usize::try_from(webhooks as u64 * capacity).unwrap_or(0),
            )),
            requests: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            first_problem: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/hooks/{index}", post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("receiver stopped: {e}");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The URL of webhook `index`.
    pub fn url(&self, index: usize) -> String {
        format!("http://{}/hooks/{index}", self.addr)
    }

    /// Makes signatures of webhook `index` checkable.
    pub fn set_secret(&self, index: usize, secret: Secret) {
        if let Ok(mut secrets) = self.shared.secrets.write() {
            if let Some(slot) = secrets.get_mut(index) {
                *slot = Some(secret);
            }
        }
    }

    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            requests: s.requests.load(Ordering::Relaxed),
            unique: s.unique.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            max_batch: s.max_batch.load(Ordering::Relaxed),
            verified: s.verified.load(Ordering::Relaxed),
            bad_signatures: s.bad_signatures.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
        }
    }

    /// The first bad signature or malformed body, described.
    pub fn first_problem(&self) -> Option<String> {
        self.shared
            .first_problem
            .lock()
            .ok()
            .and_then(|p| p.clone())
    }

    /// Every first delivery so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared
            .arrivals
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(s): State<Arc<Shared>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = s.clock.now_nanos();
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    if n % VERIFY_EVERY == 0 {
        check_signature(&s, index, &headers, &body);
    }
    match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) if envelope.event_count == envelope.events.len() => {
            s.max_batch
                .fetch_max(envelope.event_count as u64, Ordering::Relaxed);
            record(&s, index, at, &envelope.events);
        }
        Ok(envelope) => problem(
            &s.malformed,
            &s,
            format!(
                "eventCount {} but {} events",
                envelope.event_count,
                envelope.events.len()
            ),
        ),
        Err(e) => problem(&s.malformed, &s, format!("not a bench envelope: {e}")),
    }
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    StatusCode::NO_CONTENT
}

fn record(s: &Shared, index: usize, at: u64, events: &[EnvelopeEvent]) {
    let mut fresh = Vec::with_capacity(events.len());
    for e in events {
        let seq = e.data.seq;
        if seq >= s.capacity {
            problem(&s.malformed, s, format!("event seq {seq} out of range"));
            continue;
        }
        let bit = index as u64 * s.capacity + seq;
        let Some(word) = s.seen.get(usize::try_from(bit / 64).unwrap_or(usize::MAX)) else {
            problem(
                &s.malformed,
                s,
                format!("webhook index {index} out of range"),
            );
            continue;
        };
        let mask = 1u64 << (bit % 64);
        if word.fetch_or(mask, Ordering::Relaxed) & mask == 0 {
            fresh.push(Arrival {
                seq,
                at,
                latency: at.saturating_sub(e.data.sent_at_nanos),
            });
        } else {
            s.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    if fresh.is_empty() {
        return;
    }
    if let Ok(mut arrivals) = s.arrivals.lock() {
        arrivals.extend_from_slice(&fresh);
    }
    s.unique.fetch_add(fresh.len() as u64, Ordering::Relaxed);
}

fn check_signature(s: &Shared, index: usize, headers: &HeaderMap, body: &[u8]) {
    let secret = s
        .secrets
        .read()
        .ok()
        .and_then(|secrets| secrets.get(index).cloned().flatten());
    let Some(secret) = secret else {
        // Requests can only come for webhooks created with a known secret; one that
        // arrives before its secret was recorded is simply not checked.
        return;
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let now = chrono::Utc::now().timestamp();
    match signing::verify(
        &secret,
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body,
        now,
    ) {
        Ok(()) => {
            s.verified.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => problem(
            &s.bad_signatures,
            s,
            format!("signature of webhook-id {}: {e}", header("webhook-id")),
        ),
    }
}

fn problem(counter: &AtomicU64, s: &Shared, what: String) {
    counter.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut first) = s.first_problem.lock() {
        first.get_or_insert(what);
    }
}
