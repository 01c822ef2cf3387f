//! The batch accumulator's Redis scripts, against the real Redis: exactly N, N+1,
//! the same event twice, concurrent appends, the flush deadline, an expired lease,
//! and any JSON a client may send coming out as sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use courier_core::event::EnvelopeEvent;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_store::batch::{Append, BatchTiming, Cut, CutBatch};
use courier_tests::{wait_until, TestEnv};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

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

/// The batches, every one of them readable.
fn ready(cuts: Vec<Cut>) -> Vec<CutBatch> {
    cuts.into_iter()
        .map(|c| match c {
            Cut::Ready(b) => b,
            Cut::Unreadable(u) => panic!("unreadable batch: {}", u.reason),
        })
        .collect()
}

fn cut(a: Append) -> Vec<CutBatch> {
    match a {
        Append::Placed { cut } => ready(cut),
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
                Append::Placed { cut } => ready(cut),
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
    let batch_ids: HashSet<_> = batches.iter().map(|b| b.batch_id()).collect();
    assert_eq!(batch_ids.len(), 20, "every batch has its own id");
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
        ready(env.store.flush_due(64, timing).await.unwrap()).is_empty(),
        "not due yet"
    );
    let start = std::time::Instant::now();
    let flushed = wait_until("the deadline", Duration::from_secs(5), || async {
        let b = ready(env.store.flush_due(64, timing).await.unwrap());
        (!b.is_empty()).then_some(b)
    })
    .await;
    assert!(start.elapsed() < Duration::from_millis(1000));
    assert_eq!(ids(&flushed[0]), ["d0", "d1"]);
    assert!(
        ready(env.store.flush_due(64, timing).await.unwrap()).is_empty(),
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
        ready(env.store.reap_batches(64, timing).await.unwrap()).is_empty(),
        "still leased"
    );
    let reaped = wait_until("the lease to end", Duration::from_secs(5), || async {
        let r = ready(env.store.reap_batches(64, timing).await.unwrap());
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
        ready(env.store.reap_batches(64, timing).await.unwrap()).is_empty(),
        "re-leased to the reaper"
    );
    env.store.batch_handed_on(&reaped[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        ready(env.store.reap_batches(64, timing).await.unwrap()).is_empty(),
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
    let cut3 = ready(env.store.recut(&wh, 3, false, TIMING).await.unwrap());
    assert_eq!(
        cut3.iter().map(|b| ids(b).len()).collect::<Vec<_>>(),
        [3, 3]
    );
    let drained = ready(env.store.recut(&wh, 3, true, TIMING).await.unwrap());
    assert_eq!(drained.iter().map(ids).collect::<Vec<_>>(), [vec!["r6"]]);
    assert!(env
        .store
        .accumulating(&TenantId::parse("acme").unwrap())
        .await
        .unwrap()
        .is_empty());
    env.cleanup().await;
}

/// JSON as a client may write it: numbers as written (`1.50e3`, `-0`, huge
/// integers), strings with any character, escaped or not.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            1 => Just('\n'),
            1 => Just('\t'),
            1 => Just('|'),
            1 => Just(':'),
            1 => Just('\u{2028}'),
            1 => Just('\u{2029}'),
            1 => Just('\u{1F600}'),
            1 => Just('\u{05D0}'),
            1 => Just('"'),
            1 => Just('\\'),
            1 => Just('\u{0}'),
        ],
        0..20,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        prop::sample::select(vec![
            "1.50e3",
            "-0",
            "0.0",
            "1E+2",
            "2e-7",
            "12345678901234567890123",
            "-9223372036854775809",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        text().prop_map(Json::Text),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            proptest::collection::vec((text(), inner), 0..6).prop_map(Json::Object),
        ]
    })
}

/// Writes JSON text, taking every choice of layout and escaping from `style`.
struct Printer<'a> {
    style: std::iter::Cycle<std::slice::Iter<'a, u8>>,
    out: String,
}

impl Printer<'_> {
    fn choice(&mut self) -> u8 {
        self.style.next().copied().unwrap_or(0)
    }

    fn space(&mut self) {
        let ws = ["", "", " ", "\n", "\n    ", "\t", "\r\n", "  \n\t"];
        let pick = ws[usize::from(self.choice()) % ws.len()];
        self.out.push_str(pick);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            let escape = self.choice() % 3 == 0;
            match c {
                '"' if !escape => self.out.push_str("\\\""),
                '\\' if !escape => self.out.push_str("\\\\"),
                '\n' if !escape => self.out.push_str("\\n"),
                '\t' if !escape => self.out.push_str("\\t"),
                c if escape || c == '"' || c == '\\' || u32::from(c) < 0x20 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        if self.choice() % 2 == 0 {
                            self.out.push_str(&format!("\\u{unit:04x}"));
                        } else {
                            self.out.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Json) {
        match v {
            Json::Null => self.out.push_str("null"),
            Json::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => self.out.push_str(n),
            Json::Text(s) => self.string(s),
            Json::Array(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.space();
                    self.value(item);
                    self.space();
                }
                self.out.push(']');
            }
            Json::Object(fields) => {
                self.out.push('{');
                for (i, (k, item)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.space();
                    self.string(k);
                    self.space();
                    self.out.push(':');
                    self.space();
                    self.value(item);
                    self.space();
                }
                self.out.push('}');
            }
        }
    }
}

/// `data` as a client may send it: an object around `v`, laid out per `style`.
fn data_text(v: &Json, style: &[u8]) -> String {
    let mut p = Printer {
        style: style.iter().cycle(),
        out: String::new(),
    };
    p.out.push('{');
    p.space();
    p.string("v");
    p.space();
    p.out.push(':');
    p.space();
    p.value(v);
    p.space();
    p.out.push('}');
    p.out
}

