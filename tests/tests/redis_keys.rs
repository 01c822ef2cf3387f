//! Redis holds hot, bounded state only: once deliveries have ended, every key left
//! either expires or is one of the kinds bounded by something other than history
//! (configuration records, capped streams).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use courier_core::delivery::DeliveryStatus;
use courier_core::ids::WebhookId;
use courier_tests::{prospect_created, wait_until, Api, Behaviour, TestEnv, TestReceiver};
use serde_json::json;

/// The kind of a key that may stay without expiry, by its name under
/// `{prefix}courier:`: what `courier_store::Keys` documents as configuration or
/// capped.
fn lasting_kind(name: &str) -> Option<&'static str> {
    let parts: Vec<&str> = name.split(':').collect();
    match parts.as_slice() {
        ["tenants"] => Some("the tenant index"),
        ["tenant", _] => Some("a tenant record"),
        ["tenant", _, "webhooks"] => Some("a tenant's webhooks"),
        ["tenant", _, "keys"] => Some("a tenant's API keys"),
        ["apikey", _] => Some("an API key record"),
        ["webhook", _] => Some("a webhook record"),
        ["audit"] | ["audit", _] => Some("an audit stream (capped)"),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_deliveries_end_every_key_expires_or_is_configuration() {
    let mut env = TestEnv::new("keys").await;
    let (gateway_config, mut worker_config) = env.short_retries();
    worker_config.flush_timeout = Duration::from_millis(500);
    let gateway = env.start_gateway(gateway_config).await;
    let worker = env.start_worker(worker_config).await;
    let batched_receiver = TestReceiver::start().await;
    let single_receiver = TestReceiver::start().await;
    // The first POST of the unbatched webhook fails and is retried.
    single_receiver.script([Behaviour::Status(503)]);
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let mut webhooks = Vec::new();
    for (receiver, throttling) in [(&batched_receiver, 3), (&single_receiver, 0)] {
        let created = api
            .webhook(
                &acme,
                json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "throttling": throttling}),
            )
            .await;
        webhooks.push(WebhookId::parse(created["id"].as_str().unwrap()).unwrap());
    }

    // 4 events: a batch of 3 (size), a batch of 1 (flush timeout), 4 single
    // deliveries of which one retried.
    let events: Vec<_> = (0..4).map(|i| prospect_created(&format!("k{i}"))).collect();
    assert_eq!(api.send(&acme, &json!({ "events": events })).await.0, 202);
    let ended = wait_until("every delivery to end", Duration::from_secs(30), || async {
        let mut records = Vec::new();
        for wh in &webhooks {
            let page = env
                .store
                .deliveries_page(wh, None, None, 100)
                .await
                .unwrap();
            records.extend(page.items);
        }
        let delivered = records
            .iter()
            .filter(|r| r.status == DeliveryStatus::Delivered)
            .count();
        (delivered == 2 + 4).then_some(records)
    })
    .await;
    assert!(
        ended.iter().any(|r| r.attempts == 2),
        "one delivery was retried"
    );
    assert_eq!(single_receiver.count(), 5);
    worker.wait_idle(4).await;

    let mut redis = redis::Client::open(courier_tests::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let base = format!("{}courier:", env.prefix);
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{}*", env.prefix))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut redis)
            .await
            .unwrap();
        keys.extend(found);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut kinds = HashSet::new();
    let mut unbounded = Vec::new();
    for key in &keys {
        let name = key.strip_prefix(&base).unwrap_or(key);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let kind = name.split(':').next().unwrap_or(name).to_owned();
        kinds.insert(kind);
        if pttl > 0 {
            continue;
        }
        match lasting_kind(name) {
            Some(_) => {}
            None => unbounded.push(name.to_owned()),
        }
    }
    println!("{} keys of kinds {kinds:?}", keys.len());
    assert!(
        unbounded.is_empty(),
        "keys without expiry that nothing bounds: {unbounded:?}"
    );
    // What the run made is all there: the scan saw the log, claims and markers.
    for kind in ["log", "claim", "placed", "webhook", "tenant"] {
        assert!(kinds.contains(kind), "no {kind} key: {kinds:?}");
    }
    for w in [
        "batch",
        "batch-meta",
        "batch-seq",
        "batch-pending",
        "batch-due",
        "batch-cut",
    ] {
        assert!(!kinds.contains(w), "{w} is left once nothing waits");
    }

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
