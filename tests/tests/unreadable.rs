//! A webhook whose stored record can never be read (a secret sealed under a key no
//! longer in the keyring, a field value written by a newer version) is a permanent
//! problem of that webhook alone: its work ends `failed` with the reason, every
//! other webhook gets its events, and nothing loops on the broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::audit::{Actor, AuditEntry};
use courier_core::ids::{BatchId, EventId, TenantId, WebhookId};
use courier_core::keyring::Keyring;
use courier_tests::{
    prospect_created, wait_until, Api, Behaviour, Service, TenantHandle, TestEnv, TestReceiver,
    REDIS_URL,
};
use serde_json::{json, Value};

/// How the broken webhook's record is made unreadable.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// Written by a store whose keyring holds only a key the worker does not have.
    RetiredKey,
    /// A `signatureScheme` this version does not know, as a newer one could write.
    NewerVersion,
}

struct Setup {
    env: TestEnv,
    gateway: Service,
    worker: Service,
    api: Api,
    receiver: TestReceiver,
    acme: TenantHandle,
    globex: TenantHandle,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let mut env = TestEnv::new(name).await;
        let (gateway_config, mut worker_config) = env.short_retries();
        // An event of the batched webhook waits in its batch until the record is
        // broken, then is flushed.
        worker_config.flush_timeout = Duration::from_secs(3);
        let gateway = env.start_gateway(gateway_config).await;
        let worker = env.start_worker(worker_config).await;
        let api = Api::new(&gateway);
        let receiver = TestReceiver::start().await;
        let acme = api.tenant("acme").await;
        let globex = api.tenant("globex").await;
        Self {
            env,
            gateway,
            worker,
            api,
            receiver,
            acme,
            globex,
        }
    }

    async fn webhook(&self, tenant: &TenantHandle, path: &str, extra: Value) -> WebhookId {
        let mut body = json!({"name": path, "url": self.receiver.url(path), "events": ["*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let created = self.api.webhook(tenant, body).await;
        WebhookId::parse(created["id"].as_str().unwrap()).unwrap()
    }

    /// Makes the stored record of `webhook` unreadable for the worker, and announces
    /// the change as the gateway would.
    async fn break_record(&self, webhook: &WebhookId, tenant: &str, how: Breakage) {
        match how {
            Breakage::RetiredKey => {
                let current = self
                    .env
                    .store
                    .webhook_versioned(webhook)
                    .await
                    .unwrap()
                    .unwrap();
                let retired = Keyring::parse(&Keyring::generate_entry("retired")).unwrap();
                let elsewhere = self.env.store.clone().with_keyring(retired);
                let audit = AuditEntry {
                    actor: Actor::Operator,
                    action: "webhook.updated".into(),
                    resource_type: "webhook".into(),
                    resource_id: webhook.to_string(),
                    tenant_id: TenantId::parse(tenant).unwrap(),
                    before: None,
                    after: None,
                };
                let applied = elsewhere
                    .swap_webhook(&current, Some(&current.webhook), &audit)
                    .await
                    .unwrap();
                assert!(applied);
            }
            Breakage::NewerVersion => {
                let mut conn = redis::Client::open(REDIS_URL)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let key = self.env.store.keys().webhook(webhook);
                let raw: String = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let mut record: Value = serde_json::from_str(&raw).unwrap();
                record["signatureScheme"] = json!("ed25519");
                redis::cmd("SET")
                    .arg(&key)
                    .arg(record.to_string())
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
                redis::cmd("PUBLISH")
                    .arg(self.env.store.keys().config_channel())
                    .arg(tenant)
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }

    async fn stop(self) {
        self.worker.stop().await.unwrap();
        self.gateway.stop().await.unwrap();
        self.receiver.stop();
        self.env.cleanup().await;
    }
}

async fn unreadable_record_fails_its_own_work_only(how: Breakage, broken_extra: Value) {
    let s = Setup::new(&format!("unreadable-{how:?}").to_lowercase()).await;
    let healthy = s.webhook(&s.acme, "/healthy", json!({})).await;
    let mut extra = json!({"retryPolicy": {"maxAttempts": 2, "schedule": ["0s", "20s"]}});
    for (k, v) in broken_extra.as_object().unwrap() {
        extra[k] = v.clone();
    }
    let broken = s.webhook(&s.acme, "/broken", extra).await;
    let neighbour = s.webhook(&s.globex, "/neighbour", json!({})).await;

    // Work of the broken webhook already under way: a retry waiting in the ladder
    // (unbatched), or an event waiting in its batch (batched).
    let batched = broken_extra["throttling"].as_i64().unwrap_or(0) >= 2;
    if !batched {
        // The first attempts of the healthy and the broken webhook.
        s.receiver
            .script([Behaviour::Status(503), Behaviour::Status(503)]);
    }
    let (status, _) = s.api.send(&s.acme, &prospect_created("evt_before")).await;
    assert_eq!(status, 202);
    if batched {
        s.worker.wait_idle(1).await;
    } else {
        let before = BatchId::for_single(&broken, &EventId::parse("evt_before").unwrap());
        s.env
            .wait_status(&before, "retrying", Duration::from_secs(10))
            .await;
    }

    s.break_record(&broken, "acme", how).await;
    let events: Vec<String> = (0..5).map(|i| format!("evt_after_{i}")).collect();
    for id in &events {
        for tenant in [&s.acme, &s.globex] {
            let (status, body) = s.api.send(tenant, &prospect_created(id)).await;
            assert_eq!(status, 202, "{body}");
        }
    }

    // The healthy webhooks get theirs promptly.
    wait_until(
        "the healthy webhooks' deliveries",
        Duration::from_secs(10),
        || async {
            let got = |path: &str| s.receiver.received_on(path).len();
            (got("/healthy") > events.len() && got("/neighbour") >= events.len()).then_some(())
        },
    )
    .await;
    for (webhook, id) in events
        .iter()
        .flat_map(|id| [(&healthy, id), (&neighbour, id)])
    {
        let batch = BatchId::for_single(webhook, &EventId::parse(id).unwrap());
        s.env
            .wait_status(&batch, "delivered", Duration::from_secs(10))
            .await;
    }

    // The broken webhook's: failed with the reason, nothing sent.
    let words = match how {
        Breakage::RetiredKey => "key retired, which is not in the keyring",
        Breakage::NewerVersion => "ed25519",
    };
    for id in &events {
        let batch = BatchId::for_single(&broken, &EventId::parse(id).unwrap());
        let record = s
            .env
            .wait_status(&batch, "failed", Duration::from_secs(10))
            .await;
        let reason = record.reason.unwrap_or_default();
        assert!(
            reason.contains("stored record cannot be read") && reason.contains(words),
            "{reason}"
        );
        assert!(record.attempts.is_empty(), "no POST");
    }
    // The work under way ends failed the same way, not waiting for its due time.
    let failed_earlier = wait_until(
        "the broken webhook's earlier work to end failed",
        Duration::from_secs(10),
        || async {
            let (_, dead) = s.api.get("/v1/dead-letters?limit=100", &s.acme.key).await;
            dead["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| {
                    d["webhookId"] == broken.to_string()
                        && d["eventIds"]
                            .as_array()
                            .is_some_and(|ids| ids.contains(&json!("evt_before")))
                })
                .cloned()
        },
    )
    .await;
    let earlier = BatchId::parse(failed_earlier["batchId"].as_str().unwrap()).unwrap();
    let record = s.env.store.delivery(&earlier).await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "failed");
    assert!(record.reason.unwrap_or_default().contains(words));
    assert!(
        s.receiver.received_on("/broken").len() <= 1,
        "only the attempt before"
    );

    // Every event was fanned out and acked: nothing waits, nothing loops.
    let sent = 1 + 2 * events.len() as u64;
    s.worker.wait_idle(sent).await;
    let events_queue = s.env.topology.events_queue();
    assert_eq!(s.env.queue_depth(&events_queue).await, 0);
    let metric = |sample: &'static str| s.worker.metric(sample);
    assert_eq!(
        metric("courier_events_consumed_total{result=\"fanned_out\"}").await,
        sent
    );
    assert_eq!(
        metric("courier_events_consumed_total{result=\"paused\"}").await,
        0
    );
    assert_eq!(
        metric("courier_deliveries_total{outcome=\"paused\"}").await,
        0
    );
    assert_eq!(
        metric("courier_unreadable_webhook_deliveries_total{result=\"failed\"}").await,
        events.len() as u64 + 1
    );
    assert_eq!(
        metric("courier_dead_letters_total{reason=\"unreadable_webhook\"}").await,
        events.len() as u64 + 1
    );

    // The tenant's listing still answers, and says which webhook it leaves out.
    let (status, listed) = s.api.get("/v1/webhooks", &s.acme.key).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["data"][0]["id"], healthy.to_string());
    assert_eq!(listed["unreadable"], json!([broken.to_string()]));
    let (status, listed) = s.api.get("/v1/webhooks", &s.globex.key).await;
    assert_eq!(status, 200);
    assert!(listed.get("unreadable").is_none(), "{listed}");

    // The broken webhook reads as a conflict that says what to do (not an outage),
    // is another tenant's 404, and can be deleted, audited.
    let path = format!("/v1/webhooks/{broken}");
    let (status, body) = s.api.get(&path, &s.acme.key).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["details"]["unreadable"], true, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can only be deleted"),
        "{body}"
    );
    let (status, body) = s.api.delete(&path, &s.globex.key).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.api.delete(&path, &s.acme.key).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = s.api.get(&path, &s.acme.key).await;
    assert_eq!(status, 404);
    let (_, listed) = s.api.get("/v1/webhooks", &s.acme.key).await;
    assert!(listed.get("unreadable").is_none(), "{listed}");
    let (_, audit) = s.api.get("/v1/audit-log", &s.acme.key).await;
    let deleted = &audit["data"][0];
    assert_eq!(deleted["action"], "webhook.deleted", "{audit}");
    assert_eq!(deleted["resourceId"], broken.to_string());
    s.stop().await;
}

