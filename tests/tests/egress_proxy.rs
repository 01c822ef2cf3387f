//! The egress proxy: with `COURIER_EGRESS_PROXY` every delivery goes through it,
//! and the target policy still applies to the webhook's host; without it, the
//! environment's proxy variables are ignored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::delivery::TransportError;
use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_tests::security::{FixedResolver, TestProxy};
use courier_tests::{prospect_created, Api, ChildWorker, TestEnv, TestReceiver};
use courier_worker::guard::ProxyUrl;
use serde_json::json;

fn batch_of(webhook: &serde_json::Value, event: &str) -> BatchId {
    let id = WebhookId::parse(webhook["id"].as_str().unwrap()).unwrap();
    BatchId::for_single(&id, &EventId::parse(event).unwrap())
}

#[tokio::test]
async fn deliveries_go_through_the_egress_proxy_and_refused_targets_do_not() {
    let env = TestEnv::new("egress").await;
    let receiver = TestReceiver::start().await;
    // The proxy resolves names itself, as a real one does with its own DNS.
    let proxy = TestProxy::with_names([("open.test", "127.0.0.1")]).await;
    let port = receiver.addr.port();
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut wk = env.worker_config();
    wk.egress_proxy = Some(ProxyUrl::parse(&proxy.url()).unwrap());
    // Loopback is refused except the receiver's address, opened by the allow-list:
    // `open.test` goes out, `internal.test` and `[::1]` do not.
    wk.allow_loopback = Some(false);
    wk.shared.allowed_target_cidrs = courier_telemetry::settings::TargetCidrs(
        courier_core::target::parse_cidrs("127.0.0.1/32").unwrap(),
    );
    wk.resolver = Some(
        FixedResolver::new([("open.test", "127.0.0.1"), ("internal.test", "10.1.2.3")]).shared(),
    );
    let worker = env.start_worker(wk).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    // The worker checks `open.test` against the policy before handing the request
    // to the proxy, which reaches the receiver.
    let open = api
        .webhook(
            &tenant,
            json!({"name": "open", "url": format!("http://open.test:{port}/open"), "events": ["Prospect.*"]}),
        )
        .await;
    let internal = api
        .webhook(
            &tenant,
            json!({"name": "internal", "url": format!("http://internal.test:{port}/internal"), "events": ["Prospect.*"]}),
        )
        .await;
    let literal = api
        .webhook(
            &tenant,
            json!({"name": "literal", "url": format!("http://[::1]:{port}/literal"), "events": ["Prospect.*"]}),
        )
        .await;

    let (status, body) = api.send(&tenant, &prospect_created("evt_proxy")).await;
    assert_eq!(status, 202, "{body}");
    let record = env
        .wait_status(
            &batch_of(&internal, "evt_proxy"),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(record.attempts[0].error, Some(TransportError::Refused));
    assert_eq!(
        record.attempts[0].outcome,
        "the webhook's host resolves to 10.1.2.3, a private address; deliveries there are not allowed"
    );
    let record = env
        .wait_status(
            &batch_of(&literal, "evt_proxy"),
            "failed",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(record.attempts[0].error, Some(TransportError::Refused));

    env.wait_status(
        &batch_of(&open, "evt_proxy"),
        "delivered",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(receiver.received_on("/open").len(), 1);
    assert_eq!(
        proxy.seen(),
        [format!("http://open.test:{port}/open")],
        "the allowed delivery went through the proxy, refused ones never reached it"
    );
    assert_eq!(receiver.count(), 1);

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    proxy.stop();
    env.cleanup().await;
}

#[tokio::test]
async fn a_proxy_for_a_loopback_receiver_carries_every_delivery() {
    let env = TestEnv::new("egress-ok").await;
    let receiver = TestReceiver::start().await;
    let proxy = TestProxy::start().await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut wk = env.worker_config();
    wk.egress_proxy = Some(ProxyUrl::parse(&proxy.url()).unwrap());
    let worker = env.start_worker(wk).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let webhook = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"]}),
        )
        .await;
    for id in ["evt_p1", "evt_p2", "evt_p3"] {
        let (status, body) = api.send(&tenant, &prospect_created(id)).await;
        assert_eq!(status, 202, "{body}");
    }
    for id in ["evt_p1", "evt_p2", "evt_p3"] {
        env.wait_status(
            &batch_of(&webhook, id),
            "delivered",
            Duration::from_secs(20),
        )
        .await;
    }
    assert_eq!(receiver.count(), 3);
    let through: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|t| t == &receiver.url("/hook"))
        .collect();
    assert_eq!(through.len(), 3, "every delivery went through the proxy");

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    proxy.stop();
    env.cleanup().await;
}

#[tokio::test]
async fn without_the_setting_environment_proxy_variables_are_ignored() {
    let env = TestEnv::new("egress-env").await;
    let receiver = TestReceiver::start().await;
    let proxy = TestProxy::start().await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    // The real binary, with every proxy variable a client library might honour.
    let url = proxy.url();
    let worker = ChildWorker::start(
        &env.prefix,
        &[
            ("HTTP_PROXY", url.as_str()),
            ("http_proxy", url.as_str()),
            ("HTTPS_PROXY", url.as_str()),
            ("ALL_PROXY", url.as_str()),
        ],
    );
    worker.wait_ready("/readyz").await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let webhook = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"]}),
        )
        .await;
    let (status, body) = api.send(&tenant, &prospect_created("evt_direct")).await;
    assert_eq!(status, 202, "{body}");
    env.wait_status(
        &batch_of(&webhook, "evt_direct"),
        "delivered",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        proxy.seen(),
        Vec::<String>::new(),
        "nothing went through the proxy"
    );

    worker.kill().await;
    gateway.stop().await.unwrap();
    proxy.stop();
    env.cleanup().await;
}
