//! Batching end to end: throttling N groups events into batches of N, flushed at the
//! size limit or after the flush timeout, across several workers, through worker
//! crashes, and through configuration changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use courier_core::delivery::DeliveryStatus;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_tests::{
    prospect_created, schemas, wait_until, Api, ChildWorker, Received, TestEnv, TestReceiver,
};
use serde_json::{json, Value};

/// Event ids of every envelope received, in order, with the envelope's webhook-id.
fn received_events(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .flat_map(|r| {
            let id = r.header("webhook-id").unwrap_or_default().to_owned();
            r.json()["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |e| {
                    (
                        e["eventId"].as_str().unwrap_or_default().to_owned(),
                        id.clone(),
                    )
                })
        })
        .collect()
}

fn events(prefix: &str, range: std::ops::Range<usize>) -> Value {
    let list: Vec<Value> = range
        .map(|i| prospect_created(&format!("{prefix}{i}")))
        .collect();
    json!({ "events": list })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_deliver_1000_events_as_exactly_100_batches_of_10() {
    let env = TestEnv::new("batch1000").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut config = env.worker_config();
    // Long enough that only the size limit sends.
    config.flush_timeout = Duration::from_secs(60);
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.start_worker(config.clone()).await);
    }
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    api.webhook(
        &acme,
        json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "throttling": 10}),
    )
    .await;

    for chunk in 0..10 {
        let (status, body) = api
            .send(&acme, &events("e", chunk * 100..(chunk + 1) * 100))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_until("1000 events to arrive", Duration::from_secs(30), || async {
        (received_events(&receiver.received()).len() >= 1000).then_some(())
    })
    .await;

    let received = receiver.received();
    assert_eq!(received.len(), 100, "exactly 100 batches");
    for r in &received {
        let envelope = r.json();
        assert_eq!(
            (envelope["eventCount"].clone(), envelope["isBatch"].clone()),
            (json!(10), json!(true))
        );
        assert_eq!(envelope["events"].as_array().unwrap().len(), 10);
    }
    schemas::assert_valid("batch-envelope.schema.json", &received[0].json());
    let all = received_events(&received);
    let unique: HashSet<&String> = all.iter().map(|(e, _)| e).collect();
    assert_eq!(
        (all.len(), unique.len()),
        (1000, 1000),
        "every event exactly once"
    );
    let batch_ids: HashSet<&str> = received
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(batch_ids.len(), 100);

    for w in workers {
        w.stop().await.unwrap();
    }
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn batch_flushes_after_timeout_with_fewer_events() {
    let env = TestEnv::new("batchtimeout").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut config = env.worker_config();
    config.flush_timeout = Duration::from_secs(1);
    let worker = env.start_worker(config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    api.webhook(
        &acme,
        json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "throttling": 10}),
    )
    .await;

    let sent = Instant::now();
    assert_eq!(api.send(&acme, &events("t", 0..25)).await.0, 202);
    wait_until("three batches", Duration::from_secs(10), || async {
        (receiver.count() >= 3).then_some(())
    })
    .await;

    let received = receiver.received();
    let sizes: Vec<u64> = received
        .iter()
        .map(|r| r.json()["eventCount"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [10, 10, 5]);
    let last = &received[2];
    assert_eq!(last.json()["isBatch"], true);
    let waited = last.at.duration_since(sent);
    println!("the batch of 5 arrived {waited:?} after its first event was sent");
    assert!(
        waited >= Duration::from_millis(950),
        "not before the flush timeout: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(3),
        "soon after the flush timeout: {waited:?}"
    );
    // Events keep their accumulation order within each batch, and none is lost.
    let ids: Vec<String> = received_events(&received)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn lowering_throttling_flushes_full_batches_and_disabling_cancels_what_waits() {
    let env = TestEnv::new("batchconfig").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut config = env.worker_config();
    config.flush_timeout = Duration::from_secs(60);
    let worker = env.start_worker(config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "throttling": 10}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();

    assert_eq!(api.send(&acme, &events("c", 0..7)).await.0, 202);
    worker.wait_idle(7).await;
    assert_eq!(receiver.count(), 0, "7 of 10 wait");

    let (status, _) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"throttling": 3}),
        )
        .await;
    assert_eq!(status, 200);
    wait_until("the full batches of 3", Duration::from_secs(2), || async {
        (receiver.count() == 2).then_some(())
    })
    .await;
    let sizes: Vec<u64> = receiver
        .received()
        .iter()
        .map(|r| r.json()["eventCount"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [3, 3]);

    let (status, _) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(status, 200);
    // The third batch, cut from what still waited when the webhook was disabled.
    let webhook = WebhookId::parse(id).unwrap();
    let status = wait_until(
        "the waiting event to end",
        Duration::from_secs(5),
        || async {
            let page = env
                .store
                .deliveries_page(&webhook, Some(DeliveryStatus::Cancelled), None, 10)
                .await
                .unwrap();
            let last = page.items.first()?;
            env.store.delivery(&last.batch_id).await.unwrap()
        },
    )
    .await;
    assert_eq!(status.status.as_str(), "cancelled");
    // The one event of the 7 that was in neither batch of 3.
    let sent: HashSet<String> = (0..7).map(|i| format!("c{i}")).collect();
    let delivered: HashSet<String> = received_events(&receiver.received())
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let waiting: Vec<&String> = sent.difference(&delivered).collect();
    assert_eq!(status.event_ids.iter().collect::<Vec<_>>(), waiting);
    assert_eq!(receiver.count(), 2, "nothing more was sent");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_no_batched_event() {
    let env = TestEnv::new("batchcrash").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    api.webhook(
        &acme,
        json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "throttling": 7, "timeoutMs": 1000}),
    )
    .await;
    let settings = [
        ("COURIER_FLUSH_TIMEOUT", "500ms"),
        ("COURIER_BATCH_LEASE", "1s"),
    ];
    let mut worker = ChildWorker::start(&env.prefix, &settings);

    // 3,000 events at 300/s (30 every 100 ms); the worker is SIGKILLed every ~2.5 s
    // and restarted at once.
    const TOTAL: usize = 3000;
    let start = Instant::now();
    let mut kills = 0;
    let mut accepted = 0;
    for tick in 0..(TOTAL / 30) {
        let (status, body) = api
            .send(&acme, &events("k", tick * 30..(tick + 1) * 30))
            .await;
        assert_eq!(status, 202, "{body}");
        accepted += 30;
        if tick % 25 == 24 {
            worker.kill().await;
            kills += 1;
            worker = ChildWorker::start(&env.prefix, &settings);
        }
        let next = Duration::from_millis(100 * (tick as u64 + 1));
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }

    wait_until(
        "every accepted event to arrive",
        Duration::from_secs(90),
        || async {
            let got: HashSet<String> = received_events(&receiver.received())
                .into_iter()
                .map(|(e, _)| e)
                .collect();
            (got.len() >= TOTAL).then_some(())
        },
    )
    .await;

    let all = received_events(&receiver.received());
    let mut first_id: HashMap<&str, &str> = HashMap::new();
    let mut duplicates = 0;
    for (event, batch) in &all {
        match first_id.get(event.as_str()) {
            None => {
                first_id.insert(event, batch);
            }
            Some(first) => {
                duplicates += 1;
                assert_eq!(
                    first, batch,
                    "a duplicate of {event} carries the webhook-id of its first delivery"
                );
            }
        }
    }
    let lost = (0..TOTAL)
        .filter(|i| !first_id.contains_key(format!("k{i}").as_str()))
        .count();
    println!(
        "kills: {kills}, accepted: {accepted}, delivered: {}, duplicates: {duplicates}, lost: {lost}",
        first_id.len()
    );
    assert_eq!(lost, 0);
    assert!(kills >= 3);

    worker.kill().await;
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_ends_failed_and_other_webhooks_batches_still_flush() {
    let env = TestEnv::new("batchcorrupt").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut config = env.worker_config();
    config.flush_timeout = Duration::from_secs(2);
    config.batch_lease = Duration::from_secs(1);
    let worker = env.start_worker(config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let other = api.tenant("other").await;
    let broken = api
        .webhook(
            &acme,
            json!({"name": "broken", "url": receiver.url("/broken"), "events": ["*"], "throttling": 5}),
        )
        .await;
    let healthy = api
        .webhook(
            &other,
            json!({"name": "healthy", "url": receiver.url("/healthy"), "events": ["*"], "throttling": 5}),
        )
        .await;
    let broken = WebhookId::parse(broken["id"].as_str().unwrap()).unwrap();
    let healthy = WebhookId::parse(healthy["id"].as_str().unwrap()).unwrap();
    let keys = env.store.keys();
    let mut redis = redis::Client::open(courier_tests::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Two events of the healthy webhook wait for the flush timeout.
    assert_eq!(api.send(&other, &events("h", 0..2)).await.0, 202);
    let due: f64 = wait_until("the healthy batch to wait", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let key = keys.batch_due();
        let member = healthy.to_string();
        async move {
            redis::cmd("ZSCORE")
                .arg(key)
                .arg(member)
                .query_async::<Option<f64>>(&mut redis)
                .await
                .unwrap()
        }
    })
    .await;

    // Written raw beside it: an element that is no event, due at the same moment
    // (so that the same flush cuts both), and a pending batch whose events cannot
    // be read, its lease already over.
    let pending_id = BatchId::generate();
    let member = format!("{broken}:{}", pending_id.simple());
    let cut_ms = chrono::Utc::now().timestamp_millis();
    redis::pipe()
        .cmd("RPUSH")
        .arg(keys.batch_waiting(&broken))
        .arg("garbage\n|{not an event")
        .cmd("HSET")
        .arg(keys.batch_meta(&broken))
        .arg(&["tenant", "acme", "generation", "0", "n", "5"][..])
        .cmd("SADD")
        .arg(keys.batch_tenant(&TenantId::parse("acme").unwrap()))
        .arg(broken.as_str())
        .cmd("ZADD")
        .arg(keys.batch_due())
        .arg(due)
        .arg(broken.as_str())
        .cmd("HSET")
        .arg(keys.batch_pending(&member))
        .arg("tenant")
        .arg("acme")
        .arg("generation")
        .arg("0")
        .arg("cut")
        .arg(cut_ms)
        .arg("id")
        .arg(pending_id.simple())
        .arg("events")
        .arg("19:1|{\"eventId\":\"x\"}|")
        .cmd("ZADD")
        .arg(keys.batch_cut())
        .arg(0)
        .arg(&member)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    // The healthy webhook's batch goes out at its deadline.
    wait_until(
        "the healthy webhook's batch",
        Duration::from_secs(15),
        || async { (received_events(&receiver.received_on("/healthy")).len() == 2).then_some(()) },
    )
    .await;

    // Both broken batches end failed with the reason, among acme's dead letters.
    let pending = env
        .wait_status(&pending_id, "failed", Duration::from_secs(15))
        .await;
    assert!(
        pending
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("cannot be read"),
        "{:?}",
        pending.reason
    );
    let dead = wait_until("two dead letters", Duration::from_secs(15), || async {
        let page = env
            .store
            .dead_letters_page(&TenantId::parse("acme").unwrap(), None, None, 10)
            .await
            .unwrap();
        (page.items.len() == 2).then_some(page.items)
    })
    .await;
    for d in &dead {
        assert_eq!(d.delivery.webhook_id, broken);
        let record = env
            .store
            .delivery(&d.delivery.batch_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status.as_str(), "failed");
        assert!(record
            .reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("the stored batch cannot be read: "));
    }
    assert_eq!(
        worker
            .metric("courier_dead_letters_total{reason=\"unreadable\"}")
            .await,
        2
    );
    // Nothing of them is left to come back.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}courier:batch*", env.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(receiver.received_on("/broken").is_empty());

    // The broken webhook's next events are batched as usual.
    assert_eq!(api.send(&acme, &events("b", 0..5)).await.0, 202);
    wait_until(
        "the broken webhook's next batch",
        Duration::from_secs(10),
        || async { (received_events(&receiver.received_on("/broken")).len() == 5).then_some(()) },
    )
    .await;

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
