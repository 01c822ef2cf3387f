//! Going through a queue that nothing consumes (`courier.dead`) without handing
//! messages back.
//!
//! A quorum queue counts every message handed back (`nack` with requeue, or a
//! channel closed with it unacked) toward its `x-delivery-limit`, and drops or
//! dead-letters a message past it: reading the queue that way, as a listing that
//! looks and puts back would, loses a message after enough readings (RabbitMQ 4
//! gives every quorum queue a limit of 20). A [`Rotation`] takes each message that
//! was in the queue when it started, oldest first (in rounds, by a consumer that
//! the broker hands exactly a round's worth), and either keeps it, by
//! publishing a copy to the tail of the same queue and acking the original once the
//! broker has confirmed the copy, or removes it (acks it). After a rotation through
//! the whole queue, its messages are in the same order, none of them was handed
//! back, and each keeps its body and properties (the broker's own delivery count
//! excepted: a copy starts from none).
//!
//! Only one rotation of a queue may run at a time (the caller's lock): two would
//! take each other's copies. If one stops half-way (an error, a dead process), the
//! messages it held unacked go back to the queue, counted once.

use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::collections::VecDeque;
use std::time::Duration;

use crate::BrokerError;

/// Messages taken from the queue at once.
const ROUND: usize = 200;

/// Copies awaiting their confirm at most; their originals are acked once all are in.
const IN_FLIGHT: usize = 200;

/// The header in which RabbitMQ counts a quorum queue message's deliveries; a copy
/// starts without it.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// One pass through a queue; see the module documentation.
pub struct Rotation {
    channel: Channel,
    queue: String,
    /// Messages still to take: those ready when the pass started, at most `most`
    /// (counted at the first [`Rotation::next`]).
    left: Option<usize>,
    most: usize,
    timeout: Duration,
    /// Messages taken and not handed out yet, oldest first.
    taken: VecDeque<Delivery>,
    /// Copies published, with their originals, oldest first.
    unconfirmed: Vec<(PublisherConfirm, Delivery)>,
}

