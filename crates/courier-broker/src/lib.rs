//! Courier's RabbitMQ adapter.
//!
//! - [`topology`]: the exchange and queue names of design §5 under a prefix, and their
//!   idempotent declaration.
//! - [`publisher`]: a confirmed, `mandatory` publisher: a nack, a return or a lost
//!   connection is an error the caller sees.
//! - [`connection`]: connecting with the tokio executor and a timeout.
//! - [`dead`]: reading why and from where a parked message came.

pub mod connection;
pub mod dead;
pub mod publisher;
pub mod topology;

pub use connection::{connect, BrokerError};
pub use publisher::{Message, Publisher};
pub use topology::Topology;

/// Re-exported so that callers need no direct lapin dependency for consuming.
pub use lapin;
