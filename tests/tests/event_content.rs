//! Whatever valid JSON a client sends as an event's `data` reaches the subscriber
//! as the same text, batched or not: pretty-printed documents, every kind of
//! Unicode, escapes, separators, odd numbers, the deepest nesting allowed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use courier_tests::{Api, Received, TestEnv, TestReceiver};
use serde_json::json;

/// `data` texts as clients send them, each a valid JSON object.
fn odd_data() -> Vec<String> {
    let deepest = {
        // 32 levels of objects and arrays, the most the gateway accepts, indented.
        let mut text = String::from("\"bottom\"");
        for level in (1..32).rev() {
            let pad = "  ".repeat(level);
            text = if level % 2 == 0 {
                format!("[\n{pad}  {text}\n{pad}]")
            } else {
                format!("{{\n{pad}  \"l{level}\": {text}\n{pad}}}")
            };
        }
        format!("{{\n  \"deep\": {text}\n}}")
    };
    vec![
        // json.dumps(indent=2), the default of many clients.
        "{\n  \"objectId\": \"prospect_123\",\n  \"email\": \"jane@example.com\",\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ],\n  \"score\": {\n    \"value\": 1.50e3,\n    \"delta\": -0\n  }\n}".into(),
        // Emoji, right-to-left scripts, combining marks, line and paragraph
        // separators as they are, and an astral character as an escaped pair.
        "{\"name\":\"Jane 😀 שלום עולם مرحبا\",\"mark\":\"e\u{301}\",\"ls\":\"a\u{2028}b\u{2029}c\",\"esc\":\"\\ud83d\\ude00 \\u2028\"}".into(),
        // Separators that a delimited encoding would split on.
        "{\"pipes\":\"a|b||c|\",\"line\":\"one\\ntwo\\r\\n\",\"colon\":\"5:abc\",\"tab\":\"x\\ty\",\"head\":\"1776939300000|v2|{\"}".into(),
        // Tabs and CRLF as whitespace between tokens; a line that starts with digits.
        "{\r\n\t\"n\":\r\n123\t,\r\n\t\"big\": 12345678901234567890123,\n\"e\": 1E+2 }".into(),
        // Backslashes, quotes, NUL and other escapes.
        "{\"path\":\"C:\\\\dir\\\\\\\"q\\\"\",\"nul\":\"\\u0000\",\"ctl\":\"\\b\\f\\/\"}".into(),
        deepest,
        // Pretty-printed with only newlines, empty containers.
        "{\n\"a\":\n[\n]\n,\n\"b\":\n{\n}\n}".into(),
        "{}".into(),
    ]
}

/// `data` text of every event received, by event id.
fn received_data(received: &[Received]) -> HashMap<String, Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        events: Vec<Event<'a>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Event<'a> {
        event_id: String,
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in received {
        let body: Body = serde_json::from_slice(&r.body).unwrap();
        for e in body.events {
            out.entry(e.event_id)
                .or_default()
                .push(e.data.get().to_owned());
        }
    }
    out
}

/// The ingest request, written by hand so that each `data` goes out as its text.
fn request(prefix: &str, data: &[String]) -> String {
    let events: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "{{\"id\":\"{prefix}{i}\",\"objectType\":\"Prospect\",\"eventType\":\"EntityCreated\",\"data\":{d}}}"
            )
        })
        .collect();
    format!("{{\"events\":[\n{}\n]}}", events.join(",\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_printed_and_unicode_heavy_data_arrives_once_as_sent_batched_or_not() {
    let env = TestEnv::new("content").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let mut config = env.worker_config();
    config.flush_timeout = Duration::from_secs(1);
    let worker = env.start_worker(config).await;
    let receiver = TestReceiver::start().await;
    let api = Api::new(&gateway);
    let acme = api.tenant("acme").await;
    let neighbour = api.tenant("neighbour").await;
    for (tenant, path, throttling) in [
        (&acme, "/batched", 3),
        (&acme, "/single", 0),
        (&neighbour, "/neighbour", 2),
    ] {
        api.webhook(
            tenant,
            json!({"name": path, "url": receiver.url(path), "events": ["*"], "throttling": throttling}),
        )
        .await;
    }

    let data = odd_data();
    let plain: Vec<String> = (0..6)
        .map(|i| format!("{{\"objectId\":\"prospect_{i}\"}}"))
        .collect();
    for (tenant, prefix, data) in [(&acme, "odd", &data), (&neighbour, "plain", &plain)] {
        for d in data {
            serde_json::from_str::<serde_json::Value>(d).expect("the test sends valid JSON");
        }
        let resp = api
            .http
            .post(format!("{}/v1/events", api.base))
            .bearer_auth(&tenant.key)
            .header("content-type", "application/json")
            .body(request(prefix, data))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(status, 202, "{}", resp.text().await.unwrap());
    }

    let want = [
        ("/batched", "odd", &data),
        ("/single", "odd", &data),
        ("/neighbour", "plain", &plain),
    ];
    let arrived = || {
        want.iter()
            .map(|(path, _, sent)| {
                (
                    *path,
                    received_data(&receiver.received_on(path)).len(),
                    sent.len(),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = arrived();
        if counts.iter().all(|(_, got, sent)| got == sent) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event arrived within 30 s: (webhook, events arrived, sent) {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Time for a duplicate to show up, if one were coming.
    worker.wait_idle(14).await;

    for (path, prefix, sent) in want {
        let got = received_data(&receiver.received_on(path));
        assert_eq!(got.len(), sent.len(), "{path}: every event");
        for (i, text) in sent.iter().enumerate() {
            let copies = &got[&format!("{prefix}{i}")];
            assert_eq!(copies.len(), 1, "{path}: {prefix}{i} arrives once");
            assert_eq!(&copies[0], text, "{path}: {prefix}{i} arrives as sent");
            let got: serde_json::Value = serde_json::from_str(&copies[0]).unwrap();
            let sent: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(got, sent);
        }
    }
    let batches = receiver.received_on("/batched");
    assert!(
        batches.iter().any(|r| r.json()["eventCount"] == 3),
        "the batched webhook got batches"
    );
    assert_eq!(
        worker
            .metric("courier_dead_letters_total{reason=\"unreadable\"}")
            .await,
        0
    );

    worker.stop().await.unwrap();
    gateway.stop().await.unwrap();
    env.cleanup().await;
}
