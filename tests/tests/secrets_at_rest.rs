//! Webhook signing secrets and custom header values are stored encrypted under the
//! deployment's keyring and never shown; keys rotate without downtime and
//! `courier-gateway reencrypt-secrets` moves every record to the newest key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_core::keyring::Keyring;
use courier_core::signing::{verify, verify_hex, Secret};
use courier_gateway::GatewayConfig;
use courier_tests::security::redis_dump;
use courier_tests::{
    bin_path, prospect_created, Api, ChildService, Deps, TestEnv, TestReceiver, ADMIN_TOKEN,
    AMQP_URL, REDIS_URL,
};
use courier_worker::WorkerConfig;
use serde_json::{json, Value};

fn keyring(spec: &str) -> Keyring {
    Keyring::parse(spec).unwrap()
}

/// Gateway and worker configurations that seal secrets under the keyring `keys`.
fn sealed_under(env: &TestEnv, keys: &str) -> (GatewayConfig, WorkerConfig) {
    let ring = keyring(keys);
    let mut gw = env.gateway_config();
    gw.shared.secret_keys = Some(ring.clone());
    let mut wk = env.worker_config();
    wk.shared.secret_keys = Some(ring);
    (gw, wk)
}

/// The secret strings worth looking for: the whole `whsec_...` and its base64 part.
fn needles(secret: &str) -> [String; 2] {
    [
        secret.to_owned(),
        secret.trim_start_matches("whsec_").to_owned(),
    ]
}

