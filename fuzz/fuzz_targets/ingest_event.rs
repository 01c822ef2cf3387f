//! Ingest parsing: any bytes, as an HTTP event item or an AMQP message body, are
//! either refused with field errors or become an event that keeps the promises
//! validation makes (data is an object no deeper than the limit, the key is in
//! the catalog, the message round-trips).
#![no_main]

use std::sync::LazyLock;

use courier_core::catalog::Catalog;
use courier_core::errors::FieldErrors;
use courier_core::event::{json_depth, Event, IngestEvent, MAX_DATA_DEPTH};
use courier_core::ids::TenantId;
use libfuzzer_sys::fuzz_target;

/// Built once: parsing the catalog per input would take most of each run.
static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|bytes: &[u8]| {
    let catalog: &Catalog = &CATALOG;
    let now = chrono::Utc::now();
    // The gateway refuses bodies nested deeper than this before parsing.
    let depth = json_depth(bytes);
    if depth > 2 * MAX_DATA_DEPTH {
        return;
    }
    if let Ok(item) = serde_json::from_slice::<IngestEvent>(bytes) {
        let tenant = TenantId::parse("acme").unwrap();
        let mut errors = FieldErrors::default();
        if let Some(event) = item.validate("", &tenant, catalog, now, &mut errors) {
            assert!(errors.is_empty());
            check(&event, catalog);
        } else {
            assert!(!errors.is_empty(), "a refused event names its problems");
        }
    }
    if let Ok(event) = Event::from_message(bytes, Some("fallback-id"), catalog, now) {
        check(&event, catalog);
    }
});

fn check(event: &Event, catalog: &Catalog) {
    assert!(catalog.contains(&event.key));
    assert!(event.data.get().trim_start().starts_with('{'));
    assert!(json_depth(event.data.get().as_bytes()) <= MAX_DATA_DEPTH);
    let body = event.message_body();
    let back = Event::from_message(&body, None, catalog, event.occurred_at).unwrap();
    assert_eq!(back.id, event.id);
    assert_eq!(back.key, event.key);
    assert_eq!(back.tenant, event.tenant);
}
