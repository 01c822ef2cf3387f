//! Traces, metrics and readiness, end to end: spans exported in memory by each
//! service instance, `/metrics` of both services after a known run, and `/readyz`
//! through a broker outage (a cuttable proxy in front of RabbitMQ).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_gateway::GatewayConfig;
use courier_tests::chaos::TcpProxy;
use courier_tests::spans::{attr_text, new_traceparent, parse_traceparent, SpanSink};
use courier_tests::{
    prospect_created, wait_until, Api, Behaviour, Received, Service, TenantHandle, TestEnv,
    TestReceiver,
};
use courier_worker::WorkerConfig;
use opentelemetry::trace::SpanKind;
use serde_json::{json, Value};

struct Setup {
    env: TestEnv,
    gateway: Service,
    worker: Service,
    receiver: TestReceiver,
    api: Api,
    tenant: TenantHandle,
    gateway_spans: SpanSink,
    worker_spans: SpanSink,
}

impl Setup {
    /// Gateway and worker with short retries, each exporting its spans into its own
    /// sink; `adjust` may change the worker's configuration.
    async fn new(name: &str, adjust: impl FnOnce(&mut GatewayConfig, &mut WorkerConfig)) -> Self {
        let mut env = TestEnv::new(name).await;
        let (mut gateway_config, mut worker_config) = env.short_retries();
        let (gateway_spans, worker_spans) = (SpanSink::new(), SpanSink::new());
        gateway_config.traces_override = Some(gateway_spans.hook());
        worker_config.traces_override = Some(worker_spans.hook());
        adjust(&mut gateway_config, &mut worker_config);
        let gateway = env.start_gateway(gateway_config).await;
        let worker = env.start_worker(worker_config).await;
        let receiver = TestReceiver::start().await;
        let api = Api::new(&gateway);
        let tenant = api.tenant("acme").await;
        Self {
            env,
            gateway,
            worker,
            receiver,
            api,
            tenant,
            gateway_spans,
            worker_spans,
        }
    }

