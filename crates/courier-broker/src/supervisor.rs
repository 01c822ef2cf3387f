//! A supervised broker connection: connects (every attempt under a timeout),
//! declares the topology, opens the publishing channel, and when the connection or
//! the channel is lost, does it all again with capped exponential backoff. Users
//! take the current connection ([`Broker::connection`]) or publish through
//! [`Broker::publisher`], which fails fast while disconnected.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{connect, BrokerError, Publisher, Topology};

/// How a [`Broker`] connects.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub url: String,
    /// Shown in the broker's management UI.
    pub name: String,
    pub topology: Topology,
    /// Also declare the delay queues (the worker does).
    pub declare_ladder: bool,
    pub connect_timeout: Duration,
    pub confirm_timeout: Duration,
}

#[derive(Clone)]
struct Live {
    conn: Arc<Connection>,
    channel: Channel,
}

struct Shared {
    settings: BrokerSettings,
    stop: CancellationToken,
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    live: RwLock<Option<Live>>,
    /// Bumped on every (re)connection and loss; waiters watch it.
    epoch: watch::Sender<u64>,
    lost: Notify,
    /// Channels kept open until their connection closes (see [`Broker::hold`]).
    held: std::sync::Mutex<Vec<Channel>>,
}

/// A handle on the supervised connection. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const HEALTH_CHECK: Duration = Duration::from_millis(500);

impl Broker {
    /// Starts supervising; the first connection is made in the background, so a
    /// service can start (and report not ready) while the broker is down.
    pub fn start(settings: BrokerSettings) -> Self {
        let stop = CancellationToken::new();
        let broker = Self {
            shared: Arc::new(Shared {
                settings,
                stop: stop.clone(),
                supervisor: std::sync::Mutex::new(None),
                live: RwLock::new(None),
                epoch: watch::channel(0).0,
                lost: Notify::new(),
                held: std::sync::Mutex::new(Vec::new()),
            }),
        };
        let task = tokio::spawn(broker.clone().supervise(stop));
        *broker
            .shared
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        broker
    }