impl Rotation {
    /// Starts a pass through `queue` on a channel of its own, taking at most `most`
    /// messages; every broker operation is bounded by `timeout`.
    pub async fn start(
        conn: &Connection,
        queue: &str,
        most: usize,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let channel = within(timeout, conn.create_channel()).await?;
        within(
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            left: None,
            most,
            timeout,
            taken: VecDeque::new(),
            unconfirmed: Vec::new(),
        })
    }

    /// The next message, oldest first; `None` once every message that was in the
    /// queue when the pass started has been taken (or `most` of them). The message
    /// must be kept or removed before the pass ends; otherwise it goes back to the
    /// queue, counted as handed back.
    pub async fn next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        if self.taken.is_empty() {
            self.take_round().await?;
        }
        Ok(self.taken.pop_front())
    }

    /// Takes the next round of messages from the head of the queue: a consumer
    /// whose prefetch is the round's size, so that the broker hands out exactly
    /// those, in one stream (one `basic.get` each would cost a consensus round
    /// each on a quorum queue), cancelled once it has them. They stay unacked
    /// until kept or removed.
    async fn take_round(&mut self) -> Result<(), BrokerError> {
        let left = match self.left {
            Some(left) => left,
            None => {
                let declared = within(
                    self.timeout,
                    self.channel.queue_declare(
                        &self.queue,
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await?;
                usize::try_from(declared.message_count())
                    .unwrap_or(usize::MAX)
                    .min(self.most)
            }
        };
        let want = left.min(ROUND);
        self.left = Some(left);
        if want == 0 {
            return Ok(());
        }
        within(
            self.timeout,
            self.channel.basic_qos(
                u16::try_from(want).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            ),
        )
        .await?;
        // An empty tag: the broker names the consumer.
        let mut consumer = within(
            self.timeout,
            self.channel.basic_consume(
                &self.queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let mut got = 0;
        while got < want {
            // Fewer than counted: some were gone (expired) meanwhile.
            let Ok(next) = tokio::time::timeout(self.timeout, consumer.next()).await else {
                break;
            };
            match next {
                Some(delivery) => {
                    self.taken.push_back(delivery?);
                    got += 1;
                }
                None => break,
            }
        }
        let tag = consumer.tag();
        within(
            self.timeout,
            self.channel
                .basic_cancel(tag.as_str(), BasicCancelOptions::default()),
        )
        .await?;
        self.left = Some(if got < want { 0 } else { left - got });
        Ok(())
    }

    /// Keeps the message: a copy goes to the tail of the queue, and the original is
    /// acked once the copy is confirmed (at the latest when the pass ends).
    pub async fn keep(&mut self, delivery: Delivery) -> Result<(), BrokerError> {
        let confirm = within(
            self.timeout,
            self.channel.basic_publish(
                "",
                &self.queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                copied_properties(&delivery.properties),
            ),
        )
        .await?;
        self.unconfirmed.push((confirm, delivery));
        if self.unconfirmed.len() >= IN_FLIGHT {
            self.settle().await?;
        }
        Ok(())
    }

    /// Removes the message for good.
    pub async fn remove(&mut self, delivery: Delivery) -> Result<(), BrokerError> {
        within(self.timeout, delivery.acker.ack(BasicAckOptions::default())).await
    }

    /// Waits for the copies' confirms and acks their originals, in order; stops at
    /// the first copy the broker did not take (its original and those after it
    /// stay unacked, and go back to the queue when the pass ends).
    async fn settle(&mut self) -> Result<(), BrokerError> {
        for (confirm, original) in std::mem::take(&mut self.unconfirmed) {
            match within(self.timeout, confirm).await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => {
                    return Err(BrokerError::Unroutable(self.queue.clone()))
                }
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(BrokerError::Nacked)
                }
            }
            within(self.timeout, original.acker.ack(BasicAckOptions::default())).await?;
        }
        Ok(())
    }

    /// Ends the pass: the last copies are confirmed and their originals acked, and
    /// the channel closes.
    pub async fn finish(mut self) -> Result<(), BrokerError> {
        let settled = self.settle().await;
        let _ = tokio::time::timeout(self.timeout, self.channel.close(200, "rotated")).await;
        settled
    }
}

/// The properties of a copy: the original's, persistent, without the broker's
/// delivery count.
fn copied_properties(original: &BasicProperties) -> BasicProperties {
    let mut props = original.clone().with_delivery_mode(2);
    if let Some(headers) = original.headers() {
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner() {
            if name.as_str() != DELIVERY_COUNT_HEADER {
                kept.insert(name.clone(), value.clone());
            }
        }
        props = props.with_headers(kept);
    }
    props
}

async fn within<T, E>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BrokerError>
where
    BrokerError: From<E>,
{
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| BrokerError::ConfirmTimeout(timeout))?
        .map_err(BrokerError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, LongString, ShortString};

    #[test]
    fn a_copy_keeps_every_property_but_the_delivery_count() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-courier-dead-reason".into(),
            AMQPValue::LongString(LongString::from("unparseable")),
        );
        headers.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(7));
        let original = BasicProperties::default()
            .with_message_id(ShortString::from("m1"))
            .with_content_type(ShortString::from("application/json"))
            .with_timestamp(1_776_939_300)
            .with_headers(headers);
        let copy = copied_properties(&original);
        assert_eq!(copy.message_id(), original.message_id());
        assert_eq!(copy.content_type(), original.content_type());
        assert_eq!(copy.timestamp(), &Some(1_776_939_300));
        assert_eq!(copy.delivery_mode(), &Some(2));
        let kept = copy.headers().as_ref().unwrap().inner();
        assert!(kept.contains_key("x-courier-dead-reason"));
        assert!(!kept.contains_key(DELIVERY_COUNT_HEADER));
        assert_eq!(
            copied_properties(&BasicProperties::default()).headers(),
            &None
        );
    }
}
