//! The purge of a deleted tenant.
//!
//! Deleting a tenant ([`Store::delete_tenant`]) removes at once what makes it act:
//! its record (so its keys stop authenticating) and its webhooks' records (so
//! nothing is delivered for it), and records a *purge*: the tenant's id in the
//! purge set, scanned by every gateway, and a record of the purge under its id
//! (while it exists, the id cannot be used again). A gateway takes a due purge
//! under a lease ([`Store::next_purge`]), renewed as it goes, and removes
//! everything else in pages: API keys, each webhook's batches and delivery log
//! (records, attempts, claims, placed markers, index), the dead letters, the
//! tenant's audit log and its entries in the operators' (but the deletion's own),
//! the ingest rate bucket. A gateway that dies mid-pass lets its lease expire;
//! another one (or itself, restarted) runs the pass again: every step is
//! idempotent.
//!
//! A purge makes [`PASSES`] passes, the last one a settling time after the first:
//! work in flight when the tenant was deleted (a delivery under way, a batch being
//! handed on, a worker's configuration read just before) may still write for it
//! meanwhile, and the last pass removes that too (the first one notes the batches
//! whose delivery was under way: what it writes later, no index lists). Work that
//! comes out of the
//! broker later still (a retry waiting in the delay ladder) finds its tenant gone
//! and leaves no trace ([`Store::tenant_outlived`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use courier_core::ids::{BatchId, TenantId, WebhookId};
use redis::{AsyncCommands, Script};

use crate::{Store, StoreError};

/// Passes a purge makes: one at once, one after the settling time.
pub const PASSES: u32 = 2;

/// A purge pass to run, leased to this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgePass {
    pub tenant: TenantId,
    /// 1-based; the last is [`PASSES`].
    pub pass: u32,
    /// The deletion's entry in the operators' audit log, which stays.
    audit_id: String,
}

/// What ending a pass came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassEnd {
    /// The next pass is due after the settling time.
    Next,
    /// That was the last: the tenant's id is free.
    Finished,
    /// Another gateway ran this pass too (this one's lease had expired) and moved on.
    Overtaken,
}

/// KEYS: purges. ARGV: lease ms, purge record prefix.
/// Leases the tenant whose next pass is the most overdue: {id, pass, audit id}.
static NEXT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #due == 0 then return false end
local id = due[1]
local rec = redis.call('HMGET', ARGV[2] .. id, 'pass', 'auditId')
if not rec[1] then
  redis.call('ZREM', KEYS[1], id)
  return false
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
return {id, rec[1], rec[2] or ''}
",
    )
});

/// KEYS: purges. ARGV: id, lease ms. Renews a running pass's lease.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
",
    )
});

