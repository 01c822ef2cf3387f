//! The target policy: deliveries never reach loopback, private, link-local or other
//! internal addresses unless the deployment allows them, and webhooks naming such
//! an address outright are refused when created or changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::delivery::TransportError;
use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_core::keyring::Keyring;
use courier_telemetry::settings::TargetCidrs;
use courier_telemetry::Profile;
use courier_tests::security::FixedResolver;
use courier_tests::{prospect_created, Api, TestEnv, TestReceiver};
use serde_json::json;

fn batch_of(webhook: &serde_json::Value, event: &str) -> BatchId {
    let id = WebhookId::parse(webhook["id"].as_str().unwrap()).unwrap();
    BatchId::for_single(&id, &EventId::parse(event).unwrap())
}

#[tokio::test]
async fn deliveries_to_internal_addresses_are_refused_with_the_reason_in_the_log() {
    let env = TestEnv::new("ssrf-refused").await;
    let receiver = TestReceiver::start().await;
    let port = receiver.addr.port();
    // The gateway is told these ranges are fine (say, a configuration that differs
    // between services); the worker's own policy is what stops the deliveries.
    let mut gw = env.gateway_config();
    gw.max_webhooks_per_tenant = 10;
    gw.shared.allowed_target_cidrs =
        TargetCidrs(courier_core::target::parse_cidrs("10.0.0.0/8,169.254.0.0/16").unwrap());
    let gateway = env.start_gateway(gw).await;
    let mut wk = env.worker_config();
    wk.allow_loopback = Some(false);
    wk.resolver = Some(FixedResolver::new([("receiver.test", "127.0.0.1")]).shared());
    let worker = env.start_worker(wk).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;

    let cases = [
        (
            format!("http://127.0.0.1:{port}/a"),
            "the webhook's URL names 127.0.0.1, a loopback address",
        ),
        (
            "http://10.0.0.1/x".to_owned(),
            "the webhook's URL names 10.0.0.1, a private address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "the webhook's URL names 169.254.169.254, the cloud metadata address",
        ),
        (
            format!("http://[::1]:{port}/b"),
            "the webhook's URL names ::1, a loopback address",
        ),
        (
            format!("http://receiver.test:{port}/c"),
            "the webhook's host resolves to 127.0.0.1, a loopback address",
        ),
    ];
    let mut webhooks = Vec::new();
    for (url, _) in &cases {
        webhooks.push(
            api.webhook(
                &tenant,
                json!({"name": "internal", "url": url, "events": ["Prospect.*"],
                       "retryPolicy": {"retryClientErrors": true}}),
            )
            .await,
        );
    }
    let (status, body) = api.send(&tenant, &prospect_created("evt_ssrf")).await;
    assert_eq!(status, 202, "{body}");

    for (webhook, (url, words)) in webhooks.iter().zip(&cases) {
        let record = env
            .wait_status(
                &batch_of(webhook, "evt_ssrf"),
                "failed",
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(
            record.attempts.len(),
            1,
            "{url}: refused at once, never retried"
        );
        let attempt = &record.attempts[0];
        assert_eq!(attempt.error, Some(TransportError::Refused), "{url}");
        assert_eq!(attempt.status_code, None);
        assert_eq!(
            attempt.outcome,
            format!("{words}; deliveries there are not allowed"),
            "{url}"
        );
        assert_eq!(record.reason.as_deref(), Some(attempt.outcome.as_str()));
    }
    // The API shows the refusal the same way.
    let batch = batch_of(&webhooks[1], "evt_ssrf");
    let (status, shown) = api
        .get(&format!("/v1/deliveries/{batch}"), &tenant.key)
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["attempts"][0]["error"], "refused");
    worker.wait_idle(1).await;
    assert_eq!(receiver.count(), 0, "nothing reached the loopback receiver");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn allowed_ranges_open_internal_targets_by_address_and_by_name() {
    let env = TestEnv::new("ssrf-allowed").await;
    let receiver = TestReceiver::start().await;
    let port = receiver.addr.port();
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut wk = env.worker_config();
    wk.allow_loopback = Some(false);
    wk.shared.allowed_target_cidrs =
        TargetCidrs(courier_core::target::parse_cidrs("127.0.0.0/8").unwrap());
    wk.resolver = Some(FixedResolver::new([("receiver.test", "127.0.0.1")]).shared());
    let worker = env.start_worker(wk).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let by_ip = api
        .webhook(
            &tenant,
            json!({"name": "ip", "url": format!("http://127.0.0.1:{port}/ip"), "events": ["Prospect.*"]}),
        )
        .await;
    let by_name = api
        .webhook(
            &tenant,
            json!({"name": "name", "url": format!("http://receiver.test:{port}/name"), "events": ["Prospect.*"]}),
        )
        .await;
    let (status, body) = api.send(&tenant, &prospect_created("evt_allowed")).await;
    assert_eq!(status, 202, "{body}");
    for webhook in [&by_ip, &by_name] {
        env.wait_status(
            &batch_of(webhook, "evt_allowed"),
            "delivered",
            Duration::from_secs(20),
        )
        .await;
    }
    assert_eq!(receiver.received_on("/ip").len(), 1);
    assert_eq!(receiver.received_on("/name").len(), 1);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn webhooks_naming_internal_addresses_are_refused_in_production() {
    let env = TestEnv::new("ssrf-create").await;
    let mut gw = env.gateway_config();
    gw.shared.profile = Profile::Production;
    gw.shared.secret_keys = Some(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let gateway = env.start_gateway(gw).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;

    for (url, message) in [
        ("http://10.0.0.1/x", "must use https"),
        (
            "https://10.0.0.1/x",
            "names 10.0.0.1, a private address; deliveries there are not allowed",
        ),
        (
            "https://[::ffff:169.254.169.254]/x",
            "names 169.254.169.254, the cloud metadata address; deliveries there are not allowed",
        ),
        (
            "https://localhost/x",
            "names localhost, a loopback address; deliveries there are not allowed",
        ),
    ] {
        let (status, body) = api
            .post(
                "/v1/webhooks",
                &tenant.key,
                &json!({"name": "x", "url": url, "events": ["Prospect.*"]}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["details"]["url"], message, "{url}");
    }

    let created = api
        .webhook(
            &tenant,
            json!({"name": "ok", "url": "https://93.184.216.34/hook", "events": ["Prospect.*"]}),
        )
        .await;
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    let (status, body) = api
        .patch(
            &path,
            &tenant.key,
            &json!({"url": "https://192.168.1.10/hook"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["details"]["url"],
        "names 192.168.1.10, a private address; deliveries there are not allowed"
    );

    gateway.stop().await.unwrap();
    env.cleanup().await;
}
