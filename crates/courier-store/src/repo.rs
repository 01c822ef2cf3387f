//! Tenants, API keys and webhooks.
//!
//! Every change is one Lua script that applies it, appends its audit entry to the
//! tenant's and the operators' audit streams, and announces it on the configuration
//! channel (so workers drop their cached copy): all or nothing.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use courier_core::audit::AuditEntry;
use courier_core::ids::{TenantId, WebhookId};
use courier_core::tenant::{hash_api_key, ApiKeyRecord, Tenant};
use courier_core::webhook::Webhook;
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;

use crate::sealed::{open_webhook, seal_webhook};
use crate::{scripts, Store, StoreError};

/// Entries an audit stream keeps (approximately; the oldest go first).
pub const AUDIT_RETAINED: u64 = 100_000;

/// Appends `entry` to both audit streams: `audit(tenant_stream, all_stream, entry)`.
const AUDIT_FN: &str = r"
local function audit(tenant_stream, all_stream, entry)
  redis.call('XADD', tenant_stream, 'MAXLEN', '~', 100000, '*', 'entry', entry)
  redis.call('XADD', all_stream, 'MAXLEN', '~', 100000, '*', 'entry', entry)
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{AUDIT_FN}{body}"))
}

/// KEYS: tenant, tenants index, audit, audit-all. ARGV: JSON, id, entry.
static CREATE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[2])
audit(KEYS[3], KEYS[4], ARGV[3])
return 1
",
    )
});

/// How long the id of a deleted webhook is remembered (seconds): a day, the dedupe
/// window, is far longer than an event can wait to be redelivered.
const DELETED_REMEMBERED: u64 = 24 * 3600;

/// KEYS: tenant, tenants index, tenant keys, tenant webhooks, audit, audit-all,
/// deleted webhooks. ARGV: id, api key prefix, webhook prefix, config channel,
/// entry, remembered s.
static DELETE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for _, hash in ipairs(redis.call('HVALS', KEYS[3])) do redis.call('DEL', ARGV[2] .. hash) end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('DEL', ARGV[3] .. id)
  redis.call('SADD', KEYS[7], id)
  redis.call('EXPIRE', KEYS[7], ARGV[6])
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
audit(KEYS[5], KEYS[6], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
",
    )
});

/// KEYS: api key, tenant keys, tenant, audit, audit-all. ARGV: record, key id, hash, entry.
static PUT_API_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
audit(KEYS[4], KEYS[5], ARGV[4])
return 1
",
    )
});

/// KEYS: tenant keys, audit, audit-all. ARGV: key id, api key prefix, entry, config
/// channel, tenant. The announcement makes gateways drop the key from their caches.
static REVOKE_API_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local hash = redis.call('HGET', KEYS[1], ARGV[1])
if not hash then return 0 end
redis.call('DEL', ARGV[2] .. hash)
redis.call('HDEL', KEYS[1], ARGV[1])
audit(KEYS[2], KEYS[3], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
",
    )
});

/// KEYS: tenant webhooks, webhook, audit, audit-all.
/// ARGV: webhook id, JSON, limit, config channel, tenant, entry.
/// Returns 1 if created, 0 if the tenant is at its limit.
static CREATE_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
audit(KEYS[3], KEYS[4], ARGV[6])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
",
    )
});

/// Compare-and-set of a webhook record; an empty new value deletes it (and
/// remembers its id among the tenant's deleted webhooks).
/// KEYS: webhook, tenant webhooks, audit, audit-all, deleted webhooks.
/// ARGV: expected JSON, new JSON or '', webhook id, config channel, tenant, entry,
/// remembered s.
/// Returns 1 if applied, 0 if the record changed meanwhile (or is gone).
static SWAP_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
  redis.call('SADD', KEYS[5], ARGV[3])
  redis.call('EXPIRE', KEYS[5], ARGV[7])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
audit(KEYS[3], KEYS[4], ARGV[6])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
",
    )
});

/// What creating a webhook came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateWebhook {
    Created,
    /// The tenant already has this many webhooks.
    LimitReached(usize),
}

/// A stored webhook with the exact record it was read from, for compare-and-set.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub webhook: Webhook,
    raw: String,
}

