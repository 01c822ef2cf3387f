//! Fault injection for tests that break things: a RabbitMQ node of the test's own
//! (other ports, its own data directory) that can be stopped and restarted without
//! disturbing tests beside it, and a TCP proxy that can be cut and restored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::wait_until;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RabbitMQ node on ports of its own, with data in a temporary directory that
/// survives [`TestBroker::restart`] (durable queues and their messages come back).
pub struct TestBroker {
    pub port: u16,
    node: String,
    dir: PathBuf,
}

impl TestBroker {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "courier-broker-{port}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        let system = std::fs::read_to_string("/etc/rabbitmq/rabbitmq.conf").unwrap_or_default();
        let mut conf: String = system
            .lines()
            .filter(|l| !l.trim_start().starts_with("listeners.tcp"))
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!("listeners.tcp.local = 127.0.0.1:{port}\n"));
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // The distribution's wrapper runs the broker as the rabbitmq user.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "777"])
            .arg(&dir)
            .status();
        let broker = Self {
            port,
            node: format!("courier-test-{port}@localhost"),
            dir,
        };
        broker.boot().await;
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    }

    async fn boot(&self) {
        let status = self
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server is installed (make services installs it)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let url = self.url();
        wait_until(
            "the test broker to accept connections",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    let conn = courier_broker::connect(&url, "probe", Duration::from_secs(2))
                        .await
                        .ok()?;
                    let _ = conn.close(200, "probe").await;
                    Some(())
                }
            },
        )
        .await;
    }

    /// Stops the node (as a broker outage looks to its clients).
    pub fn stop(&self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .status();
    }

    /// Starts it again on the same port and data.
    pub async fn start_again(&self) {
        self.boot().await;
    }

    /// Stop, then start again.
    pub async fn restart(&self) {
        self.stop();
        self.start_again().await;
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on 127.0.0.1 that can be cut (every connection dropped, new ones
/// refused) and restored: a network partition between a service and a dependency.
/// It can also hold what the target sends (the client's bytes still go through),
/// as a path that stalls one way does: requests arrive, answers do not.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Mutex<CancellationToken>>,
    replies_held: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
}

/// Copies `from` to `to` until `from` ends (then shuts `to` down), waiting while
/// `held` is true before passing each chunk on.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.wait_for(|held| !*held).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Mutex::new(CancellationToken::new()));
        let replies_held = Arc::new(watch::channel(false).0);
        let stop = CancellationToken::new();
        let (up2, cut2, stop2) = (up.clone(), cut.clone(), stop.clone());
        let held2 = replies_held.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if !up2.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let severed = cut2.lock().await.clone();
                let replies = held2.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let never = watch::channel(false).1;
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pipe(in_read, out_write, never),
                                pipe(out_read, in_write, replies),
                            )
                        } => {}
                        () = severed.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            cut,
            replies_held,
            stop,
        }
    }

    /// Stops passing on what the target sends (it waits in the proxy); what
    /// clients send still reaches the target.
    pub fn hold_replies(&self) {
        self.replies_held.send_replace(true);
    }

    /// Passes on what the target sent meanwhile, and what it sends from now on.
    pub fn release_replies(&self) {
        self.replies_held.send_replace(false);
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub async fn cut(&self) {
        self.up.store(false, Ordering::Release);
        let mut token = self.cut.lock().await;
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