#[tokio::test]
async fn a_webhook_sealed_under_a_retired_key_fails_its_own_work_only() {
    unreadable_record_fails_its_own_work_only(Breakage::RetiredKey, json!({})).await;
}

#[tokio::test]
async fn a_batched_webhook_written_by_a_newer_version_fails_its_own_work_only() {
    unreadable_record_fails_its_own_work_only(Breakage::NewerVersion, json!({"throttling": 3}))
        .await;
}

/// Redis state a delivery needs may itself be unreadable (a key of the wrong type,
/// left by an operator's mistake or a bug): that is permanent too. An unbatched
/// delivery whose log record cannot be read is parked in `courier.dead` with the
/// reason, a batched one whose waiting list cannot be read ends `failed` for that
/// webhook alone, and the event still reaches every other webhook and is acked.
#[tokio::test]
async fn unreadable_redis_state_parks_or_fails_that_delivery_alone() {
    let s = Setup::new("unreadable-state").await;
    let healthy = s.webhook(&s.acme, "/healthy", json!({})).await;
    let single = s.webhook(&s.acme, "/single", json!({})).await;
    let batched = s
        .webhook(&s.acme, "/batched", json!({"throttling": 3}))
        .await;
    let event = EventId::parse("evt_wrong_type").unwrap();
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = s.env.store.keys();
    for key in [
        keys.log(&BatchId::for_single(&single, &event)),
        keys.batch_waiting(&batched),
    ] {
        redis::cmd("SET")
            .arg(&key)
            .arg("not what it should be")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }

    let (status, body) = s.api.send(&s.acme, &prospect_created(event.as_str())).await;
    assert_eq!(status, 202, "{body}");

    // The healthy webhook gets it; the event is fanned out once, never paused.
    wait_until("the healthy delivery", Duration::from_secs(10), || async {
        (!s.receiver.received_on("/healthy").is_empty()).then_some(())
    })
    .await;
    s.env
        .wait_status(
            &BatchId::for_single(&healthy, &event),
            "delivered",
            Duration::from_secs(10),
        )
        .await;
    // The batched webhook's share ends failed, with the reason.
    let record = s
        .env
        .wait_status(
            &BatchId::for_single(&batched, &event),
            "failed",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        record
            .reason
            .unwrap_or_default()
            .contains("waiting batch cannot be read"),
        "the reason is in the log"
    );
    // The unbatched one is parked in the dead-letter queue, its reason attached.
    let dead = s.env.topology.dead_queue();
    wait_until(
        "the parked delivery job",
        Duration::from_secs(10),
        || async { (s.env.queue_depth(&dead).await == 1).then_some(()) },
    )
    .await;
    let (status, listed) = s
        .api
        .get("/v1/admin/dead-letter-queue", courier_tests::ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{listed}");
    let parked = &listed["data"][0];
    assert!(
        parked["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("stored state cannot be read"),
        "{parked}"
    );
    assert!(s.receiver.received_on("/single").is_empty());
    assert!(s.receiver.received_on("/batched").is_empty());

    s.worker.wait_idle(1).await;
    let events_queue = s.env.topology.events_queue();
    assert_eq!(s.env.queue_depth(&events_queue).await, 0);
    let deliveries = s.env.topology.deliveries();
    wait_until(
        "the delivery queue to drain",
        Duration::from_secs(10),
        || async { (s.env.queue_depth(&deliveries).await == 0).then_some(()) },
    )
    .await;
    let metric = |sample: &'static str| s.worker.metric(sample);
    assert_eq!(
        metric("courier_events_consumed_total{result=\"paused\"}").await,
        0
    );
    assert_eq!(
        metric("courier_dead_letters_total{reason=\"unreadable_state\"}").await,
        1
    );
    assert_eq!(
        metric("courier_dead_letters_total{reason=\"unreadable\"}").await,
        1
    );
    s.stop().await;
}
