//! The operator's port on `courier.dead`, the queue that keeps every parked message
//! (design §5): reading it, requeueing messages and discarding them.
//!
//! Every operation is one pass through the queue ([`Rotation`]): each message is
//! taken and either kept, as a confirmed copy at the tail of the queue (so that
//! after the pass the order is the same), or removed. No message is ever handed
//! back, which a quorum queue would count toward its delivery limit: listing the
//! queue any number of times drops nothing. One pass runs at a time across every
//! replica (a lease in Redis; another operation waits for it a few seconds, then
//! gets a 409), in a task of its own, so a client that hangs up does not stop it
//! half-way. A pass goes through at most [`SCAN_LIMIT`] messages: in a longer queue
//! those move behind the others (their order among themselves is kept).
//!
//! A message is known by its AMQP message id or, without one, by `sha256:` and the
//! first 16 hex digits of its body's SHA-256.

use std::collections::HashSet;
use std::time::Duration;

use courier_broker::dead::DeadLetter;
use courier_broker::headers::{text, ACCEPTED_AT_HEADER};
use courier_broker::lapin::message::Delivery;
use courier_broker::{BrokerError, Message, Rotation};
use courier_core::envelope::DeliveryJob;
use courier_telemetry::traces::{TRACEPARENT, TRACESTATE};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::replay;
use crate::state::AppState;

/// Most messages one operation goes through.
pub const SCAN_LIMIT: usize = 10_000;

/// The lease one pass through the queue holds.
const LEASE: &str = "dead-letter-queue";
/// How long the lease lasts without being renewed (a gateway that dies mid-pass
/// holds it this long at most).
const LEASE_TTL: Duration = Duration::from_secs(60);
/// The lease is renewed every so many messages.
const RENEW_EVERY: usize = 500;
/// How long an operation waits for another one to end.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// Bound of every broker operation of a pass.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// A parked message as operators see it.
#[derive(Debug, Clone)]
pub struct ParkedMessage {
    /// What requeue and discard select it by.
    pub id: String,
    pub message_id: Option<String>,
    pub dead: DeadLetter,
    /// Whether the broker handed it out before without its being settled (an
    /// operation that stopped half-way).
    pub redelivered: bool,
    /// The body as JSON when it parses, else as (lossy UTF-8) text.
    pub body: Value,
}

/// Which messages an operation applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(HashSet<String>),
}

impl Selection {
    fn matches(&self, id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Ids(ids) => ids.contains(id),
        }
    }
}

/// What a requeue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    pub requeued: usize,
    /// Selected but left in the queue: no known origin to send it back to, or (for a
    /// delivery job) its webhook is gone or disabled.
    pub skipped: usize,
}

/// Errors of the dead-letter queue port.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the operation stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] courier_store::StoreError),
    /// Another operation on the queue holds it (here or on another replica).
    #[error("another operation on the dead-letter queue is running; retry")]
    Busy,
}

/// The id a message is selected by.
fn id_of(delivery: &Delivery) -> String {
    match delivery.properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.to_string(),
        _ => {
            let digest = Sha256::digest(&delivery.data);
            format!("sha256:{}", &hex::encode(digest)[..16])
        }
    }
}

fn describe(delivery: &Delivery) -> ParkedMessage {
    let body = serde_json::from_slice(&delivery.data)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&delivery.data).into_owned()));
    let dead = DeadLetter::of(&delivery.properties);
    ParkedMessage {
        id: id_of(delivery),
        message_id: dead.message_id.clone(),
        dead,
        redelivered: delivery.redelivered,
        body,
    }
}

/// One pass through `courier.dead` under the lease.
struct Pass {
    state: AppState,
    rotation: Rotation,
    holder: String,
    taken: usize,
}

