//! Credentials belong in custom headers, not in webhook URLs; and a webhook may not
//! set the headers that describe the connection. A webhook stored with a URL
//! that carries credentials, before they were refused, still delivers, shows no
//! password, and has to move its credentials out at its next change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::audit::{Actor, AuditEntry};
use courier_core::ids::WebhookId;
use courier_store::Store;
use courier_tests::{prospect_created, wait_until, Api, TestEnv, TestReceiver, REDIS_URL};
use serde_json::json;

#[tokio::test]
async fn urls_with_credentials_and_connection_headers_are_refused() {
    let env = TestEnv::new("wh-credentials").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;

    for url in [
        "https://crm:s3cret@example.com/hooks",
        "https://crm@example.com/hooks",
        "https://:s3cret@example.com/hooks",
    ] {
        let (status, body) = api
            .post(
                "/v1/webhooks",
                &acme.key,
                &json!({"name": "crm", "url": url, "events": ["Prospect.*"]}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        let problem = body["error"]["details"]["url"].as_str().unwrap();
        assert!(problem.contains("custom Authorization header"), "{problem}");
        assert!(
            !body.to_string().contains("s3cret"),
            "the answer repeats no credential: {body}"
        );
    }

    let (status, body) = api
        .post(
            "/v1/webhooks",
            &acme.key,
            &json!({
                "name": "crm", "url": "https://example.com/hooks", "events": ["Prospect.*"],
                "headers": {
                    "Connection": "close", "transfer-encoding": "chunked", "Upgrade": "h2c",
                    "TE": "trailers", "Expect": "100-continue", "Keep-Alive": "timeout=5",
                    "Proxy-Connection": "keep-alive", "Trailer": "X-A", "Host": "evil.example",
                    "Content-Length": "0", "X-Api-Key": "fine"
                }
            }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let named: Vec<&str> = body["error"]["details"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        named,
        [
            "headers.Connection",
            "headers.Content-Length",
            "headers.Expect",
            "headers.Host",
            "headers.Keep-Alive",
            "headers.Proxy-Connection",
            "headers.TE",
            "headers.Trailer",
            "headers.Upgrade",
            "headers.transfer-encoding",
        ]
    );
    // Nothing was created.
    let (_, listed) = api.get("/v1/webhooks", &acme.key).await;
    assert_eq!(listed["total"], 0);

    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_webhook_stored_with_credentials_in_its_url_delivers_hides_them_and_must_move_them() {
    let env = TestEnv::new("wh-credentials-stored").await;
    let config = env.gateway_config();
    let store = Store::new(REDIS_URL, &env.prefix)
        .unwrap()
        .with_keyring(config.shared.keyring().unwrap());
    let gateway = env.start_gateway(config).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let created = api
        .webhook(
            &acme,
            json!({"name": "crm", "url": receiver.url("/h"), "events": ["Prospect.*"]}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // What an earlier version could store: the URL with user and password.
    let current = store
        .webhook_versioned(&WebhookId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut old = current.webhook.clone();
    let with_credentials = format!("http://crm:s3cret@{}/h", receiver.addr);
    old.url = serde_json::from_value(json!(with_credentials)).unwrap();
    let audit = AuditEntry {
        actor: Actor::Operator,
        action: "webhook.updated".into(),
        resource_type: "webhook".into(),
        resource_id: id.clone(),
        tenant_id: old.tenant_id.clone(),
        before: None,
        after: None,
    };
    assert!(store
        .swap_webhook(&current, Some(&old), &audit)
        .await
        .unwrap());

    // It loads and delivers as before, the credentials sent as basic auth.
    let (status, _) = api.send(&acme, &prospect_created("e1")).await;
    assert_eq!(status, 202);
    let got = wait_until("the delivery", Duration::from_secs(20), || async {
        receiver.received().into_iter().next()
    })
    .await;
    assert_eq!(got.header("authorization"), Some("Basic Y3JtOnMzY3JldA=="));
    // No read shows the password.
    let (status, shown) = api.get(&format!("/v1/webhooks/{id}"), &acme.key).await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["url"],
        format!("http://crm:***@{}/h", receiver.addr),
        "{shown}"
    );
    // Its next change must move them into a header.
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["details"]["url"]
        .as_str()
        .unwrap()
        .contains("custom Authorization header"));
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &acme.key,
            &json!({
                "url": receiver.url("/h"),
                "headers": {"Authorization": "Basic Y3JtOnMzY3JldA=="}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], receiver.url("/h"));
    assert_eq!(body["headerNames"], json!(["Authorization"]));
    let (_, audit_log) = api.get("/v1/audit-log", &acme.key).await;
    assert!(
        !audit_log.to_string().contains("s3cret")
            && !audit_log.to_string().contains("Y3JtOnMzY3JldA"),
        "{audit_log}"
    );

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
