//! Slow endpoints do not stall the rest: with the product's concurrency settings,
//! twenty webhooks whose endpoint stalls beside a healthy webhook of another tenant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_tests::{prospect_created, wait_until, Api, Behaviour, TestEnv, TestReceiver};
use courier_worker::inflight::INITIAL_LIMIT;
use serde_json::json;

/// Webhooks whose endpoint answers after 30 s, their timeout.
const STALLING: usize = 20;
/// How long both tenants send events: shorter than the stall, so that no stalled
/// attempt ends (and frees its slot) during the run.
const RUN: Duration = Duration::from_secs(20);
/// Events per second to the tenant of the stalling webhooks (each goes to all 20).
const STALLING_PER_SECOND: u64 = 2;
/// Events per second to the healthy webhook.
const HEALTHY_PER_SECOND: u64 = 5;

/// Sends `per_second` events to `tenant` for [`RUN`], at a steady pace; returns when
/// each was sent (before its request), by event id.
async fn steady(
    api: &Api,
    tenant: &courier_tests::TenantHandle,
    prefix: &str,
    per_second: u64,
) -> HashMap<String, Instant> {
    let mut sent = HashMap::new();
    let start = Instant::now();
    let every = Duration::from_millis(1000 / per_second);
    for i in 0.. {
        let due = every * i;
        if due >= RUN {
            break;
        }
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let id = format!("{prefix}{i}");
        sent.insert(id.clone(), Instant::now());
        let (status, body) = api.send(tenant, &prospect_created(&id)).await;
        assert_eq!(status, 202, "{body}");
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stalling_webhooks_do_not_delay_a_healthy_one_nor_churn_the_broker() {
    let env = TestEnv::new("stalling").await;
    let mut gateway_config = env.gateway_config();
    gateway_config.max_webhooks_per_tenant = STALLING;
    let mut worker_config = env.worker_config();
    // The product's defaults (tests otherwise run smaller workers).
    worker_config.delivery_concurrency = 256;
    worker_config.webhook_concurrency = 16;
    worker_config.prefetch = 256;
    // The stalled attempts are abandoned at the end.
    worker_config.shutdown_grace = Duration::from_secs(1);
    let gateway = env.start_gateway(gateway_config).await;
    let worker = env.start_worker(worker_config).await;
    let api = Api::new(&gateway);

    let stalling_receiver = TestReceiver::start().await;
    stalling_receiver.set(Behaviour::Stall(Duration::from_secs(30)));
    let healthy_receiver = TestReceiver::start().await;
    let stalling = api.tenant("stalling").await;
    for i in 0..STALLING {
        api.webhook(
            &stalling,
            json!({"name": format!("slow {i}"), "url": stalling_receiver.url(&format!("/s{i}")),
                   "events": ["*"], "timeoutMs": 30000}),
        )
        .await;
    }
    let healthy = api.tenant("healthy").await;
    api.webhook(
        &healthy,
        json!({"name": "ok", "url": healthy_receiver.url("/h"), "events": ["*"]}),
    )
    .await;

    let started = Instant::now();
    let (stalled_events, healthy_events) = tokio::join!(
        steady(&api, &stalling, "slow-", STALLING_PER_SECOND),
        steady(&api, &healthy, "ok-", HEALTHY_PER_SECOND),
    );
    // Read at the end of the run, before any stalled attempt can time out.
    let stalled_posts = stalling_receiver.count();
    let saturated = worker
        .metric("courier_jobs_deferred_total{reason=\"saturated\"}")
        .await;
    wait_until(
        "every healthy event to arrive",
        Duration::from_secs(40),
        || async { (healthy_receiver.count() >= healthy_events.len()).then_some(()) },
    )
    .await;

    // Gateway accept (bounded by the moment before the request) -> receiver.
    let mut latencies: Vec<Duration> = healthy_receiver
        .received()
        .iter()
        .filter_map(|r| {
            let id = r.json()["events"][0]["eventId"].as_str()?.to_owned();
            Some(r.at.duration_since(*healthy_events.get(&id)?))
        })
        .collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).max(1) - 1];
    let (p50, p99, max) = (p(0.5), p(0.99), latencies[latencies.len() - 1]);
    let jobs = (stalled_events.len() * STALLING) as u64;
    let not_due = worker
        .metric("courier_jobs_deferred_total{reason=\"not_due\"}")
        .await;
    println!(
        "healthy: {} events, p50 {p50:?}, p99 {p99:?}, max {max:?}; stalling: {} events, {jobs} jobs, \
         {stalled_posts} POSTs in flight, deferrals {saturated} (saturated) {not_due} (not due) \
         in {:?}",
        latencies.len(),
        stalled_events.len(),
        started.elapsed()
    );
    assert_eq!(latencies.len(), healthy_events.len());
    assert!(p99 < Duration::from_secs(2), "healthy p99 {p99:?}");
    // Each stalling webhook never answered, so it never held more than a new
    // webhook's cap of this worker's slots.
    assert!(
        stalled_posts <= STALLING * INITIAL_LIMIT,
        "{stalled_posts} POSTs to the stalling endpoints"
    );
    // Every other job of theirs was deferred, each time into a longer rung (1 s,
    // 5 s, 30 s): a job deferred for the first time at t defers again at t + 1 s
    // and t + 6 s, and not before t + 36 s after that, past the run (20 s). So at
    // most three deferrals per job, where going around the 1 s rung would make one
    // a second, about ten per job over this run.
    assert!(
        saturated > 0,
        "the backlog of the stalling webhooks is deferred"
    );
    assert!(
        saturated <= 3 * jobs,
        "{saturated} deferrals of {jobs} jobs of saturated webhooks"
    );
    assert_eq!(not_due, 0, "nothing waits on a retry");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    stalling_receiver.stop();
    healthy_receiver.stop();
    env.cleanup().await;
}
