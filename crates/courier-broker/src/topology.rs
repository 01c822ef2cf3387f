//! Exchange and queue names (design §5) and their declaration.
//!
//! Dead letters go through a fanout exchange, `courier.dead`, bound to two quorum
//! queues: `courier.dead`, which keeps every parked message for operators (nothing
//! consumes it; the operator API lists, requeues and discards, see
//! [`crate::rotation`]), and
//! `courier.dead.log`, whose copy the worker consumes to mark parked delivery jobs
//! `failed` in the delivery log.

use std::time::Duration;

use courier_core::retry::DelayLadder;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use crate::BrokerError;

/// Redeliveries a quorum queue allows before parking a message in `courier.dead`:
/// high enough that an outage's requeues do not park healthy messages.
pub const DELIVERY_LIMIT: i64 = 50;

/// Redeliveries `courier.dead` allows. Nothing consumes it, and operator tools read
/// it without handing messages back ([`crate::rotation`]), so only a gateway
/// that dies in the middle of an operation counts toward it; it is explicit because
/// RabbitMQ 4 gives a quorum queue without one a limit of 20, and a message past
/// the limit of the last queue would be dropped.
pub const PARKED_DELIVERY_LIMIT: i64 = 1_000;

/// Routing key of delivery jobs on the `courier.deliveries` direct exchange.
pub const DELIVERY_ROUTING_KEY: &str = "deliver";

/// Header that says why a message was parked in `courier.dead`.
pub const DEAD_REASON_HEADER: &str = "x-courier-dead-reason";

