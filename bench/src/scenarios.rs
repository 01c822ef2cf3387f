//! The scenarios. Each one starts the services it needs (fresh processes, so their
//! peak memory is the scenario's own), creates its own tenant and webhooks, drives
//! its load, measures, stops the services and empties the queues it filled, so the
//! next scenario starts from the same state.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use courier_broker::lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use courier_broker::lapin::types::FieldTable;
use courier_broker::lapin::Connection;
use courier_broker::Topology;
use serde_json::json;

use crate::api::{Api, Tenant};
use crate::ceiling;
use crate::config::{Args, Plan, Scenario};
use crate::load::{Load, Sent};
use crate::receiver::Receiver;
use crate::report::ScenarioResult;
use crate::services::{cpu_seconds, pids_named, Kind, Launcher, Service, TICKS_PER_SECOND};
use crate::stats::{first_last_tenth, nanos, rate, Clock, Latency};

/// Pause between scenarios, for the broker to settle after a purge.
const SETTLE: Duration = Duration::from_secs(2);
/// A wait for deliveries gives up after this long without a new one.
const STALL: Duration = Duration::from_secs(20);
/// Events per request of the count-bound end-to-end scenarios.
const E2E_BATCH: u64 = 100;
/// Events per request when filling the backlog.
const BACKLOG_BATCH: u64 = 1000;
/// Connections that fill the backlog.
const BACKLOG_CONNECTIONS: usize = 8;
/// Requests in flight at most in the paced scenario.
const PACED_IN_FLIGHT: usize = 256;
/// The paced scenario's rate.
const PACED_PER_SECOND: u64 = 1000;
/// The slow receiver's answer time.
const SLOW_ANSWER: Duration = Duration::from_millis(100);
/// A scenario is started only with at least this much of the budget left.
const LEAST_TIME: Duration = Duration::from_secs(30);

