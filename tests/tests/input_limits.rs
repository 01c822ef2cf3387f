//! Input hardening of the gateway: nesting depth of event data, request header
//! count and size, the per-tenant ingest rate limit, and the lists that are
//! matched against each other (a property filter's field names, an event's
//! `propertiesUpdated`). Each is a documented 4xx with the JSON error body, and
//! a refused request changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_tests::{prospect_created, Api, TestEnv};
use serde_json::{json, Value};

/// `data` nested `depth` levels deep.
fn nested(depth: usize) -> Value {
    let mut v = json!({"leaf": true});
    for _ in 1..depth {
        v = json!({ "a": v });
    }
    v
}

fn event_with(data: Value) -> Value {
    json!({"objectType": "Prospect", "eventType": "EntityCreated", "data": data})
}

#[tokio::test]
async fn deeply_nested_event_data_is_unprocessable() {
    let env = TestEnv::new("limits-depth").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;

    let (status, body) = api.send(&tenant, &event_with(nested(32))).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = api.send(&tenant, &event_with(nested(33))).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["details"]["data"],
        "nests objects and arrays more than 32 levels deep"
    );
    let (status, body) = api
        .send(
            &tenant,
            &json!({"events": [prospect_created("ok_1"), event_with(nested(33))]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["details"]["events[1].data"].is_string(),
        "{body}"
    );
    // Far deeper than serde_json's own recursion limit: still a clear 422.
    let raw = format!(
        r#"{{"objectType":"Prospect","eventType":"EntityCreated","data":{}1{}}}"#,
        r#"{"a":"#.repeat(500),
        "}".repeat(500)
    );
    let resp = api
        .http
        .post(format!("{}/v1/events", api.base))
        .bearer_auth(&tenant.key)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unprocessable");
    assert!(body["error"]["details"]["body"]
        .as_str()
        .unwrap()
        .contains("64 levels"));
    assert_eq!(
        env.queue_depth(&env.topology.events_queue()).await,
        1,
        "only the valid event was published"
    );

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn too_many_or_too_large_request_headers_are_refused_with_431() {
    let env = TestEnv::new("limits-headers").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let url = format!("{}/v1/events", api.base);

    let mut many = api
        .http
        .post(&url)
        .bearer_auth(&tenant.key)
        .json(&prospect_created("h_1"));
    for i in 0..70 {
        many = many.header(format!("x-extra-{i}"), "1");
    }
    let resp = many.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "headers_too_large");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 64"));

    let resp = api
        .http
        .post(&url)
        .bearer_auth(&tenant.key)
        .header("x-big", "x".repeat(9 * 1024))
        .json(&prospect_created("h_2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 8192"));

    let (status, _) = api.send(&tenant, &prospect_created("h_3")).await;
    assert_eq!(status, 202, "an ordinary request passes");
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 1);

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_tenant_over_its_ingest_rate_gets_429_until_tokens_return() {
    let env = TestEnv::new("limits-rate").await;
    let mut gw = env.gateway_config();
    gw.tenant_rate_limit = Some(courier_gateway::limits::RateLimit::parse("2/s,burst=3").unwrap());
    // Two replicas share one bucket per tenant.
    let first = env.start_gateway(gw.clone()).await;
    let second = env.start_gateway(gw).await;
    let (a, b) = (Api::new(&first), Api::new(&second));
    let tenant = a.tenant("acme").await;
    let other = a.tenant("other").await;

    let batch = |ids: &[&str]| json!({"events": ids.iter().map(|id| prospect_created(id)).collect::<Vec<_>>()});
    let (status, body) = a.send(&tenant, &batch(&["r_1", "r_2"])).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = b.send(&tenant, &batch(&["r_3"])).await;
    assert_eq!(status, 202, "the burst of 3 is shared by both replicas");

    let resp = b
        .http
        .post(format!("{}/v1/events", b.base))
        .bearer_auth(&tenant.key)
        .json(&batch(&["refused_1", "refused_2"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limited");
    assert_eq!(body["error"]["details"]["retryAfterSeconds"], retry_after);

    // Another tenant has its own bucket.
    let (status, _) = a.send(&other, &prospect_created("o_1")).await;
    assert_eq!(status, 202);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, body) = a.send(&tenant, &batch(&["r_4", "r_5"])).await;
    assert_eq!(status, 202, "after Retry-After the request passes: {body}");

    // Exactly the accepted events were published; the refused ones never were.
    assert_eq!(env.queue_depth(&env.topology.events_queue()).await, 6);

    first.stop().await.unwrap();
    second.stop().await.unwrap();
    env.cleanup().await;
}

/// `n` field names, `f0` to `f{n-1}`.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("f{i}")).collect()
}

fn update_event(id: &str, properties: Vec<String>) -> Value {
    json!({
        "id": id, "objectType": "Prospect", "eventType": "EntityUpdated",
        "data": {"objectId": id}, "propertiesUpdated": properties
    })
}

#[tokio::test]
async fn oversized_filters_and_property_lists_are_refused_and_the_limits_stay_cheap() {
    use courier_tests::{wait_until, TestReceiver, ADMIN_TOKEN};

    // The documented limits (README, request limits).
    const MAX_PROPERTIES_UPDATED: usize = 500;
    const MAX_FILTER_FIELDS: usize = 256;

    let env = TestEnv::new("limits-lists").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let globex = api.tenant("globex").await;

    // What kept a worker busy for minutes: a filter of 100,000 names and an event
    // with as many updated properties. Both are refused, naming the field.
    let (status, body) = api
        .post(
            "/v1/webhooks",
            &acme.key,
            &json!({
                "name": "huge", "url": receiver.url("/huge"), "events": ["Prospect.*"],
                "propertyFilters": {"Prospect.EntityUpdated": names(100_000)}
            }),
        )
        .await;
    assert_eq!(
        status,
        422,
        "{}",
        &body.to_string()[..body.to_string().len().min(300)]
    );
    assert_eq!(
        body["error"]["details"]["propertyFilters.Prospect.EntityUpdated"],
        "lists 100000 field names; at most 256 are allowed"
    );
    let (status, body) = api
        .send(&acme, &update_event("huge-event", names(100_000)))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["error"]["details"]["propertiesUpdated"],
        "lists 100000 field names; at most 500 are allowed"
    );
    let (status, body) = api
        .send(
            &acme,
            &json!({"events": [prospect_created("fine"), update_event("over", names(MAX_PROPERTIES_UPDATED + 1))]}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["details"]["events[1].propertiesUpdated"].is_string(),
        "{body}"
    );
    let (status, body) = api
        .post(
            "/v1/webhooks",
            &acme.key,
            &json!({
                "name": "over", "url": receiver.url("/over"), "events": ["Prospect.*"],
                "propertyFilters": {"Prospect.EntityUpdated": names(MAX_FILTER_FIELDS + 1)}
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // Published straight to the exchange, the oversized event is parked as
    // unprocessable, not fanned out.
    let publisher = courier_broker::Publisher::new(&env.amqp, Duration::from_secs(10))
        .await
        .unwrap();
    let mut direct = update_event("direct-huge", names(100_000));
    direct["tenantId"] = json!("acme");
    let body = serde_json::to_vec(&direct).unwrap();
    let exchange = env.topology.events_exchange();
    publisher
        .publish(
            courier_broker::Message::new(&exchange, "acme.Prospect.EntityUpdated", &body)
                .with_message_id("direct-huge"),
        )
        .await
        .unwrap();
    let parked = wait_until(
        "the oversized event to be parked",
        Duration::from_secs(20),
        || async {
            let (_, listed) = api.get("/v1/admin/dead-letter-queue", ADMIN_TOKEN).await;
            listed["data"]
                .as_array()?
                .iter()
                .find(|m| m["messageId"] == "direct-huge")
                .cloned()
        },
    )
    .await;
    assert!(
        parked["reason"]
            .as_str()
            .unwrap()
            .contains("propertiesUpdated: lists 100000 field names"),
        "{}",
        parked["reason"]
    );

    // At the limits: a filter of 256 names, events of 500 updated properties each
    // (only the last ones match), 800 of them; meanwhile another tenant's
    // deliveries stay prompt.
    let mut filter = names(MAX_FILTER_FIELDS - 1);
    filter.push("wanted".into());
    api.webhook(
        &acme,
        json!({
            "name": "limits", "url": receiver.url("/limits"), "events": ["Prospect.EntityUpdated"],
            "propertyFilters": {"Prospect.EntityUpdated": filter}
        }),
    )
    .await;
    api.webhook(
        &globex,
        json!({"name": "other", "url": receiver.url("/other"), "events": ["Prospect.*"]}),
    )
    .await;
    let mut properties: Vec<String> = (0..MAX_PROPERTIES_UPDATED - 1)
        .map(|i| format!("p{i}"))
        .collect();
    properties.push("wanted".into());
    let started = std::time::Instant::now();
    for request in 0..4 {
        let events: Vec<Value> = (0..200)
            .map(|i| update_event(&format!("at-limits-{request}-{i}"), properties.clone()))
            .collect();
        let (status, body) = api.send(&acme, &json!({ "events": events })).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let id = format!("other-{i}");
        let sent = std::time::Instant::now();
        assert_eq!(api.send(&globex, &prospect_created(&id)).await.0, 202);
        wait_until(
            "the other tenant's event",
            Duration::from_secs(10),
            || async {
                receiver
                    .received_on("/other")
                    .iter()
                    .any(|r| r.json()["events"][0]["eventId"] == id.as_str())
                    .then_some(())
            },
        )
        .await;
        slowest = slowest.max(sent.elapsed());
    }
    wait_until(
        "800 events at the limits",
        Duration::from_secs(60),
        || async { (receiver.received_on("/limits").len() == 800).then_some(()) },
    )
    .await;
    println!(
        "800 events at the limits delivered in {:?}; the other tenant's slowest delivery took {slowest:?}",
        started.elapsed()
    );
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