/// The names of one deployment, all under its prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// The delay queues' TTLs (`COURIER_DELAY_LADDER`); the default ladder unless set.
    ladder: DelayLadder,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ladder: DelayLadder::default(),
        }
    }

    /// The same deployment with another delay ladder.
    pub fn with_ladder(mut self, ladder: DelayLadder) -> Self {
        self.ladder = ladder;
        self
    }

    pub fn ladder(&self) -> &DelayLadder {
        &self.ladder
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

    /// Quorum queue of messages that cannot be processed, kept for operators.
    pub fn dead_queue(&self) -> String {
        format!("{}courier.dead", self.prefix)
    }

    /// Fanout exchange every parked message goes through (same name as the queue,
    /// separate namespaces): one copy for operators, one for the delivery log.
    pub fn dead_exchange(&self) -> String {
        format!("{}courier.dead", self.prefix)
    }

    /// Quorum queue of the copies of parked messages that the worker reads to mark
    /// parked delivery jobs `failed` in the log.
    pub fn dead_log_queue(&self) -> String {
        format!("{}courier.dead.log", self.prefix)
    }

    /// The delay queue of one rung: `courier.delay.{ms}`.
    pub fn delay_queue(&self, rung: Duration) -> String {
        format!("{}courier.delay.{}", self.prefix, rung.as_millis())
    }

    /// The delay queues of the ladder, shortest first.
    pub fn delay_queues(&self) -> Vec<String> {
        self.ladder
            .rungs()
            .iter()
            .map(|r| self.delay_queue(*r))
            .collect()
    }

    /// Every queue of the deployment (for operators and test clean-up).
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.events_queue(),
            self.deliveries(),
            self.dead_queue(),
            self.dead_log_queue(),
        ];
        queues.extend(self.delay_queues());
        queues
    }

    /// Every exchange of the deployment.
    pub fn exchanges(&self) -> Vec<String> {
        vec![
            self.events_exchange(),
            self.deliveries(),
            self.dead_exchange(),
        ]
    }

    fn work_queue_args(&self) -> FieldTable {
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
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

    /// Arguments of a delay queue: messages wait `rung`, then dead-letter (at least
    /// once) to `courier.deliveries` with the jobs' routing key.
    fn delay_queue_args(&self, rung: Duration) -> FieldTable {
        let mut args = quorum_args();
        let ttl = i64::try_from(rung.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.deliveries().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(DELIVERY_ROUTING_KEY.into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args
    }

    /// Arguments of `courier.dead`: a quorum queue with an explicit delivery limit.
    fn dead_queue_args() -> FieldTable {
        let mut args = quorum_args();
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(PARKED_DELIVERY_LIMIT),
        );
        args
    }

    /// Declares the delay queues of the ladder, idempotently (the worker does, at start).
    pub async fn declare_ladder(&self, conn: &Connection) -> Result<(), BrokerError> {
        for rung in self.ladder.rungs() {
            let queue = self.delay_queue(*rung);
            ensure_queue(conn, &queue, self.delay_queue_args(*rung))
                .await?
                .warn_if_different(&queue);
        }
        Ok(())
    }

    /// Declares everything but the delay queues, idempotently. A queue that already
    /// exists with other arguments (an operator's choice) is used as it is; bindings
    /// are always asserted.
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
        ch.exchange_declare(
            &self.dead_exchange(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let dead_queue = self.dead_queue();
        if let Declared::Different(reason) =
            ensure_queue(conn, &dead_queue, Self::dead_queue_args()).await?
        {
            // Declared by an earlier version, without a delivery limit. Its arguments
            // cannot change in place: it is used as it is (see docs/deploy.md).
            tracing::warn!(
                queue = dead_queue,
                %reason,
                "the dead-letter queue was declared without x-delivery-limit {PARKED_DELIVERY_LIMIT} \
                 (by an earlier version); it is used as it is. Operator tools no longer \
                 count toward its limit, but RabbitMQ 4 gives it a limit of 20: set a \
                 delivery-limit policy on it, or recreate it once it is empty"
            );
        }
        let mut dead_log_args = quorum_args();
        dead_log_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        for (queue, args) in [
            (self.dead_log_queue(), dead_log_args),
            (self.events_queue(), self.work_queue_args()),
            (self.deliveries(), self.work_queue_args()),
        ] {
            ensure_queue(conn, &queue, args)
                .await?
                .warn_if_different(&queue);
        }
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
        for queue in [self.dead_queue(), self.dead_log_queue()] {
            ch.queue_bind(
                &queue,
                &self.dead_exchange(),
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
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

/// What declaring a queue came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Declared {
    /// The queue exists (now) with these arguments.
    Declared,
    /// It existed with other arguments (set by an operator, or an earlier version),
    /// and is used as it is; the broker's words.
    Different(String),
}

impl Declared {
    fn warn_if_different(self, queue: &str) {
        if let Self::Different(reason) = self {
            tracing::warn!(queue, %reason, "queue exists with other arguments; using it as it is");
        }
    }
}

async fn ensure_queue(
    conn: &Connection,
    name: &str,
    args: FieldTable,
) -> Result<Declared, BrokerError> {
    // A refused declare closes its channel, so it gets its own.
    let ch = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match ch.queue_declare(name, options, args).await {
        Ok(_) => {
            ch.close(200, "declared").await?;
            Ok(Declared::Declared)
        }
        // 406 PRECONDITION_FAILED: the queue exists with other arguments.
        Err(lapin::Error::ProtocolError(e)) if e.get_id() == 406 => {
            Ok(Declared::Different(e.get_message().to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_are_named_by_their_ttl_in_milliseconds() {
        let ladder = DelayLadder::parse_list("100ms,1s,2h").unwrap();
        let t = Topology::new("p.").with_ladder(ladder);
        assert_eq!(
            t.delay_queues(),
            [
                "p.courier.delay.100",
                "p.courier.delay.1000",
                "p.courier.delay.7200000"
            ]
        );
        let queues = t.queues();
        assert!(queues.contains(&"p.courier.dead.log".to_owned()));
        assert!(queues.contains(&"p.courier.delay.7200000".to_owned()));
        assert!(t.exchanges().contains(&"p.courier.dead".to_owned()));
        assert_eq!(Topology::new("").delay_queues().len(), 9);
    }

    #[test]
    fn the_dead_letter_queue_sets_its_delivery_limit_explicitly() {
        let args = Topology::dead_queue_args();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongLongInt(PARKED_DELIVERY_LIMIT))
        );
        const { assert!(PARKED_DELIVERY_LIMIT >= DELIVERY_LIMIT) };
    }

    #[test]
    fn delay_queues_dead_letter_to_the_deliveries_at_least_once() {
        let t = Topology::new("p.");
        let args = t.delay_queue_args(Duration::from_secs(5));
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(5000)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("p.courier.deliveries".into()))
        );
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString(DELIVERY_ROUTING_KEY.into()))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
    }
}
