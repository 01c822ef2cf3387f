//! The delivery log's Lua scripts against the real Redis: claims keep a job from
//! POSTing twice, statuses only move forward within a series, a holder taken over
//! after its lease changes nothing, a new series starts over, and failed batches
//! come and go from the tenant's dead letters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use courier_core::delivery::{AttemptRecord, DeliveryStatus};
use courier_core::envelope::DeliveryJob;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_store::{Claim, ClaimRequest, DeliveryRecord, Store};
use courier_tests::TestEnv;
use serde_json::json;

const RETENTION: Duration = Duration::from_secs(3600);

fn job(batch: BatchId, series: u32, attempt: u32) -> DeliveryJob {
    let now = Utc::now();
    serde_json::from_value(json!({
        "batchId": batch, "tenantId": "acme", "webhookId": "wh_store1", "generation": 0,
        "series": series, "attempt": attempt, "createdAt": now, "dueAt": now,
        "events": [{"eventId": "evt_1", "eventType": "EntityCreated", "objectType": "Prospect",
                    "data": {"objectId": "p1"}, "propertiesUpdated": null, "occurredAt": now}]
    }))
    .unwrap()
}

fn attempt(job: &DeliveryJob, code: u16, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        series: job.series,
        attempt: job.attempt,
        started_at: Utc::now(),
        status_code: Some(code),
        error: None,
        latency_ms: 3,
        response_body: None,
        outcome: outcome.into(),
    }
}

async fn claim(store: &Store, job: &DeliveryJob, holder: &str) -> Claim {
    let body = job.envelope().to_body();
    store
        .claim(ClaimRequest {
            job,
            holder,
            lease: Duration::from_secs(30),
            payload: &body,
            retention: RETENTION,
        })
        .await
        .unwrap()
}

async fn status(store: &Store, batch: &BatchId) -> DeliveryStatus {
    store.delivery(batch).await.unwrap().unwrap().status
}

async fn dead_letters(store: &Store) -> Vec<BatchId> {
    store
        .dead_letters_page(&TenantId::parse("acme").unwrap(), None, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| d.delivery.batch_id)
        .collect()
}

