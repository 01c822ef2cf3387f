//! The management API end to end: tenants and keys, webhook CRUD, scopes and
//! tenant isolation, the webhook limit under concurrency, rotation, property
//! filters, configuration reaching every worker, the audit log, the catalog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use courier_core::signing::{verify, Secret};
use courier_tests::{
    prospect_created, schemas, wait_idle, wait_until, Api, TenantHandle, TestEnv, TestReceiver,
    ADMIN_TOKEN,
};
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["type"], want_type, "{body}");
}

/// A key of `tenant` with only these scopes.
async fn key_with(api: &Api, tenant: &TenantHandle, scopes: Value) -> String {
    issue_key(api, tenant, scopes).await.1
}

/// Issues a key of `tenant` with only these scopes: its id and the key.
async fn issue_key(api: &Api, tenant: &TenantHandle, scopes: Value) -> (String, String) {
    let (status, body) = api
        .post(
            &format!("/v1/tenants/{}/keys", tenant.id),
            ADMIN_TOKEN,
            &json!({ "scopes": scopes }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let text = |field: &str| body[field].as_str().unwrap().to_owned();
    (text("id"), text("key"))
}

/// A 401 names the credential the route takes (tenant key, admin token, or
/// either) and reads the same whatever was sent, so it tells nothing of which keys
/// exist.
#[tokio::test]
async fn unauthorized_answers_name_the_credential_the_route_needs() {
    let env = TestEnv::new("unauthorized").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let revoked = {
        let (id, key) = issue_key(&api, &acme, json!(["read"])).await;
        let path = format!("/v1/tenants/{}/keys/{id}", acme.id);
        assert_eq!(api.delete(&path, ADMIN_TOKEN).await.0, 204);
        key
    };
    let message = |body: &Value| body["error"]["message"].as_str().unwrap().to_owned();

    // A tenant route: the admin token, a revoked key, a made-up key, nothing.
    let mut seen = Vec::new();
    for token in [ADMIN_TOKEN, revoked.as_str(), "ck_made_up", ""] {
        let (status, body) = api.get("/v1/webhooks", token).await;
        assert_error(status, &body, 401, "unauthorized");
        seen.push(message(&body));
    }
    assert!(seen.iter().all(|m| m == &seen[0]), "{seen:?}");
    assert!(seen[0].contains("tenant API key"), "{}", seen[0]);
    assert!(
        seen[0].contains("POST /v1/tenants/{id}/keys"),
        "{}",
        seen[0]
    );

    // An operator route: a valid tenant key, a made-up token, nothing.
    let mut seen = Vec::new();
    for token in [acme.key.as_str(), "not-the-token", ""] {
        let (status, body) = api.get("/v1/tenants", token).await;
        assert_error(status, &body, 401, "unauthorized");
        seen.push(message(&body));
    }
    assert!(seen.iter().all(|m| m == &seen[0]), "{seen:?}");
    assert!(seen[0].contains("admin token"), "{}", seen[0]);
    assert!(
        seen[0].contains("tenant API keys are not accepted"),
        "{}",
        seen[0]
    );

    // A route either may use.
    let (status, body) = api.get("/v1/audit-log", &revoked).await;
    assert_error(status, &body, 401, "unauthorized");
    let m = message(&body);
    assert!(
        m.contains("tenant API key") && m.contains("admin token"),
        "{m}"
    );

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn tenants_and_keys_are_managed_by_the_operator_only() {
    let env = TestEnv::new("tenants").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    api.tenant("globex").await;

    // Only the operator token manages tenants.
    let (status, body) = api
        .post("/v1/tenants", &acme.key, &json!({"id": "evil"}))
        .await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = api.get("/v1/tenants", "").await;
    assert_error(status, &body, 401, "unauthorized");

    let (status, body) = api
        .post("/v1/tenants", ADMIN_TOKEN, &json!({"id": "acme"}))
        .await;
    assert_error(status, &body, 409, "conflict");
    let (status, body) = api
        .post("/v1/tenants", ADMIN_TOKEN, &json!({"id": "Not Valid"}))
        .await;
    assert_error(status, &body, 422, "unprocessable");
    assert!(body["error"]["details"]["id"].is_string());

    let (status, body) = api.get("/v1/tenants?limit=1", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 2);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["id"], "acme");
    let (status, body) = api.get("/v1/tenants?limit=101", ADMIN_TOKEN).await;
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["details"]["limit"].is_string());
    let (status, body) = api.get("/v1/tenants/globex", ADMIN_TOKEN).await;
    assert_eq!((status, body["id"].clone()), (200, json!("globex")));

    // Keys: issued with scopes, listed without the key, revoked at once.
    let read_only = key_with(&api, &acme, json!(["read"])).await;
    let (status, body) = api
        .get(&format!("/v1/tenants/{}/keys", acme.id), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 200, "{body}");
    let keys = body["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter().all(|k| k.get("key").is_none()),
        "keys are never listed"
    );
    assert!(!body.to_string().contains(&read_only));
    let read_only_id = keys
        .iter()
        .find(|k| k["scopes"] == json!(["read"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(api.get("/v1/webhooks", &read_only).await.0, 200);
    let (status, _) = api
        .delete(
            &format!("/v1/tenants/{}/keys/{read_only_id}", acme.id),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = api.get("/v1/webhooks", &read_only).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = api
        .delete(
            &format!("/v1/tenants/{}/keys/{read_only_id}", acme.id),
            ADMIN_TOKEN,
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = api
        .post("/v1/tenants/nobody/keys", ADMIN_TOKEN, &json!({}))
        .await;
    assert_error(status, &body, 404, "not_found");

    // Deleting a tenant ends its keys at once (the rest is purged in the background).
    let (status, _) = api.delete("/v1/tenants/acme", ADMIN_TOKEN).await;
    assert_eq!(status, 202);
    let (status, body) = api.get("/v1/webhooks", &acme.key).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body) = api.get("/v1/tenants/acme", ADMIN_TOKEN).await;
    assert_error(status, &body, 404, "not_found");

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn webhooks_are_created_listed_updated_and_deleted_within_their_tenant() {
    let env = TestEnv::new("crud").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let globex = api.tenant("globex").await;

    let created = api
        .webhook(
            &acme,
            json!({"name": "crm", "url": "http://127.0.0.1:1/a", "events": ["Prospect.*"], "throttling": 3,
                   "retryPolicy": {"maxAttempts": 3, "schedule": ["0s", "1m", "5m"]}, "headers": {"X-Team": "sales"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));

    let (status, body) = api.get(&format!("/v1/webhooks/{id}"), &acme.key).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("secret").is_none(), "GET never shows the secret");
    assert_eq!(
        body["headerNames"],
        json!(["X-Team"]),
        "names only, never values"
    );
    assert!(body.get("headers").is_none());
    assert_eq!(body["retryPolicy"]["schedule"], json!(["0s", "1m", "5m"]));
    assert_eq!(body["throttling"], 3);

    // Another tenant sees nothing of it.
    for (method, path) in [
        ("GET", format!("/v1/webhooks/{id}")),
        ("DELETE", format!("/v1/webhooks/{id}")),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = api.call(m, &path, &globex.key, None).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &globex.key,
            &json!({"name": "x"}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (_, list) = api.get("/v1/webhooks", &globex.key).await;
    assert_eq!(list["total"], 0);

    // PATCH changes only what it names; invalid fields are 422 by name.
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"name": "crm v2", "timeoutMs": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "crm v2");
    assert_eq!(body["timeoutMs"], 5000);
    assert_eq!(body["events"], json!(["Prospect.*"]));
    assert_eq!(body["headerNames"], json!(["X-Team"]));
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"throttling": 11, "events": []}),
        )
        .await;
    assert_error(status, &body, 422, "unprocessable");
    assert!(body["error"]["details"]["throttling"].is_string());
    assert!(body["error"]["details"]["events"].is_string());
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"secret": "whsec_x"}),
        )
        .await;
    assert_error(status, &body, 422, "unprocessable");

    // Listing pages by limit and offset.
    api.webhook(
        &acme,
        json!({"name": "two", "url": "http://127.0.0.1:1/b", "events": ["*"]}),
    )
    .await;
    let (status, body) = api.get("/v1/webhooks?limit=1&offset=1", &acme.key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["total"].clone(),
            body["limit"].clone(),
            body["offset"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );
    assert_eq!(body["data"][0]["name"], "two");
    let (status, body) = api.get("/v1/webhooks?limit=0", &acme.key).await;
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = api.get("/v1/webhooks?limit=abc", &acme.key).await;
    assert_error(status, &body, 400, "bad_request");

    let (status, _) = api.delete(&format!("/v1/webhooks/{id}"), &acme.key).await;
    assert_eq!(status, 204);
    let (status, body) = api.get(&format!("/v1/webhooks/{id}"), &acme.key).await;
    assert_error(status, &body, 404, "not_found");

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_webhooks_are_refused_naming_each_field() {
    let env = TestEnv::new("invalid").await;
    let mut config = env.gateway_config();
    config.shared.profile = courier_telemetry::Profile::Production;
    // Production requires the keys that encrypt webhook secrets at rest.
    config.shared.secret_keys = Some(
        courier_core::keyring::Keyring::parse(&courier_core::keyring::Keyring::generate_entry(
            "k1",
        ))
        .unwrap(),
    );
    let gateway = env.start_gateway(config).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let cases = [
        (
            json!({"name": "x", "url": "http://example.com/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"name": "x", "url": "not a url", "events": ["*"]}),
            "url",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": []}),
            "events",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["Invoice.*"]}),
            "events[0]",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "throttling": 11}),
            "throttling",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "timeoutMs": 500}),
            "timeoutMs",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "headers": {"Webhook-Id": "1"}}),
            "headers.Webhook-Id",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "headers": {"Host": "evil"}}),
            "headers.Host",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "retryPolicy": {"maxAttempts": 9}}),
            "retryPolicy.maxAttempts",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "retryPolicy": {"schedule": ["5s"]}}),
            "retryPolicy.schedule",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "secret": "whsec_short"}),
            "secret",
        ),
        (
            json!({"name": "", "url": "https://example.com/h", "events": ["*"]}),
            "name",
        ),
        (
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "colour": "red"}),
            "body",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = api.post("/v1/webhooks", &acme.key, &body).await;
        assert_error(status, &answer, 422, "unprocessable");
        assert!(
            answer["error"]["details"][field].is_string(),
            "{field} not named in {answer}"
        );
    }
    let (_, list) = api.get("/v1/webhooks", &acme.key).await;
    assert_eq!(list["total"], 0, "nothing was created");

    // A client-supplied secret (migrations) is kept.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let created = api
        .webhook(
            &acme,
            json!({"name": "x", "url": "https://example.com/h", "events": ["*"], "secret": secret}),
        )
        .await;
    assert_eq!(created["secret"], secret);

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn scopes_limit_what_a_key_may_do() {
    let env = TestEnv::new("scopes").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": "http://127.0.0.1:1/h", "events": ["*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();
    let read = key_with(&api, &acme, json!(["read"])).await;
    let publish = key_with(&api, &acme, json!(["publish"])).await;
    let manage = key_with(&api, &acme, json!(["manage"])).await;

    let (status, body) = api.post("/v1/events", &read, &prospect_created("e1")).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = api
        .post(
            "/v1/webhooks",
            &read,
            &json!({"name": "y", "url": "http://127.0.0.1:1/h", "events": ["*"]}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &publish,
            &json!({"name": "y"}),
        )
        .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = api.get(&format!("/v1/webhooks/{id}"), &manage).await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body) = api.get("/v1/audit-log", &publish).await;
    assert_error(status, &body, 403, "forbidden");

    assert_eq!(
        api.post("/v1/events", &publish, &prospect_created("e1"))
            .await
            .0,
        202
    );
    assert_eq!(
        api.patch(
            &format!("/v1/webhooks/{id}"),
            &manage,
            &json!({"name": "y"})
        )
        .await
        .0,
        200
    );
    assert_eq!(api.get(&format!("/v1/webhooks/{id}"), &read).await.0, 200);

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn the_fourth_webhook_is_refused_even_when_created_concurrently() {
    let env = TestEnv::new("limit").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let second = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let api2 = Api::new(&second);
    let acme = api.tenant("acme").await;
    let body =
        |i: usize| json!({"name": format!("w{i}"), "url": "http://127.0.0.1:1/h", "events": ["*"]});
    for i in 0..3 {
        api.webhook(&acme, body(i)).await;
    }
    let (status, answer) = api.post("/v1/webhooks", &acme.key, &body(3)).await;
    assert_error(status, &answer, 409, "conflict");
    assert!(answer["error"]["message"].as_str().unwrap().contains('3'));

    // 12 concurrent creates through two gateway replicas for a fresh tenant: exactly 3 win.
    let globex = api.tenant("globex").await;
    let attempts = (0..12).map(|i| {
        let (api, key, b) = (
            if i % 2 == 0 {
                api.clone()
            } else {
                api2.clone()
            },
            globex.key.clone(),
            body(i),
        );
        async move { api.post("/v1/webhooks", &key, &b).await.0 }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    let (_, list) = api.get("/v1/webhooks", &globex.key).await;
    assert_eq!(list["total"], 3);

    second.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_gateway_replica() {
    let env = TestEnv::new("revoke").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let second = env.start_gateway(env.gateway_config()).await;
    let (api, api2) = (Api::new(&gateway), Api::new(&second));
    let acme = api.tenant("acme").await;
    let (key_id, key) = issue_key(&api, &acme, json!(["read"])).await;
    // Both replicas have used (and may keep) the key.
    for a in [&api, &api2] {
        for _ in 0..3 {
            assert_eq!(a.get("/v1/webhooks", &key).await.0, 200);
        }
    }
    let (status, _) = api
        .delete(
            &format!("/v1/tenants/{}/keys/{key_id}", acme.id),
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(api.get("/v1/webhooks", &key).await.0, 401, "at once here");
    wait_until(
        "the other replica to refuse the key",
        Duration::from_secs(2),
        || async { (api2.get("/v1/webhooks", &key).await.0 == 401).then_some(()) },
    )
    .await;

    // Deleting the tenant ends its other keys everywhere too.
    assert_eq!(api2.get("/v1/webhooks", &acme.key).await.0, 200);
    let (status, _) = api
        .delete(&format!("/v1/tenants/{}", acme.id), ADMIN_TOKEN)
        .await;
    assert_eq!(status, 202);
    wait_until(
        "the other replica to refuse the deleted tenant's key",
        Duration::from_secs(2),
        || async { (api2.get("/v1/webhooks", &acme.key).await.0 == 401).then_some(()) },
    )
    .await;

    second.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

/// Sends a fresh Prospect event every 100 ms until `arrived` holds, at most `within`.
async fn until_delivered(
    api: &Api,
    tenant: &TenantHandle,
    within: Duration,
    arrived: impl Fn() -> bool,
) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while !arrived() {
        assert!(start.elapsed() < within, "not delivered within {within:?}");
        n += 1;
        assert_eq!(
            api.send(tenant, &prospect_created(&format!("probe-{n}")))
                .await
                .0,
            202
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn patching_events_changes_what_is_delivered() {
    let env = TestEnv::new("patch").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["Account.*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();

    assert_eq!(api.send(&acme, &prospect_created("before")).await.0, 202);
    worker.wait_idle(1).await;
    assert_eq!(receiver.count(), 0, "not subscribed yet");

    let (status, _) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"events": ["Prospect.*"]}),
        )
        .await;
    assert_eq!(status, 200);
    let took = until_delivered(&api, &acme, Duration::from_secs(2), || receiver.count() > 0).await;
    println!("the new subscription took effect within {took:?}");
    assert!(receiver
        .received()
        .iter()
        .all(|r| r.json()["events"][0]["eventId"] != "before"));

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn disabling_a_webhook_stops_deliveries_on_every_worker_within_two_seconds() {
    let env = TestEnv::new("disable").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let w1 = env.start_worker(env.worker_config()).await;
    let w2 = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();

    // Warm both workers' caches: each fans out events of the tenant.
    let mut sent = 0;
    while w1
        .metric("courier_events_consumed_total{result=\"fanned_out\"}")
        .await
        == 0
        || w2
            .metric("courier_events_consumed_total{result=\"fanned_out\"}")
            .await
            == 0
    {
        assert!(sent < 200, "events never reached both workers");
        let batch: Vec<Value> = (0..10)
            .map(|i| prospect_created(&format!("warm-{sent}-{i}")))
            .collect();
        assert_eq!(api.send(&acme, &json!({ "events": batch })).await.0, 202);
        sent += 10;
        wait_idle(&[&w1, &w2], sent).await;
    }
    assert_eq!(receiver.count() as u64, sent);

    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"active": false}),
        )
        .await;
    assert_eq!((status, body["active"].clone()), (200, json!(false)));
    // The promise is two seconds: events sent after that reach no worker's deliveries.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = receiver.count();
    let batch: Vec<Value> = (0..20)
        .map(|i| prospect_created(&format!("after-{i}")))
        .collect();
    assert_eq!(api.send(&acme, &json!({ "events": batch })).await.0, 202);
    wait_idle(&[&w1, &w2], sent + 20).await;
    assert_eq!(
        receiver.count(),
        before,
        "a disabled webhook receives nothing"
    );

    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn work_queued_before_a_webhook_is_disabled_ends_cancelled() {
    work_under_way_ends_cancelled("cancel", |id| {
        (
            reqwest::Method::PATCH,
            format!("/v1/webhooks/{id}"),
            Some(json!({"active": false})),
        )
    })
    .await;
}

#[tokio::test]
async fn work_under_way_when_a_webhook_is_deleted_ends_cancelled() {
    work_under_way_ends_cancelled("deleted", |id| {
        (reqwest::Method::DELETE, format!("/v1/webhooks/{id}"), None)
    })
    .await;
}

/// A worker claims an event's first attempt, then stops (abandoning the POST)
/// before it ends; `change` disables or deletes the webhook; the next worker ends
/// the attempt `cancelled`, never delivered.
async fn work_under_way_ends_cancelled(
    name: &str,
    change: impl Fn(&str) -> (reqwest::Method, String, Option<Value>),
) {
    let env = TestEnv::new(name).await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["*"], "timeoutMs": 1000}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();
    let mut config = env.worker_config();
    config.shutdown_grace = Duration::from_millis(100);
    let worker = env.start_worker(config).await;
    receiver.set(courier_tests::Behaviour::Stall(Duration::from_secs(60)));
    let (status, _) = api.send(&acme, &prospect_created("queued")).await;
    assert_eq!(status, 202);
    wait_until(
        "the attempt to be claimed",
        Duration::from_secs(10),
        || async { (receiver.count() == 1).then_some(()) },
    )
    .await;
    worker.stop().await.unwrap();

    let (method, path, body) = change(id);
    let (status, answer) = api.call(method, &path, &acme.key, body.as_ref()).await;
    assert!((200..300).contains(&status), "{status} {answer}");
    receiver.set(courier_tests::Behaviour::Status(200));
    let worker = env.start_worker(env.worker_config()).await;
    let batch = courier_core::ids::BatchId::for_single(
        &courier_core::ids::WebhookId::parse(id).unwrap(),
        &courier_core::ids::EventId::parse("queued").unwrap(),
    );
    // The abandoned attempt's lease (timeout + margin) expires before it runs again.
    let status = wait_until("the batch to end", Duration::from_secs(30), || async {
        let r = env.store.delivery(&batch).await.unwrap()?;
        r.status.is_final().then_some(r.status)
    })
    .await;
    let record = env.store.delivery(&batch).await.unwrap().unwrap();
    assert_eq!(status.as_str(), "cancelled", "{:?}", record.attempts);
    assert_eq!(receiver.count(), 1, "nothing more was sent");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn during_a_rotation_deliveries_verify_with_either_secret() {
    let env = TestEnv::new("rotate").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();
    let old = Secret::parse(wh["secret"].as_str().unwrap()).unwrap();

    let (status, rotated) = api
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &acme.key,
            &json!({"previousSecretTtl": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = Secret::parse(rotated["secret"].as_str().unwrap()).unwrap();
    assert_ne!(new, old);
    assert!(rotated["previousSecretExpiresAt"].is_string());

    let took = until_delivered(&api, &acme, Duration::from_secs(5), || {
        receiver.received().iter().any(|r| {
            r.header("webhook-signature")
                .is_some_and(|s| s.split(' ').count() == 2)
        })
    })
    .await;
    println!("the rotation took effect within {took:?}");
    let got = receiver
        .received()
        .into_iter()
        .find(|r| {
            r.header("webhook-signature")
                .is_some_and(|s| s.split(' ').count() == 2)
        })
        .unwrap();
    let (msg_id, ts, sig) = (
        got.header("webhook-id").unwrap(),
        got.header("webhook-timestamp").unwrap(),
        got.header("webhook-signature").unwrap(),
    );
    let now = chrono::Utc::now().timestamp();
    verify(&new, msg_id, ts, sig, &got.body, now).expect("verifies with the new secret");
    verify(&old, msg_id, ts, sig, &got.body, now).expect("verifies with the previous secret");

    // A zero TTL (a leaked secret) stops the previous one at once.
    let (status, rotated) = api
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &acme.key,
            &json!({"previousSecretTtl": "0s"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(rotated["previousSecretExpiresAt"].is_null());
    let (status, body) = api
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &acme.key,
            &json!({"previousSecretTtl": "soon"}),
        )
        .await;
    assert_error(status, &body, 422, "unprocessable");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn property_filters_decide_which_update_events_are_delivered() {
    let env = TestEnv::new("filters").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    api.webhook(
        &acme,
        json!({"name": "x", "url": receiver.url("/h"), "events": ["Prospect.*"],
               "propertyFilters": {"Prospect.EntityUpdated": ["email", "phone"]}}),
    )
    .await;
    let update = |id: &str, props: Value| {
        json!({"id": id, "objectType": "Prospect", "eventType": "EntityUpdated",
               "data": {"objectId": "p1"}, "propertiesUpdated": props})
    };
    let events = json!({"events": [
        update("title-only", json!(["title"])),
        update("email-and-title", json!(["title", "email"])),
        update("unknown-fields", Value::Null),
        update("no-fields", json!([])),
        prospect_created("created"),
    ]});
    assert_eq!(api.send(&acme, &events).await.0, 202);
    worker.wait_idle(5).await;
    let mut got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            r.json()["events"][0]["eventId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["created", "email-and-title", "unknown-fields"]);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_test_delivery_goes_through_the_real_pipeline() {
    let env = TestEnv::new("testsend").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": receiver.url("/h"), "events": ["Signal.*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();

    let (status, sent) = api
        .post(
            &format!("/v1/webhooks/{id}/test"),
            &acme.key,
            &json!({"eventType": "Signal.SignalHiring"}),
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    let got = wait_until("the test event", Duration::from_secs(10), || async {
        receiver.received().into_iter().next()
    })
    .await;
    let envelope = got.json();
    schemas::assert_valid("batch-envelope.schema.json", &envelope);
    assert_eq!(envelope["events"][0]["eventId"], sent["eventId"]);
    assert_eq!(envelope["events"][0]["eventType"], "SignalHiring");

    // Without a body: the first subscribed key of the catalog.
    let (status, sent) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{id}/test"),
            &acme.key,
            None,
        )
        .await;
    assert_eq!(status, 202, "{sent}");
    assert!(sent["eventType"].as_str().unwrap().starts_with("Signal."));
    let (status, body) = api
        .post(
            &format!("/v1/webhooks/{id}/test"),
            &acme.key,
            &json!({"eventType": "Account.EntityCreated"}),
        )
        .await;
    assert_error(status, &body, 422, "unprocessable");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn the_audit_log_shows_every_change_without_secrets() {
    let env = TestEnv::new("audit").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let other = api.tenant("globex").await;
    let wh = api
        .webhook(
            &acme,
            json!({"name": "x", "url": "http://127.0.0.1:1/h", "events": ["*"]}),
        )
        .await;
    let id = wh["id"].as_str().unwrap();
    api.patch(
        &format!("/v1/webhooks/{id}"),
        &acme.key,
        &json!({"name": "y"}),
    )
    .await;
    let (_, rotated) = api
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &acme.key,
            &json!({}),
        )
        .await;
    api.delete(&format!("/v1/webhooks/{id}"), &acme.key).await;

    let (status, page) = api.get("/v1/audit-log", &acme.key).await;
    assert_eq!(status, 200, "{page}");
    let actions: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.deleted",
            "webhook.secretRotated",
            "webhook.updated",
            "webhook.created",
            "apiKey.issued",
            "tenant.created"
        ]
    );
    let updated = &page["data"][2];
    assert_eq!(updated["before"]["name"], "x");
    assert_eq!(updated["after"]["name"], "y");
    assert_eq!(updated["resourceId"], id);
    assert_eq!(updated["actor"]["type"], "apiKey");
    assert_eq!(page["data"][5]["actor"]["type"], "operator");
    let text = page.to_string();
    assert!(
        !text.contains(wh["secret"].as_str().unwrap())
            && !text.contains(rotated["secret"].as_str().unwrap())
    );
    assert!(
        !text.contains("whsec_") && !text.contains(&acme.key),
        "no secret in the audit log"
    );

    // Cursor pagination, newest first.
    let (_, first) = api.get("/v1/audit-log?limit=4", &acme.key).await;
    let cursor = first["nextCursor"].as_str().unwrap();
    let (_, second) = api
        .get(&format!("/v1/audit-log?limit=4&cursor={cursor}"), &acme.key)
        .await;
    let second: Vec<&str> = second["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(second, ["apiKey.issued", "tenant.created"]);

    // A tenant sees only its own; the operator sees all.
    let (_, theirs) = api.get("/v1/audit-log", &other.key).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 2);
    let (_, all) = api.get("/v1/audit-log?limit=100", ADMIN_TOKEN).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 8);
    let (status, body) = api.get("/v1/audit-log?cursor=nope", &acme.key).await;
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["details"]["cursor"].is_string(), "{body}");

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn the_catalog_and_the_openapi_document_are_served() {
    let env = TestEnv::new("catalog").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);

    let (status, list) = api.get("/v1/event-types", "").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 27);
    let (status, example) = api
        .get("/v1/event-types/Prospect.EntityUpdated/example", "")
        .await;
    assert_eq!(status, 200, "{example}");
    schemas::assert_valid("batch-envelope.schema.json", &example);
    assert_eq!(example["events"][0]["objectType"], "Prospect");
    assert!(example["events"][0]["propertiesUpdated"].is_array());
    // Keys in the order a subscriber receives them: the envelope's, and the
    // catalog's for the example data.
    let text = api
        .http
        .get(format!(
            "{}/v1/event-types/Prospect.EntityUpdated/example",
            api.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let order = |keys: &[&str]| {
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{keys:?} in {text}");
    };
    order(&["batchId", "eventCount", "isBatch", "timestamp", "events"]);
    order(&["objectId", "accountId", "firstName", "lastName", "email"]);
    let (status, body) = api.get("/v1/event-types/Nope.Nothing/example", "").await;
    assert_error(status, &body, 404, "not_found");

    let (status, served) = api.get("/openapi.json", "").await;
    assert_eq!(status, 200);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(schemas::dir().join("openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, kept, "the served document is the kept one");

    let (status, body) = api.get("/v1/nothing-here", "").await;
    assert_error(status, &body, 404, "not_found");

    gateway.stop().await.unwrap();
    env.cleanup().await;
}
