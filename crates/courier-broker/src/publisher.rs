//! Confirmed, mandatory publishing.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use crate::BrokerError;

/// One message to publish, persistent and JSON.
pub struct Message<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub headers: Vec<(&'static str, String)>,
}

impl<'a> Message<'a> {
    pub fn new(exchange: &'a str, routing_key: &'a str, body: &'a [u8]) -> Self {
        Self {
            exchange,
            routing_key,
            body,
            message_id: None,
            headers: Vec::new(),
        }
    }

    pub fn with_message_id(mut self, id: &'a str) -> Self {
        self.message_id = Some(id);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A channel in confirm mode. Clones share the channel; publishing from many tasks
/// at once is safe and pipelines their confirms. A publisher of a [`Broker`]
/// follows its reconnections: it always publishes on the current channel, and
/// fails with [`BrokerError::Disconnected`] while there is none.
///
/// [`Broker`]: crate::Broker
#[derive(Clone)]
pub struct Publisher {
    source: Source,
    confirm_timeout: Duration,
}

#[derive(Clone)]
enum Source {
    Channel(Channel),
    Broker(crate::supervisor::Broker),
}

/// A publish the broker has yet to confirm.
#[must_use = "a publish is only done once its confirm is awaited"]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    routing_key: String,
    timeout: Duration,
}

impl Publisher {
    pub async fn new(conn: &Connection, confirm_timeout: Duration) -> Result<Self, BrokerError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            source: Source::Channel(channel),
            confirm_timeout,
        })
    }

    /// The publisher of a supervised connection.
    pub(crate) fn supervised(broker: crate::supervisor::Broker, confirm_timeout: Duration) -> Self {
        Self {
            source: Source::Broker(broker),
            confirm_timeout,
        }
    }

    fn channel(&self) -> Result<Channel, BrokerError> {
        match &self.source {
            Source::Channel(c) => Ok(c.clone()),
            Source::Broker(b) => b.channel().ok_or(BrokerError::Disconnected),
        }
    }

    /// Waits until the broker has answered everything published on the channel
    /// (at most the confirm timeout). The channel itself closes with its
    /// connection ([`Broker::shutdown`](crate::Broker::shutdown)).
    pub async fn settle(&self) {
        if let Ok(channel) = self.channel() {
            let _ = tokio::time::timeout(self.confirm_timeout, channel.wait_for_confirms()).await;
        }
    }

    /// Whether the channel can publish now.
    pub fn is_open(&self) -> bool {
        self.channel().is_ok_and(|c| c.status().connected())
    }

    /// Sends the message; the returned confirm must be awaited.
    pub async fn send(&self, msg: Message<'_>) -> Result<PendingConfirm, BrokerError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_timestamp(unix_now());
        if let Some(id) = msg.message_id {
            props = props.with_message_id(ShortString::from(id));
        }
        if !msg.headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in msg.headers {
                table.insert(name.into(), AMQPValue::LongString(value.into()));
            }
            props = props.with_headers(table);
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let channel = self.channel()?;
        let confirm = tokio::time::timeout(
            self.confirm_timeout,
            channel.basic_publish(msg.exchange, msg.routing_key, options, msg.body, props),
        )
        .await
        .map_err(|_| BrokerError::ConfirmTimeout(self.confirm_timeout))??;
        Ok(PendingConfirm {
            confirm,
            routing_key: msg.routing_key.to_owned(),
            timeout: self.confirm_timeout,
        })
    }

    /// How long a confirm may take.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// Sends the message and waits for the broker's confirm.
    pub async fn publish(&self, msg: Message<'_>) -> Result<(), BrokerError> {
        self.send(msg).await?.wait().await
    }

    /// Takes the next message of `queue` (`basic.get`) without removing it: it stays
    /// unacknowledged on this channel until its acker acks it (removed) or nacks it
    /// with requeue (back in the queue). Operator tools read `courier.dead` this way.
    /// The message comes with how many others were ready behind it.
    pub async fn get(&self, queue: &str) -> Result<Option<(Delivery, u32)>, BrokerError> {
        let channel = self.channel()?;
        let got = tokio::time::timeout(
            self.confirm_timeout,
            channel.basic_get(queue, BasicGetOptions { no_ack: false }),
        )
        .await
        .map_err(|_| BrokerError::ConfirmTimeout(self.confirm_timeout))??;
        Ok(got.map(|m| (m.delivery, m.message_count)))
    }
}

impl PendingConfirm {
    /// Ok only for an ack of a routed message.
    pub async fn wait(self) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.wait_until(deadline).await
    }

    /// [`Self::wait`], with the confirm timeout ending at `deadline`: confirms
    /// awaited one after the other under one deadline cost one timeout at most,
    /// however many never come.
    pub async fn wait_until(self, deadline: tokio::time::Instant) -> Result<(), BrokerError> {
        let confirmation = tokio::time::timeout_at(deadline, self.confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(self.timeout))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(self.routing_key)),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            // The channel is always in confirm mode.
            Confirmation::NotRequested => Err(BrokerError::Nacked),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