#[tokio::test]
async fn the_same_attempt_twice_is_done_and_a_held_one_is_busy() {
    let env = TestEnv::new("claims").await;
    let s = &env.store;
    let j = job(BatchId::generate(), 1, 1);

    assert_eq!(claim(s, &j, "w1:1").await, Claim::Claimed);
    assert_eq!(
        claim(s, &j, "w1:1").await,
        Claim::Claimed,
        "the holder may claim again"
    );
    match claim(s, &j, "w2:7").await {
        Claim::Busy(left) => assert!(left > Duration::ZERO && left <= Duration::from_secs(30)),
        other => panic!("another holder must wait, got {other:?}"),
    }
    assert_eq!(status(s, &j.batch_id).await, DeliveryStatus::Pending);

    assert!(s
        .finish(
            &j,
            "w1:1",
            Some(&attempt(&j, 200, "delivered")),
            DeliveryStatus::Delivered,
            RETENTION
        )
        .await
        .unwrap());
    assert_eq!(claim(s, &j, "w2:7").await, Claim::Done);
    assert_eq!(claim(s, &j, "w1:1").await, Claim::Done);
    // A later attempt of a series that has ended is not made either.
    assert_eq!(
        claim(s, &j.next_attempt(Utc::now()), "w2:8").await,
        Claim::Done
    );

    let record = s.delivery(&j.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Delivered);
    assert_eq!(record.attempts.len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_late_failed_never_moves_a_delivered_batch_back() {
    let env = TestEnv::new("monotonic").await;
    let s = &env.store;
    let first = job(BatchId::generate(), 1, 1);
    let second = first.next_attempt(Utc::now());

    assert_eq!(claim(s, &first, "w1:1").await, Claim::Claimed);
    assert!(s
        .finish(
            &first,
            "w1:1",
            Some(&attempt(&first, 503, "retrying")),
            DeliveryStatus::Retrying,
            RETENTION
        )
        .await
        .unwrap());
    assert_eq!(status(s, &first.batch_id).await, DeliveryStatus::Retrying);
    assert_eq!(claim(s, &second, "w1:2").await, Claim::Claimed);
    assert!(s
        .finish(
            &second,
            "w1:2",
            Some(&attempt(&second, 200, "delivered")),
            DeliveryStatus::Delivered,
            RETENTION
        )
        .await
        .unwrap());

    // A copy of the first attempt that ran late reports failure and a retry.
    for late in [
        DeliveryStatus::Failed,
        DeliveryStatus::Retrying,
        DeliveryStatus::Pending,
    ] {
        let applied = s
            .finish(
                &first,
                "w1:1",
                Some(&attempt(&first, 500, "late")),
                late,
                RETENTION,
            )
            .await
            .unwrap();
        assert!(!applied, "{late:?} after delivered must not apply");
    }
    let record = s.delivery(&first.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Delivered);
    assert_eq!(record.reason, None);
    assert_eq!(record.attempts.len(), 5, "every attempt is still logged");
    assert!(
        dead_letters(s).await.is_empty(),
        "a delivered batch is no dead letter"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_new_series_resets_to_pending_and_supersedes_the_old_one() {
    let env = TestEnv::new("series").await;
    let s = &env.store;
    let old = job(BatchId::generate(), 1, 1);
    assert_eq!(claim(s, &old, "w1:1").await, Claim::Claimed);
    assert!(s
        .finish(
            &old,
            "w1:1",
            Some(&attempt(&old, 404, "the endpoint answered 404")),
            DeliveryStatus::Failed,
            RETENTION
        )
        .await
        .unwrap());
    let failed = s.delivery(&old.batch_id).await.unwrap().unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.reason.as_deref(), Some("the endpoint answered 404"));
    assert_eq!(dead_letters(s).await, [old.batch_id]);

    let replay = DeliveryJob {
        series: 2,
        ..old.clone()
    };
    assert_eq!(claim(s, &replay, "w2:1").await, Claim::Claimed);
    let record = s.delivery(&old.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Pending);
    assert_eq!(record.series, 2);
    assert_eq!(record.reason, None);
    assert_eq!(
        record.created_at, failed.created_at,
        "the batch keeps its creation time"
    );
    assert_eq!(
        record.attempts.len(),
        1,
        "earlier series' attempts stay in the log"
    );
    assert!(
        dead_letters(s).await.is_empty(),
        "a replayed batch leaves the dead letters"
    );

    // Work of the old series is obsolete now, and its results do not apply.
    assert_eq!(
        claim(s, &old.next_attempt(Utc::now()), "w1:2").await,
        Claim::Superseded
    );
    assert!(!s
        .finish(&old, "w1:1", None, DeliveryStatus::Cancelled, RETENTION)
        .await
        .unwrap());
    assert_eq!(status(s, &old.batch_id).await, DeliveryStatus::Pending);
    env.cleanup().await;
}

#[tokio::test]
async fn a_parked_job_is_marked_failed_unless_its_series_has_ended() {
    let env = TestEnv::new("markdead").await;
    let s = &env.store;

    // Never claimed: the record is created, failed, with the reason.
    let unseen = job(BatchId::generate(), 1, 3);
    assert!(s
        .mark_dead(&unseen, "parked: delivery_limit", RETENTION)
        .await
        .unwrap());
    let r = s.delivery(&unseen.batch_id).await.unwrap().unwrap();
    assert_eq!(r.status, DeliveryStatus::Failed);
    assert_eq!(r.reason.as_deref(), Some("parked: delivery_limit"));
    assert_eq!(r.event_ids, ["evt_1"]);
    assert!(r.attempts.is_empty());
    assert!(!s.mark_dead(&unseen, "again", RETENTION).await.unwrap());

    // Retrying: marked. Delivered: left alone.
    let retrying = job(BatchId::generate(), 1, 1);
    claim(s, &retrying, "w:1").await;
    s.finish(
        &retrying,
        "w:1",
        Some(&attempt(&retrying, 500, "retrying")),
        DeliveryStatus::Retrying,
        RETENTION,
    )
    .await
    .unwrap();
    assert!(s
        .mark_dead(&retrying.next_attempt(Utc::now()), "parked", RETENTION)
        .await
        .unwrap());
    assert_eq!(status(s, &retrying.batch_id).await, DeliveryStatus::Failed);

    let delivered = job(BatchId::generate(), 1, 1);
    claim(s, &delivered, "w:2").await;
    s.finish(
        &delivered,
        "w:2",
        Some(&attempt(&delivered, 200, "delivered")),
        DeliveryStatus::Delivered,
        RETENTION,
    )
    .await
    .unwrap();
    assert!(!s.mark_dead(&delivered, "parked", RETENTION).await.unwrap());
    assert_eq!(
        status(s, &delivered.batch_id).await,
        DeliveryStatus::Delivered
    );

    let mut dead = dead_letters(s).await;
    dead.sort_by_key(|b| b.to_string());
    let mut want = vec![unseen.batch_id, retrying.batch_id];
    want.sort_by_key(|b| b.to_string());
    assert_eq!(dead, want);

    // A replay moves the record on at once and takes it off the dead letters.
    let replay = DeliveryJob {
        series: 2,
        ..unseen.clone()
    };
    assert!(s.mark_replayed(&replay).await.unwrap());
    assert!(!s.mark_replayed(&replay).await.unwrap(), "only once");
    let r = s.delivery(&unseen.batch_id).await.unwrap().unwrap();
    assert_eq!((r.status, r.series), (DeliveryStatus::Pending, 2));
    assert_eq!(claim(s, &replay, "w:3").await, Claim::Claimed);
    assert_eq!(dead_letters(s).await, [retrying.batch_id]);
    env.cleanup().await;
}

#[tokio::test]
async fn listings_page_through_equal_timestamps_without_gaps_or_repeats() {
    let env = TestEnv::new("cursor").await;
    let s = &env.store;
    let webhook = WebhookId::parse("wh_store1").unwrap();
    let base = Utc::now() - TimeDelta::minutes(5);
    // Seven batches, several created in the same millisecond.
    let records: Vec<DeliveryRecord> = (0..7)
        .map(|i| {
            let j = job(BatchId::generate(), 1, 1);
            DeliveryRecord {
                batch_id: j.batch_id,
                tenant_id: j.tenant_id.clone(),
                webhook_id: webhook.clone(),
                event_ids: vec![format!("evt_{i}")],
                status: if i % 3 == 0 {
                    DeliveryStatus::Failed
                } else {
                    DeliveryStatus::Delivered
                },
                series: 1,
                created_at: base + TimeDelta::milliseconds(i / 3),
                updated_at: base + TimeDelta::milliseconds(i / 3),
                reason: None,
                payload: serde_json::value::RawValue::from_string(
                    String::from_utf8(j.envelope().to_body()).unwrap(),
                )
                .unwrap(),
                attempts: vec![attempt(&j, 200, "delivered")],
            }
        })
        .collect();
    s.import_deliveries(&records, RETENTION).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .deliveries_page(&webhook, None, cursor.as_ref(), 2)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|d| (d.created_at, d.batch_id)));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "every batch once");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.to_string().cmp(&a.1.to_string())));
    assert_eq!(seen, sorted, "newest first");

    let failed = s
        .deliveries_page(&webhook, Some(DeliveryStatus::Failed), None, 100)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 3);
    assert!(failed.next.is_none());
    env.cleanup().await;
}