    /// Stops supervising and closes the connection, with every channel on it, once
    /// lapin's I/O thread has ended too. Call it after everything that acks or
    /// publishes on the connection is done (consumers stopped, confirms in).
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let task = self
            .shared
            .supervisor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn live(&self) -> Option<Live> {
        self.shared
            .live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_live(&self, live: Option<Live>) {
        *self
            .shared
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// The current publishing channel, if connected.
    pub(crate) fn channel(&self) -> Option<Channel> {
        self.live()
            .filter(|l| l.channel.status().connected())
            .map(|l| l.channel)
    }

    /// Whether a connection (and its publishing channel) is up now.
    pub fn is_connected(&self) -> bool {
        self.live()
            .is_some_and(|l| l.conn.status().connected() && l.channel.status().connected())
    }

    /// A publisher that follows reconnections.
    pub fn publisher(&self) -> Publisher {
        Publisher::supervised(self.clone(), self.shared.settings.confirm_timeout)
    }

    /// The current connection, waiting for one; `None` once `stop` fires.
    pub async fn connection(&self, stop: &CancellationToken) -> Option<Arc<Connection>> {
        let mut epoch = self.shared.epoch.subscribe();
        loop {
            if let Some(live) = self.live().filter(|l| l.conn.status().connected()) {
                return Some(live.conn);
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                changed = epoch.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// The current connection, if there is one now.
    pub fn current_connection(&self) -> Option<Arc<Connection>> {
        self.live()
            .filter(|l| l.conn.status().connected())
            .map(|l| l.conn)
    }

    /// Waits up to `timeout` for a connection; whether there is one.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let never = CancellationToken::new();
        tokio::time::timeout(timeout, self.connection(&never))
            .await
            .is_ok_and(|c| c.is_some())
    }

    /// Tells the supervisor the connection looks broken (e.g. a consumer ended).
    pub fn report_lost(&self) {
        self.shared.lost.notify_one();
    }

    /// Keeps `channel` open until its connection closes, instead of letting it close
    /// when its last handle is dropped. A consumer's channel is held this way: the
    /// connection's close closes it (and hands its unacked messages back), whereas
    /// a channel closing on its own while the connection closes is forgotten twice
    /// by lapin, which then logs a connection error.
    pub fn hold(&self, channel: Channel) {
        let mut held = self
            .shared
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.retain(|c| c.status().connected());
        held.push(channel);
    }

    fn release_held(&self) {
        self.shared
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    async fn establish(&self) -> Result<Live, BrokerError> {
        let s = &self.shared.settings;
        let conn = connect(&s.url, &s.name, s.connect_timeout).await?;
        let within = |what| {
            let timeout = s.connect_timeout;
            move |_| {
                tracing::warn!("{what} timed out");
                BrokerError::ConnectTimeout(timeout)
            }
        };
        tokio::time::timeout(s.connect_timeout, s.topology.declare(&conn))
            .await
            .map_err(within("declaring the topology"))??;
        if s.declare_ladder {
            tokio::time::timeout(s.connect_timeout, s.topology.declare_ladder(&conn))
                .await
                .map_err(within("declaring the delay queues"))??;
        }
        let channel = self.open_channel(&conn).await?;
        let shared = Arc::downgrade(&self.shared);
        conn.on_error(move |e| {
            tracing::warn!(error = %e, "broker connection failed");
            if let Some(shared) = shared.upgrade() {
                shared.lost.notify_one();
            }
        });
        Ok(Live {
            conn: Arc::new(conn),
            channel,
        })
    }

    async fn open_channel(&self, conn: &Connection) -> Result<Channel, BrokerError> {
        let timeout = self.shared.settings.connect_timeout;
        tokio::time::timeout(timeout, async {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, BrokerError>(channel)
        })
        .await
        .map_err(|_| BrokerError::ConnectTimeout(timeout))?
    }

    async fn supervise(self, stop: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        while !stop.is_cancelled() {
            let live = match self.establish().await {
                Ok(live) => live,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "could not connect to the broker");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    continue;
                }
            };
            if connected_before {
                tracing::info!("reconnected to the broker");
            } else {
                tracing::info!("connected to the broker");
            }
            connected_before = true;
            backoff = BACKOFF_START;
            self.set_live(Some(live.clone()));
            let mut channel = live.channel.clone();
            // Watch until the connection is lost; a lost publishing channel alone is
            // reopened on the same connection.
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.shared.lost.notified() => {}
                    () = tokio::time::sleep(HEALTH_CHECK) => {}
                }
                if stop.is_cancelled() || !live.conn.status().connected() {
                    break;
                }
                if !channel.status().connected() {
                    match self.open_channel(&live.conn).await {
                        Ok(c) => {
                            channel = c.clone();
                            self.set_live(Some(Live {
                                conn: live.conn.clone(),
                                channel: c,
                            }));
                        }
                        Err(_) => break,
                    }
                }
            }
            self.set_live(None);
            // The publishing channel (`channel`, `live.channel`) stays open until the
            // connection's close closes it.
            if stop.is_cancelled() {
                close_when_released(live.conn).await;
            } else {
                let _ =
                    tokio::time::timeout(RELEASE_WAIT, live.conn.close(200, "reconnecting")).await;
                tracing::warn!("lost the broker connection; reconnecting");
            }
            self.release_held();
        }
    }
}

/// How long the last users of a connection may take to let go of it.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Closes the connection once no one else holds it (its consumers have ended), so
/// that the close can wait for lapin's I/O thread; if someone still holds it after
/// a while, it is closed without that wait.
async fn close_when_released(conn: Arc<Connection>) {
    let reason = "stopping";
    let until = tokio::time::Instant::now() + RELEASE_WAIT;
    let mut conn = conn;
    loop {
        match Arc::try_unwrap(conn) {
            Ok(owned) => return crate::connection::close(owned, reason).await,
            Err(shared) if tokio::time::Instant::now() >= until => {
                let _ = tokio::time::timeout(RELEASE_WAIT, shared.close(200, reason)).await;
                return;
            }
            Err(shared) => {
                conn = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
