//! End-to-end test support: a deployment under its own prefix on the real RabbitMQ
//! and Redis ([`TestEnv`]), a stand-in subscriber ([`TestReceiver`]), JSON Schema
//! checks ([`schemas`]), fault injection ([`chaos`]: a private RabbitMQ node, a
//! cuttable TCP proxy), and waiting on conditions with deadlines ([`wait_until`]).
//! [`spans`] keeps the spans a service instance exports, for tests of tracing;
//! [`raw_http`] speaks HTTP/1.1 by hand, for requests and connections ordinary
//! clients would not make.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod chaos;
pub mod raw_http;
pub mod receiver;
pub mod schemas;
pub mod security;
pub mod spans;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use courier_broker::lapin::options::QueueDeclareOptions;
use courier_broker::lapin::types::FieldTable;
use courier_broker::lapin::Connection;
use courier_broker::Topology;
use courier_gateway::GatewayConfig;
use courier_store::Store;
use courier_worker::WorkerConfig;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use receiver::{Behaviour, Received, TestReceiver};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Waits until `check` returns `Some`, polling every 25 ms, or panics after `deadline`
/// naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running gateway or worker inside the test process.
pub struct Service {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Stops the service and returns how its `run` ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }
}

/// One deployment under a unique prefix: its queues and keys are removed by
/// [`TestEnv::cleanup`] (or, if a test panics first, when the value is dropped).
pub struct TestEnv {
    pub prefix: String,
    pub topology: Topology,
    pub store: Store,
    pub amqp: Connection,
    pub http: reqwest::Client,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        let prefix = format!(
            "t-{name}-{}.",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let amqp = courier_broker::connect(AMQP_URL, "courier-tests", Duration::from_secs(10))
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (make services)");
        let store = Store::new(REDIS_URL, &prefix).unwrap();
        store
            .ping()
            .await
            .expect("Redis must run on 127.0.0.1:6379 (make services)");
        Self {
            topology: Topology::new(prefix.clone()),
            prefix,
            store,
            amqp,
            http: reqwest::Client::new(),
            cleaned: false,
        }
    }

    pub fn gateway_config(&self) -> GatewayConfig {
        let mut c = GatewayConfig::local(&self.prefix);
        c.admin_token = Some(ADMIN_TOKEN.into());
        c
    }

    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig::local(&self.prefix)
    }

    pub async fn start_gateway(&self, config: GatewayConfig) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(courier_gateway::run(config, listener, stop.clone()));
        let service = Service { addr, stop, task };
        let url = format!("http://{addr}/readyz");
        let http = self.http.clone();
        wait_until("the gateway to be ready", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        service
    }

    pub async fn start_worker(&self, config: WorkerConfig) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(courier_worker::run(config, listener, stop.clone()));
        let service = Service { addr, stop, task };
        let url = format!("http://{addr}/readyz");
        let http = self.http.clone();
        wait_until("the worker to be ready", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        service
    }

    /// Messages ready in a queue of this deployment.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let ch = self.amqp.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "checked").await;
        q.message_count()
    }

    /// Removes every queue, exchange and key of this deployment.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        self.topology.delete(&self.amqp).await.unwrap();
        self.store.delete_all().await.unwrap();
        let _ = self.amqp.close(200, "done").await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (prefix, topology) = (self.prefix.clone(), self.topology.clone());
        // A failed test still leaves nothing behind: clean up on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(conn) = courier_broker::connect(
                    AMQP_URL,
                    "courier-tests-cleanup",
                    Duration::from_secs(5),
                )
                .await
                {
                    let _ = topology.delete(&conn).await;
                }
                if let Ok(store) = Store::new(REDIS_URL, &prefix) {
                    let _ = store.delete_all().await;
                }
            });
        })
        .join();
    }
}

/// A client of one gateway.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// A created tenant with its key.
pub struct TenantHandle {
    pub id: String,
    pub key: String,
}

impl Api {
    pub fn new(gateway: &Service) -> Self {
        Self {
            base: format!("http://{}", gateway.addr),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, token, Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, token, None).await
    }