async fn claim_leased(store: &Store, job: &DeliveryJob, holder: &str, lease: Duration) -> Claim {
    let body = job.envelope().to_body();
    store
        .claim(ClaimRequest {
            job,
            holder,
            lease,
            payload: &body,
            retention: RETENTION,
        })
        .await
        .unwrap()
}

/// Waits until the claim of `job`'s attempt has expired.
async fn wait_lease_end(env: &TestEnv, job: &DeliveryJob) {
    let key = env
        .store
        .keys()
        .claim(&job.batch_id, job.series, job.attempt);
    let conn = redis::Client::open(courier_tests::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    courier_tests::wait_until("the lease to end", Duration::from_secs(5), || {
        let (key, mut conn) = (key.clone(), conn.clone());
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            (!exists).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_stale_holders_finish_does_not_overwrite_the_newer_attempt() {
    let env = TestEnv::new("stale").await;
    let s = &env.store;
    let j = job(BatchId::generate(), 1, 1);
    let short = Duration::from_millis(200);

    // The first holder stalls past its lease; a second copy takes the attempt over.
    assert_eq!(claim_leased(s, &j, "w1:1", short).await, Claim::Claimed);
    wait_lease_end(&env, &j).await;
    assert_eq!(claim(s, &j, "w2:1").await, Claim::Claimed);

    // The first comes back late with a permanent failure: logged, nothing more.
    let late = s
        .finish(
            &j,
            "w1:1",
            Some(&attempt(&j, 410, "the endpoint answered 410")),
            DeliveryStatus::Failed,
            RETENTION,
        )
        .await
        .unwrap();
    assert!(!late, "a stale holder's result must not apply");
    let record = s.delivery(&j.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Pending);
    assert_eq!(record.reason, None);
    assert_eq!(record.attempts.len(), 1, "its attempt is still logged");
    assert!(dead_letters(s).await.is_empty());
    match claim(s, &j, "w3:1").await {
        Claim::Busy(_) => {}
        other => panic!("the takeover still holds the claim, got {other:?}"),
    }

    // The takeover's delivery is what the batch ends as.
    assert!(s
        .finish(
            &j,
            "w2:1",
            Some(&attempt(&j, 200, "delivered")),
            DeliveryStatus::Delivered,
            RETENTION,
        )
        .await
        .unwrap());
    let record = s.delivery(&j.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Delivered);
    assert_eq!(record.attempts.len(), 2);
    assert_eq!(claim(s, &j, "w3:1").await, Claim::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn a_holder_whose_lease_ran_out_untaken_still_finishes() {
    let env = TestEnv::new("lapsed").await;
    let s = &env.store;
    let j = job(BatchId::generate(), 1, 1);
    assert_eq!(
        claim_leased(s, &j, "w1:1", Duration::from_millis(200)).await,
        Claim::Claimed
    );
    wait_lease_end(&env, &j).await;
    assert!(s
        .finish(
            &j,
            "w1:1",
            Some(&attempt(&j, 404, "the endpoint answered 404")),
            DeliveryStatus::Failed,
            RETENTION,
        )
        .await
        .unwrap());
    assert_eq!(status(s, &j.batch_id).await, DeliveryStatus::Failed);
    assert_eq!(dead_letters(s).await, [j.batch_id]);
    assert_eq!(claim(s, &j, "w2:1").await, Claim::Done);
    env.cleanup().await;
}

#[tokio::test]
async fn a_later_attempt_that_finds_no_record_creates_it_with_the_payload() {
    let env = TestEnv::new("norecord").await;
    let s = &env.store;
    // A retry whose record is gone (expired, or the first attempt never claimed).
    let j = job(BatchId::generate(), 1, 1).next_attempt(Utc::now());
    assert_eq!(claim(s, &j, "w1:2").await, Claim::Claimed);
    let record = s.delivery(&j.batch_id).await.unwrap().unwrap();
    assert_eq!(record.status, DeliveryStatus::Pending);
    assert_eq!(record.event_ids, ["evt_1"]);
    assert_eq!(
        record.payload.get().as_bytes(),
        j.envelope().to_body().as_slice()
    );

    // A replay (a new series) of an existing record moves it on without resending it.
    let replay = DeliveryJob {
        series: 2,
        attempt: 1,
        ..j.clone()
    };
    assert_eq!(claim(s, &replay, "w1:3").await, Claim::Claimed);
    let moved = s.delivery(&j.batch_id).await.unwrap().unwrap();
    assert_eq!((moved.series, moved.status), (2, DeliveryStatus::Pending));
    assert_eq!(moved.payload.get(), record.payload.get());
    assert_eq!(moved.event_ids, record.event_ids);
    env.cleanup().await;
}