/// KEYS: purges, purge record, unsettled batches. ARGV: id, pass, passes, settle
/// ms, config channel. Returns 'next', 'finished' or 'overtaken'.
static PASS_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[2], 'pass') ~= ARGV[2] then return 'overtaken' end
if tonumber(ARGV[2]) < tonumber(ARGV[3]) then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  redis.call('HSET', KEYS[2], 'pass', tonumber(ARGV[2]) + 1)
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return 'next'
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 'finished'
",
    )
});

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store {
    /// Takes the most overdue purge pass, if any, leasing it for `lease`.
    pub async fn next_purge(&self, lease: Duration) -> Result<Option<PurgePass>, StoreError> {
        let mut conn = self.conn().await?;
        let next: Option<(String, String, String)> = NEXT
            .key(self.keys.tenant_purges())
            .arg(millis(lease))
            .arg(format!("{}tenant-purge:", self.keys.base()))
            .invoke_async(&mut *conn)
            .await?;
        let Some((id, pass, audit_id)) = next else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("tenant purge {id}: bad {what}"));
        Ok(Some(PurgePass {
            tenant: TenantId::parse(&id).map_err(|_| corrupt("tenant id"))?,
            pass: pass.parse().map_err(|_| corrupt("pass"))?,
            audit_id,
        }))
    }

    /// Renews the lease of a running pass.
    pub async fn renew_purge(&self, pass: &PurgePass, lease: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        RENEW
            .key(self.keys.tenant_purges())
            .arg(pass.tenant.as_str())
            .arg(millis(lease))
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Records the end of a pass: the next one is due after `settle`, or, after the
    /// last, the purge is over (announced, so that every cache lets go of the
    /// tenant) and its id free.
    pub async fn end_purge_pass(
        &self,
        pass: &PurgePass,
        settle: Duration,
    ) -> Result<PassEnd, StoreError> {
        let mut conn = self.conn().await?;
        let end: String = PASS_DONE
            .key(self.keys.tenant_purges())
            .key(self.keys.tenant_purge(&pass.tenant))
            .key(self.keys.tenant_purge_unsettled(&pass.tenant))
            .arg(pass.tenant.as_str())
            .arg(pass.pass)
            .arg(PASSES)
            .arg(millis(settle))
            .arg(self.keys.config_channel())
            .invoke_async(&mut *conn)
            .await?;
        Ok(match end.as_str() {
            "next" => PassEnd::Next,
            "finished" => PassEnd::Finished,
            _ => PassEnd::Overtaken,
        })
    }

    /// Whether a deleted tenant's data is still being purged.
    pub async fn purging(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        Ok(conn.exists(self.keys.tenant_purge(tenant)).await?)
    }

    /// Removes up to `page` of the tenant's API keys; how many it removed (0: none
    /// left, and the list of them is gone too).
    pub async fn purge_api_keys(
        &self,
        tenant: &TenantId,
        page: usize,
    ) -> Result<usize, StoreError> {
        let list = self.keys.tenant_keys(tenant);
        let mut conn = self.conn().await?;
        let (_, pairs): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(&list)
            .arg(0)
            .arg("COUNT")
            .arg(page)
            .query_async(&mut *conn)
            .await?;
        if pairs.is_empty() {
            conn.del::<_, ()>(&list).await?;
            return Ok(0);
        }
        let (ids, hashes): (Vec<&String>, Vec<&String>) = pairs
            .chunks(2)
            .filter_map(|p| Some((p.first()?, p.get(1)?)))
            .unzip();
        let records: Vec<String> = hashes.iter().map(|h| self.keys.api_key(h)).collect();
        redis::pipe()
            .del(&records)
            .ignore()
            .hdel(&list, &ids)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(ids.len())
    }

    /// Every webhook the tenant had: current ones, and those deleted within the
    /// last day (earlier ones' delivery log has expired, or will within the
    /// retention, reachable by no listing).
    pub async fn purge_webhook_ids(&self, tenant: &TenantId) -> Result<Vec<WebhookId>, StoreError> {
        let mut conn = self.conn().await?;
        let (current, deleted, deleted_before): (Vec<String>, Vec<String>, Vec<String>) =
            redis::pipe()
                .smembers(self.keys.tenant_webhooks(tenant))
                .zrange(self.keys.deleted_webhooks(tenant), 0, -1)
                .smembers(self.keys.deleted_webhooks_before(tenant))
                .query_async(&mut *conn)
                .await?;
        let mut seen = HashSet::new();
        Ok(current
            .iter()
            .chain(&deleted)
            .chain(&deleted_before)
            .filter(|id| seen.insert(id.as_str()))
            .filter_map(|id| WebhookId::parse(id).ok())
            .collect())
    }

    /// Removes up to `page` batches of the webhook's delivery log, oldest first:
    /// records, attempts, claims and the accumulator's placed markers of their
    /// events. Returns how many (0: none left, and the index is gone too).
    pub async fn purge_webhook_log(
        &self,
        pass: &PurgePass,
        webhook: &WebhookId,
        page: usize,
    ) -> Result<usize, StoreError> {
        self.purge_indexed(pass, &self.keys.log_index(webhook), page)
            .await
    }

    /// Removes up to `page` of the tenant's dead letters with their records (those
    /// of webhooks deleted long ago included). Returns how many (0: none left).
    pub async fn purge_dead_letters(
        &self,
        pass: &PurgePass,
        page: usize,
    ) -> Result<usize, StoreError> {
        self.purge_indexed(pass, &self.keys.dead(&pass.tenant), page)
            .await
    }

    /// Removes what was written after an earlier pass for up to `page` batches
    /// whose delivery was under way then (the attempt's result, its claim).
    /// Returns how many (0: none left).
    pub async fn purge_unsettled(
        &self,
        pass: &PurgePass,
        page: usize,
    ) -> Result<usize, StoreError> {
        let set = self.keys.tenant_purge_unsettled(&pass.tenant);
        let mut conn = self.conn().await?;
        let members: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(&set)
            .arg(page.max(1))
            .query_async(&mut *conn)
            .await?;
        if members.is_empty() {
            return Ok(0);
        }
        let batches: Vec<BatchId> = members.iter().filter_map(|m| BatchId::parse(m)).collect();
        self.purge_records(&batches, None).await?;
        conn.srem::<_, _, ()>(&set, &members).await?;
        Ok(members.len())
    }

    /// Removes up to `page` batches listed in the sorted set `index`, with their
    /// records, then takes them off it; once it is empty, deletes it.
    async fn purge_indexed(
        &self,
        pass: &PurgePass,
        index: &str,
        page: usize,
    ) -> Result<usize, StoreError> {
        let stop = isize::try_from(page.max(1)).unwrap_or(isize::MAX) - 1;
        let mut conn = self.conn().await?;
        let members: Vec<String> = conn.zrange(index, 0, stop).await?;
        if members.is_empty() {
            conn.del::<_, ()>(index).await?;
            return Ok(0);
        }
        let batches: Vec<BatchId> = members.iter().filter_map(|m| BatchId::parse(m)).collect();
        let unsettled =
            (pass.pass < PASSES).then(|| self.keys.tenant_purge_unsettled(&pass.tenant));
        self.purge_records(&batches, unsettled.as_deref()).await?;
        conn.zrem::<_, _, ()>(index, &members).await?;
        Ok(members.len())
    }

    /// Deletes the log records of `batches` and whatever is keyed by them. Those
    /// whose delivery was still under way join the set `unsettled`, if given, for
    /// the next pass: what that delivery writes later, no index lists.
    async fn purge_records(
        &self,
        batches: &[BatchId],
        unsettled: Option<&str>,
    ) -> Result<(), StoreError> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for b in batches {
            pipe.cmd("HMGET")
                .arg(self.keys.log(b))
                .arg(&["series", "webhookId", "eventIds", "status"][..]);
            pipe.lrange(self.keys.log_attempts(b), 0, -1);
        }
        let mut conn = self.conn().await?;
        let read: Vec<redis::Value> = pipe.query_async(&mut *conn).await?;
        let mut doomed = Vec::new();
        let mut under_way = Vec::new();
        for (batch, pair) in batches.iter().zip(read.chunks(2)) {
            let [fields, attempts] = pair else {
                return Err(StoreError::Corrupt("short pipeline answer".into()));
            };
            let fields: Vec<Option<String>> = redis::from_redis_value(fields)?;
            let attempts: Vec<String> = redis::from_redis_value(attempts)?;
            doomed.push(self.keys.log(batch));
            doomed.push(self.keys.log_attempts(batch));
            let field = |i: usize| fields.get(i).cloned().flatten();
            if matches!(field(3).as_deref(), Some("pending" | "retrying")) {
                under_way.push(batch.to_string());
            }
            let series: u32 = field(0).and_then(|s| s.parse().ok()).unwrap_or(1);
            // Every attempt claimed: those recorded, the next one, and the first of
            // every series.
            let mut last: BTreeMap<u32, u32> = (1..=series.min(1_000)).map(|s| (s, 0)).collect();
            for a in &attempts {
                let Ok(a) = serde_json::from_str::<serde_json::Value>(a) else {
                    continue;
                };
                let number = |k: &str| a.get(k).and_then(serde_json::Value::as_u64);
                if let (Some(s), Some(n)) = (number("series"), number("attempt")) {
                    let (s, n) = (
                        u32::try_from(s).unwrap_or(u32::MAX),
                        u32::try_from(n).unwrap_or(u32::MAX),
                    );
                    let top = last.entry(s).or_insert(0);
                    *top = (*top).max(n.min(1_000));
                }
            }
            for (s, top) in last {
                for n in 1..=top.saturating_add(1) {
                    doomed.push(self.keys.claim(batch, s, n));
                }
            }
            if let (Some(webhook), Some(events)) = (field(1), field(2)) {
                let events: Vec<String> = serde_json::from_str(&events).unwrap_or_default();
                if let Ok(webhook) = WebhookId::parse(&webhook) {
                    doomed.extend(events.iter().map(|e| self.keys.placed(&webhook, e)));
                }
            }
        }
        if let (Some(set), false) = (unsettled, under_way.is_empty()) {
            conn.sadd::<_, _, ()>(set, &under_way).await?;
        }
        for chunk in doomed.chunks(1_000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Forgets the webhook itself: its record (if still there), its log index,
    /// and its place in the tenant's lists.
    pub async fn purge_webhook(
        &self,
        tenant: &TenantId,
        webhook: &WebhookId,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .del(&[self.keys.webhook(webhook), self.keys.log_index(webhook)])
            .ignore()
            .srem(self.keys.tenant_webhooks(tenant), webhook.as_str())
            .ignore()
            .zrem(self.keys.deleted_webhooks(tenant), webhook.as_str())
            .ignore()
            .srem(self.keys.deleted_webhooks_before(tenant), webhook.as_str())
            .ignore()
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Removes up to `page` of the tenant's entries from the operators' audit log,
    /// from `after` on (exclusive; the start for `None`), all but `keep`. Returns
    /// how many it removed and where the next page starts (`None`: the end).
    pub async fn purge_operator_audit(
        &self,
        pass: &PurgePass,
        after: Option<&str>,
        page: usize,
    ) -> Result<(usize, Option<String>), StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let stream = self.keys.audit_all();
        let mut conn = self.conn().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(page.max(1))
            .query_async(&mut *conn)
            .await?;
        let next = (reply.ids.len() >= page.max(1))
            .then(|| reply.ids.last().map(|e| e.id.clone()))
            .flatten();
        let tenant = serde_json::Value::String(pass.tenant.to_string());
        let doomed: Vec<&str> = reply
            .ids
            .iter()
            .filter(|e| e.id != pass.audit_id)
            .filter(|e| {
                e.get::<String>("entry")
                    .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                    .is_some_and(|v| v.get("tenantId") == Some(&tenant))
            })
            .map(|e| e.id.as_str())
            .collect();
        if !doomed.is_empty() {
            redis::cmd("XDEL")
                .arg(&stream)
                .arg(&doomed)
                .query_async::<()>(&mut *conn)
                .await?;
        }
        Ok((doomed.len(), next))
    }

    /// Removes what is left under the tenant's own name: its audit log, its
    /// ingest rate bucket, its (by now empty) lists of keys, webhooks and dead
    /// letters, its place among tenants with batches waiting.
    pub async fn purge_tenant_keys(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("UNLINK")
            .arg(&[
                self.keys.audit(tenant),
                self.keys.rate_bucket(tenant),
                self.keys.tenant_keys(tenant),
                self.keys.tenant_webhooks(tenant),
                self.keys.deleted_webhooks(tenant),
                self.keys.deleted_webhooks_before(tenant),
                self.keys.dead(tenant),
                self.keys.batch_tenant(tenant),
            ])
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Announces a change of the tenant's configuration, so that every cache lets
    /// go of what it holds of it.
    pub async fn announce(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        conn.publish::<_, _, ()>(self.keys.config_channel(), tenant.as_str())
            .await?;
        Ok(())
    }
}
