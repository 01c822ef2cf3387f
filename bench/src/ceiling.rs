//! The broker's ceiling on this machine, with no Courier code on the path:
//! persistent messages of the size of an event, published with confirms (pipelined,
//! [`CONFIRM_WINDOW`] outstanding) into a quorum queue, consumed with manual acks by
//! a consumer with a prefetch. Publisher and consumer have a connection each, as
//! the gateway and the worker do.
//!
//! One publisher is the balanced load: on two cores more publishers raise the
//! publish rate but take the broker's time from the consumer, the queue grows and
//! fewer messages are consumed; one publisher with this window keeps both sides
//! at about the same rate, which is what a steady state is.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use courier_broker::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use courier_broker::lapin::publisher_confirm::Confirmation;
use courier_broker::lapin::types::{AMQPValue, FieldTable, ShortString};
use courier_broker::lapin::{BasicProperties, Channel};
use courier_broker::topology::{quorum_args, DELIVERY_LIMIT};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::stats::{nanos, rate, Clock};

/// Publishes awaiting their confirm at once.
pub const CONFIRM_WINDOW: usize = 256;

/// What the ceiling run measured.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Messages consumed and acked per second in the window: the ceiling.
    pub consumed_per_second: f64,
    /// Messages confirmed per second in the window.
    pub confirmed_per_second: f64,
    pub consumed: u64,
    pub body_bytes: usize,
}

/// The name of the bench's own queue under the run's prefix.
pub fn queue_name(prefix: &str) -> String {
    format!("{prefix}bench.ceiling")
}

/// An event message of about 300 bytes (the AMQP form, with tenant and id).
fn message(seq: u64) -> Vec<u8> {
    let mut buf = String::with_capacity(360);
    let _ = write!(
        buf,
        r#"{{"id":"evt_bench_{seq:012}","tenantId":"bench","objectType":"Prospect","eventType":"EntityCreated","data":{{"objectId":"prospect_{seq:010}","email":"jane.doe.{seq}@example.com","company":"Example Industries","seq":{seq}}},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}}"#
    );
    buf.into_bytes()
}

/// Runs publisher and consumer for `warmup + window`; figures are over the window.
pub async fn run(
    amqp_url: &str,
    prefix: &str,
    clock: Clock,
    prefetch: u16,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Ceiling> {
    let timeout = Duration::from_secs(10);
    let publisher_conn = courier_broker::connect(amqp_url, "courier-bench-publisher", timeout)
        .await
        .context("connecting to RabbitMQ")?;
    let consumer_conn =
        courier_broker::connect(amqp_url, "courier-bench-consumer", timeout).await?;
    let queue = queue_name(prefix);
    let setup = publisher_conn.create_channel().await?;
    let mut args = quorum_args();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    setup
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;

    let from = clock.now_nanos() + nanos(warmup);
    let to = from + nanos(window);
    let stop = CancellationToken::new();
    let consumed = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let consumer = tokio::spawn(consume(
        consumer_conn.create_channel().await?,
        queue.clone(),
        prefetch,
        clock,
        (from, to),
        consumed.clone(),
        stop.clone(),
    ));
    let publisher = tokio::spawn(publish(
        publisher_conn.create_channel().await?,
        queue.clone(),
        clock,
        (from, to),
        confirmed.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(warmup + window).await;
    stop.cancel();
    let published = publisher.await.context("the publisher task failed")?;
    let consumed_total = consumer.await.context("the consumer task failed")?;
    let deleted = setup
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await;
    let _ = publisher_conn.close(200, "done").await;
    let _ = consumer_conn.close(200, "done").await;
    published?;
    consumed_total?;
    deleted.with_context(|| format!("deleting {queue}"))?;

    let consumed = consumed.load(Ordering::Relaxed);
    if consumed == 0 {
        bail!("the ceiling consumer received nothing");
    }
    let span = nanos(window);
    Ok(Ceiling {
        consumed_per_second: rate(consumed, span),
        confirmed_per_second: rate(confirmed.load(Ordering::Relaxed), span),
        consumed,
        body_bytes: message(0).len(),
    })
}

async fn publish(
    channel: Channel,
    queue: String,
    clock: Clock,
    (from, to): (u64, u64),
    confirmed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let mut pending = FuturesUnordered::new();
    let mut seq = 0u64;
    let settle = |c: Result<Confirmation, _>| -> anyhow::Result<()> {
        match c? {
            Confirmation::Ack(None) => {
                let now = clock.now_nanos();
                if (from..to).contains(&now) {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Confirmation::Ack(Some(_)) => bail!("the ceiling queue did not take a message"),
            Confirmation::Nack(_) => bail!("RabbitMQ nacked a message"),
            Confirmation::NotRequested => bail!("the channel is not in confirm mode"),
        }
    };
    while !stop.is_cancelled() {
        while pending.len() >= CONFIRM_WINDOW {
            if let Some(c) = pending.next().await {
                settle(c)?;
            }
        }
        let id = format!("evt_bench_{seq:012}");
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(id));
        let confirm = channel
            .basic_publish("", &queue, options, &message(seq), props)
            .await?;
        pending.push(confirm);
        seq += 1;
    }
    while let Some(c) = pending.next().await {
        settle(c)?;
    }
    let _ = channel.close(200, "done").await;
    Ok(())
}

async fn consume(
    channel: Channel,
    queue: String,
    prefetch: u16,
    clock: Clock,
    (from, to): (u64, u64),
    consumed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            &queue,
            "courier-bench-ceiling",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let ack_failures = Arc::new(AtomicU64::new(0));
    let acks = TaskTracker::new();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let Some(delivery) = next else {
            bail!("the broker closed the ceiling consumer");
        };
        // Acked from a task of its own, as the worker does, so acks pipeline
        // instead of waiting for each other.
        let acker = delivery?.acker;
        let failed = ack_failures.clone();
        acks.spawn(async move {
            if acker.ack(BasicAckOptions::default()).await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        });
        let now = clock.now_nanos();
        if (from..to).contains(&now) {
            consumed.fetch_add(1, Ordering::Relaxed);
        }
    }
    acks.close();
    acks.wait().await;
    let _ = channel.close(200, "done").await;
    let failed = ack_failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} acks of the ceiling consumer failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_an_event_of_about_300_bytes() {
        let body = message(42);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["tenantId"], "bench");
        assert!((250..=350).contains(&body.len()), "{} bytes", body.len());
    }
}
