//! The consume loop shared by every stage: bounded concurrency, manual acks,
//! resumption after the broker connection comes back, pauses instead of requeue
//! spinning while a dependency is down, and an orderly stop on cancellation.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_broker::lapin::message::Delivery;
use courier_broker::lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
};
use courier_broker::lapin::types::FieldTable;
use courier_broker::lapin::Channel;
use courier_broker::Broker;
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a handler decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Its effect is durable (or it was parked in `courier.dead`): remove it.
    Ack,
    /// A dependency (Redis, the broker) failed: handle it again after a pause. The
    /// message stays unacked meanwhile, so an outage pauses consumption instead of
    /// spinning messages through redeliveries (each would count toward the delivery
    /// limit and end in `courier.dead`).
    Retry,
}

/// First and longest pause before handling a message again.
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// How one stage consumes.
#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    pub queue: String,
    /// Messages the broker hands this consumer beyond the ones its handlers work
    /// on, so that a handler that ends finds the next message at hand instead of
    /// waiting for the broker to send one.
    pub prefetch: u16,
    /// Handlers running at once.
    pub concurrency: usize,
    /// After `stop`, how long in-flight handlers may finish before they are abandoned.
    pub grace: Duration,
}

/// Consumes until `stop`, through any number of broker reconnections. Each message
/// runs `handler` in its own task (at most `concurrency` at once). On `stop` the
/// consumer is cancelled and in-flight handlers get the grace period to finish;
/// whatever is left stays unacked and is redelivered.
pub async fn consume<H, F>(
    broker: &Broker,
    settings: ConsumeSettings,
    stop: CancellationToken,
    handler: H,
) -> anyhow::Result<()>
where
    H: Fn(Arc<Delivery>) -> F + Send + Sync + 'static,
    F: Future<Output = Settle> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Fired when the grace period ends: handlers still running are abandoned, their
    // messages left unacked for the broker to redeliver.
    let abandon = CancellationToken::new();
    let handler = Arc::new(handler);
    while let Some(conn) = broker.connection(&stop).await {
        let session = Session {
            broker,
            settings: &settings,
            slots: &slots,
            tracker: &tracker,
            abandon: &abandon,
            stop: &stop,
        };
        match session.run(&conn, handler.clone()).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, queue = settings.queue, "consumer lost; resuming once the broker is back");
                broker.report_lost();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RETRY_START) => {}
                }
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(settings.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            queue = settings.queue,
            "in-flight work did not finish within the grace period; abandoning it"
        );
        abandon.cancel();
        tracker.wait().await;
    }
    Ok(())
}

struct Session<'a> {
    broker: &'a Broker,
    settings: &'a ConsumeSettings,
    slots: &'a Arc<Semaphore>,
    tracker: &'a TaskTracker,
    abandon: &'a CancellationToken,
    stop: &'a CancellationToken,
}

impl Session<'_> {
    /// One consumer on one connection: `Ok` when stopped, `Err` when the channel or
    /// the connection failed.
    async fn run<H, F>(
        &self,
        conn: &courier_broker::lapin::Connection,
        handler: Arc<H>,
    ) -> anyhow::Result<()>
    where
        H: Fn(Arc<Delivery>) -> F + Send + Sync + 'static,
        F: Future<Output = Settle> + Send + 'static,
    {
        let queue = &self.settings.queue;
        let channel: Channel = conn.create_channel().await?;
        // Open until the connection closes: the broker hands unacked messages back
        // then, and closing the channel alone at that moment would race the close.
        self.broker.hold(channel.clone());
        let unacked = self
            .settings
            .concurrency
            .saturating_add(usize::from(self.settings.prefetch));
        channel
            .basic_qos(
                u16::try_from(unacked).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
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
        let result = loop {
            let next = tokio::select! {
                biased;
                () = self.stop.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(d)) => Arc::new(d),
                Some(Err(e)) => {
                    break Err(anyhow::Error::from(e).context(format!("consuming {queue}")))
                }
                None => {
                    break Err(anyhow::anyhow!(
                        "the consumer of {queue} was closed by the broker"
                    ))
                }
            };
            // Not taken up after a stop: the message goes back unacked.
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => break Ok(()),
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break Ok(()),
                },
            };
            let (handler, abandon, channel) =
                (handler.clone(), self.abandon.clone(), channel.clone());
            self.tracker.spawn(async move {
                tokio::select! {
                    () = handle(&channel, delivery, handler.as_ref()) => {}
                    () = abandon.cancelled() => {}
                }
                drop(permit);
            });
        };
        if result.is_ok() {
            let _ = channel
                .basic_cancel(&tag, BasicCancelOptions::default())
                .await;
        }
        // In-flight handlers still ack on the channel; it closes with the connection
        // (see `Broker::hold`).
        result
    }
}

/// Runs the handler until it acks, pausing with backoff between tries; gives up
/// (leaving the message to be redelivered) if the channel is gone meanwhile.
async fn handle<H, F>(channel: &Channel, delivery: Arc<Delivery>, handler: &H)
where
    H: Fn(Arc<Delivery>) -> F,
    F: Future<Output = Settle>,
{
    let mut pause = RETRY_START;
    loop {
        match handler(delivery.clone()).await {
            Settle::Ack => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %e, "could not ack a message; the broker will redeliver it");
                }
                return;
            }
            Settle::Retry => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_CAP);
                if !channel.status().connected() {
                    return;
                }
            }
        }
    }
}