/// One audit log entry with its position (the cursor) and time.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    // Plain records of strings, numbers and maps always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

impl Store {
    /// Creates the tenant unless one with that id exists; returns whether it did.
    pub async fn create_tenant(
        &self,
        tenant: &Tenant,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let created: i64 = CREATE_TENANT
            .key(self.keys.tenant(&tenant.id))
            .key(self.keys.tenants())
            .key(self.keys.audit(&tenant.id))
            .key(self.keys.audit_all())
            .arg(encode(tenant))
            .arg(tenant.id.as_str())
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(created == 1)
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn.get(self.keys.tenant(id)).await?;
        json.map(|j| decode("tenant", &j)).transpose()
    }

    /// A page of tenants, oldest first, and how many there are.
    pub async fn tenants(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Tenant>, usize), StoreError> {
        let mut conn = self.conn().await?;
        let index = self.keys.tenants();
        let stop = isize::try_from(offset + limit).unwrap_or(isize::MAX) - 1;
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let (ids, total): (Vec<String>, usize) = redis::pipe()
            .zrange(&index, start, stop)
            .zcard(&index)
            .query_async(&mut *conn)
            .await?;
        if ids.is_empty() {
            return Ok((Vec::new(), total));
        }
        let keys: Vec<String> = ids
            .iter()
            .filter_map(|id| TenantId::parse(id).ok())
            .map(|id| self.keys.tenant(&id))
            .collect();
        let jsons: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut *conn)
            .await?;
        let tenants = jsons
            .iter()
            .flatten()
            .map(|j| decode("tenant", j))
            .collect::<Result<_, _>>()?;
        Ok((tenants, total))
    }

    /// Deletes a tenant with its keys and webhooks (their pending work ends
    /// cancelled). The audit log is kept.
    pub async fn delete_tenant(
        &self,
        id: &TenantId,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let deleted: i64 = DELETE_TENANT
            .key(self.keys.tenant(id))
            .key(self.keys.tenants())
            .key(self.keys.tenant_keys(id))
            .key(self.keys.tenant_webhooks(id))
            .key(self.keys.audit(id))
            .key(self.keys.audit_all())
            .key(self.keys.deleted_webhooks(id))
            .arg(id.as_str())
            .arg(self.keys.api_key_prefix())
            .arg(self.keys.webhook_prefix())
            .arg(self.keys.config_channel())
            .arg(encode(audit))
            .arg(DELETED_REMEMBERED)
            .invoke_async(&mut *conn)
            .await?;
        Ok(deleted == 1)
    }

    /// Stores an API key record under the hash of its plaintext; false if the
    /// tenant does not exist.
    pub async fn put_api_key(
        &self,
        hash: &str,
        record: &ApiKeyRecord,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let stored: i64 = PUT_API_KEY
            .key(self.keys.api_key(hash))
            .key(self.keys.tenant_keys(&record.tenant_id))
            .key(self.keys.tenant(&record.tenant_id))
            .key(self.keys.audit(&record.tenant_id))
            .key(self.keys.audit_all())
            .arg(encode(record))
            .arg(&record.id)
            .arg(hash)
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(stored == 1)
    }

    /// Looks a presented key up by its hash.
    pub async fn api_key(&self, plaintext: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn
            .get(self.keys.api_key(&hash_api_key(plaintext)))
            .await?;
        json.map(|j| decode("api key", &j)).transpose()
    }

    /// A tenant's keys (never their plaintext), oldest first.
    pub async fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let hashes: Vec<String> = conn.hvals(self.keys.tenant_keys(tenant)).await?;
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.keys.api_key(h)).collect();
        let jsons: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut *conn)
            .await?;
        let mut records: Vec<ApiKeyRecord> = jsons
            .iter()
            .flatten()
            .map(|j| decode("api key", j))
            .collect::<Result<_, _>>()?;
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    /// Revokes a key by id; false if the tenant has no such key.
    pub async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let revoked: i64 = REVOKE_API_KEY
            .key(self.keys.tenant_keys(tenant))
            .key(self.keys.audit(tenant))
            .key(self.keys.audit_all())
            .arg(key_id)
            .arg(self.keys.api_key_prefix())
            .arg(encode(audit))
            .arg(self.keys.config_channel())
            .arg(tenant.as_str())
            .invoke_async(&mut *conn)
            .await?;
        Ok(revoked == 1)
    }

    /// Creates the webhook unless its tenant already has `limit`, atomically across
    /// gateway replicas.
    pub async fn create_webhook(
        &self,
        webhook: &Webhook,
        limit: usize,
        audit: &AuditEntry,
    ) -> Result<CreateWebhook, StoreError> {
        let mut conn = self.conn().await?;
        let created: i64 = CREATE_WEBHOOK
            .key(self.keys.tenant_webhooks(&webhook.tenant_id))
            .key(self.keys.webhook(&webhook.id))
            .key(self.keys.audit(&webhook.tenant_id))
            .key(self.keys.audit_all())
            .arg(webhook.id.as_str())
            .arg(seal_webhook(&self.keyring, webhook))
            .arg(limit)
            .arg(self.keys.config_channel())
            .arg(webhook.tenant_id.as_str())
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(if created == 1 {
            CreateWebhook::Created
        } else {
            CreateWebhook::LimitReached(limit)
        })
    }

    pub async fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(self.webhook_versioned(id).await?.map(|v| v.webhook))
    }

    /// The webhook with its version, for [`Store::swap_webhook`].
    pub async fn webhook_versioned(&self, id: &WebhookId) -> Result<Option<Versioned>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn.get(self.keys.webhook(id)).await?;
        json.map(|raw| {
            Ok(Versioned {
                webhook: open_webhook(&self.keyring, &raw)?,
                raw,
            })
        })
        .transpose()
    }

    /// Replaces (`Some`) or deletes (`None`) the webhook read as `current`, unless it
    /// changed since; returns whether it was applied.
    pub async fn swap_webhook(
        &self,
        current: &Versioned,
        next: Option<&Webhook>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let wh = &current.webhook;
        let mut conn = self.conn().await?;
        let applied: i64 = SWAP_WEBHOOK
            .key(self.keys.webhook(&wh.id))
            .key(self.keys.tenant_webhooks(&wh.tenant_id))
            .key(self.keys.audit(&wh.tenant_id))
            .key(self.keys.audit_all())
            .key(self.keys.deleted_webhooks(&wh.tenant_id))
            .arg(&current.raw)
            .arg(
                next.map(|w| seal_webhook(&self.keyring, w))
                    .unwrap_or_default(),
            )
            .arg(wh.id.as_str())
            .arg(self.keys.config_channel())
            .arg(wh.tenant_id.as_str())
            .arg(encode(audit))
            .arg(DELETED_REMEMBERED)
            .invoke_async(&mut *conn)
            .await?;
        Ok(applied == 1)
    }

    /// Every webhook of a tenant, in one round trip, oldest first.
    pub async fn tenant_webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        let mut conn = self.conn().await?;
        let jsons: Vec<String> = scripts::TENANT_WEBHOOKS
            .key(self.keys.tenant_webhooks(tenant))
            .arg(self.keys.webhook_prefix())
            .invoke_async(&mut *conn)
            .await?;
        let mut webhooks: Vec<Webhook> = jsons
            .iter()
            .map(|j| open_webhook(&self.keyring, j))
            .collect::<Result<_, _>>()?;
        webhooks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(webhooks)
    }

    /// A page of the audit log, newest first: a tenant's, or every tenant's for `None`.
    /// `before` is the `id` of the last entry of the previous page.
    pub async fn audit_log(
        &self,
        tenant: Option<&TenantId>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let key = tenant.map_or_else(|| self.keys.audit_all(), |t| self.keys.audit(t));
        let end = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg(&end)
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut *conn)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|item| {
                let entry: String = item.get("entry").ok_or_else(|| {
                    StoreError::Corrupt(format!("audit entry {} is empty", item.id))
                })?;
                let ms = item
                    .id
                    .split_once('-')
                    .and_then(|(ms, _)| ms.parse::<i64>().ok())
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(|| StoreError::Corrupt(format!("audit id {}", item.id)))?;
                Ok(AuditRecord {
                    at: ms,
                    entry: decode("audit entry", &entry)?,
                    id: item.id,
                })
            })
            .collect()
    }
}
