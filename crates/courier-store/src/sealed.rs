//! Webhook records as stored: the signing secrets (current and previous) and the
//! values of the custom headers sealed with the deployment's [`Keyring`],
//! everything else plain JSON.
//!
//! A sealed secret is bound to its webhook id, and a sealed header value to its
//! webhook id and header name, so neither opens anywhere else. Header values are
//! stored as `sealedHeaders` (name → sealed value) in place of `headers`.
//! Records written before encryption at rest (plaintext `whsec_...`, or a plain
//! `headers` map) are still read, and are sealed by the next write or by
//! `reencrypt-secrets`.
//!
//! A record that can never be opened here (a value sealed under a key no longer in
//! the keyring, a field value written by a newer version, corrupt JSON) is read as
//! an [`UnreadableWebhook`]: its id, why, and what could be read of its
//! subscription, so that its work ends `failed` while every other webhook's goes on.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use courier_core::catalog::{EventKey, Pattern};
use courier_core::ids::WebhookId;
use courier_core::keyring::{is_sealed, sealed_key_id, Keyring};
use courier_core::webhook::{PropertyFilters, Throttling, Webhook};
use redis::Script;
use serde::Deserialize;
use serde_json::Value;

use crate::{Store, StoreError};

/// A stored webhook record as read: whole, or unreadable for good.
#[derive(Debug, Clone)]
pub enum StoredWebhook {
    Readable(Webhook),
    Unreadable(UnreadableWebhook),
}

/// A stored webhook record this deployment cannot read, and never will as
/// configured: a secret or header value sealed under a key that is not in the
/// keyring, a field value it does not know (written by a newer version), corrupt
/// JSON. Its deliveries cannot be made; what could be read of it tells which work
/// is its.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableWebhook {
    pub id: WebhookId,
    /// Why, in words for operators and the delivery log (never a secret's value).
    pub reason: String,
    /// Its subscription, if the record's `active`, `events` and `propertyFilters`
    /// read.
    pub subscription: Option<Subscription>,
    pub throttling: Option<Throttling>,
    pub generation: Option<u64>,
    pub created_at: Option<DateTime<Utc>>,
}

/// What decides whether an event goes to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub active: bool,
    pub events: Vec<Pattern>,
    #[serde(default)]
    pub property_filters: PropertyFilters,
}

impl UnreadableWebhook {
    /// Whether the webhook wants an event of `key`: `None` when its subscription
    /// could not be read, so that nobody can tell.
    pub fn wants(&self, key: &EventKey, properties_updated: Option<&[String]>) -> Option<bool> {
        self.subscription.as_ref().map(|s| {
            courier_core::webhook::wants(
                s.active,
                &s.events,
                &s.property_filters,
                key,
                properties_updated,
            )
        })
    }

    /// Whether work created under `generation` is over for it as far as can be
    /// read: the webhook is disabled, or of another generation.
    pub fn cancels(&self, generation: u64) -> bool {
        self.subscription.as_ref().is_some_and(|s| !s.active)
            || self.generation.is_some_and(|g| g != generation)
    }
}

/// Reads the stored record of webhook `id`: opened whole, or unreadable with what
/// could be read of it.
pub(crate) fn read_webhook(keyring: &Keyring, id: WebhookId, raw: &str) -> StoredWebhook {
    let reason = match open_webhook(keyring, raw) {
        Ok(webhook) => return StoredWebhook::Readable(webhook),
        Err(StoreError::Corrupt(reason)) => reason,
        Err(other) => other.to_string(),
    };
    let record: Option<Value> = serde_json::from_str(raw).ok();
    let field = |name: &str| record.as_ref().and_then(|r| r.get(name));
    StoredWebhook::Unreadable(UnreadableWebhook {
        id,
        reason,
        subscription: record
            .as_ref()
            .and_then(|r| Subscription::deserialize(r).ok()),
        throttling: field("throttling").and_then(|v| Throttling::deserialize(v).ok()),
        generation: field("generation").and_then(Value::as_u64),
        created_at: field("createdAt").and_then(|v| DateTime::<Utc>::deserialize(v).ok()),
    })
}

/// What the seal of a stored secret is bound to.
fn context(webhook_id: &str) -> Vec<u8> {
    format!("courier/webhook-secret/{webhook_id}").into_bytes()
}

/// What the seal of a stored header value is bound to.
fn header_context(webhook_id: &str, name: &str) -> Vec<u8> {
    format!("courier/webhook-header/{webhook_id}/{name}").into_bytes()
}

