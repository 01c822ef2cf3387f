//! A 503 on ingest lists every event of the request with what is known of it:
//! `accepted` (confirmed), `notAccepted` (not sent, or refused by the broker) or
//! `unknown` (sent, not confirmed). The gateway's broker connection goes
//! through a TCP proxy that can hold the broker's answers or cut the connection;
//! a binding of the test's own makes some events unroutable. Retrying each
//! request with the same ids then delivers every event, duplicates under the
//! `webhook-id` of the first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use courier_broker::lapin::options::QueueBindOptions;
use courier_broker::lapin::types::FieldTable;
use courier_tests::chaos::TcpProxy;
use courier_tests::{wait_until, Api, TenantHandle, TestEnv, TestReceiver};
use serde_json::{json, Value};

fn event(id: &str, event_type: &str) -> Value {
    json!({"id": id, "objectType": "Prospect", "eventType": event_type, "data": {"objectId": id}})
}

fn batch(events: &[Value]) -> Value {
    json!({ "events": events })
}

/// `details.events` of a 503 as `(id, status)` pairs, checking that
/// `acceptedEventIds` repeats exactly the accepted ones.
fn statuses(body: &Value) -> Vec<(String, String)> {
    assert_eq!(body["error"]["type"], "unavailable", "{body}");
    let details = &body["error"]["details"];
    let listed: Vec<(String, String)> = details["events"]
        .as_array()
        .unwrap_or_else(|| panic!("details.events lists the events: {body}"))
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let accepted: Vec<&str> = listed
        .iter()
        .filter(|(_, s)| s == "accepted")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(details["acceptedEventIds"], json!(accepted), "{body}");
    listed
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, s)| ((*id).to_owned(), (*s).to_owned()))
        .collect()
}

async fn broker_ready(api: &Api) -> bool {
    let (status, body) = api.get("/readyz", "").await;
    status == 200 && body["broker"] == true
}

#[tokio::test]
async fn a_503_on_ingest_lists_every_event_with_what_is_known_of_it() {
    let env = TestEnv::new("ingest-503").await;
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5672))).await;
    let mut config = env.gateway_config();
    config.shared.amqp_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    config.publish_timeout = Duration::from_secs(1);
    let gateway = env.start_gateway(config).await;
    let worker = env.start_worker(env.worker_config()).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let tenant: TenantHandle = api.tenant("acme").await;
    api.webhook(
        &tenant,
        json!({"name": "crm", "url": receiver.url("/h"), "events": ["Prospect.*"]}),
    )
    .await;
    let events_queue = env.topology.events_queue();
    let exchange = env.topology.events_exchange();
    let channel = env.amqp.create_channel().await.unwrap();

    // 1. Refused by the broker: only created events have a queue to go to, so the
    // deleted ones are returned unroutable; the others are accepted.
    channel
        .queue_bind(
            &events_queue,
            &exchange,
            "acme.Prospect.EntityCreated",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_unbind(&events_queue, &exchange, "#", FieldTable::default())
        .await
        .unwrap();
    let refused = batch(&[
        event("c1", "EntityCreated"),
        event("d1", "EntityDeleted"),
        event("c2", "EntityCreated"),
        event("d2", "EntityDeleted"),
    ]);
    let (status, body) = api.send(&tenant, &refused).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        statuses(&body),
        pairs(&[
            ("c1", "accepted"),
            ("d1", "notAccepted"),
            ("c2", "accepted"),
            ("d2", "notAccepted"),
        ])
    );
    channel
        .queue_bind(
            &events_queue,
            &exchange,
            "#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_unbind(
            &events_queue,
            &exchange,
            "acme.Prospect.EntityCreated",
            FieldTable::default(),
        )
        .await
        .unwrap();

    // 2. Sent, never confirmed: the broker's answers are held, the confirms time
    // out, together (one timeout for the request, not one per event). The broker
    // has these events all the same: that is why they are `unknown`, not
    // `notAccepted`. Generated ids are listed too.
    proxy.hold_replies();
    let mut held_events: Vec<Value> = (1..=10)
        .map(|i| event(&format!("u{i}"), "EntityCreated"))
        .collect();
    held_events[1] = json!({"objectType": "Prospect", "eventType": "EntityUpdated", "data": {}});
    let held = batch(&held_events);
    let asked = std::time::Instant::now();
    let (status, body) = api.send(&tenant, &held).await;
    let took = asked.elapsed();
    proxy.release_replies();
    assert_eq!(status, 503, "{body}");
    assert!(
        took < Duration::from_secs(5),
        "10 unconfirmed events took {took:?} with a 1 s publish timeout"
    );
    let listed = statuses(&body);
    assert_eq!(listed.len(), 10, "{body}");
    assert!(listed.iter().all(|(_, s)| s == "unknown"), "{body}");
    assert_eq!((listed[0].0.as_str(), listed[9].0.as_str()), ("u1", "u10"));
    let generated = listed[1].0.clone();
    assert!(generated.starts_with("evt_"), "{generated}");
    let unknown_ids: Vec<String> = listed.iter().map(|(id, _)| id.clone()).collect();

    // 3. No connection: nothing is sent, every event is certainly not accepted.
    proxy.cut().await;
    wait_until(
        "the gateway to notice the lost connection",
        Duration::from_secs(30),
        || async { (!broker_ready(&api).await).then_some(()) },
    )
    .await;
    let unsent = batch(&[event("n1", "EntityCreated"), event("n2", "EntityUpdated")]);
    let (status, body) = api.send(&tenant, &unsent).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        statuses(&body),
        pairs(&[("n1", "notAccepted"), ("n2", "notAccepted")])
    );

    // Back: each request again, with the same ids, is accepted whole.
    proxy.restore();
    wait_until(
        "the gateway to reconnect",
        Duration::from_secs(30),
        || async { broker_ready(&api).await.then_some(()) },
    )
    .await;
    let mut held_again = held.clone();
    held_again["events"][1]["id"] = json!(generated);
    for request in [&refused, &held_again, &unsent] {
        let (status, body) = api.send(&tenant, request).await;
        assert_eq!(status, 202, "{body}");
    }
    let expected: HashSet<String> = ["c1", "d1", "c2", "d2", "n1", "n2"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(unknown_ids)
        .collect();
    let arrived = || {
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        for r in receiver.received() {
            let webhook_id = r.header("webhook-id").unwrap_or_default().to_owned();
            for e in r.json()["events"].as_array().cloned().unwrap_or_default() {
                seen.entry(e["eventId"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .insert(webhook_id.clone());
            }
        }
        seen
    };
    wait_until(
        "every event to be delivered",
        Duration::from_secs(30),
        || async {
            let seen = arrived();
            expected
                .iter()
                .all(|id| seen.contains_key(id))
                .then_some(())
        },
    )
    .await;
    let seen = arrived();
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        expected,
        "nothing else was delivered"
    );
    assert!(
        seen.values().all(|ids| ids.len() == 1),
        "a duplicate carries the webhook-id of the first delivery: {seen:?}"
    );

    let _ = channel.close(200, "done").await;
    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
