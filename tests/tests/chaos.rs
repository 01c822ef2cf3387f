//! Chaos: the real binaries as child processes, with their own RabbitMQ node or
//! Redis where the test breaks those, under a fixed event rate. Every event
//! answered 202 must be delivered (at least once, duplicates with the same
//! webhook-id); every refused one got a 503. Each test prints what it saw.
//!
//! The tests of this binary run one at a time: they load the machine on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use courier_tests::chaos::TestBroker;
use courier_tests::{
    prospect_created, wait_until, Api, Behaviour, ChildService, Deps, TenantHandle, TestEnv,
    TestReceiver, TestRedis,
};
use serde_json::{json, Value};

static ONE_AT_A_TIME: LazyLock<tokio::sync::Mutex<()>> =
    LazyLock::new(|| tokio::sync::Mutex::new(()));

/// What a run saw.
#[derive(Debug, Default)]
struct Counts {
    accepted: HashSet<String>,
    refused: usize,
    other_answers: Vec<u16>,
}

/// Sends `total` events at `per_second` (a request every 100 ms), recording which
/// were accepted; `during` runs alongside from the start.
async fn stream(
    api: &Api,
    tenant: &TenantHandle,
    prefix: &str,
    total: usize,
    per_second: usize,
) -> Counts {
    let per_tick = (per_second / 10).max(1);
    let mut counts = Counts::default();
    let start = Instant::now();
    for tick in 0..total.div_ceil(per_tick) {
        let ids: Vec<String> = (tick * per_tick..((tick + 1) * per_tick).min(total))
            .map(|i| format!("{prefix}{i}"))
            .collect();
        let events: Vec<Value> = ids.iter().map(|id| prospect_created(id)).collect();
        let resp = api
            .http
            .post(format!("{}/v1/events", api.base))
            .bearer_auth(&tenant.key)
            .json(&json!({ "events": events }))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                match status {
                    202 => counts.accepted.extend(ids),
                    503 => {
                        let partial: Vec<String> = body["error"]["details"]["acceptedEventIds"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|v| v.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        counts.refused += ids.len() - partial.len();
                        counts.accepted.extend(partial);
                    }
                    other => counts.other_answers.push(other),
                }
            }
            // The gateway is alive throughout: a transport error is a failure.
            Err(e) => panic!("the gateway did not answer: {e}"),
        }
        let next = Duration::from_millis(100 * (tick as u64 + 1));
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    counts
}