/// Everything a run shares.
pub struct Bench {
    pub args: Args,
    pub plan: Plan,
    pub clock: Clock,
    pub launcher: Launcher,
    pub amqp: Connection,
    pub topology: Topology,
    pub results: Vec<ScenarioResult>,
    /// Processes of RabbitMQ and Redis on this machine, whose CPU time is read.
    pub infra: Vec<(&'static str, Vec<u32>)>,
    /// When the run's time budget ends.
    pub deadline: Instant,
    /// Scenarios not run for lack of time.
    pub skipped: Vec<&'static str>,
    /// For Redis's command counters.
    pub redis: redis::aio::MultiplexedConnection,
}

impl Bench {
    pub async fn run(&mut self, scenarios: &[Scenario]) -> anyhow::Result<()> {
        for (i, &scenario) in scenarios.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(SETTLE).await;
            }
            if self.left() < LEAST_TIME {
                eprintln!(
                    "== {}: skipped, the run's time budget is spent",
                    scenario.name()
                );
                self.skipped.push(scenario.name());
                continue;
            }
            eprintln!("== {} ...", scenario.name());
            let started = Instant::now();
            let mut result = self
                .scenario(scenario)
                .await
                .with_context(|| format!("scenario {}", scenario.name()))?;
            result.wall_seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "   {:.0} {} in {:.1} s{}",
                result.throughput,
                result.unit,
                result.wall_seconds,
                if result.complete {
                    String::new()
                } else {
                    " (incomplete)".to_owned()
                }
            );
            self.results.push(result);
        }
        Ok(())
    }

    /// What is left of the run's time budget.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// `wait`, cut to what is left of the budget (keeping a little for clean-up).
    fn bounded(&self, wait: Duration) -> Duration {
        wait.min(self.left().saturating_sub(Duration::from_secs(10)))
    }

    async fn scenario(&self, scenario: Scenario) -> anyhow::Result<ScenarioResult> {
        let plan = &self.plan;
        match scenario {
            Scenario::Ceiling => self.ceiling().await,
            Scenario::IngestBatched => self.ingest(scenario, 100).await,
            Scenario::IngestSingle => self.ingest(scenario, 1).await,
            Scenario::E2eT0 => {
                self.deliver(scenario, 1, 0, Pace::Flat(plan.e2e_events))
                    .await
            }
            Scenario::E2eT10 => {
                self.deliver(scenario, 1, 10, Pace::Flat(plan.e2e_events))
                    .await
            }
            Scenario::Fanout3 => {
                self.deliver(scenario, 3, 0, Pace::Flat(plan.fanout_events))
                    .await
            }
            Scenario::Latency1k => {
                self.deliver(
                    scenario,
                    1,
                    0,
                    Pace::PerSecond(PACED_PER_SECOND, plan.latency_duration),
                )
                .await
            }
            Scenario::SlowReceiver => self.slow_receiver().await,
            Scenario::Backlog => self.backlog().await,
        }
    }

    /// Starts a gateway and creates the scenario's tenant.
    async fn gateway(&self, scenario: Scenario) -> anyhow::Result<(Deployment, Api, Tenant)> {
        let mut deploy = Deployment::default();
        let gateway = self.launcher.start(Kind::Gateway, scenario.name()).await?;
        let api = Api::new(self.launcher.http.clone(), gateway.base_url());
        deploy.gateway = Some(gateway);
        let tenant = api
            .create_tenant(&self.launcher.admin_token, scenario.name())
            .await?;
        Ok((deploy, api, tenant))
    }

    /// Creates `count` webhooks pointing at `receiver`.
    async fn webhooks(
        &self,
        api: &Api,
        tenant: &Tenant,
        receiver: &Receiver,
        count: usize,
        throttling: u8,
    ) -> anyhow::Result<()> {
        for i in 0..count {
            let secret = api
                .create_webhook(tenant, &format!("bench {i}"), &receiver.url(i), throttling)
                .await?;
            receiver.set_secret(i, secret);
        }
        Ok(())
    }

    async fn meter(&self, deploy: &Deployment) -> Meter {
        let mut groups = deploy.pids();
        groups.extend(self.infra.iter().cloned());
        groups.push(("bench", vec![std::process::id()]));
        Meter::start(groups, self.redis.clone()).await
    }

    /// Messages waiting in the intake and delivery queues.
    async fn depths(&self) -> anyhow::Result<(u32, u32)> {
        let ch = self.amqp.create_channel().await?;
        let mut depths = [0; 2];
        for (depth, q) in depths
            .iter_mut()
            .zip([self.topology.events_queue(), self.topology.deliveries()])
        {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            *depth = ch
                .queue_declare(&q, passive, FieldTable::default())
                .await
                .with_context(|| format!("reading the depth of {q}"))?
                .message_count();
        }
        let _ = ch.close(200, "read").await;
        Ok((depths[0], depths[1]))
    }

    async fn note_depths(&self, result: &mut ScenarioResult, when: &str) -> anyhow::Result<()> {
        let (intake, deliveries) = self.depths().await?;
        result.detail(&format!("intakeDepth{when}"), intake);
        result.detail(&format!("deliveryDepth{when}"), deliveries);
        Ok(())
    }

    /// Empties the intake and delivery queues.
    async fn purge(&self) -> anyhow::Result<()> {
        let ch = self.amqp.create_channel().await?;
        for q in [self.topology.events_queue(), self.topology.deliveries()] {
            ch.queue_purge(&q, QueuePurgeOptions::default())
                .await
                .with_context(|| format!("purging {q}"))?;
        }
        let _ = ch.close(200, "purged").await;
        Ok(())
    }

    async fn ceiling(&self) -> anyhow::Result<ScenarioResult> {
        let mut result = ScenarioResult::new(Scenario::Ceiling, "msgs/s");
        let meter = self.meter(&Deployment::default()).await;
        let c = ceiling::run(
            &self.args.amqp_url,
            &self.launcher.prefix,
            self.clock,
            self.args.prefetch,
            self.plan.warmup,
            self.plan.window,
        )
        .await?;
        meter.finish(&mut result).await;
        result.throughput = c.consumed_per_second;
        result.count = c.consumed;
        result.seconds = self.plan.window.as_secs_f64();
        result.detail("confirmedPerSecond", c.confirmed_per_second);
        result.detail("bodyBytes", c.body_bytes);
        result.detail("confirmWindow", ceiling::CONFIRM_WINDOW);
        result.detail("prefetch", self.args.prefetch);
        Ok(result)
    }

    /// Events accepted per second with `batch` events per request, no worker.
    async fn ingest(&self, scenario: Scenario, batch: u64) -> anyhow::Result<ScenarioResult> {
        let mut result = ScenarioResult::new(scenario, "events/s");
        let (mut deploy, _api, tenant) = self.gateway(scenario).await?;
        let gateway = deploy.gateway_url()?;
        let load = Load::new(&gateway, &tenant.key, self.clock)?;
        let meter = self.meter(&deploy).await;
        let sent = deploy
            .watch(load.for_window(
                self.args.connections,
                batch,
                self.plan.warmup,
                self.plan.window,
            ))
            .await?;
        meter.finish(&mut result).await;
        require_accepted(&sent)?;
        result.throughput = rate(sent.in_window, nanos(self.plan.window));
        result.count = sent.in_window;
        result.seconds = self.plan.window.as_secs_f64();
        result.detail("eventsPerRequest", batch);
        result.detail("connections", self.args.connections);
        note_errors(&mut result, &sent);
        let (gw, _) = deploy.stop().await?;
        result.set_rss(gw, None);
        self.purge().await?;
        Ok(result)
    }

    /// Events sent to `webhooks` webhooks, delivered to the receiver.
    async fn deliver(
        &self,
        scenario: Scenario,
        webhooks: usize,
        throttling: u8,
        pace: Pace,
    ) -> anyhow::Result<ScenarioResult> {
        let unit = if webhooks > 1 {
            "deliveries/s"
        } else {
            "events/s"
        };
        let mut result = ScenarioResult::new(scenario, unit);
        let events = pace.events();
        let receiver = Receiver::start(self.clock, webhooks, events, Duration::ZERO).await?;
        let (mut deploy, api, tenant) = self.gateway(scenario).await?;
        self.webhooks(&api, &tenant, &receiver, webhooks, throttling)
            .await?;
        // The worker starts once the webhooks exist, so it never sees a tenant without them.
        deploy.worker = Some(self.launcher.start(Kind::Worker, scenario.name()).await?);
        let load = Load::new(&deploy.gateway_url()?, &tenant.key, self.clock)?;
        let meter = self.meter(&deploy).await;
        let sent = match pace {
            Pace::Flat(total) => {
                deploy
                    .watch(load.count(
                        self.args.connections,
                        E2E_BATCH,
                        total,
                        self.plan.send_deadline,
                    ))
                    .await?
            }
            Pace::PerSecond(per_second, duration) => {
                deploy
                    .watch(load.paced(per_second, duration, PACED_IN_FLIGHT))
                    .await?
            }
        };
        require_accepted(&sent)?;
        self.note_depths(&mut result, "AfterSending").await?;
        let expected = sent.accepted * webhooks as u64;
        result.complete =
            wait_for(&mut deploy, &receiver, expected, self.plan.drain_deadline).await?;
        meter.finish(&mut result).await;
        let arrivals = receiver.arrivals();
        let Some(last) = arrivals.iter().map(|a| a.at).max() else {
            bail!(
                "no delivery arrived at the receiver ({} events accepted)",
                sent.accepted
            );
        };
        let counts = receiver.counts();
        result.count = counts.unique;
        let span = last.saturating_sub(sent.first_sent);
        result.throughput = rate(counts.unique, span);
        result.seconds = span as f64 / 1e9;
        let mut latencies: Vec<u64> = arrivals.iter().map(|a| a.latency).collect();
        result.latency_ms = Latency::of(&mut latencies);
        if let Pace::PerSecond(_, duration) = pace {
            let slice = (duration / 6).max(Duration::from_secs(1));
            result.detail(
                "latencyBySendTime",
                json!(latency_slices(&arrivals, sent.first_sent, slice)),
            );
        }
        result.detail("webhooks", webhooks);
        result.detail("throttling", throttling);
        result.detail("eventsAccepted", sent.accepted);
        result.detail("deliveriesExpected", expected);
        result.detail("requests", counts.requests);
        result.detail("largestBatch", counts.max_batch);
        result.detail("duplicates", counts.duplicates);
        result.detail("signaturesVerified", counts.verified);
        if let Pace::PerSecond(per_second, _) = pace {
            result.detail("sentPerSecond", per_second);
            result.detail("sentPerSecondAchieved", sent.accept_rate());
            let mut trips: Vec<u64> = sent.round_trips.iter().map(|t| t.nanos()).collect();
            if let Some(ingest) = Latency::of(&mut trips) {
                result.detail("ingestRoundTripMs", json!(ingest));
                result.notes.push(format!(
                    "latency is sent -> received and includes the ingest request (its round trip alone: p50 {:.1} ms, p99 {:.1} ms)",
                    ingest.p50_ms, ingest.p99_ms
                ));
            }
            let (mut after_answer, early) = accepted_to_received(&sent.round_trips, &arrivals);
            if let Some(accepted) = Latency::of(&mut after_answer) {
                result.detail("acceptedToReceivedMs", json!(accepted));
                result.detail("receivedBeforeAnswer", early);
                result.notes.push(format!(
                    "accepted -> received (202 at the load generator to arrival): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {early} events arrived before their 202",
                    accepted.p50_ms, accepted.p99_ms, accepted.max_ms
                ));
            }
        } else {
            result.detail("ingestPerSecond", sent.accept_rate());
        }
        if throttling >= 2 && counts.max_batch <= 1 {
            result.notes.push(format!(
                "throttling {throttling} but every delivery carried one event: batching is not in effect"
            ));
        }
        if !result.complete {
            result.notes.push(format!(
                "incomplete: {} of {expected} deliveries arrived within the bound",
                counts.unique
            ));
        }
        note_errors(&mut result, &sent);
        let (gw, wk) = deploy.stop().await?;
        result.set_rss(gw, wk);
        self.purge().await?;
        Ok(result)
    }

    /// Deliveries per second while a 100 ms receiver has a backlog waiting.
    async fn slow_receiver(&self) -> anyhow::Result<ScenarioResult> {
        let scenario = Scenario::SlowReceiver;
        let plan = &self.plan;
        let mut result = ScenarioResult::new(scenario, "deliveries/s");
        let concurrency = self.args.delivery_concurrency;
        let target = 0.8 * concurrency as f64 / SLOW_ANSWER.as_secs_f64();
        // Enough events for the target rate over warm-up and window, with room to spare.
        let events = ((target * (plan.slow_warmup + plan.slow_window).as_secs_f64() * 1.5) as u64)
            .clamp(2_000, 150_000);
        let receiver = Receiver::start(self.clock, 1, events, SLOW_ANSWER).await?;
        let (mut deploy, api, tenant) = self.gateway(scenario).await?;
        self.webhooks(&api, &tenant, &receiver, 1, 0).await?;
        deploy.worker = Some(self.launcher.start(Kind::Worker, scenario.name()).await?);
        let load = Load::new(&deploy.gateway_url()?, &tenant.key, self.clock)?;
        let connections = self.args.connections;
        let deadline = plan.send_deadline;
        let sending =
            tokio::spawn(async move { load.count(connections, E2E_BATCH, events, deadline).await });
        if !wait_for(&mut deploy, &receiver, 1, plan.drain_deadline).await? {
            bail!("no delivery arrived within {:?}", plan.drain_deadline);
        }
        let from = self.clock.now_nanos() + nanos(plan.slow_warmup);
        let to = from + nanos(plan.slow_window);
        tokio::time::sleep(plan.slow_warmup).await;
        let meter = self.meter(&deploy).await;
        while self.clock.now_nanos() < to {
            deploy.check()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        meter.finish(&mut result).await;
        self.note_depths(&mut result, "AtWindowEnd").await?;
        let arrivals = receiver.arrivals();
        let in_window: Vec<u64> = arrivals
            .iter()
            .map(|a| a.at)
            .filter(|at| (from..to).contains(at))
            .collect();
        let last = in_window.iter().copied().max().unwrap_or(from);
        if sending.is_finished() {
            let sent = sending.await.context("the load generator failed")?;
            require_accepted(&sent)?;
            note_errors(&mut result, &sent);
            if receiver.counts().unique >= sent.accepted && last < to {
                result.notes.push(
                    "every event was delivered before the window ended; the figure covers the window up to the last delivery".to_owned(),
                );
                result.complete = false;
            }
        } else {
            sending.abort();
        }
        let span = if result.complete {
            nanos(plan.slow_window)
        } else {
            last - from
        };
        result.count = in_window.len() as u64;
        result.throughput = rate(result.count, span);
        result.seconds = span as f64 / 1e9;
        result.detail("deliveryConcurrency", concurrency);
        result.detail("webhookConcurrency", self.args.webhook_concurrency());
        result.detail("targetPerSecond", target);
        result.detail("answerAfterMs", SLOW_ANSWER.as_millis() as u64);
        result.detail("eventsQueued", events);
        result.detail("signaturesVerified", receiver.counts().verified);
        result.notes.push(format!(
            "target 0.8 x {concurrency} / 0.1 s = {target:.0} deliveries/s (COURIER_WEBHOOK_CONCURRENCY={})",
            self.args.webhook_concurrency()
        ));
        check_receiver(&receiver)?;
        deploy.stop_worker().await?;
        self.purge().await?;
        let (gw, wk) = deploy.stop().await?;
        result.set_rss(gw, wk);
        Ok(result)
    }

    /// A backlog queued with the worker stopped, then drained.
    async fn backlog(&self) -> anyhow::Result<ScenarioResult> {
        let scenario = Scenario::Backlog;
        let plan = &self.plan;
        let mut result = ScenarioResult::new(scenario, "events/s");
        let events = plan.backlog_events;
        let receiver = Receiver::start(self.clock, 1, events, Duration::ZERO).await?;
        let (mut deploy, api, tenant) = self.gateway(scenario).await?;
        self.webhooks(&api, &tenant, &receiver, 1, 0).await?;
        let load = Load::new(&deploy.gateway_url()?, &tenant.key, self.clock)?;
        let sent = deploy
            .watch(load.count(
                BACKLOG_CONNECTIONS,
                BACKLOG_BATCH,
                events,
                plan.send_deadline * 2,
            ))
            .await?;
        require_accepted(&sent)?;
        note_errors(&mut result, &sent);
        eprintln!(
            "   {} events queued at {:.0}/s; starting the worker",
            sent.accepted,
            sent.accept_rate()
        );
        deploy.worker = Some(self.launcher.start(Kind::Worker, scenario.name()).await?);
        let started = self.clock.now_nanos();
        let meter = self.meter(&deploy).await;
        let deadline = self.bounded(plan.backlog_deadline);
        result.complete = wait_for(&mut deploy, &receiver, sent.accepted, deadline).await?;
        meter.finish(&mut result).await;
        let mut times: Vec<u64> = receiver.arrivals().iter().map(|a| a.at).collect();
        let Some(last) = times.iter().copied().max() else {
            bail!("no delivery arrived while draining the backlog");
        };
        let counts = receiver.counts();
        result.count = counts.unique;
        result.throughput = rate(counts.unique, last - started);
        result.seconds = (last - started) as f64 / 1e9;
        if let Some((first, last)) = first_last_tenth(&mut times) {
            result.detail("firstTenthPerSecond", first);
            result.detail("lastTenthPerSecond", last);
            result.notes.push(format!(
                "drain rate over the first 10 % {first:.0}/s, over the last 10 % {last:.0}/s"
            ));
        }
        result.detail("eventsQueued", sent.accepted);
        result.detail("queuedPerSecond", sent.accept_rate());
        result.detail("duplicates", counts.duplicates);
        result.detail("signaturesVerified", counts.verified);
        if !result.complete {
            result.notes.push(format!(
                "incomplete: {} of {} events drained within {:?}; the last-10 % rate is over the last 10 % that arrived",
                counts.unique, sent.accepted, deadline
            ));
        }
        let (gw, wk) = deploy.stop().await?;
        result.set_rss(gw, wk);
        self.purge().await?;
        Ok(result)
    }
}

