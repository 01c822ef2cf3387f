//! Webhook validation: any create body, under the dev and the production policy,
//! is refused with field errors or becomes a webhook whose URL the same policy
//! accepts again, and which survives the JSON round trip of the store. Any patch
//! body is refused with field errors or changes exactly the custom headers it
//! names (values set, `null` removed) and keeps the others' hidden values.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use courier_core::catalog::Catalog;
use courier_core::ids::TenantId;
use courier_core::retry::RetryDefaults;
use courier_core::webhook::{Rules, UrlPolicy, Webhook, WebhookInput, WebhookPatch, WebhookUrl};
use libfuzzer_sys::fuzz_target;

/// Built once: parsing the catalog per input would take most of each run.
static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::builtin);

/// What patches apply to: a webhook with custom headers.
static BASE: LazyLock<Webhook> = LazyLock::new(|| {
    let input: WebhookInput = serde_json::from_value(serde_json::json!({
        "name": "base", "url": "https://example.com/hook", "events": ["Prospect.*"],
        "headers": {"Authorization": "Bearer base", "X-Team": "sales", "x-lower": "1"}
    }))
    .unwrap();
    let rules = Rules {
        catalog: &CATALOG,
        urls: &UrlPolicy::dev(),
        retry: &RetryDefaults::default(),
    };
    input
        .into_webhook(&TenantId::parse("acme").unwrap(), rules, chrono::Utc::now())
        .unwrap()
});

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
    if let Ok(patch) = serde_json::from_value::<WebhookPatch>(input.clone()) {
        check_patch(patch, catalog, &retry);
    }
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

fn check_patch(patch: WebhookPatch, catalog: &Catalog, retry: &RetryDefaults) {
    let policy = UrlPolicy::dev();
    let rules = Rules {
        catalog,
        urls: &policy,
        retry,
    };
    let base: &Webhook = &BASE;
    let named: BTreeMap<String, Option<String>> = patch.headers.clone().unwrap_or_default();
    match patch.apply(base, rules, base.updated_at) {
        Ok(next) => {
            for (name, value) in &named {
                let found: Vec<_> = next
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .collect();
                match value {
                    None => assert!(found.is_empty(), "{name} was removed"),
                    Some(v) => assert_eq!(found, [(name.as_str(), v.as_str())]),
                }
            }
            for (name, value) in base.headers.iter() {
                if !named.keys().any(|n| n.eq_ignore_ascii_case(name)) {
                    assert!(
                        next.headers.iter().any(|h| h == (name, value)),
                        "{name} kept"
                    );
                }
            }
            assert_eq!(next.secret, base.secret);
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
}
