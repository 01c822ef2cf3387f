//! The delivery log API: listings with cursors and filters, one delivery with its
//! payload and attempts, scopes and tenants, and the CSV export streaming in flat
//! memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use courier_core::delivery::{AttemptRecord, DeliveryStatus, TransportError};
use courier_core::envelope::BatchEnvelope;
use courier_core::event::EnvelopeEvent;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_store::DeliveryRecord;
use courier_tests::{Api, TenantHandle, TestEnv, TestReceiver, ADMIN_TOKEN};
use serde_json::{json, Value};

/// The export test measures this process's memory: the other test of this file must
/// not run beside it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RETENTION: Duration = Duration::from_secs(3600);

/// An event whose `data` keys are not in alphabetical order, as sent.
fn event(id: &str) -> EnvelopeEvent {
    serde_json::from_str(&format!(
        r#"{{"eventId": "{id}", "eventType": "EntityCreated", "objectType": "Prospect",
            "data": {{"z": 1, "objectId": "prospect_123", "email": "jane@example.com", "a": 2}},
            "propertiesUpdated": null, "occurredAt": "2026-04-23T10:14:10Z"}}"#
    ))
    .unwrap()
}

/// A logged batch of one event with `attempts` attempts, the last one `last_code`.
fn record(
    tenant: &TenantId,
    webhook: &WebhookId,
    created_at: DateTime<Utc>,
    status: DeliveryStatus,
    attempts: u32,
    last_code: u16,
) -> DeliveryRecord {
    let batch = BatchId::generate();
    let events = [event(&format!("evt_{}", batch.as_uuid().simple()))];
    let body = BatchEnvelope::new(batch, created_at, &events).to_body();
    DeliveryRecord {
        batch_id: batch,
        tenant_id: tenant.clone(),
        webhook_id: webhook.clone(),
        event_ids: vec![events[0].event_id.to_string()],
        status,
        series: 1,
        created_at,
        updated_at: created_at,
        reason: (status == DeliveryStatus::Failed).then(|| "the endpoint answered 500".into()),
        payload: serde_json::value::RawValue::from_string(String::from_utf8(body).unwrap())
            .unwrap(),
        attempts: (1..=attempts)
            .map(|n| AttemptRecord {
                series: 1,
                attempt: n,
                started_at: created_at + TimeDelta::milliseconds(i64::from(n) * 200),
                status_code: if n == attempts { Some(last_code) } else { None },
                error: (n != attempts).then_some(TransportError::Timeout),
                latency_ms: 1000,
                response_body: None,
                outcome: format!(
                    "attempt {n}: no complete answer within the webhook's timeout, so the \
                     batch waits in the delay ladder for the next attempt of its series"
                ),
            })
            .collect(),
    }
}

