//! Deleting a tenant leaves nothing of it behind: its keys stop working and its
//! webhooks stop receiving at once, everything else is purged in the background
//! (the id cannot be used meanwhile), and a new tenant with the same id sees none
//! of the old data. Deleting webhooks keeps the record of the deletions bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::ids::{BatchId, EventId, TenantId, WebhookId};
use courier_core::tenant::hash_api_key;
use courier_gateway::limits::RateLimit;
use courier_tests::security::redis_entries;
use courier_tests::{
    prospect_created, wait_until, Api, Behaviour, TestEnv, TestReceiver, ADMIN_TOKEN,
};
use serde_json::{json, Value};

/// The ids of a webhook's logged batches.
async fn batch_ids(api: &Api, key: &str, webhook: &str) -> Vec<String> {
    let (status, body) = api
        .get(&format!("/v1/webhooks/{webhook}/deliveries?limit=100"), key)
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["batchId"].as_str().unwrap().to_owned())
        .collect()
}

/// The keys under the prefix that name, or hold, any of `needles`.
async fn keys_holding(prefix: &str, needles: &[String]) -> Vec<String> {
    redis_entries(prefix)
        .await
        .into_iter()
        .filter_map(|(key, value)| {
            let hit = needles
                .iter()
                .find(|n| key.contains(n.as_str()) || value.contains(n.as_str()))?;
            Some(format!("{key} (holds {hit})"))
        })
        .collect()
}

