//! Tenants, API keys and webhooks.
//!
//! Every change is one Lua script that applies it, appends its audit entry to the
//! tenant's and the operators' audit streams, and announces it on the configuration
//! channel (so workers drop their cached copy): all or nothing. Deleting a tenant
//! starts its purge ([`crate::purge`]).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use courier_core::audit::AuditEntry;
use courier_core::ids::{TenantId, WebhookId};
use courier_core::tenant::{hash_api_key, ApiKeyRecord, Tenant};
use courier_core::webhook::Webhook;
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;

use crate::sealed::{open_webhook, read_webhook, seal_webhook, StoredWebhook, UnreadableWebhook};
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

/// KEYS: tenant, tenants index, audit, audit-all, purge. ARGV: JSON, id, entry.
/// Returns 1 if created, 0 if the tenant exists, -1 if an earlier tenant with the
/// id is being purged.
static CREATE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[5]) == 1 then return -1 end
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

/// Deletes a tenant: its record, its place in the index and its webhooks' records
/// (so that nothing authenticates or is delivered for it any more), and starts
/// the purge of everything else (see [`crate::purge`]). The deletion's audit
/// entry goes to the operators' log only: the tenant's own is purged.
/// KEYS: tenant, tenants index, tenant webhooks, audit-all, purges, purge.
/// ARGV: id, webhook prefix, config channel, entry.
/// Returns 'deleted', 'missing', or 'purging' (deleted before, purge running).
static DELETE_TENANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[6]) == 1 then return 'purging' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('DEL', ARGV[2] .. id) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local entry = redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'entry', ARGV[4])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[6], 'deletedAt', now, 'pass', 1, 'auditId', entry)
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 'deleted'
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

/// KEYS: tenant webhooks, webhook, audit, audit-all, tenant.
/// ARGV: webhook id, JSON, limit, config channel, tenant, entry.
/// Returns 1 if created, 0 if the tenant is at its limit, -1 if it is gone (deleted
/// while the request ran).
static CREATE_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[5]) == 0 then return -1 end
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
/// remembers its id among the tenant's deleted webhooks, forgetting those deleted
/// longer ago than the remembered time).
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
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('ZADD', KEYS[5], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[7]) * 1000)
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
    /// The tenant was deleted meanwhile.
    TenantGone,
}

/// What creating a tenant came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTenant {
    Created,
    /// A tenant with this id exists.
    Exists,
    /// An earlier tenant with this id was deleted and its data is still being
    /// purged: the id is free once that is done.
    Purging,
}

/// What deleting a tenant came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteTenant {
    /// Deleted; its purge has started.
    Deleted,
    /// Deleted before, and its purge is still running.
    Purging,
    /// No such tenant.
    Missing,
}

/// A stored webhook with the exact record it was read from, for compare-and-set.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub webhook: Webhook,
    raw: String,
}

/// A tenant's webhooks as stored, each list oldest first.
#[derive(Debug, Clone, Default)]
pub struct TenantWebhooks {
    /// Those whose record reads.
    pub readable: Vec<Webhook>,
    /// Those whose record cannot be read (see [`UnreadableWebhook`]).
    pub unreadable: Vec<UnreadableWebhook>,
}

