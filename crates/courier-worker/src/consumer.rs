//! The consume loop shared by every stage: bounded concurrency, manual acks, and an
//! orderly stop on cancellation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_broker::lapin::message::Delivery;
use courier_broker::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use courier_broker::lapin::types::FieldTable;
use courier_broker::lapin::{Channel, Connection};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a handler decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Its effect is durable (or it was parked in `courier.dead`): remove it.
    Ack,
    /// A dependency failed: hand it back to the broker for another try.
    Requeue,
}

/// Pause before a message whose handling failed is handed back, so that an outage
/// does not spin messages through redeliveries (each counts toward the delivery limit).
const REQUEUE_BACKOFF: Duration = Duration::from_secs(1);

/// Consumes `queue` until `shutdown` fires or the channel fails. Each message runs
/// `handler` in its own task, at most `concurrency` at once; the broker hands out at
/// most `prefetch`. On shutdown the consumer is cancelled and in-flight handlers get
/// `grace` to finish; whatever is left stays unacked and is redelivered.
pub async fn consume<H, F>(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    concurrency: usize,
    grace: Duration,
    shutdown: CancellationToken,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Settle> + Send + 'static,
{
    let channel: Channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            queue,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Fired when the grace period ends: handlers still running are abandoned, their
    // messages left unacked for the broker to redeliver.
    let abandon = CancellationToken::new();
    let handler = Arc::new(handler);
    let result = loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(anyhow::Error::from(e).context(format!("consuming {queue}"))),
            None => {
                break Err(anyhow::anyhow!(
                    "the consumer of {queue} was closed by the broker"
                ))
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let handler = handler.clone();
        let abandon = abandon.clone();
        tracker.spawn(async move {
            let acker = delivery.acker.clone();
            let outcome = tokio::select! {
                outcome = handler(delivery) => outcome,
                () = abandon.cancelled() => return,
            };
            let settled = match outcome {
                Settle::Ack => acker.ack(BasicAckOptions::default()).await,
                Settle::Requeue => {
                    tokio::time::sleep(REQUEUE_BACKOFF).await;
                    let requeue = BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    };
                    acker.nack(requeue).await
                }
            };
            if let Err(e) = settled {
                tracing::warn!(error = %e, "could not settle a message; the broker will redeliver it");
            }
            drop(permit);
        });
    };
    let _ = channel
        .basic_cancel(&tag, BasicCancelOptions::default())
        .await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            queue,
            "in-flight work did not finish within the grace period; abandoning it"
        );
        abandon.cancel();
        tracker.wait().await;
    }
    let _ = channel.close(200, "stopping").await;
    result
}