/// The field of a record that holds the custom headers in plaintext (the record's
/// JSON form, and records stored before header values were sealed).
const PLAIN_HEADERS: &str = "headers";
/// The field of a stored record that holds the sealed header values.
const SEALED_HEADERS: &str = "sealedHeaders";

/// The secret strings of a webhook record, as mutable JSON values.
fn secret_slots(record: &mut Value) -> impl Iterator<Item = &mut Value> {
    let Value::Object(map) = record else {
        return Vec::new().into_iter();
    };
    let mut slots = Vec::new();
    let mut previous = None;
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            "secret" => slots.push(value),
            "previousSecrets" => previous = Some(value),
            _ => {}
        }
    }
    if let Some(Value::Array(list)) = previous {
        for item in list {
            if let Some(s) = item.get_mut("secret") {
                slots.push(s);
            }
        }
    }
    slots.into_iter()
}

/// Serializes a webhook with its secrets and header values sealed under the
/// newest key.
pub(crate) fn seal_webhook(keyring: &Keyring, webhook: &Webhook) -> String {
    // Plain records of strings, numbers and maps always serialize.
    let mut record = serde_json::to_value(webhook).unwrap_or_default();
    let id = webhook.id.as_str();
    let context = context(id);
    for slot in secret_slots(&mut record) {
        if let Value::String(plain) = slot {
            *slot = Value::String(keyring.seal(plain.as_bytes(), &context));
        }
    }
    if let Value::Object(map) = &mut record {
        map.remove(PLAIN_HEADERS);
        let sealed = webhook
            .headers
            .iter()
            .map(|(name, value)| {
                let sealed = keyring.seal(value.as_bytes(), &header_context(id, name));
                (name.to_owned(), Value::String(sealed))
            })
            .collect();
        map.insert(SEALED_HEADERS.to_owned(), Value::Object(sealed));
    }
    serde_json::to_string(&record).unwrap_or_default()
}

/// Replaces the record's `sealedHeaders` by the opened `headers`. A record without
/// them keeps its plaintext `headers` (written before header values were sealed).
fn open_headers(keyring: &Keyring, id: &str, record: &mut Value) -> Result<(), StoreError> {
    let corrupt = |e: &str| StoreError::Corrupt(format!("webhook: {id}: {e}"));
    let Value::Object(map) = record else {
        return Ok(());
    };
    let Some(sealed) = map.remove(SEALED_HEADERS) else {
        return Ok(());
    };
    let Value::Object(sealed) = sealed else {
        return Err(corrupt("its sealed headers are not a map"));
    };
    let mut headers = serde_json::Map::with_capacity(sealed.len());
    for (name, value) in sealed {
        // Names are not secret; values never appear in an error.
        let Value::String(value) = value else {
            return Err(corrupt(&format!("its header {name} is not a string")));
        };
        let plain = keyring
            .open(&value, &header_context(id, &name))
            .map_err(|e| corrupt(&format!("its header {name}: {e}")))?;
        let plain = String::from_utf8(plain)
            .map_err(|_| corrupt(&format!("its header {name} is not text")))?;
        headers.insert(name, Value::String(plain));
    }
    map.insert(PLAIN_HEADERS.to_owned(), Value::Object(headers));
    Ok(())
}

/// Reads a stored webhook record, opening its sealed secrets.
pub(crate) fn open_webhook(keyring: &Keyring, raw: &str) -> Result<Webhook, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("webhook: {e}"));
    let mut record: Value = serde_json::from_str(raw).map_err(|e| corrupt(&e))?;
    let id = record
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt(&"the record has no id"))?
        .to_owned();
    open_headers(keyring, &id, &mut record)?;
    let context = context(&id);
    for slot in secret_slots(&mut record) {
        if let Value::String(stored) = slot {
            if is_sealed(stored) {
                let plain = keyring
                    .open(stored, &context)
                    .map_err(|e| corrupt(&format!("{id}: its secret: {e}")))?;
                let plain = String::from_utf8(plain)
                    .map_err(|_| corrupt(&format!("{id}: its secret is not text")))?;
                *slot = Value::String(plain);
            }
        }
    }
    serde_json::from_value(record).map_err(|e| corrupt(&format!("{id}: {e}")))
}

