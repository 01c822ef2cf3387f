//! Courier's RabbitMQ adapter.
//!
//! - [`topology`]: the exchange and queue names of design §5 under a prefix, and their
//!   idempotent declaration.
//! - [`publisher`]: a confirmed, `mandatory` publisher: a nack, a return or a lost
//!   connection is an error the caller sees.
//! - [`connection`]: connecting with the tokio executor, a heartbeat and a timeout.
//! - [`supervisor`]: a connection that reconnects, re-declares and reopens by itself.
//! - [`dead`]: reading why and from where a parked message came.
//! - [`rotation`]: going through `courier.dead` without handing messages back (which
//!   would count toward its delivery limit).
//! - [`headers`]: text headers of a consumed message (trace context, `x-courier-*`).

pub mod connection;
pub mod dead;
pub mod headers;
pub mod publisher;
pub mod rotation;
pub mod supervisor;
pub mod topology;

pub use connection::{connect, BrokerError};
pub use publisher::{Message, Publisher};
pub use rotation::Rotation;
pub use supervisor::{Broker, BrokerSettings};
pub use topology::Topology;

/// Re-exported so that callers need no direct lapin dependency for consuming.
pub use lapin;
