//! Webhook signing secrets are stored encrypted under the deployment's keyring;
//! keys rotate without downtime and `courier-gateway reencrypt-secrets` moves every
//! record to the newest key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_core::ids::{BatchId, EventId, WebhookId};
use courier_core::keyring::Keyring;
use courier_core::signing::{verify, verify_hex, Secret};
use courier_tests::security::redis_dump;
use courier_tests::{
    bin_path, prospect_created, Api, TestEnv, TestReceiver, ADMIN_TOKEN, AMQP_URL, REDIS_URL,
};
use serde_json::{json, Value};

fn keyring(spec: &str) -> Keyring {
    Keyring::parse(spec).unwrap()
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
    let keys = keyring(&Keyring::generate_entry("k1"));
    let mut gw = env.gateway_config();
    gw.shared.secret_keys = Some(keys.clone());
    let mut wk = env.worker_config();
    wk.shared.secret_keys = Some(keys);
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
        let ring = keyring(keys);
        let mut gw = env.gateway_config();
        gw.max_webhooks_per_tenant = 10;
        gw.shared.secret_keys = Some(ring.clone());
        let mut wk = env.worker_config();
        wk.shared.secret_keys = Some(ring);
        (gw, wk)
    };

    // Before: three webhooks under the old key, one of them mid-rotation.
    let (gw, wk) = start(&old);
    let gateway = env.start_gateway(gw).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let mut hooks: Vec<(String, Vec<String>, bool)> = Vec::new();
    for (path, scheme) in [
        ("/a", "standard"),
        ("/b", "hmac-sha256-hex"),
        ("/c", "standard"),
    ] {
        let created = api
            .webhook(
                &tenant,
                json!({"name": path, "url": receiver.url(path), "events": ["Prospect.*"],
                       "signatureScheme": scheme}),
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
        4,
        "3 current + 1 previous secret"
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
