//! Ingest: bad input gets a clear 4xx JSON error and publishes nothing; a broker that
//! refuses the publish gets a 503 and nothing is delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_broker::lapin::options::QueueDeclareOptions;
use courier_broker::lapin::types::AMQPValue;
use courier_tests::{prospect_created, Api, TestEnv, TestReceiver, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Asserts the documented error body and its type.
fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["type"], want_type, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["details"].is_object(), "{body}");
}

#[tokio::test]
async fn bad_requests_get_4xx_json_errors_and_publish_nothing() {
    let env = TestEnv::new("badinput").await;
    let mut config = env.gateway_config();
    config.max_body_bytes = 4096;
    let gateway = env.start_gateway(config).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let url = format!("{}/v1/events", api.base);

    // 401: no key, a wrong key, the operator token.
    let resp = api
        .http
        .post(&url)
        .json(&prospect_created("e1"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 401, "unauthorized");
    let (status, body) = api
        .post("/v1/events", "ck_wrong", &prospect_created("e1"))
        .await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = api
        .post("/v1/events", ADMIN_TOKEN, &prospect_created("e1"))
        .await;
    assert_error(status, &body, 401, "unauthorized");

    // 400: malformed JSON.
    let resp = api
        .http
        .post(&url)
        .bearer_auth(&tenant.key)
        .header("content-type", "application/json")
        .body("{\"objectType\": ")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 400, "bad_request");

    // 413: a body over COURIER_MAX_BODY_BYTES.
    let big = json!({"objectType": "Prospect", "eventType": "EntityCreated", "data": {"blob": "x".repeat(5000)}});
    let (status, body) = api.send(&tenant, &big).await;
    assert_error(status, &body, 413, "payload_too_large");

    // 422: each with the offending field named.
    let cases = [
        (
            json!({"objectType": "Prospect", "eventType": "EntityExploded", "data": {}}),
            "eventType",
        ),
        (
            json!({"id": "has space", "objectType": "Prospect", "eventType": "EntityCreated", "data": {}}),
            "id",
        ),
        (
            json!({"objectType": "Prospect", "eventType": "EntityCreated", "data": [1, 2]}),
            "data",
        ),
        (
            json!({"objectType": "Prospect", "eventType": "EntityCreated"}),
            "body",
        ),
        (
            json!({"objectType": "Prospect", "eventType": "EntityCreated", "data": {}, "extra": 1}),
            "body",
        ),
        (
            json!({"tenantId": "globex", "objectType": "Prospect", "eventType": "EntityCreated", "data": {}}),
            "tenantId",
        ),
        (json!({"events": []}), "events"),
        (
            json!({"events": [prospect_created("dup"), prospect_created("dup")]}),
            "events[1].id",
        ),
        (
            json!({"events": [prospect_created("ok1"), {"objectType": "Nope", "eventType": "X", "data": {}}]}),
            "events[1].eventType",
        ),
        (json!([1, 2]), "body"),
    ];
    for (event, field) in cases {
        let (status, body) = api.send(&tenant, &event).await;
        assert_error(status, &body, 422, "unprocessable");
        assert!(
            body["error"]["details"].get(field).is_some(),
            "{field} not named in {body}"
        );
    }
    // An unknown key lists the valid ones.
    let (_, body) = api
        .send(
            &tenant,
            &json!({"objectType": "Prospect", "eventType": "EntityExploded", "data": {}}),
        )
        .await;
    let valid = body["error"]["details"]["validEventTypes"]
        .as_array()
        .unwrap();
    assert_eq!(valid.len(), 27);
    assert!(valid.contains(&json!("Prospect.EntityCreated")));

    // 1001 events.
    let many: Vec<Value> = (0..1001)
        .map(|i| prospect_created(&format!("m{i}")))
        .collect();
    let mut config = env.gateway_config();
    config.max_body_bytes = 1024 * 1024;
    let roomy = env.start_gateway(config).await;
    let (status, body) = Api::new(&roomy)
        .send(&tenant, &json!({ "events": many }))
        .await;
    assert_error(status, &body, 422, "unprocessable");

    assert_eq!(
        env.queue_depth(&env.topology.events_queue()).await,
        0,
        "nothing was published"
    );

    // And a good request is accepted and published, so the check above can fail.
    let (status, body) = api.send(&tenant, &prospect_created("good")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 1);

    roomy.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_broker_that_refuses_the_publish_gets_503_and_nothing_is_delivered() {
    let env = TestEnv::new("refused").await;
    // The intake queue exists already and takes nothing: the broker nacks every publish.
    // (A classic queue: quorum queues enforce their length limit only loosely.)
    let ch = env.amqp.create_channel().await.unwrap();
    let mut args = courier_broker::lapin::types::FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(
        &env.topology.events_queue(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
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

    let (status, body) = api
        .send(
            &tenant,
            &json!({"events": [prospect_created("r1"), prospect_created("r2")]}),
        )
        .await;
    assert_error(status, &body, 503, "unavailable");
    assert_eq!(body["error"]["details"]["acceptedEventIds"], json!([]));

    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 0);
    assert_eq!(
        worker
            .metric("courier_events_consumed_total{result=\"fanned_out\"}")
            .await,
        0
    );
    assert_eq!(receiver.count(), 0);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
