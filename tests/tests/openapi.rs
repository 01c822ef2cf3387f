//! The OpenAPI document is generated from the code and kept, identical, at
//! proto-schemas/openapi.json. Regenerate it with
//! `COURIER_UPDATE_OPENAPI=1 cargo test -p courier-tests --test openapi`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

fn generated() -> Value {
    serde_json::to_value(courier_gateway::openapi()).unwrap()
}

fn kept_path() -> std::path::PathBuf {
    courier_tests::schemas::dir().join("openapi.json")
}

#[test]
fn the_kept_document_matches_the_code() {
    let generated = generated();
    if std::env::var_os("COURIER_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(kept_path(), text).unwrap();
    }
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(kept_path()).unwrap()).unwrap();
    assert!(
        kept == generated,
        "proto-schemas/openapi.json is out of date: run COURIER_UPDATE_OPENAPI=1 cargo test -p courier-tests --test openapi"
    );
}

#[test]
fn the_document_is_openapi_3_1_with_every_route() {
    let doc = generated();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("/v1/events", "post"),
        ("/v1/tenants", "post"),
        ("/v1/tenants", "get"),
        ("/v1/tenants/{id}", "get"),
        ("/v1/tenants/{id}", "delete"),
        ("/v1/tenants/{id}/keys", "post"),
        ("/v1/tenants/{id}/keys", "get"),
        ("/v1/tenants/{id}/keys/{key_id}", "delete"),
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "get"),
        ("/v1/webhooks/{id}", "patch"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/rotate-secret", "post"),
        ("/v1/webhooks/{id}/test", "post"),
        ("/v1/event-types", "get"),
        ("/v1/event-types/{key}/example", "get"),
        ("/v1/audit-log", "get"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/deliveries/{batchId}", "get"),
        ("/v1/deliveries/{batchId}/replay", "post"),
        ("/v1/deliveries/export.csv", "get"),
        ("/v1/dead-letters", "get"),
        ("/v1/dead-letters/replay", "post"),
        ("/v1/admin/dead-letter-queue", "get"),
        ("/v1/admin/dead-letter-queue/requeue", "post"),
        ("/v1/admin/dead-letter-queue/discard", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is missing"
        );
    }
    for scheme in ["api_key", "admin_token"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object());
    }
}