#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    events: Vec<BodyEvent<'a>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BodyEvent<'a> {
    event_id: String,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

fn event_with(id: &str, data: &str) -> EnvelopeEvent {
    EnvelopeEvent {
        data: serde_json::value::RawValue::from_string(data.to_owned()).unwrap(),
        ..event(id)
    }
}

/// Any JSON a client may send as `data`, appended to a webhook's batch in Redis, cut
/// and read back, reaches the subscriber's envelope as the same text and value.
#[test]
fn any_json_data_comes_out_of_the_batch_store_as_sent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(TestEnv::new("acc-prop"));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 192,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(
        (json(), proptest::collection::vec(any::<u8>(), 1..32)),
        1..=5,
    );
    runner
        .run(&strategy, |values| {
            let texts: Vec<String> = values.iter().map(|(v, s)| data_text(v, s)).collect();
            for t in &texts {
                // The gateway accepts only valid JSON: so must the generator make it.
                serde_json::from_str::<serde_json::Value>(t)
                    .map_err(|e| TestCaseError::fail(format!("generated {t:?}: {e}")))?;
            }
            let body = rt.block_on(async {
                let wh = WebhookId::generate();
                let tenant = TenantId::parse("acme").unwrap();
                let n = u8::try_from(texts.len()).unwrap();
                let mut cuts = Vec::new();
                for (i, t) in texts.iter().enumerate() {
                    let placed = env
                        .store
                        .append_to_batch(
                            &wh,
                            &tenant,
                            0,
                            n,
                            &event_with(&format!("p{i}"), t),
                            TIMING,
                        )
                        .await
                        .unwrap();
                    cuts.extend(cut(placed));
                }
                assert_eq!(cuts.len(), 1, "one batch of {n}");
                let batch = &cuts[0];
                env.store.batch_handed_on(batch).await.unwrap();
                batch.job().envelope().to_body()
            });
            let body: Body = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(body.events.len(), texts.len());
            for (i, (got, sent)) in body.events.iter().zip(&texts).enumerate() {
                prop_assert_eq!(&got.event_id, &format!("p{i}"));
                prop_assert_eq!(got.data.get(), sent.as_str());
                let got: serde_json::Value = serde_json::from_str(got.data.get()).unwrap();
                let sent: serde_json::Value = serde_json::from_str(sent).unwrap();
                prop_assert_eq!(got, sent);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(env.cleanup());
}

/// What an earlier version left in Redis at an upgrade: a batch it cut (events
/// joined with newlines, numbered by a counter) still pending, and events still
/// waiting in its element format, one of them pretty-printed.
#[tokio::test]
async fn batches_an_earlier_version_left_are_read_with_their_ids() {
    let env = TestEnv::new("acc-upgrade").await;
    let timing = BatchTiming {
        flush_timeout: Duration::from_millis(200),
        lease: Duration::from_secs(30),
    };
    let keys = env.store.keys();
    let wh = WebhookId::generate();
    let pretty = "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"s\": \"x|y\"\n}";
    let json = |id: &str, data: &str| serde_json::to_string(&event_with(id, data)).unwrap();
    let joined = [
        format!(
            "1776939300000|1776939299000|00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01|a=1%7C2|{}",
            json("old1", pretty)
        ),
        format!("1776939300001|{}", json("old2", "{\"k\":\n123\n}")),
    ]
    .join("\n");
    let member = format!("{wh}:7");
    let waiting = format!("1776939300002||||{}", json("old3", pretty));
    let mut redis = redis::Client::open(courier_tests::REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::pipe()
        .cmd("HSET")
        .arg(keys.batch_pending(&member))
        .arg(&["tenant", "acme", "generation", "0", "cut", "1776939300005"][..])
        .arg("events")
        .arg(&joined)
        .cmd("ZADD")
        .arg(keys.batch_cut())
        .arg(0)
        .arg(&member)
        .cmd("RPUSH")
        .arg(keys.batch_waiting(&wh))
        .arg(&waiting)
        .cmd("HSET")
        .arg(keys.batch_meta(&wh))
        .arg(&["tenant", "acme", "generation", "0", "n", "5"][..])
        .cmd("SET")
        .arg(format!("{}courier:batch-seq:{wh}", env.prefix))
        .arg(7)
        .cmd("ZADD")
        .arg(keys.batch_due())
        .arg(0)
        .arg(wh.as_str())
        .query_async::<()>(&mut redis)
        .await
        .unwrap();

    let reaped = ready(env.store.reap_batches(64, timing).await.unwrap());
    assert_eq!(reaped.len(), 1);
    assert_eq!(
        reaped[0].batch_id(),
        BatchId::counted(&wh, 7),
        "its numbered id"
    );
    assert_eq!(ids(&reaped[0]), ["old1", "old2"]);
    assert_eq!(reaped[0].events[0].data.get(), pretty);
    assert_eq!(reaped[0].events[1].data.get(), "{\"k\":\n123\n}");
    assert_eq!(reaped[0].origins[0].tracestate.as_deref(), Some("a=1|2"));
    env.store.batch_handed_on(&reaped[0]).await.unwrap();

    let flushed = ready(env.store.flush_due(64, timing).await.unwrap());
    assert_eq!(ids(&flushed[0]), ["old3"]);
    assert_eq!(flushed[0].events[0].data.get(), pretty);
    env.store.batch_handed_on(&flushed[0]).await.unwrap();
    // Nothing waits now: the webhook's batching keys, the old counter included, are gone.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}courier:batch*", env.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    env.cleanup().await;
}
