//! The wire schemas in proto-schemas/ are the source of truth: what the Rust types
//! serialize and the design's examples must validate against them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use courier_core::catalog::Catalog;
use courier_core::envelope::{BatchEnvelope, DeliveryJob};
use courier_core::errors::FieldErrors;
use courier_core::event::{Event, IngestEvent};
use courier_core::ids::{BatchId, TenantId, WebhookId};
use courier_tests::schemas::{all, assert_valid, example, validator};
use serde_json::{json, Value};

fn event() -> Event {
    let raw = serde_json::to_string(&example("ingest-event.json")).unwrap();
    let ingest: IngestEvent = serde_json::from_str(&raw).unwrap();
    let mut errors = FieldErrors::default();
    ingest
        .validate(
            "",
            &TenantId::parse("acme").unwrap(),
            &Catalog::builtin(),
            Utc::now(),
            &mut errors,
        )
        .unwrap_or_else(|| panic!("{errors}"))
}

#[test]
fn every_schema_has_an_id_and_draft_2020_12() {
    let schemas = all();
    assert_eq!(
        schemas.len(),
        6,
        "{:?}",
        schemas.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for (name, schema) in schemas {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert!(schema["$id"].as_str().unwrap().ends_with(&name), "{name}");
    }
}

#[test]
fn the_examples_validate() {
    for (schema, file) in [
        ("ingest-event.schema.json", "ingest-event.json"),
        ("ingest-request.schema.json", "ingest-event.json"),
        ("ingest-request.schema.json", "ingest-request-batch.json"),
        ("event-message.schema.json", "event-message.json"),
        ("delivery-job.schema.json", "delivery-job.json"),
        ("batch-envelope.schema.json", "batch-envelope.json"),
    ] {
        assert_valid(schema, &example(file));
    }
}

#[test]
fn the_examples_parse_as_the_rust_types() {
    let batch = example("ingest-request-batch.json");
    for item in batch["events"].as_array().unwrap() {
        serde_json::from_str::<IngestEvent>(&item.to_string()).unwrap();
    }
    let msg = serde_json::to_vec(&example("event-message.json")).unwrap();
    Event::from_message(&msg, None, &Catalog::builtin(), Utc::now()).unwrap();
    let job = serde_json::to_string(&example("delivery-job.json")).unwrap();
    let job: DeliveryJob = serde_json::from_str(&job).unwrap();
    // The job's envelope is the example envelope, byte for byte in meaning.
    let body: Value = serde_json::from_slice(&job.envelope().to_body()).unwrap();
    assert_eq!(body, example("batch-envelope.json"));
}

#[test]
fn what_the_rust_types_serialize_validates() {
    let event = event();
    assert_valid(
        "event-message.schema.json",
        &serde_json::from_slice::<Value>(&event.message_body()).unwrap(),
    );

    let wh = WebhookId::generate();
    let now = Utc::now();
    let job = DeliveryJob {
        batch_id: BatchId::for_single(&wh, &event.id),
        tenant_id: event.tenant.clone(),
        webhook_id: wh,
        generation: 3,
        series: 1,
        attempt: 2,
        created_at: now,
        due_at: now,
        events: vec![event.to_envelope_event()],
    };
    assert_valid(
        "delivery-job.schema.json",
        &serde_json::to_value(&job).unwrap(),
    );

    let events = vec![event.to_envelope_event(), event.to_envelope_event()];
    let body = BatchEnvelope::new(BatchId::generate(), now, &events).to_body();
    assert_valid(
        "batch-envelope.schema.json",
        &serde_json::from_slice(&body).unwrap(),
    );
}

#[test]
fn the_schemas_refuse_what_the_api_refuses() {
    let v = validator("ingest-event.schema.json");
    assert!(!v.is_valid(&json!({"objectType": "Prospect", "eventType": "EntityCreated"})));
    assert!(!v.is_valid(
        &json!({"id": "a b", "objectType": "Prospect", "eventType": "EntityCreated", "data": {}})
    ));
    assert!(!v.is_valid(
        &json!({"objectType": "Prospect", "eventType": "EntityCreated", "data": {}, "x": 1})
    ));
    let v = validator("batch-envelope.schema.json");
    let mut envelope = example("batch-envelope.json");
    envelope["batchId"] = json!("not-a-uuid");
    assert!(!v.is_valid(&envelope));
}

#[test]
fn the_default_catalog_validates_and_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalog/default.json");
    let catalog: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_valid("catalog.schema.json", &catalog);
    assert_eq!(
        catalog["eventTypes"].as_array().unwrap().len(),
        Catalog::builtin().len()
    );
}
