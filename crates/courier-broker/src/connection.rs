//! Connecting to RabbitMQ.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Errors at the broker boundary.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not reach the broker within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("not connected to the broker")]
    Disconnected,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0}")]
    Unroutable(String),
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
}

impl BrokerError {
    /// Whether the message was certainly not taken by the broker (as opposed to a
    /// lost connection, after which it may or may not have been).
    pub fn refused(&self) -> bool {
        matches!(self, Self::Nacked | Self::Unroutable(_))
    }
}

/// Heartbeat asked of the broker unless the URL sets one, so that a dead
/// connection is noticed within seconds, not minutes.
const HEARTBEAT_SECS: u16 = 10;

/// The URL with a heartbeat, unless it has one.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_SECS}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_SECS}")
    }
}

/// Opens a connection on the current tokio runtime, giving up after `timeout`.
pub async fn connect(url: &str, name: &str, timeout: Duration) -> Result<Connection, BrokerError> {
    let url = with_heartbeat(url);
    let url = url.as_str();
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    tokio::time::timeout(timeout, Connection::connect(url, props))
        .await
        .map_err(|_| BrokerError::ConnectTimeout(timeout))?
        .map_err(BrokerError::from)
}

/// How long closing a connection may take: the broker's `close-ok`, then the end
/// of lapin's I/O thread.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `conn` and waits until lapin's I/O thread has ended (at most a few
/// seconds each).
///
/// That thread outlives the `close-ok` for a moment: returning before it ends can
/// let the tokio runtime shut down under it, and it then logs its socket's failure
/// as an error. Channels should still be open when this is called: a channel closed
/// on its own while its connection closes is forgotten twice by lapin, which logs a
/// connection error (`invalid channel`).
pub async fn close(conn: Connection, reason: &str) {
    if conn.status().connected() {
        match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the broker connection"),
            Err(_) => tracing::debug!("the broker did not confirm closing the connection"),
        }
    }
    // `Connection::run` joins the I/O thread, blocking: on a thread of its own, so
    // that a thread that does not end cannot hold up the runtime's shutdown.
    let (done, ended) = tokio::sync::oneshot::channel();
    let joined = std::thread::Builder::new()
        .name("amqp-close".into())
        .spawn(move || {
            let _ = conn.run();
            let _ = done.send(());
        });
    if joined.is_ok() && tokio::time::timeout(CLOSE_TIMEOUT, ended).await.is_err() {
        tracing::debug!("the broker connection's I/O thread did not end in time");
    }
}