    /// Creates a tenant with the operator token and returns its id and key.
    pub async fn tenant(&self, id: &str) -> TenantHandle {
        let (status, body) = self
            .post("/v1/tenants", ADMIN_TOKEN, &json!({ "id": id, "name": id }))
            .await;
        assert_eq!(status, 201, "{body}");
        TenantHandle {
            id: body["id"].as_str().unwrap().to_owned(),
            key: body["apiKey"]["key"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates a webhook and returns its body (with `secret`).
    pub async fn webhook(&self, tenant: &TenantHandle, body: Value) -> Value {
        let (status, created) = self.post("/v1/webhooks", &tenant.key, &body).await;
        assert_eq!(status, 201, "{created}");
        created
    }

    /// Sends events; returns the status and body.
    pub async fn send(&self, tenant: &TenantHandle, body: &Value) -> (u16, Value) {
        self.post("/v1/events", &tenant.key, body).await
    }
}

/// A Prospect.EntityCreated event with the given id.
pub fn prospect_created(id: &str) -> Value {
    json!({
        "id": id,
        "objectType": "Prospect",
        "eventType": "EntityCreated",
        "data": { "objectId": "prospect_123", "email": "jane@example.com" }
    })
}

impl Service {
    /// A sample of this service's `/metrics`, e.g.
    /// `courier_deliveries_total{outcome="delivered"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Waits until this worker is idle: see [`wait_idle`].
    pub async fn wait_idle(&self, want_events: u64) {
        wait_idle(&[self], want_events).await;
    }
}

/// Waits until `workers` together fanned out `want_events` events and consumed as
/// many delivery jobs as they published (every job ended one way or another).
pub async fn wait_idle(workers: &[&Service], want_events: u64) {
    wait_until(
        "the workers to finish their work",
        Duration::from_secs(30),
        || async {
            let (mut fanned, mut published, mut consumed) = (0, 0, 0);
            for w in workers {
                fanned += w
                    .metric("courier_events_consumed_total{result=\"fanned_out\"}")
                    .await;
                published += w.metric("courier_jobs_published_total").await;
                consumed += w.metric("courier_jobs_consumed_total").await;
            }
            (fanned >= want_events && consumed >= published).then_some(())
        },
    )
    .await;
}

/// A built binary of the workspace: in `COURIER_BIN_DIR` (set by `make test`), else
/// in the workspace's `target/debug`.
pub fn bin_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("COURIER_BIN_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
        std::path::PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (make test does, or cargo build --bins)",
        path.display()
    );
    path
}

/// A gateway or worker running as a child process of the test, configured by
/// environment (the real binary, as deployed).
pub struct ChildService {
    child: tokio::process::Child,
    /// The HTTP address: the API of a gateway, the admin endpoints of a worker.
    pub addr: SocketAddr,
}

/// Where a child service finds its dependencies.
#[derive(Debug, Clone)]
pub struct Deps {
    pub prefix: String,
    pub amqp_url: String,
    pub redis_url: String,
}

impl Deps {
    /// The shared RabbitMQ and Redis under `prefix`.
    pub fn shared(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            amqp_url: AMQP_URL.to_owned(),
            redis_url: REDIS_URL.to_owned(),
        }
    }
}

impl ChildService {
    /// Runs `binary`; its stdout and stderr go to `log` when given, else to the
    /// test's.
    fn spawn(
        binary: &str,
        addr_var: &str,
        deps: &Deps,
        settings: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = tokio::process::Command::new(bin_path(binary));
        cmd.env_clear()
            .env("COURIER_PROFILE", "dev")
            .env("COURIER_PREFIX", &deps.prefix)
            .env("COURIER_AMQP_URL", &deps.amqp_url)
            .env("COURIER_REDIS_URL", &deps.redis_url)
            .env("COURIER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(addr_var, addr.to_string())
            .env(
                "RUST_LOG",
                std::env::var("COURIER_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        for (k, v) in settings {
            cmd.env(k, v);
        }
        if let Some(log) = log {
            let file = std::fs::File::create(log).unwrap();
            cmd.stderr(file.try_clone().unwrap()).stdout(file);
        }
        Self {
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("{binary} starts: {e}")),
            addr,
        }
    }

    /// Starts `courier-gateway` and waits until it answers `/healthz`.
    pub async fn gateway(deps: &Deps, settings: &[(&str, &str)]) -> Self {
        Self::gateway_logging_to(deps, settings, None).await
    }

    /// [`ChildService::gateway`] with its output written to `log`.
    pub async fn gateway_logging_to(
        deps: &Deps,
        settings: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let service = Self::spawn(
            "courier-gateway",
            "COURIER_GATEWAY_ADDR",
            deps,
            settings,
            log,
        );
        service.wait_ready("/readyz").await;
        service
    }

    /// Starts `courier-worker` (without waiting: it may be started while the broker
    /// is down, and a worker killed repeatedly need not come up in between).
    pub fn worker(deps: &Deps, settings: &[(&str, &str)]) -> Self {
        Self::worker_logging_to(deps, settings, None)
    }

    /// [`ChildService::worker`] with its output written to `log`.
    pub fn worker_logging_to(
        deps: &Deps,
        settings: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn(
            "courier-worker",
            "COURIER_WORKER_ADMIN_ADDR",
            deps,
            settings,
            log,
        )
    }

    /// Waits until `path` answers 200.
    pub async fn wait_ready(&self, path: &str) {
        let url = format!("http://{}{path}", self.addr);
        wait_until(
            "the child service to be ready",
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .ok()?
                        .status()
                        .is_success()
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// An API client of this gateway.
    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            http: reqwest::Client::new(),
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub async fn terminate(self) -> (std::process::ExitStatus, Duration) {
        self.stop_with("TERM").await
    }

    /// Sends `signal` (`TERM`, `INT`), then the exit status and how long the exit took.
    pub async fn stop_with(mut self, signal: &str) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("running");
        let asked = std::time::Instant::now();
        std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        let status = self.child.wait().await.unwrap();
        (status, asked.elapsed())
    }
}

/// The worker as a child process, on the shared RabbitMQ and Redis.
pub struct ChildWorker;

impl ChildWorker {
    pub fn start(prefix: &str, settings: &[(&str, &str)]) -> ChildService {
        ChildService::worker(&Deps::shared(prefix), settings)
    }
}

/// A Redis of the test's own on a free port (removed on drop), for tests that need
/// other settings than the shared one or that stop it.
pub struct TestRedis {
    pub port: u16,
    child: std::process::Child,
    dir: std::path::PathBuf,
    args: Vec<String>,
}

impl TestRedis {
    /// Starts `redis-server` with `args` added, and waits until it answers.
    pub async fn start(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "courier-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = Self::spawn(port, &dir, &args);
        let redis = Self {
            port,
            child,
            dir,
            args,
        };
        redis.wait_up().await;
        redis
    }

    fn spawn(port: u16, dir: &std::path::Path, args: &[String]) -> std::process::Child {
        std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (make services installs it)")
    }

    /// Shuts Redis down (SIGTERM: with AOF on, what was acknowledged is on disk),
    /// waits `down`, and starts it again on the same port and directory.
    pub async fn restart(&mut self, down: Duration) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = Self::spawn(self.port, &self.dir, &self.args);
        self.wait_up().await;
    }

    async fn wait_up(&self) {
        let url = self.url();
        wait_until("the test Redis to answer", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let store = Store::new(&url, "probe.").ok()?;
                store.ping().await.ok()
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The delay ladder of tests with retries: short rungs, so retries take milliseconds.
pub const TEST_LADDER: &str = "100ms,200ms,500ms,1s";

/// The default retry schedule of tests with retries.
pub const TEST_SCHEDULE: &str = "0s,200ms,500ms,1s";

impl TestEnv {
    /// Gateway and worker configurations with short retry timing ([`TEST_LADDER`],
    /// [`TEST_SCHEDULE`]); clean-up then deletes that ladder's delay queues.
    pub fn short_retries(&mut self) -> (GatewayConfig, WorkerConfig) {
        let ladder = courier_core::retry::DelayLadder::parse_list(TEST_LADDER).unwrap();
        let schedule = courier_core::retry::Schedule::parse_list(TEST_SCHEDULE).unwrap();
        self.topology = Topology::new(self.prefix.clone()).with_ladder(ladder.clone());
        let mut gateway = self.gateway_config();
        gateway.shared.retry_schedule = schedule.clone();
        let mut worker = self.worker_config();
        worker.shared.retry_schedule = schedule;
        worker.delay_ladder = ladder;
        (gateway, worker)
    }

    /// Waits until the log record of `batch` is in `status`, and returns it.
    pub async fn wait_status(
        &self,
        batch: &courier_core::ids::BatchId,
        status: &str,
        deadline: Duration,
    ) -> courier_store::DeliveryRecord {
        wait_until(
            &format!("delivery {batch} to be {status}"),
            deadline,
            || async {
                let r = self.store.delivery(batch).await.unwrap()?;
                (r.status.as_str() == status).then_some(r)
            },
        )
        .await
    }
}