    /// A webhook on `/hook` of the receiver for every Prospect event, with `extra`.
    async fn webhook(&self, extra: Value) -> WebhookId {
        let mut body =
            json!({"name": "crm", "url": self.receiver.url("/hook"), "events": ["Prospect.*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let created = self.api.webhook(&self.tenant, body).await;
        WebhookId::parse(created["id"].as_str().unwrap()).unwrap()
    }

    /// Sends one Prospect event with a `traceparent` header; returns the status.
    async fn send_traced(&self, event: &str, traceparent: &str) -> u16 {
        self.api
            .http
            .post(format!("{}/v1/events", self.api.base))
            .bearer_auth(&self.tenant.key)
            .header("traceparent", traceparent)
            .json(&prospect_created(event))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn received(&self, n: usize) -> Vec<Received> {
        wait_until(
            &format!("{n} requests at the receiver"),
            Duration::from_secs(15),
            || async { (self.receiver.count() >= n).then(|| self.receiver.received()) },
        )
        .await
    }

    async fn stop(self) {
        self.worker.stop().await.unwrap();
        self.gateway.stop().await.unwrap();
        self.receiver.stop();
        self.env.cleanup().await;
    }
}

fn ids(span: &opentelemetry_sdk::trace::SpanData) -> (String, String) {
    (
        span.span_context.trace_id().to_string(),
        span.span_context.span_id().to_string(),
    )
}

#[tokio::test]
async fn an_event_is_traced_from_the_ingest_request_to_the_receiver() {
    let s = Setup::new("otel-e2e", |_, _| {}).await;
    let webhook = s.webhook(json!({})).await;
    let (traceparent, trace_id, caller_span) = new_traceparent();
    assert_eq!(s.send_traced("evt_traced", &traceparent).await, 202);

    let got = s.received(1).await;
    let (received_trace, received_parent) =
        parse_traceparent(got[0].header("traceparent").expect("a traceparent")).unwrap();
    assert_eq!(
        received_trace, trace_id,
        "the receiver continues the caller's trace"
    );

    // Gateway: the request's SERVER span under the caller's, the PRODUCER span under it.
    let server = s
        .gateway_spans
        .wait_kind(&trace_id, SpanKind::Server, 1)
        .await;
    let server = &server[0];
    assert_eq!(server.parent_span_id.to_string(), caller_span);
    assert_eq!(server.name, "POST /v1/events");
    for (key, value) in [
        ("http.request.method", "POST"),
        ("http.route", "/v1/events"),
        ("url.path", "/v1/events"),
        ("http.response.status_code", "202"),
    ] {
        assert_eq!(attr_text(server, key).as_deref(), Some(value), "{key}");
    }
    let producer = s
        .gateway_spans
        .wait_kind(&trace_id, SpanKind::Producer, 1)
        .await;
    let producer = &producer[0];
    assert_eq!(producer.parent_span_id, server.span_context.span_id());
    let exchange = format!("{}courier.events", s.env.prefix);
    for (key, value) in [
        ("messaging.system", "rabbitmq"),
        ("messaging.operation.type", "publish"),
        ("messaging.destination.name", exchange.as_str()),
        ("messaging.message.id", "evt_traced"),
    ] {
        assert_eq!(attr_text(producer, key).as_deref(), Some(value), "{key}");
    }

    // Worker: the CONSUMER span under the publish, the delivery's CLIENT span under it.
    let consumer = s
        .worker_spans
        .wait_kind(&trace_id, SpanKind::Consumer, 1)
        .await;
    let consumer = &consumer[0];
    assert_eq!(consumer.parent_span_id, producer.span_context.span_id());
    assert_eq!(
        attr_text(consumer, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attr_text(consumer, "messaging.message.id").as_deref(),
        Some("evt_traced")
    );
    let client = s
        .worker_spans
        .wait_kind(&trace_id, SpanKind::Client, 1)
        .await;
    let client = &client[0];
    assert_eq!(client.parent_span_id, consumer.span_context.span_id());
    let batch = BatchId::for_single(&webhook, &EventId::parse("evt_traced").unwrap());
    for (key, value) in [
        ("courier.outcome", "delivered"),
        ("courier.attempt", "1"),
        ("courier.webhook.id", webhook.as_str()),
        ("courier.batch.id", batch.to_string().as_str()),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(attr_text(client, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(
        received_parent,
        client.span_context.span_id().to_string(),
        "the POST carries the attempt's span"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_retried_delivery_stays_in_the_trace_of_its_event() {
    let s = Setup::new("otel-retry", |_, _| {}).await;
    s.webhook(json!({})).await;
    s.receiver.script([Behaviour::Status(500)]);
    let (traceparent, trace_id, _) = new_traceparent();
    assert_eq!(s.send_traced("evt_retried", &traceparent).await, 202);

    let got = s.received(2).await;
    for r in &got {
        let (t, _) = parse_traceparent(r.header("traceparent").unwrap()).unwrap();
        assert_eq!(t, trace_id, "every attempt carries the event's trace");
    }
    let attempts = s
        .worker_spans
        .wait_kind(&trace_id, SpanKind::Client, 2)
        .await;
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(attr_text(first, "courier.attempt").as_deref(), Some("1"));
    assert_eq!(
        attr_text(first, "courier.outcome").as_deref(),
        Some("retry")
    );
    assert_eq!(
        attr_text(first, "http.response.status_code").as_deref(),
        Some("500")
    );
    assert_eq!(attr_text(second, "courier.attempt").as_deref(), Some("2"));
    assert_eq!(
        attr_text(second, "courier.outcome").as_deref(),
        Some("delivered")
    );
    assert_eq!(
        second.parent_span_id,
        first.span_context.span_id(),
        "the retry continues from the failed attempt"
    );
    let (_, second_parent) = parse_traceparent(got[1].header("traceparent").unwrap()).unwrap();
    assert_eq!(second_parent, second.span_context.span_id().to_string());
    s.stop().await;
}

#[tokio::test]
async fn a_batch_delivery_links_to_the_trace_of_every_event_in_it() {
    let s = Setup::new("otel-batch", |_, _| {}).await;
    s.webhook(json!({"throttling": 3})).await;
    let mut traces = BTreeSet::new();
    for i in 0..3 {
        let (traceparent, trace_id, _) = new_traceparent();
        assert_eq!(s.send_traced(&format!("evt_b{i}"), &traceparent).await, 202);
        traces.insert(trace_id);
    }
    let got = s.received(1).await;
    assert_eq!(got[0].json()["eventCount"], 3);

    let client = s
        .worker_spans
        .wait_for("the batch's delivery span", SpanKind::Client, |span| {
            span.links.len() == 3
        })
        .await;
    let linked: BTreeSet<String> = client
        .links
        .iter()
        .map(|l| l.span_context.trace_id().to_string())
        .collect();
    assert_eq!(linked, traces, "one link into each event's trace");
    // Each link names the event's consumer span.
    for link in client.links.iter() {
        let trace_id = link.span_context.trace_id().to_string();
        let consumer = s
            .worker_spans
            .wait_kind(&trace_id, SpanKind::Consumer, 1)
            .await;
        assert_eq!(
            link.span_context.span_id(),
            consumer[0].span_context.span_id()
        );
    }
    let (trace_id, span_id) = ids(&client);
    assert!(
        traces.contains(&trace_id),
        "in the trace of one of its events"
    );
    assert_eq!(
        attr_text(&client, "courier.outcome").as_deref(),
        Some("delivered")
    );
    let (received_trace, received_parent) =
        parse_traceparent(got[0].header("traceparent").unwrap()).unwrap();
    assert_eq!((received_trace, received_parent), (trace_id, span_id));
    s.stop().await;
}

#[tokio::test]
async fn deliveries_carry_no_traceparent_when_propagation_is_off() {
    let s = Setup::new("otel-off", |_, worker| worker.propagate_traceparent = false).await;
    s.webhook(json!({})).await;
    let (traceparent, trace_id, _) = new_traceparent();
    assert_eq!(s.send_traced("evt_quiet", &traceparent).await, 202);
    let got = s.received(1).await;
    assert_eq!(got[0].header("traceparent"), None);
    // The attempt is traced all the same.
    s.worker_spans
        .wait_kind(&trace_id, SpanKind::Client, 1)
        .await;
    s.stop().await;
}

/// `name{labels} value` lines of a service's `/metrics`.
async fn metric(service: &Service, sample: &str) -> u64 {
    service.metric(sample).await
}

#[tokio::test]
async fn metrics_count_deliveries_retries_dead_letters_and_rejections() {
    let s = Setup::new("otel-metrics", |_, _| {}).await;
    let webhook = s
        .webhook(json!({"retryPolicy": {"maxAttempts": 2, "schedule": ["0s", "200ms"]}}))
        .await;
    let batch = |event: &str| BatchId::for_single(&webhook, &EventId::parse(event).unwrap());
    let send = |event: &'static str| {
        let s = &s;
        async move {
            let (status, body) = s.api.send(&s.tenant, &prospect_created(event)).await;
            assert_eq!(status, 202, "{body}");
        }
    };

    // Delivered on its second attempt: one retry.
    s.receiver.script([Behaviour::Status(500)]);
    send("evt_m1").await;
    s.env
        .wait_status(&batch("evt_m1"), "delivered", Duration::from_secs(10))
        .await;
    // Failing twice: one retry, then failed (attempts exhausted).
    s.receiver
        .script([Behaviour::Status(500), Behaviour::Status(503)]);
    send("evt_m2").await;
    s.env
        .wait_status(&batch("evt_m2"), "failed", Duration::from_secs(10))
        .await;
    // Four delivered at once.
    for event in ["evt_m3", "evt_m4", "evt_m5", "evt_m6"] {
        send(event).await;
    }
    for event in ["evt_m3", "evt_m4", "evt_m5", "evt_m6"] {
        s.env
            .wait_status(&batch(event), "delivered", Duration::from_secs(10))
            .await;
    }
    // Refused: an event outside the catalog, a body that is not JSON, a bad key.
    let mut unknown = prospect_created("evt_bad");
    unknown["eventType"] = json!("EntityExploded");
    let (status, _) = s.api.send(&s.tenant, &unknown).await;
    assert_eq!(status, 422);
    let malformed = s
        .api
        .http
        .post(format!("{}/v1/events", s.api.base))
        .bearer_auth(&s.tenant.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let (status, _) = s
        .api
        .post("/v1/events", "ck_wrong", &prospect_created("evt_x"))
        .await;
    assert_eq!(status, 401);
    s.worker.wait_idle(6).await;

    let (g, w) = (&s.gateway, &s.worker);
    // The attempt's metrics are recorded just after its log record: wait for the last.
    wait_until("every attempt counted", Duration::from_secs(5), || async {
        (metric(
            w,
            "courier_delivery_attempt_duration_seconds_count{outcome=\"delivered\"}",
        )
        .await
            == 5)
            .then_some(())
    })
    .await;
    for (sample, want) in [
        ("courier_deliveries_total{outcome=\"delivered\"}", 5),
        ("courier_deliveries_total{outcome=\"retry\"}", 2),
        ("courier_deliveries_total{outcome=\"failed\"}", 1),
        ("courier_events_consumed_total{result=\"fanned_out\"}", 6),
        ("courier_retries_scheduled_total{rung=\"200ms\"}", 2),
        (
            "courier_dead_letters_total{reason=\"attempts_exhausted\"}",
            1,
        ),
        (
            "courier_delivery_attempt_duration_seconds_count{outcome=\"delivered\"}",
            5,
        ),
        (
            "courier_delivery_attempt_duration_seconds_count{outcome=\"retry\"}",
            2,
        ),
        (
            "courier_delivery_attempt_duration_seconds_count{outcome=\"failed\"}",
            1,
        ),
        ("courier_event_delivered_latency_seconds_count", 5),
        ("courier_deliveries_in_flight", 0),
        // The first event went through the broker as a delivery job (its webhook
        // was not yet known to answer promptly); later fresh events were attempted
        // straight from the fan-out; the retries went through the ladder.
        (
            "courier_publish_confirm_duration_seconds_count{destination=\"deliveries\"}",
            1,
        ),
        ("courier_jobs_published_total", 3),
        ("courier_redis_errors_total", 0),
    ] {
        assert_eq!(metric(w, sample).await, want, "worker: {sample}");
    }
    assert!(
        metric(
            w,
            "courier_publish_confirm_duration_seconds_count{destination=\"delay\"}"
        )
        .await
            >= 2,
        "the retries went through the delay ladder"
    );
    for (sample, want) in [
        ("courier_events_accepted_total", 6),
        ("courier_events_rejected_total{reason=\"invalid\"}", 1),
        ("courier_events_rejected_total{reason=\"malformed\"}", 1),
        ("courier_events_rejected_total{reason=\"unauthorized\"}", 1),
        ("courier_publish_confirm_duration_seconds_count{destination=\"events\"}", 6),
        (
            "courier_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/events\",status=\"202\"}",
            6,
        ),
        ("courier_amqp_errors_total{operation=\"publish\"}", 0),
    ] {
        assert_eq!(metric(g, sample).await, want, "gateway: {sample}");
    }
    let scrape = reqwest::get(format!("http://{}/metrics", g.addr))
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("openmetrics-text")));
    let text = scrape.text().await.unwrap();
    assert!(!text.contains(webhook.as_str()), "no webhook id in a label");
    s.stop().await;
}

/// Gateway and worker whose broker connection goes through `proxy`.
async fn behind_proxy(env: &TestEnv, proxy: &TcpProxy) -> (Service, Service) {
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let mut gateway = env.gateway_config();
    gateway.shared.amqp_url = url.clone();
    let mut worker = env.worker_config();
    worker.shared.amqp_url = url;
    (
        env.start_gateway(gateway).await,
        env.start_worker(worker).await,
    )
}

/// Whether `/readyz` of a service answers 200 now.
async fn ready(service: &Service) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    http.get(format!("http://{}/readyz", service.addr))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

fn rabbitmq() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 5672))
}

#[tokio::test]
async fn gateway_and_worker_are_not_ready_while_the_broker_is_unreachable() {
    let env = TestEnv::new("ready-cut").await;
    let proxy = TcpProxy::start(rabbitmq()).await;
    let (gateway, worker) = behind_proxy(&env, &proxy).await;
    assert!(ready(&gateway).await && ready(&worker).await);

    proxy.cut().await;
    wait_until(
        "both services to report not ready",
        Duration::from_secs(20),
        || async { (!ready(&gateway).await && !ready(&worker).await).then_some(()) },
    )
    .await;
    for service in [&gateway, &worker] {
        let answer = reqwest::get(format!("http://{}/readyz", service.addr))
            .await
            .unwrap();
        assert_eq!(answer.status(), 503, "still serving, not ready");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["ready"], false);
        assert_eq!(body["broker"], false);
        assert_eq!(body["redis"], true, "only the broker is away");
    }

    proxy.restore();
    let _ = worker.stop().await;
    let _ = gateway.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gateway_and_worker_are_ready_again_once_the_broker_is_back() {
    let env = TestEnv::new("ready-back").await;
    let proxy = TcpProxy::start(rabbitmq()).await;
    let (gateway, worker) = behind_proxy(&env, &proxy).await;

    proxy.cut().await;
    wait_until(
        "both services to report not ready",
        Duration::from_secs(20),
        || async { (!ready(&gateway).await && !ready(&worker).await).then_some(()) },
    )
    .await;
    proxy.restore();
    wait_until(
        "both services to be ready again",
        Duration::from_secs(30),
        || async { (ready(&gateway).await && ready(&worker).await).then_some(()) },
    )
    .await;
    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