/// Whether a stored record has a secret or a header value that is plaintext or
/// sealed under another key than the newest.
pub(crate) fn needs_reseal(keyring: &Keyring, raw: &str) -> bool {
    let Ok(mut record) = serde_json::from_str::<Value>(raw) else {
        return false;
    };
    let newest = keyring.newest_id();
    let stale = |value: &Value| {
        value
            .as_str()
            .is_some_and(|s| sealed_key_id(s) != Some(newest))
    };
    let plain_headers = record
        .get(PLAIN_HEADERS)
        .and_then(Value::as_object)
        .is_some_and(|h| !h.is_empty());
    let stale_headers = record
        .get(SEALED_HEADERS)
        .and_then(Value::as_object)
        .is_some_and(|h| h.values().any(stale));
    plain_headers || stale_headers || secret_slots(&mut record).any(|slot| stale(slot))
}

/// The store's keyring, shared by its clones.
pub(crate) type SharedKeyring = Arc<Keyring>;

/// Compare-and-set of a webhook record's bytes, nothing else: re-encryption changes
/// no configuration, so it is neither audited nor announced.
/// KEYS: webhook. ARGV: expected record, new record. Returns 1 if replaced.
static RESEAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
",
    )
});

/// Tries of the compare-and-set of one record before it counts as failed.
const RESEAL_TRIES: usize = 5;

/// What re-encrypting every webhook record came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Webhook records found.
    pub scanned: usize,
    /// Records whose secrets and header values were sealed again under the newest key.
    pub reencrypted: usize,
    /// Records already sealed under the newest key only.
    pub current: usize,
    /// Records that could not be re-encrypted (a key missing from the keyring, or
    /// changed by other writers on every try); they are logged by key name.
    pub failed: usize,
}

enum Resealed {
    Done,
    AlreadyCurrent,
    Gone,
}