/// How a delivery scenario sends.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// This many events, as fast as the connections allow.
    Flat(u64),
    /// One event every `1 / rate` for a duration.
    PerSecond(u64, Duration),
}

impl Pace {
    fn events(self) -> u64 {
        match self {
            Pace::Flat(n) => n,
            Pace::PerSecond(rate, d) => rate * d.as_secs(),
        }
    }
}

/// The services of one scenario, with the peak memory of those already stopped.
#[derive(Default)]
struct Deployment {
    gateway: Option<Service>,
    worker: Option<Service>,
    worker_peak: Option<u64>,
}

impl Deployment {
    fn gateway_url(&self) -> anyhow::Result<String> {
        self.gateway
            .as_ref()
            .map(Service::base_url)
            .context("no gateway is running")
    }

    fn check(&mut self) -> anyhow::Result<()> {
        for s in [&mut self.gateway, &mut self.worker].into_iter().flatten() {
            s.check()?;
        }
        Ok(())
    }

    fn pids(&self) -> Vec<(&'static str, Vec<u32>)> {
        let mut groups = Vec::new();
        if let Some(g) = &self.gateway {
            groups.push(("gateway", vec![g.pid()]));
        }
        if let Some(w) = &self.worker {
            groups.push(("worker", vec![w.pid()]));
        }
        groups
    }

