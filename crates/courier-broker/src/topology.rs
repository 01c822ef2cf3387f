//! Exchange and queue names (design §5) and their declaration.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use crate::BrokerError;

/// Redeliveries a quorum queue allows before parking a message in `courier.dead`:
/// high enough that an outage's requeues do not park healthy messages.
pub const DELIVERY_LIMIT: i64 = 50;

/// Routing key of delivery jobs on the `courier.deliveries` direct exchange.
pub const DELIVERY_ROUTING_KEY: &str = "deliver";

/// Header that says why a message was parked in `courier.dead`.
pub const DEAD_REASON_HEADER: &str = "x-courier-dead-reason";

/// The names of one deployment, all under its prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Topic exchange where events enter.
    pub fn events_exchange(&self) -> String {
        format!("{}courier.events", self.prefix)
    }

    /// Quorum queue bound with `#`: fan-out intake.
    pub fn events_queue(&self) -> String {
        format!("{}courier.events.q", self.prefix)
    }

    /// Direct exchange and quorum queue of delivery jobs (same name, separate namespaces).
    pub fn deliveries(&self) -> String {
        format!("{}courier.deliveries", self.prefix)
    }

    /// Quorum queue of messages that cannot be processed.
    pub fn dead_queue(&self) -> String {
        format!("{}courier.dead", self.prefix)
    }

    /// Every queue of the deployment (for operators and test clean-up).
    pub fn queues(&self) -> Vec<String> {
        vec![self.events_queue(), self.deliveries(), self.dead_queue()]
    }

    /// Every exchange of the deployment.
    pub fn exchanges(&self) -> Vec<String> {
        vec![self.events_exchange(), self.deliveries()]
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_queue().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args
    }

    /// Declares everything, idempotently. A queue that already exists with other
    /// arguments (an operator's choice) is used as it is; bindings are always asserted.
    pub async fn declare(&self, conn: &Connection) -> Result<(), BrokerError> {
        let ch = conn.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            &self.events_exchange(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            &self.deliveries(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ensure_queue(conn, &self.dead_queue(), quorum_args()).await?;
        ensure_queue(conn, &self.events_queue(), self.work_queue_args()).await?;
        ensure_queue(conn, &self.deliveries(), self.work_queue_args()).await?;
        ch.queue_bind(
            &self.events_queue(),
            &self.events_exchange(),
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            &self.deliveries(),
            &self.deliveries(),
            DELIVERY_ROUTING_KEY,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.close(200, "declared").await?;
        Ok(())
    }

    /// Deletes every queue and exchange of the deployment (tests and teardown).
    pub async fn delete(&self, conn: &Connection) -> Result<(), BrokerError> {
        let ch = conn.create_channel().await?;
        for q in self.queues() {
            ch.queue_delete(&q, Default::default()).await?;
        }
        for x in self.exchanges() {
            ch.exchange_delete(&x, Default::default()).await?;
        }
        ch.close(200, "deleted").await?;
        Ok(())
    }
}

/// Arguments of a durable quorum queue.
pub fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn ensure_queue(conn: &Connection, name: &str, args: FieldTable) -> Result<(), BrokerError> {
    // A refused declare closes its channel, so it gets its own.
    let ch = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match ch.queue_declare(name, options, args).await {
        Ok(_) => {
            ch.close(200, "declared").await?;
            Ok(())
        }
        // 406 PRECONDITION_FAILED: the queue exists with other arguments (set by an
        // operator, or an older version). It is used as it is.
        Err(lapin::Error::ProtocolError(e)) if e.get_id() == 406 => {
            tracing::warn!(queue = name, reason = %e, "queue exists with other arguments; using it as it is");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
