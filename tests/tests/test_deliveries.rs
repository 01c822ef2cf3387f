//! `POST /v1/webhooks/{id}/test`: a test delivery goes to the webhook under test
//! only, as a delivery like any other (signed, logged, retried), and it counts
//! toward the tenant's ingest rate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_tests::{prospect_created, wait_until, Api, Behaviour, TestEnv, TestReceiver};
use serde_json::{json, Value};

fn event_ids(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["eventId"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_test_delivery_reaches_only_the_webhook_under_test() {
    let mut env = TestEnv::new("test-only").await;
    let (gateway_config, worker_config) = env.short_retries();
    let gateway = env.start_gateway(gateway_config).await;
    let worker = env.start_worker(worker_config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    // Two webhooks subscribed to the same key, and a third to every key.
    let mut ids = Vec::new();
    for (name, path, events) in [
        ("tested", "/tested", json!(["Prospect.*"])),
        ("sibling", "/sibling", json!(["Prospect.EntityCreated"])),
        ("everything", "/everything", json!(["*"])),
    ] {
        let created = api
            .webhook(
                &acme,
                json!({"name": name, "url": receiver.url(path), "events": events}),
            )
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let tested = &ids[0];

    // The first attempt fails: the test delivery is retried like any delivery.
    receiver.script([Behaviour::Status(503)]);
    let (status, sent) = api
        .post(
            &format!("/v1/webhooks/{tested}/test"),
            &acme.key,
            &json!({"eventType": "Prospect.EntityCreated"}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let test_event = sent["eventId"].as_str().unwrap().to_owned();
    let batch = BatchId::for_single(
        &WebhookId::parse(tested).unwrap(),
        &EventId::parse(&test_event).unwrap(),
    );
    let record = env
        .wait_status(&batch, "delivered", Duration::from_secs(20))
        .await;

    // A later event reaches every subscribed webhook; by the time the others have
    // it, they would have had the test event, which went out before it.
    let (status, _) = api.send(&acme, &prospect_created("marker")).await;
    assert_eq!(status, 202);
    wait_until(
        "the marker at the other webhooks",
        Duration::from_secs(20),
        || async {
            ["/sibling", "/everything"]
                .iter()
                .all(|path| {
                    receiver
                        .received_on(path)
                        .iter()
                        .any(|r| event_ids(&r.json()) == ["marker"])
                })
                .then_some(())
        },
    )
    .await;
    for path in ["/sibling", "/everything"] {
        let seen: Vec<Vec<String>> = receiver
            .received_on(path)
            .iter()
            .map(|r| event_ids(&r.json()))
            .collect();
        assert_eq!(seen, [["marker"]], "{path} got only the marker");
    }

    // The webhook under test got it as a delivery like any other: signed, with
    // the batch id of a single event's delivery, retried after a failure, logged.
    assert_eq!(sent["batchId"], batch.to_string());
    assert_eq!(record.webhook_id.as_str(), tested);
    assert_eq!(record.attempts.len(), 2, "one failure, then delivered");
    let got: Vec<_> = receiver
        .received_on("/tested")
        .into_iter()
        .filter(|r| event_ids(&r.json()) == [test_event.clone()])
        .collect();
    assert_eq!(got.len(), 2);
    for request in &got {
        assert_eq!(
            request.header("webhook-id"),
            Some(batch.to_string().as_str())
        );
        assert!(request
            .header("webhook-signature")
            .is_some_and(|s| s.starts_with("v1,")));
    }

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_test_delivery_counts_toward_the_tenants_ingest_rate() {
    let env = TestEnv::new("test-rate").await;
    let mut config = env.gateway_config();
    // One event an hour: the first request takes the only token.
    config.tenant_rate_limit = Some(courier_gateway::limits::RateLimit::parse("1/h").unwrap());
    let gateway = env.start_gateway(config).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let created = api
        .webhook(
            &acme,
            json!({"name": "x", "url": "http://127.0.0.1:9/h", "events": ["Prospect.*"]}),
        )
        .await;
    let test = format!("/v1/webhooks/{}/test", created["id"].as_str().unwrap());

    let (status, body) = api.post(&test, &acme.key, &json!({})).await;
    assert_eq!(status, 202, "{body}");
    // The test took the token: neither ingest nor another test passes now.
    let (status, body) = api.send(&acme, &prospect_created("after-test")).await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (429, json!("rate_limited"))
    );
    let resp = api
        .http
        .post(format!("{}{test}", api.base))
        .bearer_auth(&acme.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limited");
    assert_eq!(body["error"]["details"]["retryAfterSeconds"], retry_after);
    // Only the first test was sent: one job, no event.
    assert_eq!(env.queue_depth(&env.topology.deliveries()).await, 1);
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 0);

    gateway.stop().await.unwrap();
    env.cleanup().await;
}