impl Pass {
    /// Takes the lease (waiting up to [`LEASE_WAIT`] for another pass to end) and
    /// starts the rotation.
    async fn begin(state: &AppState) -> Result<Self, QueueError> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let until = tokio::time::Instant::now() + LEASE_WAIT;
        while !state.store.take_lease(LEASE, &holder, LEASE_TTL).await? {
            if tokio::time::Instant::now() >= until {
                return Err(QueueError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let started = async {
            let conn = state
                .broker
                .current_connection()
                .ok_or(BrokerError::Disconnected)?;
            Rotation::start(
                &conn,
                &state.topology.dead_queue(),
                SCAN_LIMIT,
                BROKER_TIMEOUT,
            )
            .await
        }
        .await;
        match started {
            Ok(rotation) => Ok(Self {
                state: state.clone(),
                rotation,
                holder,
                taken: 0,
            }),
            Err(e) => {
                let _ = state.store.release_lease(LEASE, &holder).await;
                Err(e.into())
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Delivery>, QueueError> {
        self.taken += 1;
        if self.taken % RENEW_EVERY == 0
            && !self
                .state
                .store
                .take_lease(LEASE, &self.holder, LEASE_TTL)
                .await?
        {
            return Err(QueueError::Busy);
        }
        Ok(self.rotation.next().await?)
    }

    async fn keep(&mut self, delivery: Delivery) -> Result<(), QueueError> {
        Ok(self.rotation.keep(delivery).await?)
    }

    async fn remove(&mut self, delivery: Delivery) -> Result<(), QueueError> {
        Ok(self.rotation.remove(delivery).await?)
    }

    /// Ends the pass (the last copies confirmed, their originals acked) and gives
    /// the lease up; returns `result`, or the first error.
    async fn end<T>(self, result: Result<T, QueueError>) -> Result<T, QueueError> {
        let finished = self.rotation.finish().await;
        let _ = self.state.store.release_lease(LEASE, &self.holder).await;
        let value = result?;
        finished?;
        Ok(value)
    }
}

/// Runs an operation in a task of its own, which the gateway waits for when it
/// stops.
async fn detached<T, F>(state: &AppState, op: F) -> Result<T, QueueError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, QueueError>> + Send + 'static,
{
    state.tasks.spawn(op).await?
}

/// Up to `limit` messages from the head of `courier.dead`, left in the queue, in
/// the same order.
pub async fn list(state: &AppState, limit: usize) -> Result<Vec<ParkedMessage>, QueueError> {
    let state = state.clone();
    detached(&state.clone(), async move {
        let mut pass = Pass::begin(&state).await?;
        let listed = async {
            let mut listed = Vec::with_capacity(limit);
            while let Some(delivery) = pass.next().await? {
                if listed.len() < limit {
                    listed.push(describe(&delivery));
                }
                pass.keep(delivery).await?;
            }
            Ok(listed)
        }
        .await;
        pass.end(listed).await
    })
    .await
}

/// What to do with one selected message.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Remove it.
    Discard,
    /// Send it back where it came from, then remove it.
    Requeue,
}

/// Goes through the messages in `courier.dead` when it starts (at most
/// [`SCAN_LIMIT`]; a requeued message parked again meanwhile waits for the next
/// time), applying `act` to the selected ones and keeping the others in place;
/// returns (settled, skipped).
async fn sweep(
    state: AppState,
    selection: Selection,
    act: Act,
) -> Result<(usize, usize), QueueError> {
    let mut pass = Pass::begin(&state).await?;
    let swept = async {
        let (mut settled, mut skipped) = (0, 0);
        while let Some(delivery) = pass.next().await? {
            if !selection.matches(&id_of(&delivery)) {
                pass.keep(delivery).await?;
                continue;
            }
            let done = match act {
                Act::Discard => true,
                Act::Requeue => match send_back(&state, &delivery).await {
                    Ok(sent) => sent,
                    Err(e) => {
                        pass.keep(delivery).await?;
                        return Err(e);
                    }
                },
            };
            if done {
                pass.remove(delivery).await?;
                settled += 1;
            } else {
                pass.keep(delivery).await?;
                skipped += 1;
            }
        }
        Ok((settled, skipped))
    }
    .await;
    pass.end(swept).await
}

/// Sends a parked message back: a delivery job as a new series of its batch (its
/// old series ended `failed`), anything else to the exchange and routing key it
/// was first published with, if that is one of this deployment's. Returns false
/// when it cannot go anywhere.
async fn send_back(state: &AppState, delivery: &Delivery) -> Result<bool, QueueError> {
    if let Ok(job) = serde_json::from_slice::<DeliveryJob>(&delivery.data) {
        return match replay::replay_parked_job(state, &job).await {
            Ok(_) => Ok(true),
            Err(replay::ReplayError::Store(e)) => Err(e.into()),
            Err(replay::ReplayError::Broker(e)) => Err(e.into()),
            Err(e) => {
                tracing::info!(error = %e, "a parked delivery job cannot be requeued");
                Ok(false)
            }
        };
    }
    let dead = DeadLetter::of(&delivery.properties);
    let topology = &state.topology;
    let (Some(exchange), Some(routing_key)) = (dead.exchange, dead.routing_key) else {
        return Ok(false);
    };
    if exchange != topology.events_exchange() && exchange != topology.deliveries() {
        return Ok(false);
    }
    let mut msg = Message::new(&exchange, &routing_key, &delivery.data);
    if let Some(id) = dead.message_id.as_deref() {
        msg = msg.with_message_id(id);
    }
    // Sent back, it continues the trace it came with.
    for name in [TRACEPARENT, TRACESTATE, ACCEPTED_AT_HEADER] {
        if let Some(value) = text(&delivery.properties, name) {
            msg = msg.with_header(name, value);
        }
    }
    state.publisher.publish(msg).await?;
    Ok(true)
}

/// Sends the selected messages back where they came from (see [`send_back`]).
pub async fn requeue(state: &AppState, selection: Selection) -> Result<Requeued, QueueError> {
    let (requeued, skipped) =
        detached(state, sweep(state.clone(), selection, Act::Requeue)).await?;
    Ok(Requeued { requeued, skipped })
}

/// Removes the selected messages for good; returns how many.
pub async fn discard(state: &AppState, selection: Selection) -> Result<usize, QueueError> {
    let (discarded, _) = detached(state, sweep(state.clone(), selection, Act::Discard)).await?;
    Ok(discarded)
}