#[tokio::test]
async fn a_deleted_tenant_is_purged_and_a_new_tenant_with_its_id_sees_none_of_its_data() {
    let mut env = TestEnv::new("purge").await;
    let (mut gateway_config, worker_config) = env.short_retries();
    // Longer than the delivery under way at the deletion takes to end.
    gateway_config.tenant_purge_settle = Duration::from_secs(5);
    gateway_config.tenant_rate_limit = Some(RateLimit::parse("1000/s").unwrap());
    gateway_config.max_webhooks_per_tenant = 4;
    let gateway = env.start_gateway(gateway_config).await;
    let worker = env.start_worker(worker_config).await;
    let (ok, refusing, slow) = (
        TestReceiver::start().await,
        TestReceiver::start().await,
        TestReceiver::start().await,
    );
    refusing.set(Behaviour::Status(400));
    slow.set(Behaviour::Stall(Duration::from_millis(2500)));
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let (status, issued) = api
        .post("/v1/tenants/acme/keys", ADMIN_TOKEN, &json!({}))
        .await;
    assert_eq!(status, 201, "{issued}");
    let keys = [acme.key.clone(), issued["key"].as_str().unwrap().to_owned()];
    let mut webhooks = Vec::new();
    for (name, url, extra) in [
        ("delivered", ok.url("/hook"), json!({})),
        ("refused", refusing.url("/hook"), json!({})),
        ("batched", ok.url("/batched"), json!({"throttling": 3})),
    ] {
        let mut body = json!({"name": name, "url": url, "events": ["Prospect.*"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let created = api.webhook(&acme, body).await;
        webhooks.push(created["id"].as_str().unwrap().to_owned());
    }
    // Five events: each delivered to the first webhook and refused (a dead letter)
    // by the second; the third sends a batch of three and keeps two waiting.
    let events: Vec<Value> = (1..=5)
        .map(|i| prospect_created(&format!("evt_old_{i}")))
        .collect();
    let (status, body) = api.send(&acme, &json!({ "events": events })).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the deliveries", Duration::from_secs(20), || async {
        let (_, dead) = api.get("/v1/dead-letters?limit=100", &acme.key).await;
        let dead = dead["data"].as_array().map_or(0, Vec::len);
        (ok.count() == 6 && dead == 5).then_some(())
    })
    .await;
    // A delivery still under way when the tenant is deleted.
    let in_flight = api
        .webhook(
            &acme,
            json!({"name": "slow", "url": slow.url("/hook"), "events": ["Lead.*"]}),
        )
        .await;
    webhooks.push(in_flight["id"].as_str().unwrap().to_owned());
    let lead = json!({"id": "evt_old_lead", "objectType": "Lead", "eventType": "EntityCreated", "data": {}});
    assert_eq!(api.send(&acme, &json!({ "events": [lead] })).await.0, 202);
    wait_until(
        "the slow delivery to start",
        Duration::from_secs(10),
        || async { (slow.count() == 1).then_some(()) },
    )
    .await;

    // Everything that names the tenant, its webhooks, its batches or its keys.
    let mut needles: Vec<String> = vec!["acme".into()];
    needles.extend(webhooks.iter().cloned());
    for w in &webhooks[..3] {
        needles.extend(batch_ids(&api, &acme.key, w).await);
    }
    let in_flight_batch = BatchId::for_single(
        &WebhookId::parse(&webhooks[3]).unwrap(),
        &EventId::parse("evt_old_lead").unwrap(),
    );
    needles.push(in_flight_batch.to_string());
    needles.extend(keys.iter().map(|k| hash_api_key(k)));
    let before = keys_holding(&env.prefix, &needles).await;
    for kind in [
        "tenant:acme",
        "audit:acme",
        "ratelimit:acme",
        "dead:acme",
        "log:",
        "log-index:",
        "apikey:",
    ] {
        assert!(
            before.iter().any(|k| k.contains(kind)),
            "the tenant has {kind} data before: {before:#?}"
        );
    }
    assert!(
        before
            .iter()
            .any(|k| k.contains(&format!("batch:{}", webhooks[2]))),
        "events wait in a batch: {before:#?}"
    );

    let (deleted, body) = api.delete("/v1/tenants/acme", ADMIN_TOKEN).await;
    // Until the purge is done, the id is taken.
    let (status, again) = api
        .post("/v1/tenants", ADMIN_TOKEN, &json!({"id": "acme"}))
        .await;
    assert_eq!(
        status, 409,
        "re-created while its data is being purged: {again}"
    );
    assert_eq!(again["error"]["type"], "conflict");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("purged"),
        "{again}"
    );
    assert_eq!(
        (deleted, body),
        (202, json!({"id": "acme", "status": "purging"}))
    );
    for key in &keys {
        assert_eq!(
            api.get("/v1/webhooks", key).await.0,
            401,
            "the keys stop at once"
        );
    }
    assert_eq!(
        api.delete("/v1/tenants/acme", ADMIN_TOKEN).await.0,
        202,
        "deleting again while it is purged"
    );

    let tenant = TenantId::parse("acme").unwrap();
    wait_until("the purge to end", Duration::from_secs(30), || async {
        (!env.store.purging(&tenant).await.unwrap()).then_some(())
    })
    .await;
    let left = keys_holding(&env.prefix, &needles).await;
    // The operators' audit log keeps the deletion's own entry, nothing else of it.
    let (left_audit, left): (Vec<_>, Vec<_>) = left
        .into_iter()
        .partition(|k| k.starts_with(&format!("{}courier:audit ", env.prefix)));
    assert_eq!(left_audit.len(), 1, "{left_audit:#?}");
    // What may be left are markers that refused an event placed twice in a batch
    // of a webhook gone for good (no webhook gets its id again), for the events a
    // worker cut and dropped itself: they expire within the dedupe window.
    let (markers, left): (Vec<_>, Vec<_>) = left.into_iter().partition(|k| k.contains(":placed:"));
    assert!(left.is_empty(), "left behind: {left:#?}");
    let client = redis::Client::open(courier_tests::REDIS_URL).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for marker in markers {
        let key = marker.split(' ').next().unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            (-2..=24 * 3600).contains(&ttl) && ttl != -1,
            "{key}: TTL {ttl}"
        );
    }
    let (_, audit) = api.get("/v1/audit-log?limit=100", ADMIN_TOKEN).await;
    let of_acme: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tenantId"] == "acme")
        .collect();
    assert_eq!(of_acme.len(), 1, "{of_acme:#?}");
    assert_eq!(of_acme[0]["action"], "tenant.deleted");

    // A new tenant with the same id starts empty.
    let acme = api.tenant("acme").await;
    for path in ["/v1/webhooks", "/v1/dead-letters"] {
        let (status, body) = api.get(path, &acme.key).await;
        assert_eq!((status, &body["data"]), (200, &json!([])), "{path}: {body}");
    }
    let (_, audit) = api.get("/v1/audit-log?limit=100", &acme.key).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["apiKey.issued", "tenant.created"], "{audit}");
    for w in &webhooks {
        let (status, _) = api
            .get(&format!("/v1/webhooks/{w}/deliveries"), &acme.key)
            .await;
        assert_eq!(status, 404);
    }
    let old_batches: Vec<&String> = needles
        .iter()
        .filter(|n| uuid::Uuid::parse_str(n).is_ok())
        .collect();
    assert!(old_batches.len() >= 12, "{old_batches:?}");
    for b in old_batches {
        assert_eq!(
            api.get(&format!("/v1/deliveries/{b}"), &acme.key).await.0,
            404
        );
    }
    assert_eq!(
        ok.count(),
        6,
        "nothing more was delivered for the old tenant"
    );

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    for r in [ok, refusing, slow] {
        r.stop();
    }
    env.cleanup().await;
}

#[tokio::test]
async fn deleted_webhooks_are_remembered_for_a_day_only() {
    let env = TestEnv::new("purge-deleted").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let tenant = TenantId::parse("acme").unwrap();
    let key = env.store.keys().deleted_webhooks(&tenant);
    let client = redis::Client::open(courier_tests::REDIS_URL).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    // One deleted two days ago, as a deletion then would have left it.
    let now_ms = chrono::Utc::now().timestamp_millis();
    redis::cmd("ZADD")
        .arg(&key)
        .arg(now_ms - 2 * 24 * 3600 * 1000)
        .arg("wh_deleted_long_ago")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    for i in 0..2 {
        let created = api
            .webhook(
                &acme,
                json!({"name": format!("w{i}"), "url": "http://127.0.0.1:9/hook", "events": ["*"]}),
            )
            .await;
        let id = created["id"].as_str().unwrap();
        let (status, _) = api.delete(&format!("/v1/webhooks/{id}"), &acme.key).await;
        assert_eq!(status, 204);
    }
    let remembered: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(remembered.len(), 2, "{remembered:?}");
    assert!(!remembered.contains(&"wh_deleted_long_ago".to_owned()));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=24 * 3600).contains(&ttl), "{ttl}");
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