/// Waits until every accepted event arrived, then prints and checks the counts.
async fn settle(name: &str, counts: &Counts, receiver: &TestReceiver, deadline: Duration) {
    assert!(
        counts.other_answers.is_empty(),
        "answers other than 202 and 503: {:?}",
        counts.other_answers
    );
    let arrived = || -> HashMap<String, HashSet<String>> {
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        for r in receiver.received() {
            let webhook_id = r.header("webhook-id").unwrap_or_default().to_owned();
            for e in r.json()["events"].as_array().cloned().unwrap_or_default() {
                seen.entry(e["eventId"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .insert(webhook_id.clone());
            }
        }
        seen
    };
    let _ = tokio::time::timeout(deadline, async {
        loop {
            let seen = arrived();
            if counts.accepted.iter().all(|id| seen.contains_key(id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let seen = arrived();
    let received = receiver.received();
    let deliveries: usize = received
        .iter()
        .map(|r| r.json()["events"].as_array().map_or(0, Vec::len))
        .sum();
    let delivered = counts
        .accepted
        .iter()
        .filter(|id| seen.contains_key(*id))
        .count();
    let lost = counts.accepted.len() - delivered;
    let duplicates = deliveries - seen.len();
    println!(
        "{name}: accepted {}, delivered {delivered}, duplicates {duplicates}, refused {}, lost {lost}",
        counts.accepted.len(),
        counts.refused
    );
    assert_eq!(lost, 0, "every accepted event is delivered");
    assert!(
        seen.values().all(|ids| ids.len() == 1),
        "duplicates carry the webhook-id of the first delivery"
    );
}

async fn tenant_with_webhook(api: &Api, receiver: &TestReceiver, extra: Value) -> TenantHandle {
    let tenant = api.tenant("acme").await;
    let mut body =
        json!({"name": "crm", "url": receiver.url("/h"), "events": ["*"], "timeoutMs": 1000});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    api.webhook(&tenant, body).await;
    tenant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_loses_no_accepted_event() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("chaos-broker").await;
    let broker = TestBroker::start().await;
    let deps = Deps {
        amqp_url: broker.url(),
        ..Deps::shared(&env.prefix)
    };
    let gateway = ChildService::gateway(&deps, &[("COURIER_PUBLISH_TIMEOUT", "3s")]).await;
    let worker = ChildService::worker(&deps, &[]);
    let receiver = TestReceiver::start().await;
    let api = gateway.api();
    let tenant = tenant_with_webhook(&api, &receiver, json!({})).await;

    let (counts, ()) = tokio::join!(stream(&api, &tenant, "b", 4000, 200), async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        tokio::task::block_in_place(|| broker.stop());
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.start_again().await;
    });
    assert!(counts.refused > 0, "the outage was seen as 503s");
    settle(
        "broker restart",
        &counts,
        &receiver,
        Duration::from_secs(90),
    )
    .await;
    // Both services recovered by themselves.
    gateway.wait_ready("/readyz").await;
    worker.wait_ready("/readyz").await;

    worker.kill().await;
    gateway.kill().await;
    drop(broker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sigkilled_three_times_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("chaos-kill").await;
    let deps = Deps::shared(&env.prefix);
    let gateway = ChildService::gateway(&deps, &[]).await;
    let receiver = TestReceiver::start().await;
    let api = gateway.api();
    let tenant = tenant_with_webhook(&api, &receiver, json!({})).await;

    let mut worker = Some(ChildService::worker(&deps, &[]));
    let (counts, kills) = tokio::join!(stream(&api, &tenant, "k", 3000, 250), async {
        let mut kills = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if let Some(w) = worker.take() {
                w.kill().await;
                kills += 1;
            }
            worker = Some(ChildService::worker(&deps, &[]));
        }
        kills
    });
    assert_eq!(kills, 3);
    settle(
        "worker SIGKILL x3",
        &counts,
        &receiver,
        Duration::from_secs(90),
    )
    .await;

    if let Some(w) = worker {
        w.kill().await;
    }
    gateway.kill().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_with_aof_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("chaos-redis").await;
    let mut redis = TestRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let deps = Deps {
        redis_url: redis.url(),
        ..Deps::shared(&env.prefix)
    };
    let gateway = ChildService::gateway(&deps, &[]).await;
    let worker = ChildService::worker(&deps, &[]);
    let receiver = TestReceiver::start().await;
    let api = gateway.api();
    // Batched, so that events wait in Redis while it restarts.
    let tenant = tenant_with_webhook(&api, &receiver, json!({"throttling": 5})).await;

    let (counts, ()) = tokio::join!(stream(&api, &tenant, "r", 3000, 250), async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        redis.restart(Duration::from_secs(3)).await;
    });
    assert!(counts.refused > 0, "the outage was seen as 503s");
    settle("Redis restart", &counts, &receiver, Duration::from_secs(90)).await;
    worker.wait_ready("/readyz").await;

    worker.kill().await;
    gateway.kill().await;
    // The shared-Redis clean-up of the harness does not reach this Redis; it goes
    // with the process.
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_mid_run_exits_zero_within_the_grace_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("chaos-term").await;
    let deps = Deps::shared(&env.prefix);
    let gateway = ChildService::gateway(&deps, &[]).await;
    let receiver = TestReceiver::start().await;
    // A slow receiver keeps deliveries in flight when the signal comes.
    receiver.set(Behaviour::Stall(Duration::from_millis(200)));
    let api = gateway.api();
    let tenant = tenant_with_webhook(&api, &receiver, json!({})).await;
    let settings = [
        ("COURIER_SHUTDOWN_GRACE", "5s"),
        ("COURIER_DELIVERY_CONCURRENCY", "32"),
    ];
    let worker = ChildService::worker(&deps, &settings);

    let (counts, (status, took)) = tokio::join!(stream(&api, &tenant, "t", 2000, 200), async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        worker.terminate().await
    });
    println!("SIGTERM: exit {status} after {took:?}");
    assert!(status.success(), "exit code 0");
    assert!(
        took < Duration::from_secs(5) + Duration::from_secs(3),
        "within the grace period"
    );
    let replacement = ChildService::worker(&deps, &settings);
    settle("SIGTERM", &counts, &receiver, Duration::from_secs(90)).await;
    let received: usize = receiver
        .received()
        .iter()
        .map(|r| r.json()["events"].as_array().map_or(0, Vec::len))
        .sum();
    let duplicates = received - counts.accepted.len();
    assert!(
        duplicates <= 32,
        "duplicates only from what was in flight: {duplicates}"
    );

    replacement.kill().await;
    gateway.kill().await;
    env.cleanup().await;
}

/// Offers `tenant` events at a fixed rate (`per_tick` every 100 ms for `ticks`) and
/// returns how many arrived at `receiver` per second, from the first send to the
/// last arrival.
async fn offered(
    api: &Api,
    tenant: &TenantHandle,
    receiver: Option<&TestReceiver>,
    prefix: &str,
    per_tick: usize,
    ticks: usize,
) -> f64 {
    let before = receiver.map_or(0, TestReceiver::count);
    let start = Instant::now();
    for tick in 0..ticks {
        let events: Vec<Value> = (0..per_tick)
            .map(|i| prospect_created(&format!("{prefix}{tick}-{i}")))
            .collect();
        assert_eq!(api.send(tenant, &json!({ "events": events })).await.0, 202);
        let next = Duration::from_millis(100 * (tick as u64 + 1));
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let Some(receiver) = receiver else { return 0.0 };
    let n = per_tick * ticks;
    wait_until(
        "the offered events to arrive",
        Duration::from_secs(60),
        || async { (receiver.count() >= before + n).then_some(()) },
    )
    .await;
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_and_a_stalling_endpoint_do_not_starve_a_healthy_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("chaos-isolation").await;
    let deps = Deps::shared(&env.prefix);
    let gateway = ChildService::gateway(&deps, &[]).await;
    let worker = ChildService::worker(
        &deps,
        &[
            ("COURIER_DELIVERY_CONCURRENCY", "32"),
            ("COURIER_WEBHOOK_CONCURRENCY", "8"),
        ],
    );
    let api = gateway.api();
    let healthy_receiver = TestReceiver::start().await;
    let stalling_receiver = TestReceiver::start().await;
    stalling_receiver.set(Behaviour::Stall(Duration::from_secs(30)));
    let healthy = api.tenant("healthy").await;
    api.webhook(
        &healthy,
        json!({"name": "ok", "url": healthy_receiver.url("/h"), "events": ["*"]}),
    )
    .await;
    let refusing = api.tenant("refusing").await;
    // Nothing listens on port 9 of the loopback: connections are refused.
    api.webhook(
        &refusing,
        json!({"name": "down", "url": "http://127.0.0.1:9/h", "events": ["*"]}),
    )
    .await;
    let stalling = api.tenant("stalling").await;
    api.webhook(
        &stalling,
        json!({"name": "slow", "url": stalling_receiver.url("/h"), "events": ["*"], "timeoutMs": 1000}),
    )
    .await;

    // The healthy endpoint is offered 60 events/s for 10 s, alone, then beside the
    // refusing and the stalling one, which take 80 % of the traffic (120/s each).
    let rate_alone = offered(&api, &healthy, Some(&healthy_receiver), "a", 6, 100).await;
    let ((), (), rate_beside) = tokio::join!(
        async {
            offered(&api, &refusing, None, "x", 12, 100).await;
        },
        async {
            offered(&api, &stalling, None, "y", 12, 100).await;
        },
        offered(&api, &healthy, Some(&healthy_receiver), "b", 6, 100)
    );
    println!(
        "isolation: healthy alone {rate_alone:.1}/s, beside the bad endpoints {rate_beside:.1}/s, ratio {:.2}",
        rate_beside / rate_alone
    );
    assert!(
        rate_beside >= rate_alone / 2.0,
        "the healthy endpoint's rate falls by at most half"
    );

    worker.kill().await;
    gateway.kill().await;
    env.cleanup().await;
}
