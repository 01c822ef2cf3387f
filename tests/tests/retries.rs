//! Retries through the delay ladder, dead letters and replays, end to end with short
//! timing: a ladder of 100ms, 200ms, 500ms and 1s, and a default schedule of 0s,
//! 200ms, 500ms, 1s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_broker::lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use courier_broker::lapin::BasicProperties;
use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_core::signing::{verify, Secret};
use courier_tests::{
    prospect_created, wait_until, Api, Behaviour, Received, Service, TenantHandle, TestEnv,
    TestReceiver, ADMIN_TOKEN,
};
use serde_json::{json, Value};

struct Setup {
    env: TestEnv,
    gateway: Service,
    worker: Service,
    receiver: TestReceiver,
    api: Api,
    tenant: TenantHandle,
}

impl Setup {
    async fn new(name: &str) -> Self {
        let mut env = TestEnv::new(name).await;
        let (gateway_config, worker_config) = env.short_retries();
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
        }
    }

    /// Creates a webhook on `/hook` of the receiver for every Prospect event, with
    /// `extra` fields; returns its id and secret.
    async fn webhook(&self, extra: Value) -> (WebhookId, Secret) {
        let mut body =
            json!({"name": "crm", "url": self.receiver.url("/hook"), "events": ["Prospect.*"]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let created = self.api.webhook(&self.tenant, body).await;
        (
            WebhookId::parse(created["id"].as_str().unwrap()).unwrap(),
            Secret::parse(created["secret"].as_str().unwrap()).unwrap(),
        )
    }

    /// Sends a Prospect event and returns the batch id it gets for `webhook`.
    async fn send(&self, webhook: &WebhookId, event: &str) -> BatchId {
        let (status, body) = self.api.send(&self.tenant, &prospect_created(event)).await;
        assert_eq!(status, 202, "{body}");
        BatchId::for_single(webhook, &EventId::parse(event).unwrap())
    }

    async fn received(&self, n: usize) -> Vec<Received> {
        wait_until(
            &format!("{n} requests at the receiver"),
            Duration::from_secs(10),
            || async { (self.receiver.count() >= n).then(|| self.receiver.received()) },
        )
        .await
    }

    /// The delivery as the API shows it.
    async fn delivery(&self, batch: &BatchId) -> Value {
        let (status, body) = self
            .api
            .get(&format!("/v1/deliveries/{batch}"), &self.tenant.key)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn dead_letters(&self) -> Vec<String> {
        let (status, body) = self.api.get("/v1/dead-letters", &self.tenant.key).await;
        assert_eq!(status, 200, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["batchId"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn stop(self) {
        self.worker.stop().await.unwrap();
        self.gateway.stop().await.unwrap();
        self.receiver.stop();
        self.env.cleanup().await;
    }
}

fn codes(delivery: &Value) -> Vec<Value> {
    delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["statusCode"].clone())
        .collect()
}

fn gap(a: &Received, b: &Received) -> Duration {
    b.at.duration_since(a.at)
}

#[tokio::test]
async fn temporary_failures_are_retried_on_the_schedule_until_delivered() {
    let s = Setup::new("retry-schedule").await;
    let (webhook, _) = s.webhook(json!({})).await;
    s.receiver
        .script([Behaviour::Status(500), Behaviour::Status(503)]);
    let batch = s.send(&webhook, "evt_retry_1").await;

    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let got = s.received(3).await;
    assert_eq!(got.len(), 3);
    let attempts: Vec<_> = got.iter().map(|r| r.header("x-courier-attempt")).collect();
    assert_eq!(attempts, [Some("1"), Some("2"), Some("3")]);
    // The schedule's delays are lower bounds; the ladder adds at most one smallest
    // rung (100ms), plus processing.
    let (first, second) = (gap(&got[0], &got[1]), gap(&got[1], &got[2]));
    println!("gaps between attempts: {first:?}, {second:?}");
    assert!(first >= Duration::from_millis(200), "{first:?}");
    assert!(first < Duration::from_millis(1500), "{first:?}");
    assert!(second >= Duration::from_millis(500), "{second:?}");
    assert!(second < Duration::from_millis(2000), "{second:?}");

    let d = s.delivery(&batch).await;
    assert_eq!(d["status"], "delivered");
    assert_eq!(codes(&d), [json!(500), json!(503), json!(200)]);
    // The scheduled 200ms, lengthened by at most a fifth at random.
    let outcome = d["attempts"][0]["outcome"].as_str().unwrap();
    let waited = outcome
        .strip_prefix("the endpoint answered 500; retrying in ")
        .and_then(|ms| ms.strip_suffix("ms"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{outcome}"));
    assert!((200..=240).contains(&waited), "{outcome}");
    assert_eq!(
        d["payload"]["batchId"],
        batch.to_string(),
        "the payload is JSON"
    );
    s.worker.wait_idle(1).await;
    let retries = s
        .worker
        .metric("courier_deliveries_total{outcome=\"retry\"}")
        .await;
    assert_eq!(retries, 2);
    assert!(s.dead_letters().await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn every_attempt_has_the_same_webhook_id_and_a_fresh_timestamp_and_signature() {
    let s = Setup::new("retry-signed").await;
    // One-second gaps, so each attempt's timestamp (in seconds) differs.
    let (webhook, secret) = s
        .webhook(json!({"retryPolicy": {"maxAttempts": 3, "schedule": ["0s", "1s", "1s"]}}))
        .await;
    s.receiver
        .script([Behaviour::Status(502), Behaviour::Status(500)]);
    let batch = s.send(&webhook, "evt_signed_retry").await;
    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let got = s.received(3).await;

    let now = chrono::Utc::now().timestamp();
    let mut timestamps = Vec::new();
    let mut signatures = Vec::new();
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some(batch.to_string().as_str()));
        assert_eq!(r.body, got[0].body, "every attempt sends the same body");
        let ts = r.header("webhook-timestamp").unwrap();
        let sig = r.header("webhook-signature").unwrap();
        verify(&secret, &batch.to_string(), ts, sig, &r.body, now)
            .expect("each attempt's signature verifies with its own timestamp");
        timestamps.push(ts.parse::<i64>().unwrap());
        signatures.push(sig.to_owned());
    }
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
    signatures.dedup();
    assert_eq!(signatures.len(), 3, "each attempt is signed afresh");
    s.stop().await;
}

#[tokio::test]
async fn client_errors_fail_after_one_attempt_as_dead_letters_unless_the_webhook_retries_them() {
    let s = Setup::new("retry-4xx").await;
    let (webhook, _) = s.webhook(json!({})).await;
    let mut batches = Vec::new();
    for code in [400u16, 401, 404, 410, 422] {
        s.receiver.set(Behaviour::Status(code));
        let batch = s.send(&webhook, &format!("evt_client_{code}")).await;
        let record = s
            .env
            .wait_status(&batch, "failed", Duration::from_secs(10))
            .await;
        assert_eq!(record.attempts.len(), 1, "{code}: exactly one attempt");
        assert_eq!(record.attempts[0].status_code, Some(code));
        assert_eq!(
            record.reason.as_deref(),
            Some(format!("the endpoint answered {code}").as_str())
        );
        batches.push(batch.to_string());
    }
    s.worker.wait_idle(5).await;
    assert_eq!(s.receiver.count(), 5, "no retries");
    let mut dead = s.dead_letters().await;
    dead.sort();
    batches.sort();
    assert_eq!(dead, batches, "every failed batch is a dead letter");
    let (_, listed) = s.api.get("/v1/dead-letters?limit=1", &s.tenant.key).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0]["failedAt"].is_string());
    assert!(listed["nextCursor"].is_string());

    // A webhook that retries client errors gets a second attempt.
    let other = TestReceiver::start().await;
    other.script([Behaviour::Status(404)]);
    let created = s
        .api
        .webhook(
            &s.tenant,
            json!({"name": "lenient", "url": other.url("/hook"), "events": ["Account.*"],
                   "retryPolicy": {"retryClientErrors": true}}),
        )
        .await;
    let lenient = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    let event = json!({"id": "evt_account_1", "objectType": "Account", "eventType": "EntityCreated", "data": {}});
    assert_eq!(s.api.send(&s.tenant, &event).await.0, 202);
    let batch = BatchId::for_single(&lenient, &EventId::parse("evt_account_1").unwrap());
    let record = s
        .env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let codes: Vec<_> = record.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(404), Some(200)]);
    other.stop();
    s.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_retried_before_it() {
    let s = Setup::new("retry-429").await;
    let (webhook, _) = s
        .webhook(json!({"retryPolicy": {"maxAttempts": 3, "schedule": ["0s", "200ms", "3s"]}}))
        .await;
    s.receiver.script([Behaviour::RateLimited {
        retry_after_secs: 2,
    }]);
    let batch = s.send(&webhook, "evt_429").await;
    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let got = s.received(2).await;
    let waited = gap(&got[0], &got[1]);
    println!("Retry-After: 2 was followed after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_millis(3500), "{waited:?}");
    let d = s.delivery(&batch).await;
    assert_eq!(codes(&d), [json!(429), json!(200)]);
    s.stop().await;
}

#[tokio::test]
async fn a_receiver_that_hangs_past_the_timeout_is_retried() {
    let s = Setup::new("retry-timeout").await;
    let (webhook, _) = s.webhook(json!({"timeoutMs": 1000})).await;
    s.receiver
        .script([Behaviour::Stall(Duration::from_millis(2500))]);
    let batch = s.send(&webhook, "evt_timeout").await;
    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let d = s.delivery(&batch).await;
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[0]["error"], "timeout");
    assert_eq!(attempts[0]["statusCode"], Value::Null);
    assert!(attempts[0]["latencyMs"].as_u64().unwrap() >= 1000);
    assert_eq!(attempts[1]["statusCode"], 200);
    s.stop().await;
}

#[tokio::test]
async fn a_batch_failing_every_attempt_ends_failed_and_a_replay_delivers_it() {
    let s = Setup::new("retry-replay").await;
    let (webhook, _) = s.webhook(json!({"retryPolicy": {"maxAttempts": 3}})).await;
    s.receiver.set(Behaviour::Status(500));
    let first = s.send(&webhook, "evt_exhausted_1").await;
    let second = s.send(&webhook, "evt_exhausted_2").await;
    for batch in [&first, &second] {
        let record = s
            .env
            .wait_status(batch, "failed", Duration::from_secs(10))
            .await;
        assert_eq!(record.attempts.len(), 3, "exactly maxAttempts");
        assert_eq!(
            record.reason.as_deref(),
            Some("the endpoint answered 500; still failing after 3 attempts")
        );
    }
    s.worker.wait_idle(2).await;
    assert_eq!(s.receiver.count(), 6);
    assert_eq!(s.dead_letters().await.len(), 2);

    // Replay one with the receiver healthy: a new series, the same webhook-id.
    s.receiver.set(Behaviour::Status(200));
    let (status, body) = s
        .api
        .post(
            &format!("/v1/deliveries/{first}/replay"),
            &s.tenant.key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"batchId": first.to_string(), "series": 2}));
    s.env
        .wait_status(&first, "delivered", Duration::from_secs(10))
        .await;
    let got = s.received(7).await;
    let replayed = got
        .iter()
        .rev()
        .find(|r| r.header("webhook-id") == Some(first.to_string().as_str()))
        .unwrap();
    assert_eq!(replayed.header("x-courier-attempt"), Some("1"));
    let d = s.delivery(&first).await;
    assert_eq!(d["series"], 2);
    assert_eq!(d["status"], "delivered");
    let series: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["series"].as_u64().unwrap())
        .collect();
    assert_eq!(series, [1, 1, 1, 2]);
    assert_eq!(s.dead_letters().await, [second.to_string()]);

    // The rest in bulk.
    let (status, body) = s
        .api
        .post(
            "/v1/dead-letters/replay",
            &s.tenant.key,
            &json!({"webhookId": webhook.to_string()}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["replayed"], 1);
    s.env
        .wait_status(&second, "delivered", Duration::from_secs(10))
        .await;
    assert!(s.dead_letters().await.is_empty());

    // Unknown, foreign, and disabled.
    let unknown = BatchId::generate();
    let (status, _) = s
        .api
        .post(
            &format!("/v1/deliveries/{unknown}/replay"),
            &s.tenant.key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let other = s.api.tenant("globex").await;
    let (status, body) = s
        .api
        .post(
            &format!("/v1/deliveries/{first}/replay"),
            &other.key,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (404, json!("not_found"))
    );
    let (status, _) = s
        .api
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &s.tenant.key,
            &json!({"active": false}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .api
        .post(
            &format!("/v1/deliveries/{first}/replay"),
            &s.tenant.key,
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (409, json!("conflict"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_delay_longer_than_the_top_rung_is_honoured() {
    let s = Setup::new("retry-long").await;
    // Three times the top rung (1s).
    let (webhook, _) = s
        .webhook(json!({"retryPolicy": {"maxAttempts": 2, "schedule": ["0s", "3s"]}}))
        .await;
    s.receiver.script([Behaviour::Status(503)]);
    let batch = s.send(&webhook, "evt_long_delay").await;
    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    let got = s.received(2).await;
    let waited = gap(&got[0], &got[1]);
    println!("a 3s delay over a 1s top rung took {waited:?}");
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(waited < Duration::from_millis(4500), "{waited:?}");
    let hops = s
        .worker
        .metric("courier_jobs_deferred_total{reason=\"not_due\"}")
        .await;
    assert!(hops >= 2, "the job went back into the ladder {hops} times");
    s.stop().await;
}

#[tokio::test]
async fn garbage_on_the_events_exchange_is_parked_and_the_next_event_is_delivered() {
    let s = Setup::new("retry-garbage").await;
    let (webhook, _) = s.webhook(json!({})).await;
    let ch = s.env.amqp.create_channel().await.unwrap();
    ch.basic_publish(
        &s.env.topology.events_exchange(),
        "acme.Prospect.EntityCreated",
        BasicPublishOptions::default(),
        b"this is not { json",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dead_queue = s.env.topology.dead_queue();
    wait_until(
        "the garbage to be parked",
        Duration::from_secs(10),
        || async { (s.env.queue_depth(&dead_queue).await == 1).then_some(()) },
    )
    .await;

    let batch = s.send(&webhook, "evt_after_garbage").await;
    s.env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;

    // The operator sees it, with why and from where; listing leaves it in place.
    let (status, body) = s.api.get("/v1/admin/dead-letter-queue", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["body"], "this is not { json");
    assert_eq!(listed[0]["routingKey"], "acme.Prospect.EntityCreated");
    assert_eq!(listed[0]["exchange"], s.env.topology.events_exchange());
    assert!(listed[0]["reason"].as_str().unwrap().len() > 3, "{body}");
    wait_until(
        "the listed message back in the queue",
        Duration::from_secs(5),
        || async { (s.env.queue_depth(&dead_queue).await == 1).then_some(()) },
    )
    .await;
    let (status, _) = s
        .api
        .get("/v1/admin/dead-letter-queue", &s.tenant.key)
        .await;
    assert_eq!(status, 401, "operators only");
    wait_until(
        "the log's copy to be read",
        Duration::from_secs(5),
        || async {
            let ignored = s
                .worker
                .metric("courier_dead_letter_copies_total{result=\"ignored\"}")
                .await;
            (ignored == 1).then_some(())
        },
    )
    .await;

    // Requeued, it is parked again (it still is garbage); then discarded.
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let (status, body) = s
        .api
        .post(
            "/v1/admin/dead-letter-queue/requeue",
            ADMIN_TOKEN,
            &json!({"ids": [id]}),
        )
        .await;
    assert_eq!(
        (status, body["requeued"].clone()),
        (200, json!(1)),
        "{body}"
    );
    wait_until(
        "the garbage to be parked again",
        Duration::from_secs(10),
        || async {
            let parked = s
                .worker
                .metric("courier_events_consumed_total{result=\"parked\"}")
                .await;
            (parked == 2 && s.env.queue_depth(&dead_queue).await == 1).then_some(())
        },
    )
    .await;
    let (status, body) = s
        .api
        .post(
            "/v1/admin/dead-letter-queue/discard",
            ADMIN_TOKEN,
            &json!({"all": true}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"discarded": 1})));
    assert_eq!(s.env.queue_depth(&dead_queue).await, 0);
    let (status, _) = s
        .api
        .post(
            "/v1/admin/dead-letter-queue/discard",
            ADMIN_TOKEN,
            &json!({}),
        )
        .await;
    assert_eq!(status, 422, "nothing selected");
    let _ = ch.close(200, "done").await;
    s.stop().await;
}

#[tokio::test]
async fn a_job_past_the_delivery_limit_is_failed_in_the_log_and_an_operator_requeue_delivers_it() {
    // No worker at first: the test itself plays a consumer that fails on the job
    // until RabbitMQ parks it.
    let mut env = TestEnv::new("retry-limit").await;
    let (gateway_config, worker_config) = env.short_retries();
    let gateway = env.start_gateway(gateway_config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let created = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["*"]}),
        )
        .await;
    let webhook = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    let batch = BatchId::for_single(&webhook, &EventId::parse("evt_poison").unwrap());
    let now = chrono::Utc::now();
    let job = json!({
        "batchId": batch, "tenantId": tenant.id, "webhookId": webhook, "generation": 0,
        "series": 1, "attempt": 1, "createdAt": now, "dueAt": now,
        "events": [{"eventId": "evt_poison", "eventType": "EntityCreated", "objectType": "Prospect",
                    "data": {"objectId": "p1"}, "propertiesUpdated": null, "occurredAt": now}]
    });
    let ch = env.amqp.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        &env.topology.deliveries(),
        "deliver",
        BasicPublishOptions::default(),
        job.to_string().as_bytes(),
        BasicProperties::default().with_message_id(batch.to_string().into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let dead_queue = env.topology.dead_queue();
    let mut returns = 0;
    let parked_at = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.queue_depth(&dead_queue).await == 0 {
        assert!(
            tokio::time::Instant::now() < parked_at,
            "the job was not parked"
        );
        let got = ch
            .basic_get(&env.topology.deliveries(), BasicGetOptions::default())
            .await
            .unwrap();
        let Some(got) = got else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        got.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        returns += 1;
        assert!(returns <= 60, "the delivery limit did not park the job");
    }
    println!("the job was parked after {returns} returns");
    let (_, body) = api.get("/v1/admin/dead-letter-queue", ADMIN_TOKEN).await;
    assert_eq!(body["data"][0]["reason"], "delivery_limit", "{body}");
    assert_eq!(body["data"][0]["id"], batch.to_string());
    assert_eq!(body["data"][0]["body"]["batchId"], batch.to_string());

    // The worker's dead-letter consumer marks it failed; the tenant sees it.
    let worker = env.start_worker(worker_config).await;
    let record = env
        .wait_status(&batch, "failed", Duration::from_secs(10))
        .await;
    assert!(record.attempts.is_empty());
    assert!(
        record
            .reason
            .as_deref()
            .unwrap()
            .contains("redelivered too many times"),
        "{:?}",
        record.reason
    );
    let (_, dead) = api.get("/v1/dead-letters", &tenant.key).await;
    assert_eq!(dead["data"][0]["batchId"], batch.to_string(), "{dead}");
    assert_eq!(receiver.count(), 0);
    assert_eq!(env.queue_depth(&dead_queue).await, 1, "kept for operators");

    // The operator sends it back: a new series of the batch, delivered.
    let (status, body) = api
        .post(
            "/v1/admin/dead-letter-queue/requeue",
            ADMIN_TOKEN,
            &json!({"all": true}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"requeued": 1, "skipped": 0})));
    let record = env
        .wait_status(&batch, "delivered", Duration::from_secs(10))
        .await;
    assert_eq!(record.series, 2);
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        receiver.received()[0].header("webhook-id"),
        Some(batch.to_string().as_str())
    );
    assert_eq!(env.queue_depth(&dead_queue).await, 0);

    let _ = ch.close(200, "done").await;
    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    receiver.stop();
    env.cleanup().await;
}

#[tokio::test]
async fn a_retry_schedule_past_its_bounds_is_refused_and_changes_nothing() {
    let s = Setup::new("retry-bounds").await;
    let with_schedule = |max_attempts: Value, schedule: Value| {
        json!({"name": "crm", "url": s.receiver.url("/hook"), "events": ["Prospect.*"],
               "retryPolicy": {"maxAttempts": max_attempts, "schedule": schedule}})
    };
    for (body, words) in [
        (
            with_schedule(json!(2), json!(["0s", "1m", "24h 1s"])),
            "delays must be at most 24h",
        ),
        (
            with_schedule(json!(2), json!(["0s", "1s", "1s", "1s", "1s", "1s"])),
            "lists 6 delays but at most 5 attempts are allowed",
        ),
    ] {
        let (status, answer) = s.api.post("/v1/webhooks", &s.tenant.key, &body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["type"], "unprocessable");
        assert_eq!(
            answer["error"]["details"]["retryPolicy.schedule"],
            json!(words),
            "{answer}"
        );
    }
    let (_, listed) = s.api.get("/v1/webhooks", &s.tenant.key).await;
    assert_eq!(listed["total"], 0, "{listed}");
    // At the bounds: accepted.
    s.api
        .webhook(
            &s.tenant,
            with_schedule(json!(5), json!(["0s", "1s", "1m", "1h", "24h"])),
        )
        .await;
    s.stop().await;
}

#[tokio::test]
async fn retries_of_a_disabled_or_deleted_webhook_end_cancelled_at_their_next_hop() {
    let s = Setup::new("retry-cancel").await;
    // A 20 s wait over a 1 s top rung: twenty hops if nothing stops it.
    let retry_policy = json!({"retryPolicy": {"maxAttempts": 2, "schedule": ["0s", "20s"]}});
    let (disabled, _) = s.webhook(retry_policy.clone()).await;
    let other = TestReceiver::start().await;
    let mut body = json!({"name": "gone", "url": other.url("/hook"), "events": ["Account.*"]});
    body["retryPolicy"] = retry_policy["retryPolicy"].clone();
    let created = s.api.webhook(&s.tenant, body).await;
    let deleted = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    s.receiver.set(Behaviour::Status(503));
    other.set(Behaviour::Status(503));
    let first = s.send(&disabled, "evt_cancel_disabled").await;
    let event = json!({"id": "evt_cancel_deleted", "objectType": "Account",
                       "eventType": "EntityCreated", "data": {}});
    assert_eq!(s.api.send(&s.tenant, &event).await.0, 202);
    let second = BatchId::for_single(&deleted, &EventId::parse("evt_cancel_deleted").unwrap());
    for batch in [&first, &second] {
        s.env
            .wait_status(batch, "retrying", Duration::from_secs(10))
            .await;
    }

    let changed_at = std::time::Instant::now();
    let path = format!("/v1/webhooks/{disabled}");
    let (status, _) = s
        .api
        .patch(&path, &s.tenant.key, &json!({"active": false}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .api
        .delete(&format!("/v1/webhooks/{deleted}"), &s.tenant.key)
        .await;
    assert_eq!(status, 204);
    for batch in [&first, &second] {
        let record = s
            .env
            .wait_status(batch, "cancelled", Duration::from_secs(10))
            .await;
        assert_eq!(record.attempts.len(), 1, "no second POST");
    }
    let took = changed_at.elapsed();
    println!("retries cancelled {took:?} after the change, not 20 s");
    // At their next hop out of the 1 s rung, far from their 20 s due time.
    assert!(took < Duration::from_secs(5), "{took:?}");
    s.worker.wait_idle(2).await;
    assert_eq!(s.receiver.count(), 1);
    assert_eq!(other.count(), 1);
    other.stop();
    s.stop().await;
}