impl Store {
    /// Re-encrypts every webhook record (signing secrets and header values) under
    /// the keyring's newest key (SCAN over the webhook keys, then a compare-and-set
    /// per record, so concurrent changes by the API are never lost). Safe to run
    /// while the services serve, and again.
    pub async fn reencrypt_webhooks(&self) -> Result<ReencryptReport, StoreError> {
        let mut report = ReencryptReport::default();
        let pattern = format!("{}*", self.keys.webhook_prefix());
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = {
                let mut conn = self.conn().await?;
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(200)
                    .arg("TYPE")
                    .arg("string")
                    .query_async(&mut *conn)
                    .await?
            };
            for key in keys {
                report.scanned += 1;
                match self.reseal_one(&key).await {
                    Ok(Resealed::Done) => report.reencrypted += 1,
                    Ok(Resealed::AlreadyCurrent) => report.current += 1,
                    Ok(Resealed::Gone) => report.scanned -= 1,
                    Err(e @ StoreError::Redis(_)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "could not re-encrypt a webhook record");
                        report.failed += 1;
                    }
                }
            }
            if next == 0 {
                return Ok(report);
            }
            cursor = next;
        }
    }

    async fn reseal_one(&self, key: &str) -> Result<Resealed, StoreError> {
        for _ in 0..RESEAL_TRIES {
            let mut conn = self.conn().await?;
            let raw: Option<String> = redis::cmd("GET").arg(key).query_async(&mut *conn).await?;
            let Some(raw) = raw else {
                return Ok(Resealed::Gone);
            };
            if !needs_reseal(&self.keyring, &raw) {
                return Ok(Resealed::AlreadyCurrent);
            }
            let webhook = open_webhook(&self.keyring, &raw)?;
            let sealed = seal_webhook(&self.keyring, &webhook);
            let applied: i64 = RESEAL
                .key(key)
                .arg(&raw)
                .arg(&sealed)
                .invoke_async(&mut *conn)
                .await?;
            if applied == 1 {
                return Ok(Resealed::Done);
            }
        }
        Err(StoreError::Corrupt(format!(
            "{key} changed on each of {RESEAL_TRIES} tries"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::Utc;
    use courier_core::catalog::Catalog;
    use courier_core::ids::TenantId;
    use courier_core::retry::RetryDefaults;
    use courier_core::signing::Secret;
    use courier_core::webhook::{Rules, UrlPolicy, WebhookInput};

    fn webhook() -> Webhook {
        let input: WebhookInput = serde_json::from_value(serde_json::json!({
            "name": "crm", "url": "https://example.com/hook", "events": ["Prospect.*"],
            "headers": {"Authorization": "Bearer rk_plain_1", "X-Api-Key": "ak_plain_2"}
        }))
        .unwrap();
        let catalog = Catalog::builtin();
        let rules = Rules {
            catalog: &catalog,
            urls: &UrlPolicy::production(),
            retry: &RetryDefaults::default(),
        };
        let mut wh = input
            .into_webhook(&TenantId::parse("acme").unwrap(), rules, Utc::now())
            .unwrap();
        wh.rotate_secret(Secret::generate(), chrono::Duration::hours(1), Utc::now());
        wh
    }

    #[test]
    fn stored_records_hold_no_plaintext_secret_and_read_back_whole() {
        let keyring = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let wh = webhook();
        let raw = seal_webhook(&keyring, &wh);
        assert!(!raw.contains("whsec_"), "{raw}");
        assert!(
            !raw.contains("rk_plain_1") && !raw.contains("ak_plain_2"),
            "{raw}"
        );
        assert!(
            raw.contains("Authorization") && raw.contains("X-Api-Key"),
            "{raw}"
        );
        assert_eq!(raw.matches("enc:v1:k1:").count(), 4, "2 secrets, 2 headers");
        assert_eq!(open_webhook(&keyring, &raw).unwrap(), wh);
        assert!(!needs_reseal(&keyring, &raw));
    }

    #[test]
    fn records_with_plaintext_headers_still_read_and_need_a_reseal() {
        // As stored before header values were sealed: secrets sealed, headers plain.
        let keyring = Keyring::dev();
        let wh = webhook();
        let mut raw: Value = serde_json::from_str(&seal_webhook(&keyring, &wh)).unwrap();
        let map = raw.as_object_mut().unwrap();
        map.remove(SEALED_HEADERS);
        map.insert(
            PLAIN_HEADERS.into(),
            serde_json::to_value(&wh.headers).unwrap(),
        );
        let raw = raw.to_string();
        assert!(raw.contains("rk_plain_1"));
        assert_eq!(open_webhook(&keyring, &raw).unwrap(), wh);
        assert!(needs_reseal(&keyring, &raw));
        let resealed = seal_webhook(&keyring, &open_webhook(&keyring, &raw).unwrap());
        assert!(!resealed.contains("rk_plain_1"));
        assert!(!needs_reseal(&keyring, &resealed));
    }

    #[test]
    fn a_sealed_header_value_moved_to_another_header_does_not_open() {
        let keyring = Keyring::dev();
        let wh = webhook();
        let mut raw: Value = serde_json::from_str(&seal_webhook(&keyring, &wh)).unwrap();
        let auth = raw[SEALED_HEADERS]["Authorization"].clone();
        raw[SEALED_HEADERS]["X-Api-Key"] = auth;
        let err = open_webhook(&keyring, &raw.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("its header X-Api-Key"), "{err}");
        assert!(
            !err.contains("rk_plain_1") && !err.contains("ak_plain_2"),
            "{err}"
        );
        raw[SEALED_HEADERS]["X-Api-Key"] = "ak_plain_2".into();
        let err = open_webhook(&keyring, &raw.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not sealed") && !err.contains("ak_plain_2"),
            "{err}"
        );
    }

    #[test]
    fn plaintext_records_still_read_and_need_a_reseal() {
        let keyring = Keyring::dev();
        let wh = webhook();
        let plain = serde_json::to_string(&wh).unwrap();
        assert_eq!(open_webhook(&keyring, &plain).unwrap(), wh);
        assert!(needs_reseal(&keyring, &plain));
    }

    #[test]
    fn a_sealed_secret_moved_to_another_record_does_not_open() {
        let keyring = Keyring::dev();
        let (a, b) = (webhook(), webhook());
        let raw_a: Value = serde_json::from_str(&seal_webhook(&keyring, &a)).unwrap();
        let mut raw_b: Value = serde_json::from_str(&seal_webhook(&keyring, &b)).unwrap();
        raw_b["secret"] = raw_a["secret"].clone();
        let err = open_webhook(&keyring, &raw_b.to_string()).unwrap_err();
        assert!(!err.to_string().contains("whsec_"));
        assert!(err.to_string().contains("does not open"), "{err}");
    }

    fn unreadable(keyring: &Keyring, raw: &str) -> UnreadableWebhook {
        match read_webhook(keyring, WebhookId::parse("wh_stored").unwrap(), raw) {
            StoredWebhook::Unreadable(u) => u,
            StoredWebhook::Readable(w) => panic!("read {w:?}"),
        }
    }

    #[test]
    fn a_record_under_a_key_not_in_the_keyring_is_unreadable_with_its_subscription() {
        let wh = webhook();
        let raw = seal_webhook(
            &Keyring::parse(&Keyring::generate_entry("gone")).unwrap(),
            &wh,
        );
        let here = Keyring::parse(&Keyring::generate_entry("here")).unwrap();
        let u = unreadable(&here, &raw);
        assert_eq!(u.id.as_str(), "wh_stored", "the id is the stored key's");
        assert!(
            u.reason.contains("key gone, which is not in the keyring"),
            "{}",
            u.reason
        );
        assert!(!u.reason.contains("whsec_") && !u.reason.contains("rk_plain_1"));
        assert_eq!(u.generation, Some(wh.generation));
        assert_eq!(u.throttling, Some(wh.throttling));
        assert_eq!(u.created_at, Some(wh.created_at));
        let key = EventKey::parse("Prospect.EntityCreated").unwrap();
        assert_eq!(u.wants(&key, None), Some(true));
        let other = EventKey::parse("Account.EntityCreated").unwrap();
        assert_eq!(u.wants(&other, None), Some(false));
        assert!(!u.cancels(wh.generation));
        assert!(u.cancels(wh.generation + 1));
        let readable = read_webhook(
            &Keyring::dev(),
            wh.id.clone(),
            &seal_webhook(&Keyring::dev(), &wh),
        );
        assert!(matches!(readable, StoredWebhook::Readable(w) if w == wh));
    }

    #[test]
    fn a_record_of_a_newer_version_or_corrupt_keeps_what_reads() {
        let keyring = Keyring::dev();
        let wh = webhook();
        let mut newer: Value = serde_json::from_str(&seal_webhook(&keyring, &wh)).unwrap();
        newer["signatureScheme"] = "ed25519".into();
        let u = unreadable(&keyring, &newer.to_string());
        assert!(u.reason.contains("ed25519"), "{}", u.reason);
        assert!(u.subscription.is_some());
        // A pattern this version cannot parse: nobody can tell what it wants.
        newer["events"] = serde_json::json!(["Prospect.*", "**"]);
        let u = unreadable(&keyring, &newer.to_string());
        assert_eq!(u.subscription, None);
        let key = EventKey::parse("Prospect.EntityCreated").unwrap();
        assert_eq!(u.wants(&key, None), None);
        assert_eq!(u.generation, Some(wh.generation));
        newer["active"] = false.into();
        newer["events"] = serde_json::json!(["Prospect.*"]);
        let u = unreadable(&keyring, &newer.to_string());
        assert_eq!(u.wants(&key, None), Some(false));
        assert!(
            u.cancels(wh.generation),
            "a disabled webhook's work is over"
        );
        for garbage in ["", "{", "[1,2]", "null", "{\"id\": 5}"] {
            let u = unreadable(&keyring, garbage);
            assert_eq!(
                (u.subscription, u.generation, u.throttling),
                (None, None, None),
                "{garbage}"
            );
            assert!(!u.reason.is_empty());
        }
    }

    #[test]
    fn rotation_of_keys_needs_a_reseal_and_an_unknown_key_is_named() {
        let old_entry = Keyring::generate_entry("old");
        let old = Keyring::parse(&old_entry).unwrap();
        let wh = webhook();
        let raw = seal_webhook(&old, &wh);
        let rotated =
            Keyring::parse(&format!("{},{old_entry}", Keyring::generate_entry("new"))).unwrap();
        assert!(needs_reseal(&rotated, &raw));
        assert!(open_webhook(&rotated, &raw).is_ok());
        // A record whose secrets are under the newest key but its header values not.
        let mut mixed: Value = serde_json::from_str(&seal_webhook(&rotated, &wh)).unwrap();
        let stale: Value = serde_json::from_str(&raw).unwrap();
        mixed[SEALED_HEADERS] = stale[SEALED_HEADERS].clone();
        let mixed = mixed.to_string();
        assert!(needs_reseal(&rotated, &mixed));
        assert_eq!(open_webhook(&rotated, &mixed).unwrap(), wh);
        let only_new = Keyring::parse(&Keyring::generate_entry("new")).unwrap();
        let err = open_webhook(&only_new, &raw).unwrap_err().to_string();
        assert!(
            err.contains("key old, which is not in the keyring"),
            "{err}"
        );
    }
}
