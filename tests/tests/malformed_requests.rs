//! Bad input never costs a 5xx and always gets the JSON error body: every route of
//! the OpenAPI document is called with malformed path parameters (bytes that are
//! not UTF-8, `..`, overlong values) and every documented query parameter with
//! malformed values (cursors that overflow or point nowhere, limits and offsets
//! out of range, times that are not times). Requests are written by hand, since
//! ordinary clients normalise `..` and refuse some of these.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier_tests::raw_http::{exchange, request, RawResponse};
use courier_tests::{Api, TestEnv, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Malformed values of a path segment, percent-encoded as sent.
fn bad_segments() -> Vec<String> {
    vec![
        "%FF".into(),
        "%C3%28".into(),
        "wh_%FF%FE".into(),
        "..".into(),
        "%2E%2E".into(),
        "%2F".into(),
        "%00".into(),
        "a%20b".into(),
        "x".repeat(5000),
    ]
}

/// Malformed (or odd but harmless) values of a query parameter.
fn odd_query_values() -> Vec<String> {
    vec![
        "%FF".into(),
        "".into(),
        "abc".into(),
        "-1".into(),
        "0".into(),
        "101".into(),
        "1e3".into(),
        "99999999999999999999".into(),
        "-99999999999999999999".into(),
        "0-0".into(),
        "99999999999999999999-0".into(),
        "0-99999999999999999999".into(),
        "1-".into(),
        "-".into(),
        "%00".into(),
        "..".into(),
        "9223372036854775807_00000000000000000000000000000000".into(),
        "-9223372036854775808_0192f1c27d4b7e0a8c3b5d6e7f809a1b".into(),
        "2026-13-45T99:99:99Z".into(),
        "+275760-09-13T00:00:00Z".into(),
        "x".repeat(3000),
    ]
}

/// The tokens a route takes, by its OpenAPI `security`.
fn tokens(op: &Value, tenant_key: &str) -> Vec<String> {
    let schemes: Vec<String> = op["security"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s.as_object())
                .flat_map(|s| s.keys().cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    if schemes.iter().any(|s| s == "admin_token") {
        out.push(ADMIN_TOKEN.to_owned());
    }
    if schemes.iter().any(|s| s == "api_key") {
        out.push(tenant_key.to_owned());
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

fn path_params(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

/// `template` with each parameter replaced: `bad` for `name`, a well-formed value
/// for the others.
fn fill(template: &str, name: Option<&str>, bad: &str, good: &dyn Fn(&str) -> String) -> String {
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) if Some(param) == name => bad.to_owned(),
                Some(param) => good(param),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

struct Sweep {
    problems: Vec<String>,
    calls: usize,
}

impl Sweep {
    async fn call(&mut self, api: &Api, method: &str, target: &str, token: &str) -> RawResponse {
        let addr = api.base.trim_start_matches("http://").parse().unwrap();
        let body = matches!(method, "POST" | "PATCH").then_some("{}");
        let token = (!token.is_empty()).then_some(token);
        let response = exchange(
            addr,
            &request(method, target, token, body, false),
            Duration::from_secs(10),
        )
        .await;
        self.calls += 1;
        let shown = if target.len() > 120 {
            format!("{}…", &target[..120])
        } else {
            target.to_owned()
        };
        if response.status >= 500 {
            self.problems.push(format!(
                "{method} {shown}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        } else if response.status >= 400 && !response.is_json_error() {
            self.problems.push(format!(
                "{method} {shown}: {} without the JSON error body ({:?}): {}",
                response.status,
                response.header("content-type"),
                String::from_utf8_lossy(&response.body)
            ));
        }
        response
    }

    /// Calls and requires a 400 `bad_request` whose details name `param`.
    async fn expect_bad(
        &mut self,
        api: &Api,
        method: &str,
        target: &str,
        token: &str,
        param: &str,
    ) {
        let response = self.call(api, method, target, token).await;
        let body = response.json();
        if response.status != 400
            || body["error"]["type"] != "bad_request"
            || !body["error"]["details"][param].is_string()
        {
            self.problems.push(format!(
                "{method} {target}: expected 400 bad_request naming {param}, got {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
    }
}

#[tokio::test]
async fn malformed_paths_cursors_and_query_values_are_json_4xx_never_5xx() {
    let env = TestEnv::new("malformed").await;
    let gateway = env.start_gateway(env.gateway_config()).await;
    let api = Api::new(&gateway);
    let tenant = api.tenant("acme").await;
    let webhook = api
        .webhook(
            &tenant,
            json!({"name": "crm", "url": "http://127.0.0.1:9/h", "events": ["Prospect.*"]}),
        )
        .await;
    let webhook_id = webhook["id"].as_str().unwrap().to_owned();
    // Well-formed values of the other parameters: existing ones where they exist.
    let good = |param: &str| -> String {
        match param {
            "key" => "Prospect.EntityCreated".into(),
            "batchId" => "35dfc8b5-bf2e-41df-8706-758aaa42a8b1".into(),
            "key_id" => "key_0192f1c27d4b7e0a8c3b5d6e7f809a1b".into(),
            _ => String::new(),
        }
    };
    let doc = serde_json::to_value(courier_gateway::openapi()).unwrap();
    let mut sweep = Sweep {
        problems: Vec::new(),
        calls: 0,
    };

    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let tokens = tokens(op, &tenant.key);
            let own = |param: &str| -> String {
                match (template.as_str(), param) {
                    (t, "id") if t.starts_with("/v1/tenants") => "acme".into(),
                    (_, "id") => webhook_id.clone(),
                    (_, other) => good(other),
                }
            };
            // Every path parameter, malformed.
            for param in path_params(template) {
                for bad in bad_segments() {
                    let target = fill(template, Some(&param), &bad, &own);
                    for token in &tokens {
                        sweep
                            .expect_bad(&api, &method, &target, token, &param)
                            .await;
                    }
                }
            }
            // Every query parameter, with odd values: 2xx when the value is fine,
            // else a JSON 4xx; never a 5xx.
            let base = fill(template, None, "", &own);
            let queries: Vec<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .filter_map(|p| p["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for name in queries {
                for value in odd_query_values() {
                    for token in &tokens {
                        sweep
                            .call(&api, &method, &format!("{base}?{name}={value}"), token)
                            .await;
                    }
                }
            }
        }
    }

    // What is malformed is a 400 naming the parameter.
    let key = tenant.key.as_str();
    let deliveries = format!("/v1/webhooks/{webhook_id}/deliveries");
    for (target, token, param) in [
        ("/v1/tenants/%FF".to_owned(), ADMIN_TOKEN, "id"),
        ("/v1/tenants/..".to_owned(), ADMIN_TOKEN, "id"),
        ("/v1/webhooks/%FF".to_owned(), key, "id"),
        ("/v1/webhooks/not-a-webhook".to_owned(), key, "id"),
        ("/v1/deliveries/not-a-batch".to_owned(), key, "batchId"),
        ("/v1/event-types/%FF/example".to_owned(), "", "key"),
        ("/v1/event-types/no-dot/example".to_owned(), "", "key"),
        (
            "/v1/audit-log?cursor=99999999999999999999-0".to_owned(),
            key,
            "cursor",
        ),
        (
            "/v1/audit-log?cursor=0-99999999999999999999".to_owned(),
            ADMIN_TOKEN,
            "cursor",
        ),
        ("/v1/audit-log?cursor=nope".to_owned(), key, "cursor"),
        ("/v1/audit-log?cursor=%FF".to_owned(), key, "cursor"),
        ("/v1/audit-log?limit=0".to_owned(), key, "limit"),
        ("/v1/audit-log?limit=abc".to_owned(), key, "limit"),
        (
            "/v1/audit-log?tenantId=Not%20Valid".to_owned(),
            ADMIN_TOKEN,
            "tenantId",
        ),
        ("/v1/audit-log?tenantId=acme".to_owned(), key, "tenantId"),
        ("/v1/tenants?limit=101".to_owned(), ADMIN_TOKEN, "limit"),
        ("/v1/tenants?offset=-1".to_owned(), ADMIN_TOKEN, "offset"),
        (
            "/v1/tenants?offset=99999999999999999999".to_owned(),
            ADMIN_TOKEN,
            "offset",
        ),
        ("/v1/webhooks?limit=".to_owned(), key, "limit"),
        (format!("{deliveries}?cursor=nope"), key, "cursor"),
        (format!("{deliveries}?cursor=1_not-a-uuid"), key, "cursor"),
        (format!("{deliveries}?status=lost"), key, "status"),
        (format!("{deliveries}?limit=1e3"), key, "limit"),
        (
            "/v1/deliveries/export.csv?since=yesterday".to_owned(),
            key,
            "since",
        ),
        (
            "/v1/deliveries/export.csv?until=%FF".to_owned(),
            key,
            "until",
        ),
        (
            "/v1/deliveries/export.csv?webhookId=%FF".to_owned(),
            key,
            "webhookId",
        ),
        ("/v1/dead-letters?webhookId=..".to_owned(), key, "webhookId"),
        (
            "/v1/admin/dead-letter-queue?limit=-1".to_owned(),
            ADMIN_TOKEN,
            "limit",
        ),
    ] {
        sweep.expect_bad(&api, "GET", &target, token, param).await;
    }
    for (target, param) in [
        ("/v1/tenants/%FF", "id"),
        ("/v1/tenants/acme/keys/%FF", "key_id"),
        ("/v1/tenants/acme/keys/nope", "key_id"),
    ] {
        sweep
            .expect_bad(&api, "DELETE", target, ADMIN_TOKEN, param)
            .await;
    }
    sweep
        .expect_bad(
            &api,
            "POST",
            "/v1/deliveries/..%2F../replay",
            key,
            "batchId",
        )
        .await;

    // A well-formed cursor from before the log's start is an empty page.
    for token in [key, ADMIN_TOKEN] {
        let response = sweep
            .call(&api, "GET", "/v1/audit-log?cursor=0-0", token)
            .await;
        if (response.status, response.json()) != (200, json!({"data": [], "nextCursor": null})) {
            sweep.problems.push(format!(
                "GET /v1/audit-log?cursor=0-0: expected an empty page, got {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
    }
    // Well-formed ids of nothing are 404s.
    let (status, body) = api.get("/v1/webhooks/wh_0nothing", key).await;
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (404, json!("not_found"))
    );
    let (status, _) = api.get("/v1/tenants/nobody", ADMIN_TOKEN).await;
    assert_eq!(status, 404);

    println!("{} requests", sweep.calls);
    assert!(
        sweep.problems.is_empty(),
        "{} of {} requests went wrong:\n{}",
        sweep.problems.len(),
        sweep.calls,
        sweep.problems.join("\n")
    );
    // Nothing above was a failure of the gateway: no request was counted as one
    // that Redis failed.
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let redis_failures = metrics
        .lines()
        .filter(|l| l.starts_with("courier_redis_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(redis_failures, 0.0, "{metrics}");

    gateway.stop().await.unwrap();
    env.cleanup().await;
}
