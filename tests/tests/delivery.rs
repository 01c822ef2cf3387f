//! End to end: events sent over HTTP reach subscribers signed, once, and only where
//! subscribed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_core::signing::{verify, Secret};
use courier_tests::{prospect_created, schemas, wait_until, Api, TestEnv, TestReceiver};
use serde_json::json;

#[tokio::test]
async fn delivered_envelope_matches_the_schema_and_its_signature_verifies() {
    let env = TestEnv::new("signed").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let webhook = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"],
                   "headers": {"X-Api-Key": "abc"}}),
        )
        .await;

    let (status, body) = api.send(&tenant, &prospect_created("evt_signed_1")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["eventIds"], json!(["evt_signed_1"]));

    let got = wait_until("the delivery", Duration::from_secs(20), || async {
        receiver.received().into_iter().next()
    })
    .await;
    let envelope = got.json();
    schemas::assert_valid("batch-envelope.schema.json", &envelope);
    assert_eq!(envelope["eventCount"], 1);
    assert_eq!(envelope["isBatch"], false);
    assert_eq!(envelope["events"][0]["eventId"], "evt_signed_1");
    assert_eq!(envelope["events"][0]["data"]["email"], "jane@example.com");

    // The batch id is the deterministic one of design §7, in both id headers.
    let wh_id = WebhookId::parse(webhook["id"].as_str().unwrap()).unwrap();
    let expected =
        BatchId::for_single(&wh_id, &EventId::parse("evt_signed_1").unwrap()).to_string();
    assert_eq!(envelope["batchId"], expected.as_str());
    assert_eq!(got.header("webhook-id"), Some(expected.as_str()));
    assert_eq!(got.header("x-courier-delivery-id"), Some(expected.as_str()));
    assert_eq!(got.header("x-courier-attempt"), Some("1"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-api-key"), Some("abc"));
    assert!(got.header("user-agent").unwrap().starts_with("Courier/"));

    let secret = Secret::parse(webhook["secret"].as_str().unwrap()).unwrap();
    let ts = got.header("webhook-timestamp").unwrap();
    let now = chrono::Utc::now().timestamp();
    verify(
        &secret,
        &expected,
        ts,
        got.header("webhook-signature").unwrap(),
        &got.body,
        now,
    )
    .expect("the signature verifies with the webhook's secret");
    let other = Secret::generate();
    assert!(verify(
        &other,
        &expected,
        ts,
        got.header("webhook-signature").unwrap(),
        &got.body,
        now
    )
    .is_err());

    // The log records the delivery with its attempt.
    worker.wait_idle(1).await;
    let record = env
        .store
        .delivery(&BatchId::parse(&expected).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status.as_str(), "delivered");
    assert_eq!(record.event_ids, ["evt_signed_1"]);
    assert_eq!(record.attempts.len(), 1);
    assert_eq!(record.attempts[0].status_code, Some(200));

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn events_reach_only_active_webhooks_subscribed_to_their_key() {
    let env = TestEnv::new("routing").await;
    let mut gw_config = env.gateway_config();
    gw_config.max_webhooks_per_tenant = 10;
    let gateway = env.start_gateway(gw_config).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let other_tenant = api.tenant("globex").await;
    for (name, events) in [
        ("prospects-a", json!(["Prospect.*"])),
        ("prospects-b", json!(["*.EntityCreated"])),
        ("accounts", json!(["Account.*"])),
    ] {
        api.webhook(
            &tenant,
            json!({"name": name, "url": receiver.url(&format!("/{name}")), "events": events}),
        )
        .await;
    }
    api.webhook(
        &tenant,
        json!({"name": "off", "url": receiver.url("/off"), "events": ["*"], "active": false}),
    )
    .await;
    api.webhook(
        &other_tenant,
        json!({"name": "foreign", "url": receiver.url("/foreign"), "events": ["*"]}),
    )
    .await;

    let (status, body) = api
        .send(
            &tenant,
            &json!({"events": [
                prospect_created("evt_p1"),
                {"id": "evt_l1", "objectType": "Lead", "eventType": "EntityDeleted", "data": {"objectId": "lead_1"}}
            ]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    worker.wait_idle(2).await;

    let ids = |path: &str| -> Vec<String> {
        receiver
            .received_on(path)
            .iter()
            .map(|r| {
                r.json()["events"][0]["eventId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        ids("/prospects-a"),
        ["evt_p1"],
        "both webhooks on the key get the event"
    );
    assert_eq!(
        ids("/prospects-b"),
        ["evt_p1"],
        "both webhooks on the key get the event"
    );
    assert!(
        ids("/accounts").is_empty(),
        "an unsubscribed key is not delivered"
    );
    assert!(ids("/off").is_empty(), "an inactive webhook gets nothing");
    assert!(
        ids("/foreign").is_empty(),
        "another tenant's webhook gets nothing"
    );
    assert_eq!(receiver.count(), 2);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_event_id_sent_twice_is_delivered_once() {
    let env = TestEnv::new("dedupe").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    api.webhook(
        &tenant,
        json!({"name": "crm", "url": receiver.url("/hook"), "events": ["*"]}),
    )
    .await;

    assert_eq!(
        api.send(&tenant, &prospect_created("evt_twice")).await.0,
        202
    );
    wait_until("the first delivery", Duration::from_secs(20), || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    assert_eq!(
        api.send(&tenant, &prospect_created("evt_twice")).await.0,
        202
    );
    worker.wait_idle(2).await;

    assert_eq!(
        receiver.count(),
        1,
        "the second copy was not delivered again"
    );
    assert_eq!(
        worker
            .metric("courier_deliveries_total{outcome=\"duplicate\"}")
            .await,
        1
    );

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_logged_failed_not_dropped() {
    let mut env = TestEnv::new("failing").await;
    let (gateway_config, worker_config) = env.short_retries();
    let gateway = env.start_gateway(gateway_config).await;
    let worker = env.start_worker(worker_config).await;
    let receiver = TestReceiver::start().await;
    receiver.set(courier_tests::Behaviour::Status(500));
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let webhook = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["*"],
                   "retryPolicy": {"maxAttempts": 2}}),
        )
        .await;
    assert_eq!(
        api.send(&tenant, &prospect_created("evt_fail")).await.0,
        202
    );
    worker.wait_idle(1).await;

    let wh_id = WebhookId::parse(webhook["id"].as_str().unwrap()).unwrap();
    let batch = BatchId::for_single(&wh_id, &EventId::parse("evt_fail").unwrap());
    let record = env.store.delivery(&batch).await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "failed");
    assert_eq!(record.attempts.len(), 2, "retried once, then failed");
    assert_eq!(record.attempts[1].status_code, Some(500));

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