/// A key of `tenant` with only these scopes, issued by the operator.
async fn key_with(api: &Api, tenant: &TenantHandle, scopes: &[&str]) -> String {
    let (status, body) = api
        .post(
            &format!("/v1/tenants/{}/keys", tenant.id),
            ADMIN_TOKEN,
            &json!({ "scopes": scopes }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["key"].as_str().unwrap().to_owned()
}

fn batch_ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["batchId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn deliveries_are_listed_newest_first_by_cursor_and_status_to_their_tenant_only() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("log-api").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
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
    let tenant_id = TenantId::parse(&tenant.id).unwrap();
    let base = Utc::now() - TimeDelta::minutes(10);
    let statuses = [
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Delivered,
        DeliveryStatus::Retrying,
        DeliveryStatus::Failed,
    ];
    let records: Vec<DeliveryRecord> = statuses
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let code = if *st == DeliveryStatus::Delivered {
                200
            } else {
                500
            };
            let at = base + TimeDelta::seconds(i64::try_from(i).unwrap());
            record(&tenant_id, &webhook, at, *st, 2, code)
        })
        .collect();
    env.store
        .import_deliveries(&records, RETENTION)
        .await
        .unwrap();
    let newest_first: Vec<String> = records
        .iter()
        .rev()
        .map(|r| r.batch_id.to_string())
        .collect();

    // Pages of two, newest first, following the cursor.
    let path = format!("/v1/webhooks/{webhook}/deliveries");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=2&cursor={c}"),
            None => format!("{path}?limit=2"),
        };
        let (status, page) = api.get(&url, &tenant.key).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(batch_ids(&page));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    let (_, page) = api.get(&path, &tenant.key).await;
    let first = &page["data"][0];
    assert_eq!(first["batchId"], newest_first[0]);
    assert_eq!(first["status"], "failed");
    assert_eq!(first["eventCount"], 1);
    assert_eq!(first["eventIds"].as_array().unwrap().len(), 1);
    assert_eq!(first["attempts"], 2);
    assert_eq!(first["lastStatusCode"], 500);
    assert!(first["createdAt"].is_string() && first["updatedAt"].is_string());
    assert_eq!(page["nextCursor"], Value::Null);

    let (_, failed) = api.get(&format!("{path}?status=failed"), &tenant.key).await;
    assert_eq!(
        batch_ids(&failed),
        [newest_first[0].clone(), newest_first[3].clone()]
    );
    let (_, delivered) = api
        .get(&format!("{path}?status=delivered&limit=1"), &tenant.key)
        .await;
    assert_eq!(batch_ids(&delivered), [newest_first[2].clone()]);
    let next = delivered["nextCursor"].as_str().unwrap();
    let (_, delivered) = api
        .get(
            &format!("{path}?status=delivered&limit=1&cursor={next}"),
            &tenant.key,
        )
        .await;
    assert_eq!(batch_ids(&delivered), [newest_first[4].clone()]);

    for bad in ["?limit=0", "?limit=101", "?status=lost", "?cursor=nope"] {
        let (status, body) = api.get(&format!("{path}{bad}"), &tenant.key).await;
        assert_eq!(
            (status, body["error"]["type"].clone()),
            (400, json!("bad_request")),
            "{bad}"
        );
    }

    // One delivery: the payload as JSON, every attempt.
    let one = &records[1];
    let (status, d) = api
        .get(&format!("/v1/deliveries/{}", one.batch_id), &tenant.key)
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["payload"]["batchId"], one.batch_id.to_string());
    assert_eq!(
        d["payload"]["events"][0]["data"]["email"],
        "jane@example.com"
    );
    assert_eq!(d["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(d["attempts"][0]["error"], "timeout");
    assert_eq!(d["attempts"][1]["statusCode"], 500);
    assert_eq!(d["reason"], "the endpoint answered 500");
    // The payload is the body as sent, byte for byte: keys in the order sent.
    let text = api
        .http
        .get(format!("{}/v1/deliveries/{}", api.base, one.batch_id))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&format!("\"payload\":{}", one.payload.get())),
        "{text}"
    );
    assert!(
        one.payload.get().contains(
            r#""data":{"z": 1, "objectId": "prospect_123", "email": "jane@example.com", "a": 2}"#
        ),
        "{}",
        one.payload.get()
    );

    // Another tenant sees none of it.
    let other = api.tenant("globex").await;
    let (status, body) = api.get(&path, &other.key).await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (404, json!("not_found"))
    );
    let (status, _) = api
        .get(&format!("/v1/deliveries/{}", one.batch_id), &other.key)
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .get(
            &format!("/v1/deliveries/export.csv?webhookId={webhook}"),
            &other.key,
        )
        .await;
    assert_eq!(status, 404);
    let (_, dead) = api.get("/v1/dead-letters", &other.key).await;
    assert_eq!(dead["data"], json!([]));
    let (status, _) = api.get("/v1/deliveries/not-a-batch", &tenant.key).await;
    assert_eq!(status, 400);

    // Scopes: reading needs `read`, replaying needs `manage`.
    let publish_only = key_with(&api, &tenant, &["publish"]).await;
    let (status, body) = api.get(&path, &publish_only).await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (403, json!("forbidden"))
    );
    let (status, _) = api.get("/v1/dead-letters", &publish_only).await;
    assert_eq!(status, 403);
    let read_only = key_with(&api, &tenant, &["read"]).await;
    assert_eq!(api.get(&path, &read_only).await.0, 200);
    let (status, _) = api
        .post(
            &format!("/v1/deliveries/{}/replay", one.batch_id),
            &read_only,
            &json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = api
        .post("/v1/dead-letters/replay", &read_only, &json!({}))
        .await;
    assert_eq!(status, 403);

    // The dead letters are the failed ones.
    let (_, dead) = api.get("/v1/dead-letters", &tenant.key).await;
    let mut dead = batch_ids(&dead);
    dead.sort();
    let mut want = vec![newest_first[0].clone(), newest_first[3].clone()];
    want.sort();
    assert_eq!(dead, want);

    // The export's route is its own, not a delivery called "export.csv"; since and
    // until bound the batches' creation times.
    let since = (base + TimeDelta::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let until = (base + TimeDelta::seconds(2)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let resp = api
        .http
        .get(format!("{}/v1/deliveries/export.csv", api.base))
        .query(&[
            ("webhookId", webhook.as_str()),
            ("since", &since),
            ("until", &until),
        ])
        .bearer_auth(&read_only)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = resp.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "batchId,webhookId,series,attempt,startedAt,statusCode,error,latencyMs,outcome,status"
    );
    assert_eq!(lines.len(), 1 + 4, "{csv}");
    assert!(lines[1].starts_with(&format!("{},{webhook},1,1,", records[1].batch_id)));
    assert!(lines[4].ends_with(",delivered"));
    let (status, body) = api
        .get("/v1/deliveries/export.csv?since=yesterday", &tenant.key)
        .await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (400, json!("bad_request"))
    );

    gateway.stop().await.unwrap();
    receiver.stop();
    env.cleanup().await;
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn the_csv_export_of_ten_thousand_attempts_streams_in_flat_memory() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("log-export").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let created = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": "http://127.0.0.1:9/hook", "events": ["*"]}),
        )
        .await;
    let webhook = WebhookId::parse(created["id"].as_str().unwrap()).unwrap();
    let tenant_id = TenantId::parse(&tenant.id).unwrap();

    // 2,500 batches of 4 attempts: 10,000 rows. Written 100 batches at a time, so
    // that little freed memory is left for the export to reuse unseen.
    let base = Utc::now() - TimeDelta::hours(1);
    let started = std::time::Instant::now();
    for chunk in 0..25 {
        let records: Vec<DeliveryRecord> = (0..100)
            .map(|i| {
                let at = base + TimeDelta::milliseconds(chunk * 100 + i);
                record(&tenant_id, &webhook, at, DeliveryStatus::Delivered, 4, 200)
            })
            .collect();
        env.store
            .import_deliveries(&records, RETENTION)
            .await
            .unwrap();
    }
    println!("wrote 10,000 attempts in {:?}", started.elapsed());

    // Sample this process's memory every 10 ms while the export streams.
    let baseline = rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut resp = api
        .http
        .get(format!(
            "{}/v1/deliveries/export.csv?webhookId={webhook}",
            api.base
        ))
        .bearer_auth(&tenant.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut bytes, mut lines, mut chunks) = (0usize, 0usize, 0usize);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        chunks += 1;
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed).max(rss());
    let growth = peak.saturating_sub(baseline);
    println!(
        "exported {lines} lines, {bytes} bytes in {chunks} chunks; RSS {} KiB before, {} KiB at the peak: +{} KiB",
        baseline / 1024,
        peak / 1024,
        growth / 1024
    );
    assert_eq!(lines, 1 + 10_000, "a header and one row per attempt");
    assert!(
        bytes >= 1024 * 1024,
        "the export is at least 1 MiB ({bytes})"
    );
    assert!(chunks > 10, "the export arrives in pieces, as it is read");
    assert!(
        growth < (bytes / 2) as u64,
        "memory grew by {growth} bytes streaming {bytes} bytes"
    );

    gateway.stop().await.unwrap();
    env.cleanup().await;
}