    /// Awaits `work` while checking every 100 ms that no service has died.
    async fn watch<T>(&mut self, work: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                () = tokio::time::sleep(Duration::from_millis(100)) => self.check()?,
            }
        }
    }

    async fn stop_worker(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.worker.take() {
            let usage = w.stop().await?;
            self.worker_peak = self.worker_peak.max(Some(usage.peak_rss));
        }
        Ok(())
    }

    /// Stops everything; the peak memory of the gateway and of the worker.
    async fn stop(mut self) -> anyhow::Result<(Option<u64>, Option<u64>)> {
        self.stop_worker().await?;
        let gateway = match self.gateway.take() {
            Some(g) => Some(g.stop().await?.peak_rss),
            None => None,
        };
        Ok((gateway, self.worker_peak))
    }
}

/// What a phase of a scenario cost: CPU seconds of groups of processes and of the
/// whole machine, and Redis commands. What the machine used beyond the groups is
/// `other`: on a shared machine, other work that competed with the run.
struct Meter {
    started: Instant,
    machine: f64,
    groups: Vec<(&'static str, Vec<u32>, f64)>,
    redis: redis::aio::MultiplexedConnection,
    commands: Option<BTreeMap<String, u64>>,
}

impl Meter {
    async fn start(
        groups: Vec<(&'static str, Vec<u32>)>,
        mut redis: redis::aio::MultiplexedConnection,
    ) -> Self {
        let groups = groups
            .into_iter()
            .map(|(name, pids)| {
                let used = total_cpu(&pids);
                (name, pids, used)
            })
            .collect();
        let commands = redis_commands(&mut redis).await;
        Self {
            started: Instant::now(),
            machine: machine_cpu_seconds().unwrap_or_default(),
            groups,
            redis,
            commands,
        }
    }

    async fn finish(mut self, result: &mut ScenarioResult) {
        if let (Some(before), Some(after)) = (&self.commands, redis_commands(&mut self.redis).await)
        {
            let mut delta: Vec<(String, u64)> = after
                .into_iter()
                .map(|(name, calls)| {
                    let earlier = before.get(&name).copied().unwrap_or_default();
                    (name, calls.saturating_sub(earlier))
                })
                .filter(|(name, calls)| *calls > 0 && name != "info")
                .collect();
            delta.sort_by_key(|(_, calls)| std::cmp::Reverse(*calls));
            result.redis_commands = Some(delta.iter().map(|(_, n)| n).sum());
            let top: serde_json::Map<String, serde_json::Value> = delta
                .into_iter()
                .take(10)
                .map(|(name, calls)| (name, calls.into()))
                .collect();
            result.detail("redisCommandsByName", top);
        }
        result.cpu_span_seconds = self.started.elapsed().as_secs_f64();
        let mut used: BTreeMap<&'static str, f64> = self
            .groups
            .into_iter()
            .map(|(name, pids, before)| (name, (total_cpu(&pids) - before).max(0.0)))
            .collect();
        if let Some(machine) = machine_cpu_seconds() {
            let ours: f64 = used.values().sum();
            used.insert("other", (machine - self.machine - ours).max(0.0));
        }
        result.cpu_seconds = used;
    }
}

/// Calls per command so far, from Redis's `INFO commandstats` (server-wide: on a
/// shared Redis other clients' commands count too).
async fn redis_commands(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Option<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .ok()?;
    Some(
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect(),
    )
}

/// CPU seconds the whole machine has been busy (all cores), from `/proc/stat`.
fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy as f64 / TICKS_PER_SECOND)
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p)).sum()
}

