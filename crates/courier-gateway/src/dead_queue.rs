//! The operator's port on `courier.dead`, the queue that keeps every parked message
//! (design §5): reading it, requeueing messages and discarding them.
//!
//! Messages are taken with `basic.get` and stay unacknowledged while an operation
//! looks at them, so it sees each once; those it does not settle are handed back
//! (nack with requeue) at the end. Nothing consumes `courier.dead` otherwise, and it
//! has no delivery limit, so reading it never loses a message. Each operation runs
//! in a task of its own, so a client that hangs up does not leave messages held.
//!
//! A message is known by its AMQP message id or, without one, by `sha256:` and the
//! first 16 hex digits of its body's SHA-256.

use std::collections::HashSet;

use courier_broker::dead::DeadLetter;
use courier_broker::headers::{text, ACCEPTED_AT_HEADER};
use courier_broker::lapin::message::Delivery;
use courier_broker::lapin::options::{BasicAckOptions, BasicNackOptions};
use courier_broker::{BrokerError, Message};
use courier_core::envelope::DeliveryJob;
use courier_telemetry::traces::{TRACEPARENT, TRACESTATE};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::replay;
use crate::state::AppState;

/// Most messages one requeue or discard looks at.
pub const SCAN_LIMIT: usize = 10_000;

/// A parked message as operators see it.
#[derive(Debug, Clone)]
pub struct ParkedMessage {
    /// What requeue and discard select it by.
    pub id: String,
    pub message_id: Option<String>,
    pub dead: DeadLetter,
    /// Whether the broker handed it out before (an earlier listing, say).
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
    #[error("acknowledging a message: {0}")]
    Settle(#[from] courier_broker::lapin::Error),
    #[error("the operation stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] courier_store::StoreError),
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

async fn give_back(held: Vec<Delivery>) -> Result<(), QueueError> {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let mut failure = None;
    for d in held {
        if let Err(e) = d.acker.nack(requeue).await {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), |e| Err(e.into()))
}

/// Up to `limit` messages from the head of `courier.dead`, left in the queue.
pub async fn list(state: &AppState, limit: usize) -> Result<Vec<ParkedMessage>, QueueError> {
    let state = state.clone();
    tokio::spawn(async move {
        let queue = state.topology.dead_queue();
        let mut held = Vec::with_capacity(limit);
        let mut failure = None;
        while held.len() < limit {
            match state.publisher.get(&queue).await {
                Ok(Some((d, _))) => held.push(d),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let listed = held.iter().map(describe).collect();
        give_back(held).await?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(listed),
        }
    })
    .await?
}

/// What to do with one selected message.
enum Act {
    /// Remove it.
    Discard,
    /// Send it back where it came from, then remove it.
    Requeue,
}

/// Goes through the messages in `courier.dead` when it starts (at most
/// [`SCAN_LIMIT`]; a requeued message parked again meanwhile waits for the next
/// time), applying `act` to the selected ones; returns (settled, skipped).
async fn sweep(
    state: AppState,
    selection: Selection,
    act: Act,
) -> Result<(usize, usize), QueueError> {
    let queue = state.topology.dead_queue();
    let mut held = Vec::new();
    let (mut settled, mut skipped) = (0, 0);
    let mut result = Ok(());
    let mut left = SCAN_LIMIT;
    let mut first = true;
    while left > 0 {
        left -= 1;
        let delivery = match state.publisher.get(&queue).await {
            Ok(Some((d, behind))) => {
                // The first message tells how many were there at the start.
                if first {
                    first = false;
                    left = left.min(usize::try_from(behind).unwrap_or(usize::MAX));
                }
                d
            }
            Ok(None) => break,
            Err(e) => {
                result = Err(e.into());
                break;
            }
        };
        if !selection.matches(&id_of(&delivery)) {
            held.push(delivery);
            continue;
        }
        let done = match act {
            Act::Discard => true,
            Act::Requeue => match send_back(&state, &delivery).await {
                Ok(sent) => sent,
                Err(e) => {
                    held.push(delivery);
                    result = Err(e);
                    break;
                }
            },
        };
        if done {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                result = Err(e.into());
                break;
            }
            settled += 1;
        } else {
            skipped += 1;
            held.push(delivery);
        }
    }
    give_back(held).await?;
    result.map(|()| (settled, skipped))
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
    let state = state.clone();
    let (requeued, skipped) =
        tokio::spawn(async move { sweep(state, selection, Act::Requeue).await }).await??;
    Ok(Requeued { requeued, skipped })
}

/// Removes the selected messages for good; returns how many.
pub async fn discard(state: &AppState, selection: Selection) -> Result<usize, QueueError> {
    let state = state.clone();
    let (discarded, _) =
        tokio::spawn(async move { sweep(state, selection, Act::Discard).await }).await??;
    Ok(discarded)
}