#[tokio::test]
async fn no_signing_secret_is_stored_in_plaintext() {
    let env = TestEnv::new("secrets-plain").await;
    let (gw, wk) = sealed_under(&env, &Keyring::generate_entry("k1"));
    let gateway = env.start_gateway(gw).await;
    let worker = env.start_worker(wk).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let created = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"]}),
        )
        .await;
    let first = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap();
    let (status, rotated) = api
        .post(
            &format!("/v1/webhooks/{id}/rotate-secret"),
            &tenant.key,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["secret"].as_str().unwrap().to_owned();
    let (status, _) = api.send(&tenant, &prospect_created("evt_sealed")).await;
    assert_eq!(status, 202);
    let batch = BatchId::for_single(
        &WebhookId::parse(id).unwrap(),
        &EventId::parse("evt_sealed").unwrap(),
    );
    env.wait_status(&batch, "delivered", Duration::from_secs(20))
        .await;

    // Both secrets sign (the previous one during its TTL), so the worker read them.
    let got = &receiver.received()[0];
    let signature = got.header("webhook-signature").unwrap();
    assert_eq!(signature.split(' ').count(), 2);
    for secret in [&first, &second] {
        verify(
            &Secret::parse(secret).unwrap(),
            &batch.to_string(),
            got.header("webhook-timestamp").unwrap(),
            signature,
            &got.body,
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    }

    let dump = redis_dump(&env.prefix).await;
    assert!(dump.contains("enc:v1:k1:"), "the record is sealed: {dump}");
    for secret in [&first, &second] {
        for needle in needles(secret) {
            assert!(!dump.contains(&needle), "a secret is stored in plaintext");
        }
    }
    // Nor does any read of the API show it.
    let (_, read) = api.get(&format!("/v1/webhooks/{id}"), &tenant.key).await;
    let (_, list) = api.get("/v1/webhooks", &tenant.key).await;
    let (_, audit) = api.get("/v1/audit-log", &tenant.key).await;
    let (_, delivery) = api
        .get(&format!("/v1/deliveries/{batch}"), &tenant.key)
        .await;
    for shown in [read, list, audit, delivery] {
        let text = shown.to_string();
        assert!(
            !text.contains("whsec_") && !text.contains("enc:v1:"),
            "{text}"
        );
    }

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

/// A header value no other test uses, to look for.
fn unique_value(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// Sends `event_id` to the tenant and returns what the receiver got for `webhook_id`.
async fn deliver(
    env: &TestEnv,
    api: &Api,
    tenant: &courier_tests::TenantHandle,
    receiver: &TestReceiver,
    webhook_id: &str,
    event_id: &str,
) -> courier_tests::Received {
    let (status, body) = api.send(tenant, &prospect_created(event_id)).await;
    assert_eq!(status, 202, "{body}");
    let batch = BatchId::for_single(
        &WebhookId::parse(webhook_id).unwrap(),
        &EventId::parse(event_id).unwrap(),
    );
    env.wait_status(&batch, "delivered", Duration::from_secs(20))
        .await;
    receiver
        .received()
        .into_iter()
        .find(|r| r.header("webhook-id") == Some(batch.to_string().as_str()))
        .unwrap()
}

#[tokio::test]
async fn custom_header_values_are_sealed_never_shown_and_still_sent() {
    let env = TestEnv::new("secrets-headers").await;
    let (gw, wk) = sealed_under(&env, &Keyring::generate_entry("k1"));
    let gateway = env.start_gateway(gw).await;
    let worker = env.start_worker(wk).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let bearer = format!("Bearer {}", unique_value("rk"));
    let api_key = unique_value("ak");
    let created = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"],
                   "headers": {"Authorization": bearer, "X-Api-Key": api_key}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["headerNames"],
        json!(["Authorization", "X-Api-Key"])
    );
    assert!(created.get("headers").is_none(), "{created}");

    // The worker sends the real values.
    let got = deliver(&env, &api, &tenant, &receiver, &id, "evt_hdr_1").await;
    assert_eq!(got.header("authorization"), Some(bearer.as_str()));
    assert_eq!(got.header("x-api-key"), Some(api_key.as_str()));

    // Changing another field keeps the stored values.
    let path = format!("/v1/webhooks/{id}");
    let (status, body) = api
        .patch(
            &path,
            &tenant.key,
            &json!({"name": "crm v2", "timeoutMs": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headerNames"], json!(["Authorization", "X-Api-Key"]));
    let got = deliver(&env, &api, &tenant, &receiver, &id, "evt_hdr_2").await;
    assert_eq!(got.header("authorization"), Some(bearer.as_str()));
    assert_eq!(got.header("x-api-key"), Some(api_key.as_str()));

    // A headers patch sets and removes by name, and leaves the others alone.
    let new_key = unique_value("ak2");
    let (status, body) = api
        .patch(
            &path,
            &tenant.key,
            &json!({"headers": {"x-api-key": new_key, "Authorization": null, "X-Team": "sales"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headerNames"], json!(["X-Team", "x-api-key"]));
    let got = deliver(&env, &api, &tenant, &receiver, &id, "evt_hdr_3").await;
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("x-api-key"), Some(new_key.as_str()));
    assert_eq!(got.header("x-team"), Some("sales"));

    // Refusals do not repeat a value either: an invalid one, or one put where the
    // map goes.
    let refused = unique_value("refused");
    for patch in [
        json!({"headers": {"X-Api-Key": format!("{refused}\n")}}),
        json!({"headers": format!("Bearer {refused}")}),
    ] {
        let (status, body) = api.patch(&path, &tenant.key, &patch).await;
        assert_eq!(status, 422, "{body}");
        assert!(!body.to_string().contains(&refused), "{body}");
    }

    let secrets = [bearer.as_str(), api_key.as_str(), new_key.as_str()];
    let dump = redis_dump(&env.prefix).await;
    assert!(dump.contains("enc:v1:k1:"), "the record is sealed: {dump}");
    for value in secrets {
        assert!(
            !dump.contains(value),
            "a header value is stored in plaintext"
        );
    }
    let batch = BatchId::for_single(
        &WebhookId::parse(&id).unwrap(),
        &EventId::parse("evt_hdr_1").unwrap(),
    );
    let (_, read) = api.get(&path, &tenant.key).await;
    let (_, list) = api.get("/v1/webhooks", &tenant.key).await;
    let (_, audit) = api.get("/v1/audit-log", &tenant.key).await;
    let (_, operator_audit) = api.get("/v1/audit-log", ADMIN_TOKEN).await;
    let (_, delivery) = api
        .get(&format!("/v1/deliveries/{batch}"), &tenant.key)
        .await;
    assert_eq!(
        list["data"][0]["headerNames"],
        json!(["X-Team", "x-api-key"])
    );
    let changes: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        changes[..3],
        ["webhook.updated", "webhook.updated", "webhook.created"]
    );
    assert_eq!(
        audit["data"][0]["before"]["headerNames"],
        json!(["Authorization", "X-Api-Key"])
    );
    for shown in [read, list, audit, operator_audit, delivery] {
        let text = shown.to_string();
        for value in secrets {
            assert!(!text.contains(value), "{text}");
        }
        assert!(!text.contains("enc:v1:"), "{text}");
    }

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn custom_header_values_stay_out_of_the_services_logs() {
    // The real binaries at debug level, their output kept.
    let env = TestEnv::new("secrets-header-logs").await;
    let receiver = TestReceiver::start().await;
    let deps = Deps::shared(&env.prefix);
    let dir = std::env::temp_dir().join(format!("courier-{}", env.prefix.trim_end_matches('.')));
    std::fs::create_dir_all(&dir).unwrap();
    let (gateway_log, worker_log) = (dir.join("gateway.log"), dir.join("worker.log"));
    let debug = [("RUST_LOG", "debug")];
    let gateway = ChildService::gateway_logging_to(&deps, &debug, Some(&gateway_log)).await;
    let worker = ChildService::worker_logging_to(&deps, &debug, Some(&worker_log));
    worker.wait_ready("/readyz").await;
    let api = gateway.api();
    let tenant = api.tenant("acme").await;
    let value = unique_value("logged");
    let replaced = unique_value("replaced");
    let created = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": receiver.url("/hook"), "events": ["Prospect.*"],
                   "headers": {"X-Api-Key": value}}),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let got = deliver(&env, &api, &tenant, &receiver, &id, "evt_hdr_log_1").await;
    assert_eq!(got.header("x-api-key"), Some(value.as_str()));
    let (status, body) = api
        .patch(
            &format!("/v1/webhooks/{id}"),
            &tenant.key,
            &json!({"headers": {"X-Api-Key": replaced}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = deliver(&env, &api, &tenant, &receiver, &id, "evt_hdr_log_2").await;
    assert_eq!(got.header("x-api-key"), Some(replaced.as_str()));

    let (status, _) = gateway.terminate().await;
    assert!(status.success());
    let (status, _) = worker.terminate().await;
    assert!(status.success());
    let logs = [&gateway_log, &worker_log].map(|p| std::fs::read_to_string(p).unwrap());
    assert!(
        logs.iter().all(|l| l.contains("DEBUG")),
        "both services logged at debug level"
    );
    for log in &logs {
        assert!(!log.contains(&value) && !log.contains(&replaced), "{log}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    env.cleanup().await;
}

/// Runs `courier-gateway reencrypt-secrets` (the real binary) for this deployment.
async fn reencrypt(prefix: &str, keys: &str) -> String {
    let out = tokio::process::Command::new(bin_path("courier-gateway"))
        .arg("reencrypt-secrets")
        .env_clear()
        .env("COURIER_PROFILE", "production")
        .env("COURIER_PREFIX", prefix)
        .env("COURIER_AMQP_URL", AMQP_URL)
        .env("COURIER_REDIS_URL", REDIS_URL)
        .env("COURIER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COURIER_SECRET_KEYS", keys)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "reencrypt-secrets failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret_part in keys
        .split(',')
        .filter_map(|k| k.split_once(':'))
        .map(|(_, k)| k)
    {
        assert!(!stdout.contains(secret_part), "the command prints no key");
    }
    stdout
}

#[tokio::test]
async fn after_a_key_rotation_and_reencryption_every_webhook_still_delivers() {
    let env = TestEnv::new("secrets-rotate").await;
    let receiver = TestReceiver::start().await;
    let old = Keyring::generate_entry("old");
    let new = Keyring::generate_entry("new");
    let start = |keys: &str| {
        let (mut gw, wk) = sealed_under(&env, keys);
        gw.max_webhooks_per_tenant = 10;
        (gw, wk)
    };

    // Before: three webhooks under the old key, one of them mid-rotation; /a and /c
    // send a custom header.
    let (gw, wk) = start(&old);
    let gateway = env.start_gateway(gw).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let a_key = unique_value("ak");
    let c_auth = format!("Bearer {}", unique_value("rk"));
    let mut hooks: Vec<(String, Vec<String>, bool)> = Vec::new();
    for (path, scheme, headers) in [
        ("/a", "standard", json!({"X-Api-Key": a_key})),
        ("/b", "hmac-sha256-hex", json!({})),
        ("/c", "standard", json!({"Authorization": c_auth})),
    ] {
        let created = api
            .webhook(
                &tenant,
                json!({"name": path, "url": receiver.url(path), "events": ["Prospect.*"],
                       "signatureScheme": scheme, "headers": headers}),
            )
            .await;
        hooks.push((
            created["id"].as_str().unwrap().to_owned(),
            vec![created["secret"].as_str().unwrap().to_owned()],
            scheme == "standard",
        ));
    }
    let (status, rotated) = api
        .post(
            &format!("/v1/webhooks/{}/rotate-secret", hooks[2].0),
            &tenant.key,
            &json!({"previousSecretTtl": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    hooks[2]
        .1
        .insert(0, rotated["secret"].as_str().unwrap().to_owned());
    gateway.stop().await.unwrap();
    assert!(redis_dump(&env.prefix).await.contains("enc:v1:old:"));
    drop(wk);
    // /c as a record stored before header values were sealed: a plain `headers` map.
    let c_key = env
        .store
        .keys()
        .webhook(&WebhookId::parse(&hooks[2].0).unwrap());
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: String = redis::cmd("GET")
        .arg(&c_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut legacy: Value = serde_json::from_str(&raw).unwrap();
    let record = legacy.as_object_mut().unwrap();
    assert!(record.remove("sealedHeaders").is_some(), "{raw}");
    record.insert("headers".into(), json!({"Authorization": c_auth}));
    redis::cmd("SET")
        .arg(&c_key)
        .arg(legacy.to_string())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(redis_dump(&env.prefix).await.contains(&c_auth));

    // Rotate: deploy `new,old`, re-encrypt (twice: the second run finds nothing to do).
    let both = format!("{new},{old}");
    let printed = reencrypt(&env.prefix, &both).await;
    assert!(
        printed.starts_with("re-encrypted 3 webhook record(s) under key new; 0 already current, 0 failed, 3 scanned"),
        "{printed}"
    );
    let printed = reencrypt(&env.prefix, &both).await;
    assert!(
        printed.starts_with("re-encrypted 0 webhook record(s) under key new; 3 already current"),
        "{printed}"
    );
    let dump = redis_dump(&env.prefix).await;
    assert!(!dump.contains("enc:v1:old:"), "no record names the old key");
    assert_eq!(
        dump.matches("enc:v1:new:").count(),
        6,
        "3 current + 1 previous secret + 2 header values"
    );
    assert!(
        !dump.contains(&a_key) && !dump.contains(&c_auth),
        "no header value in plaintext"
    );

    // The old key can now go: services on `new` alone deliver with the unchanged secrets.
    let (gw, wk) = start(&new);
    let gateway = env.start_gateway(gw).await;
    let worker = env.start_worker(wk).await;
    let api = Api::new(&gateway);
    let (status, body) = api.send(&tenant, &prospect_created("evt_rotated")).await;
    assert_eq!(status, 202, "{body}");
    for (id, secrets, standard) in &hooks {
        let batch = BatchId::for_single(
            &WebhookId::parse(id).unwrap(),
            &EventId::parse("evt_rotated").unwrap(),
        );
        env.wait_status(&batch, "delivered", Duration::from_secs(20))
            .await;
        let path = receiver
            .received()
            .into_iter()
            .find(|r| r.header("webhook-id") == Some(batch.to_string().as_str()))
            .unwrap();
        match id {
            id if id == &hooks[0].0 => assert_eq!(path.header("x-api-key"), Some(a_key.as_str())),
            id if id == &hooks[2].0 => {
                assert_eq!(path.header("authorization"), Some(c_auth.as_str()));
            }
            _ => assert_eq!(path.header("x-api-key"), None),
        }
        for secret in secrets {
            let secret = Secret::parse(secret).unwrap();
            if *standard {
                verify(
                    &secret,
                    &batch.to_string(),
                    path.header("webhook-timestamp").unwrap(),
                    path.header("webhook-signature").unwrap(),
                    &path.body,
                    chrono::Utc::now().timestamp(),
                )
                .unwrap();
            } else {
                assert!(verify_hex(
                    &secret,
                    path.header("x-courier-signature").unwrap(),
                    &path.body
                ));
            }
        }
    }
    // Reads through the API still work, and show no secret.
    let (status, list) = api.get("/v1/webhooks", &tenant.key).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3);
    assert!(!list.to_string().contains("whsec_"));
    let _: Value = list;

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_record_under_a_key_no_longer_in_the_keyring_is_reported_not_lost() {
    let env = TestEnv::new("secrets-missing").await;
    let old = Keyring::generate_entry("old");
    let mut gw = env.gateway_config();
    gw.shared.secret_keys = Some(keyring(&old));
    let gateway = env.start_gateway(gw).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    api.webhook(
        &tenant,
        json!({"name": "x", "url": "http://127.0.0.1:9/x", "events": ["Prospect.*"]}),
    )
    .await;
    gateway.stop().await.unwrap();

    let out = tokio::process::Command::new(bin_path("courier-gateway"))
        .arg("reencrypt-secrets")
        .env_clear()
        .env("COURIER_PROFILE", "dev")
        .env("COURIER_PREFIX", &env.prefix)
        .env("COURIER_REDIS_URL", REDIS_URL)
        .env("COURIER_SECRET_KEYS", Keyring::generate_entry("new"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 failed"), "{stdout}");
    assert!(
        redis_dump(&env.prefix).await.contains("enc:v1:old:"),
        "the record is untouched"
    );
    env.cleanup().await;
}