/// RabbitMQ and Redis processes on this machine (empty groups are left out).
pub fn infra_processes() -> Vec<(&'static str, Vec<u32>)> {
    [("rabbitmq", "beam.smp"), ("redis", "redis-server")]
        .into_iter()
        .map(|(name, comm)| (name, pids_named(comm)))
        .filter(|(_, pids)| !pids.is_empty())
        .collect()
}

/// Latency percentiles of the events sent in each `slice` from `start` on.
fn latency_slices(
    arrivals: &[crate::receiver::Arrival],
    start: u64,
    slice: Duration,
) -> Vec<serde_json::Value> {
    let width = nanos(slice).max(1);
    let mut slices: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for a in arrivals {
        let sent = a.at.saturating_sub(a.latency);
        slices
            .entry(sent.saturating_sub(start) / width)
            .or_default()
            .push(a.latency);
    }
    slices
        .into_iter()
        .filter_map(|(i, mut lat)| {
            let l = Latency::of(&mut lat)?;
            Some(json!({
                "fromSecond": (i * width) as f64 / 1e9,
                "events": l.samples,
                "p50Ms": l.p50_ms,
                "p99Ms": l.p99_ms,
            }))
        })
        .collect()
}

/// For each delivered event of a paced run, arrival minus the moment its 202 reached
/// the load generator (zero when the delivery came first), and how many came first.
fn accepted_to_received(
    trips: &[crate::load::Trip],
    arrivals: &[crate::receiver::Arrival],
) -> (Vec<u64>, u64) {
    let answered: BTreeMap<u64, u64> = trips.iter().map(|t| (t.seq, t.answered)).collect();
    let mut early = 0;
    let latencies = arrivals
        .iter()
        .filter_map(|a| {
            let answered = *answered.get(&a.seq)?;
            if a.at < answered {
                early += 1;
            }
            Some(a.at.saturating_sub(answered))
        })
        .collect();
    (latencies, early)
}

