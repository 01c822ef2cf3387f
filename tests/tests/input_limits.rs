//! Input hardening of the gateway: nesting depth of event data, request header
//! count and size, and the per-tenant ingest rate limit. Each is a documented 4xx
//! with the JSON error body, and a refused request changes nothing.
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