impl TenantWebhooks {
    /// Every webhook's id, readable or not.
    pub fn ids(&self) -> impl Iterator<Item = &WebhookId> {
        self.readable
            .iter()
            .map(|w| &w.id)
            .chain(self.unreadable.iter().map(|u| &u.id))
    }
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
    /// Creates the tenant unless one with that id exists, or an earlier one with
    /// that id is still being purged.
    pub async fn create_tenant(
        &self,
        tenant: &Tenant,
        audit: &AuditEntry,
    ) -> Result<CreateTenant, StoreError> {
        let mut conn = self.conn().await?;
        let created: i64 = CREATE_TENANT
            .key(self.keys.tenant(&tenant.id))
            .key(self.keys.tenants())
            .key(self.keys.audit(&tenant.id))
            .key(self.keys.audit_all())
            .key(self.keys.tenant_purge(&tenant.id))
            .arg(encode(tenant))
            .arg(tenant.id.as_str())
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(match created {
            1 => CreateTenant::Created,
            0 => CreateTenant::Exists,
            _ => CreateTenant::Purging,
        })
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

    /// Deletes a tenant: from now on none of its keys authenticates and none of its
    /// webhooks gets anything; everything else it had is purged in the background
    /// ([`crate::purge`]), and until that is done its id cannot be used again.
    pub async fn delete_tenant(
        &self,
        id: &TenantId,
        audit: &AuditEntry,
    ) -> Result<DeleteTenant, StoreError> {
        let mut conn = self.conn().await?;
        let deleted: String = DELETE_TENANT
            .key(self.keys.tenant(id))
            .key(self.keys.tenants())
            .key(self.keys.tenant_webhooks(id))
            .key(self.keys.audit_all())
            .key(self.keys.tenant_purges())
            .key(self.keys.tenant_purge(id))
            .arg(id.as_str())
            .arg(self.keys.webhook_prefix())
            .arg(self.keys.config_channel())
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(match deleted.as_str() {
            "deleted" => DeleteTenant::Deleted,
            "purging" => DeleteTenant::Purging,
            _ => DeleteTenant::Missing,
        })
    }

    /// Whether work for `tenant` created at `created_at` outlived it: the tenant
    /// is gone, or the one now under that id was created later (the id was used
    /// again after a deletion). Such work has no one to report to: its log was
    /// purged with its tenant.
    pub async fn tenant_outlived(
        &self,
        tenant: &TenantId,
        created_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .tenant(tenant)
            .await?
            .is_none_or(|t| t.created_at > created_at))
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

    /// Looks a presented key up by its hash; a key of a deleted tenant (its records
    /// not purged yet) is none.
    pub async fn api_key(&self, plaintext: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn
            .get(self.keys.api_key(&hash_api_key(plaintext)))
            .await?;
        let Some(record) = json
            .map(|j| decode::<ApiKeyRecord>("api key", &j))
            .transpose()?
        else {
            return Ok(None);
        };
        let live: bool = conn.exists(self.keys.tenant(&record.tenant_id)).await?;
        Ok(live.then_some(record))
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
            .key(self.keys.tenant(&webhook.tenant_id))
            .arg(webhook.id.as_str())
            .arg(seal_webhook(&self.keyring, webhook))
            .arg(limit)
            .arg(self.keys.config_channel())
            .arg(webhook.tenant_id.as_str())
            .arg(encode(audit))
            .invoke_async(&mut *conn)
            .await?;
        Ok(match created {
            1 => CreateWebhook::Created,
            0 => CreateWebhook::LimitReached(limit),
            _ => CreateWebhook::TenantGone,
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
        let next = next
            .map(|w| seal_webhook(&self.keyring, w))
            .unwrap_or_default();
        self.swap_stored(&wh.tenant_id, &wh.id, &current.raw, &next, audit)
            .await
    }

    /// Replaces the webhook's stored record `raw` by `next` (sealed; empty
    /// deletes) with `audit`, unless it changed since; returns whether it was
    /// applied.
    async fn swap_stored(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
        raw: &str,
        next: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let applied: i64 = SWAP_WEBHOOK
            .key(self.keys.webhook(id))
            .key(self.keys.tenant_webhooks(tenant))
            .key(self.keys.audit(tenant))
            .key(self.keys.audit_all())
            .key(self.keys.deleted_webhooks(tenant))
            .arg(raw)
            .arg(next)
            .arg(id.as_str())
            .arg(self.keys.config_channel())
            .arg(tenant.as_str())
            .arg(encode(audit))
            .arg(DELETED_REMEMBERED)
            .invoke_async(&mut *conn)
            .await?;
        Ok(applied == 1)
    }

    /// Whether `id` is one of `tenant`'s webhooks, readable or not.
    pub async fn is_tenant_webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        Ok(conn
            .sismember(self.keys.tenant_webhooks(tenant), id.as_str())
            .await?)
    }

    /// Deletes `tenant`'s webhook `id` as it is stored, whether or not its record
    /// reads (one that cannot be read can still be removed), with `audit`; false
    /// when it is not the tenant's or changed meanwhile.
    pub async fn delete_stored_webhook(
        &self,
        tenant: &TenantId,
        id: &WebhookId,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let (raw, member): (Option<String>, bool) = redis::pipe()
            .get(self.keys.webhook(id))
            .sismember(self.keys.tenant_webhooks(tenant), id.as_str())
            .query_async(&mut *conn)
            .await?;
        let (Some(raw), true) = (raw, member) else {
            return Ok(false);
        };
        self.swap_stored(tenant, id, &raw, "", audit).await
    }

    /// Every webhook of a tenant, in one round trip, oldest first. A record that
    /// cannot be read does not fail the others: it comes back among the unreadable,
    /// and only an unavailable Redis is an error.
    pub async fn tenant_webhooks(&self, tenant: &TenantId) -> Result<TenantWebhooks, StoreError> {
        let mut conn = self.conn().await?;
        let pairs: Vec<(String, String)> = scripts::TENANT_WEBHOOKS
            .key(self.keys.tenant_webhooks(tenant))
            .arg(self.keys.webhook_prefix())
            .invoke_async(&mut *conn)
            .await?;
        let mut webhooks = TenantWebhooks::default();
        for (id, raw) in pairs {
            let Ok(id) = WebhookId::parse(&id) else {
                tracing::warn!(%tenant, id, "skipping a malformed id in a tenant's webhook set");
                continue;
            };
            match read_webhook(&self.keyring, id, &raw) {
                StoredWebhook::Readable(w) => webhooks.readable.push(w),
                StoredWebhook::Unreadable(u) => webhooks.unreadable.push(u),
            }
        }
        webhooks
            .readable
            .sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        webhooks
            .unreadable
            .sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
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
