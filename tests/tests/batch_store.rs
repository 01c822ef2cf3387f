//! The batch accumulator's Redis scripts, against the real Redis: exactly N, N+1,
//! the same event twice, concurrent appends, the flush deadline, an expired lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use courier_core::event::EnvelopeEvent;
use courier_core::ids::{TenantId, WebhookId};
use courier_store::batch::{Append, BatchTiming, CutBatch};
use courier_tests::{wait_until, TestEnv};

fn event(id: &str) -> EnvelopeEvent {
    serde_json::from_str(&format!(
        r#"{{"eventId":"{id}","eventType":"EntityCreated","objectType":"Prospect","data":{{"n":"{id}"}},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}}"#
    ))
    .unwrap()
}

const TIMING: BatchTiming = BatchTiming {
    flush_timeout: Duration::from_secs(60),
    lease: Duration::from_secs(30),
};

async fn append(env: &TestEnv, wh: &WebhookId, n: u8, id: &str, timing: BatchTiming) -> Append {
    let tenant = TenantId::parse("acme").unwrap();
    env.store
        .append_to_batch(wh, &tenant, 0, n, &event(id), timing)
        .await
        .unwrap()
}

fn cut(a: Append) -> Vec<CutBatch> {
    match a {
        Append::Placed { cut } => cut,
        Append::Duplicate => panic!("unexpected duplicate"),
    }
}

fn ids(b: &CutBatch) -> Vec<&str> {
    b.events.iter().map(|e| e.event_id.as_str()).collect()
}

#[tokio::test]
async fn a_batch_is_cut_at_exactly_n_in_arrival_order() {
    let env = TestEnv::new("acc-n").await;
    let wh = WebhookId::generate();
    for i in 0..2 {
        assert!(cut(append(&env, &wh, 3, &format!("e{i}"), TIMING).await).is_empty());
    }
    let batches = cut(append(&env, &wh, 3, "e2", TIMING).await);
    assert_eq!(batches.len(), 1);
    assert_eq!(ids(&batches[0]), ["e0", "e1", "e2"]);
    assert_eq!(batches[0].seq, 1);
    // N+1: the fourth starts the next batch.
    assert!(cut(append(&env, &wh, 3, "e3", TIMING).await).is_empty());
    let next = cut(append(&env, &wh, 3, "e4", TIMING).await);
    assert!(next.is_empty());
    let next = cut(append(&env, &wh, 3, "e5", TIMING).await);
    assert_eq!(ids(&next[0]), ["e3", "e4", "e5"]);
    assert_ne!(next[0].batch_id(), batches[0].batch_id());
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_event_is_refused_for_the_same_webhook_only() {
    let env = TestEnv::new("acc-dup").await;
    let (a, b) = (WebhookId::generate(), WebhookId::generate());
    assert!(matches!(
        append(&env, &a, 5, "same", TIMING).await,
        Append::Placed { .. }
    ));
    assert!(matches!(
        append(&env, &a, 5, "same", TIMING).await,
        Append::Duplicate
    ));
    assert!(matches!(
        append(&env, &b, 5, "same", TIMING).await,
        Append::Placed { .. }
    ));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_put_each_event_in_exactly_one_batch_of_n() {
    let env = TestEnv::new("acc-conc").await;
    let wh = WebhookId::generate();
    let tasks = (0..400).map(|i| {
        let (store, wh) = (env.store.clone(), wh.clone());
        async move {
            let tenant = TenantId::parse("acme").unwrap();
            // Every event twice, from different tasks.
            let a = store
                .append_to_batch(
                    &wh,
                    &tenant,
                    0,
                    10,
                    &event(&format!("c{}", i % 200)),
                    TIMING,
                )
                .await
                .unwrap();
            match a {
                Append::Placed { cut } => cut,
                Append::Duplicate => Vec::new(),
            }
        }
    });
    let batches: Vec<CutBatch> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(batches.len(), 20);
    assert!(batches.iter().all(|b| b.events.len() == 10));
    let all: Vec<String> = batches
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.event_id.to_string()))
        .collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (200, 200),
        "every event exactly once"
    );
    let seqs: HashSet<u64> = batches.iter().map(|b| b.seq).collect();
    assert_eq!(seqs.len(), 20, "every batch has its own id");
    env.cleanup().await;
}

#[tokio::test]
async fn what_waits_is_flushed_once_the_oldest_waited_the_timeout() {
    let env = TestEnv::new("acc-due").await;
    let timing = BatchTiming {
        flush_timeout: Duration::from_millis(300),
        lease: Duration::from_secs(30),
    };
    let wh = WebhookId::generate();
    append(&env, &wh, 10, "d0", timing).await;
    append(&env, &wh, 10, "d1", timing).await;
    assert!(
        env.store.flush_due(64, timing).await.unwrap().is_empty(),
        "not due yet"
    );
    let start = std::time::Instant::now();
    let flushed = wait_until("the deadline", Duration::from_secs(5), || async {
        let b = env.store.flush_due(64, timing).await.unwrap();
        (!b.is_empty()).then_some(b)
    })
    .await;
    assert!(start.elapsed() < Duration::from_millis(1000));
    assert_eq!(ids(&flushed[0]), ["d0", "d1"]);
    assert!(
        env.store.flush_due(64, timing).await.unwrap().is_empty(),
        "flushed once"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_batch_not_handed_on_within_its_lease_is_taken_over_once() {
    let env = TestEnv::new("acc-lease").await;
    let timing = BatchTiming {
        flush_timeout: Duration::from_secs(60),
        lease: Duration::from_millis(300),
    };
    let wh = WebhookId::generate();
    append(&env, &wh, 2, "l0", timing).await;
    let batches = cut(append(&env, &wh, 2, "l1", timing).await);
    // The replica that cut it dies here, before handing it on.
    assert!(
        env.store.reap_batches(64, timing).await.unwrap().is_empty(),
        "still leased"
    );
    let reaped = wait_until("the lease to end", Duration::from_secs(5), || async {
        let r = env.store.reap_batches(64, timing).await.unwrap();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        reaped[0].batch_id(),
        batches[0].batch_id(),
        "the same batch id"
    );
    assert_eq!(ids(&reaped[0]), ["l0", "l1"]);
    assert!(
        env.store.reap_batches(64, timing).await.unwrap().is_empty(),
        "re-leased to the reaper"
    );
    env.store.batch_handed_on(&reaped[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        env.store.reap_batches(64, timing).await.unwrap().is_empty(),
        "handed on: gone"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_smaller_n_or_a_drain_recuts_what_waits() {
    let env = TestEnv::new("acc-recut").await;
    let wh = WebhookId::generate();
    for i in 0..7 {
        append(&env, &wh, 10, &format!("r{i}"), TIMING).await;
    }
    let cut3 = env.store.recut(&wh, 3, false, TIMING).await.unwrap();
    assert_eq!(
        cut3.iter().map(|b| ids(b).len()).collect::<Vec<_>>(),
        [3, 3]
    );
    let drained = env.store.recut(&wh, 3, true, TIMING).await.unwrap();
    assert_eq!(drained.iter().map(ids).collect::<Vec<_>>(), [vec!["r6"]]);
    assert!(env
        .store
        .accumulating(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .is_empty());
    env.cleanup().await;
}
