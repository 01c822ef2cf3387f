//! Webhook validation: any create body, under the dev and the production policy,
//! is refused with field errors or becomes a webhook whose URL the same policy
//! accepts again, and which survives the JSON round trip of the store.
#![no_main]

use std::sync::LazyLock;

use courier_core::catalog::Catalog;
use courier_core::ids::TenantId;
use courier_core::retry::RetryDefaults;
use courier_core::webhook::{Rules, UrlPolicy, Webhook, WebhookInput, WebhookPatch, WebhookUrl};
use libfuzzer_sys::fuzz_target;

/// Built once: parsing the catalog per input would take most of each run.
static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

fuzz_target!(|bytes: &[u8]| {
    let catalog: &Catalog = &CATALOG;
    let retry = RetryDefaults::default();
    let tenant = TenantId::parse("acme").unwrap();
    if let Ok(s) = std::str::from_utf8(bytes) {
        for policy in [UrlPolicy::dev(), UrlPolicy::production()] {
            if let Ok(url) = WebhookUrl::parse(s, &policy) {
                // What is accepted once is accepted again (it is stored normalized).
                WebhookUrl::parse(url.as_str(), &policy).unwrap();
            }
        }
    }
    let Ok(input) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    for policy in [UrlPolicy::dev(), UrlPolicy::production()] {
        let rules = Rules {
            catalog,
            urls: &policy,
            retry: &retry,
        };
        let Ok(parsed) = serde_json::from_value::<WebhookInput>(input.clone()) else {
            continue;
        };
        match parsed.into_webhook(&tenant, rules, chrono::Utc::now()) {
            Ok(webhook) => {
                WebhookUrl::parse(webhook.url.as_str(), &policy).unwrap();
                let json = serde_json::to_string(&webhook).unwrap();
                let back: Webhook = serde_json::from_str(&json).unwrap();
                assert_eq!(back, webhook);
                // An empty patch changes nothing and stays valid.
                let same = WebhookPatch::default()
                    .apply(&webhook, rules, webhook.updated_at)
                    .unwrap();
                assert_eq!(same.url, webhook.url);
                assert_eq!(same.generation, webhook.generation);
            }
            Err(errors) => assert!(!errors.is_empty()),
        }
    }
});
