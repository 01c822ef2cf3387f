//! Courier's gateway and worker as child processes of the benchmark: configured
//! with `COURIER_*` variables, on free loopback ports, logs in a file, watched for
//! unexpected exits, their memory sampled from `/proc`, and killed on every exit
//! path (`kill_on_drop`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Longest wait for `/readyz` to answer 200.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Longest wait for a process to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Worker,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Gateway => "courier-gateway",
            Kind::Worker => "courier-worker",
        }
    }
}

/// What every child of the run shares.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub bin_dir: PathBuf,
    pub amqp_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub admin_token: String,
    pub delivery_concurrency: usize,
    pub webhook_concurrency: usize,
    pub prefetch: u16,
    pub log_dir: PathBuf,
    pub http: reqwest::Client,
}

impl Launcher {
    /// Fails unless both binaries are in `bin_dir`.
    pub fn check_binaries(&self) -> anyhow::Result<()> {
        for kind in [Kind::Gateway, Kind::Worker] {
            let path = self.bin_dir.join(kind.binary());
            if !path.is_file() {
                bail!(
                    "{} not found; build it with `cargo build --release --bins -p courier-gateway -p courier-worker` or set COURIER_BIN_DIR",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Starts a service and waits until its `/readyz` answers 200.
    pub async fn start(&self, kind: Kind, tag: &str) -> anyhow::Result<Service> {
        let addr = free_port()?;
        let log = self.log_dir.join(format!("{}-{tag}.log", kind.binary()));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(self.bin_dir.join(kind.binary()));
        // Only what is set here configures the child, whatever the caller's shell
        // holds (and no span export adds its cost to the figures).
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("COURIER_") || name_str.starts_with("OTEL_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("COURIER_PROFILE", "dev")
            .env("COURIER_AMQP_URL", &self.amqp_url)
            .env("COURIER_REDIS_URL", &self.redis_url)
            .env("COURIER_PREFIX", &self.prefix)
            .env("COURIER_ADMIN_TOKEN", &self.admin_token)
            .env("COURIER_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        match kind {
            Kind::Gateway => {
                cmd.env("COURIER_GATEWAY_ADDR", addr.to_string())
                    .env("COURIER_MAX_WEBHOOKS_PER_TENANT", "8");
            }
            Kind::Worker => {
                cmd.env("COURIER_WORKER_ADMIN_ADDR", addr.to_string())
                    .env(
                        "COURIER_DELIVERY_CONCURRENCY",
                        self.delivery_concurrency.to_string(),
                    )
                    .env(
                        "COURIER_WEBHOOK_CONCURRENCY",
                        self.webhook_concurrency.to_string(),
                    )
                    .env("COURIER_PREFETCH", self.prefetch.to_string())
                    .env("COURIER_SHUTDOWN_GRACE", "5s")
                    .env("COURIER_LOG_RETENTION", "1h")
                    // A partial batch of a throttled webhook goes out after 1 s rather
                    // than the production default, so a run never waits minutes for it.
                    .env("COURIER_FLUSH_TIMEOUT", "1s");
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.binary()))?;
        let pid = child
            .id()
            .with_context(|| format!("{} has no process id", kind.binary()))?;
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = tokio::spawn(sample_memory(pid, peak.clone()));
        let mut service = Service {
            kind,
            child,
            pid,
            addr,
            log,
            peak,
            sampler,
        };
        service.wait_ready(&self.http).await?;
        Ok(service)
    }
}

/// A running service.
pub struct Service {
    kind: Kind,
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Largest VmHWM/VmRSS seen, in bytes.
    peak: Arc<AtomicU64>,
    sampler: JoinHandle<()>,
}

/// What a stopped service used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident memory (VmHWM), bytes.
    pub peak_rss: u64,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails if the process has exited, with the end of its log.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited unexpectedly ({status}); end of its log {}:\n{}",
                self.kind.binary(),
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url());
        let until = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            self.check()?;
            let ready = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                bail!(
                    "{} was not ready within {READY_WITHIN:?}; end of its log {}:\n{}",
                    self.kind.binary(),
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after [`STOP_WITHIN`]) and reports
    /// what it used. A process that had already exited is an error.
    pub async fn stop(mut self) -> anyhow::Result<Usage> {
        self.check()?;
        sample_once(self.pid, &self.peak);
        let usage = Usage {
            peak_rss: self.peak.load(Ordering::Relaxed),
        };
        self.sampler.abort();
        let terminated = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !terminated
            || tokio::time::timeout(STOP_WITHIN, self.child.wait())
                .await
                .is_err()
        {
            self.child.kill().await?;
        }
        Ok(usage)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn sample_memory(pid: u32, peak: Arc<AtomicU64>) {
    loop {
        sample_once(pid, &peak);
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

fn sample_once(pid: u32, peak: &AtomicU64) {
    if let Some(bytes) = peak_rss(pid) {
        peak.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// The larger of VmHWM (the kernel's peak) and VmRSS of `pid`, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .filter(|l| l.starts_with("VmHWM:") || l.starts_with("VmRSS:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .max()
        .map(|kib| kib * 1024)
}

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Process ids whose command name is `comm` (for reading their CPU time only).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .collect()
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(peak_rss(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }
}