/// Fails if nothing at all was accepted.
fn require_accepted(sent: &Sent) -> anyhow::Result<()> {
    if sent.accepted == 0 {
        bail!(
            "the gateway accepted no event; first error: {}",
            sent.first_error.as_deref().unwrap_or("none recorded")
        );
    }
    Ok(())
}

fn note_errors(result: &mut ScenarioResult, sent: &Sent) {
    if let Some(summary) = sent.error_summary() {
        result.notes.push(summary);
        result.detail("eventsRejected", sent.rejected);
        if let Some(first) = &sent.first_error {
            result.detail("firstIngestError", first.clone());
        }
    }
}

/// A bad signature or a body that is not a bench envelope ends the run: the
/// figures could not be trusted.
fn check_receiver(receiver: &Receiver) -> anyhow::Result<()> {
    let c = receiver.counts();
    if c.bad_signatures > 0 || c.malformed > 0 {
        bail!(
            "the receiver got {} bad signature(s) and {} malformed request(s); first: {}",
            c.bad_signatures,
            c.malformed,
            receiver.first_problem().unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits until `expected` distinct deliveries have arrived: true when they did,
/// false when `deadline` passed or deliveries stalled for [`STALL`].
async fn wait_for(
    deploy: &mut Deployment,
    receiver: &Receiver,
    expected: u64,
    deadline: Duration,
) -> anyhow::Result<bool> {
    let until = Instant::now() + deadline;
    let mut progress = (0, Instant::now());
    loop {
        deploy.check()?;
        check_receiver(receiver)?;
        let unique = receiver.counts().unique;
        if unique >= expected {
            return Ok(true);
        }
        let now = Instant::now();
        if unique != progress.0 {
            progress = (unique, now);
        }
        if now > until || now - progress.1 > STALL {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
