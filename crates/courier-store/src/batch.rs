//! The batch accumulator of throttled webhooks (design §6–§7).
//!
//! Per webhook, events wait in a list, one element per event in arrival order
//! ([`codec`] says how each is encoded), and its flush deadline (the oldest waiting
//! event's time + the flush timeout) sits in one sorted set shared by all webhooks.
//! A batch is *cut* atomically, by exactly one replica: when N events wait (at
//! append), when the deadline passes (the flusher), or when the webhook's
//! configuration changes. A cut batch takes a fresh time-ordered id (a UUIDv7 the
//! caller hands the script, which makes one id of it per cut) and is kept as
//! *pending*, with that id, under a lease until the replica that cut it has handed
//! it on as a delivery job; if that replica dies first, the lease expires and
//! another one reaps it and hands it on under the same id. A per-(webhook, event)
//! marker refuses an event placed before (24 h).
//!
//! Each batch a script returns is read on its own: one that cannot be read comes
//! back as [`Cut::Unreadable`], to be ended `failed` and forgotten by the caller,
//! while the others are handed on as usual.
//!
//! Keys (under the prefix; see [`crate::Keys`]), each bounded by the work in flight:
//! - `batch:{wh}`: the waiting events (a list; gone once empty);
//! - `batch-meta:{wh}`: tenant, generation and N of what waits (a hash; deleted by
//!   the cut that empties the list);
//! - `batch-due`: webhooks with events waiting, by flush deadline (a sorted set);
//! - `batch-tenant:{tenant}`: a tenant's webhooks with events waiting (a set);
//! - `batch-pending:{wh}:{id}`: a cut batch until it is handed on (a hash: `tenant`,
//!   `generation`, `cut`, `id`, `events`);
//! - `batch-cut`: pending batches by lease end (a sorted set);
//! - `placed:{wh}:{event}`: the marker of a placed event (expires after 24 h).
//!
//! Every script takes the time from Redis `TIME`. Keys are built inside the scripts
//! from the prefix, so the accumulator needs a standalone (or sentinel) Redis.

pub use courier_core::batch_codec as codec;

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::envelope::DeliveryJob;
use courier_core::event::EnvelopeEvent;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use redis::Script;

pub use codec::EventOrigin;

use crate::{Store, StoreError};

/// How long a placed event is refused again for the same webhook.
pub const PLACED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Functions shared by the scripts that cut.
///
/// A batch comes back as `{member, tenant, generation, cut ms, id, events, problem}`
/// (`false` for what is missing), `problem` set when the script itself could not
/// read the batch.
const CUT_FN: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- A read of a key that may hold anything: its reply, or nil and the error.
local function read(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then return nil, r.err end
  return r
end

-- When a waiting element was placed (its leading `placedMs|`), or nil.
local function placed(element)
  return tonumber(string.match(element, '^(%d+)|'))
end

-- Batch ids: the caller hands a fresh UUID (32 hex digits); the i-th cut of this
-- call takes it with i added to its last 8 digits, so every cut has its own.
local cuts = 0
local function next_id(base)
  local low = (tonumber(string.sub(base, 25), 16) + cuts) % 4294967296
  cuts = cuts + 1
  return string.sub(base, 1, 24) .. string.format('%08x', low)
end

local function unreadable(member, now, problem)
  return {member, false, false, tostring(now), false, false, problem}
end

-- Moves up to `count` waiting events into a pending batch, each element framed by
-- its length, and restarts the deadline from the oldest event still waiting; the
-- webhook's keys go once nothing waits. Returns nil if nothing waits.
local function cut(p, wh, count, now, timeout, lease, base)
  local list = p .. 'batch:' .. wh
  local items, err = read('LRANGE', list, 0, count - 1)
  if not items then
    redis.call('ZREM', p .. 'batch-due', wh)
    return unreadable(wh .. ':', now, 'the waiting list cannot be read: ' .. err)
  end
  if #items == 0 then return nil end
  redis.call('LTRIM', list, #items, -1)
  local metakey = p .. 'batch-meta:' .. wh
  local meta = read('HMGET', metakey, 'tenant', 'generation') or {}
  local tenant, gen = meta[1] or '', meta[2] or ''
  local id = next_id(base)
  local member = wh .. ':' .. id
  local framed = {}
  for i, item in ipairs(items) do framed[i] = #item .. ':' .. item end
  local events = table.concat(framed)
  redis.call('HSET', p .. 'batch-pending:' .. member,
    'tenant', tenant, 'generation', gen, 'cut', now, 'id', id, 'events', events)
  redis.call('ZADD', p .. 'batch-cut', now + lease, member)
  local first = redis.call('LINDEX', list, 0)
  if first then
    redis.call('ZADD', p .. 'batch-due', (placed(first) or now) + timeout, wh)
  else
    redis.call('ZREM', p .. 'batch-due', wh)
    redis.call('SREM', p .. 'batch-tenant:' .. tenant, wh)
    -- (batch-seq: the counter earlier versions numbered batches with.)
    redis.call('DEL', metakey, p .. 'batch-seq:' .. wh)
  end
  return {member, tenant, gen, tostring(now), id, events, false}
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{CUT_FN}{body}"))
}

/// ARGV: prefix, webhook, event id, element (see [`codec::encode_event`]), N,
/// timeout ms, lease ms, tenant, generation, placed TTL s, id base.
/// Returns {'duplicate'} or {'waiting'|'cut', batches...}.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, wh = ARGV[1], ARGV[2]
local n, timeout, lease, base = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[11]
if not redis.call('SET', p .. 'placed:' .. wh .. ':' .. ARGV[3], '1', 'NX', 'EX', ARGV[10]) then
  return {'duplicate'}
end
local now = now_ms()
local list = p .. 'batch:' .. wh
local meta = p .. 'batch-meta:' .. wh
local out = {'waiting'}
-- Events of an older generation never share a batch with newer ones.
local known = redis.call('HMGET', meta, 'generation', 'n')
local gen = known[1]
if gen and gen ~= ARGV[9] then
  while redis.call('LLEN', list) > 0 do
    out[#out + 1] = cut(p, wh, math.max(n, 1), now, timeout, lease, base)
  end
end
if gen ~= ARGV[9] or tonumber(known[2]) ~= n then
  redis.call('HSET', meta, 'tenant', ARGV[8], 'generation', ARGV[9], 'n', n)
end
local len = redis.call('RPUSH', list, now .. '|' .. ARGV[4])
-- A webhook is listed under its tenant while events wait (the cut that empties
-- its list takes it off), and has a deadline.
if len == 1 then
  redis.call('ZADD', p .. 'batch-due', now + timeout, wh)
  redis.call('SADD', p .. 'batch-tenant:' .. ARGV[8], wh)
end
if len >= n then
  out[1] = 'cut'
  out[#out + 1] = cut(p, wh, n, now, timeout, lease, base)
end
return out
",
    )
});

/// ARGV: prefix, most webhooks, timeout ms, lease ms, id base.
/// Cuts one batch (up to N events) of every webhook whose deadline passed.
static FLUSH_DUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
local timeout, lease, base = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local out = {}
for _, wh in ipairs(redis.call('ZRANGEBYSCORE', p .. 'batch-due', '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local n = tonumber(read('HGET', p .. 'batch-meta:' .. wh, 'n') or '') or 10
  local b = cut(p, wh, math.max(n, 1), now, timeout, lease, base)
  if b then out[#out + 1] = b else redis.call('ZREM', p .. 'batch-due', wh) end
end
return out
",
    )
});

/// ARGV: prefix, webhook, chunk, drain ('1' cuts everything), timeout ms, lease ms,
/// id base. Cuts whole chunks after a configuration change (everything when
/// draining).
static RECUT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, wh = ARGV[1], ARGV[2]
local chunk, timeout, lease, base = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local drain = ARGV[4] == '1'
local list = p .. 'batch:' .. wh
local now = now_ms()
local out = {}
local len = redis.call('LLEN', list)
while len > 0 and (drain or len >= chunk) do
  out[#out + 1] = cut(p, wh, chunk, now, timeout, lease, base)
  len = redis.call('LLEN', list)
end
if not drain and len > 0 then redis.call('HSET', p .. 'batch-meta:' .. wh, 'n', chunk) end
return out
",
    )
});

/// ARGV: prefix, most batches, lease ms. Re-leases and returns pending batches whose
/// lease expired (their replica died between cutting and handing on, or could not
/// read them).
static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, lease = ARGV[1], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', p .. 'batch-cut', '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local b, err = read('HMGET', p .. 'batch-pending:' .. member, 'tenant', 'generation', 'cut', 'id', 'events')
  if not b then
    redis.call('ZADD', p .. 'batch-cut', now + lease, member)
    out[#out + 1] = unreadable(member, now, 'the pending batch cannot be read: ' .. err)
  elseif b[1] or b[2] or b[3] or b[4] or b[5] then
    redis.call('ZADD', p .. 'batch-cut', now + lease, member)
    out[#out + 1] = {member, b[1], b[2], b[3], b[4], b[5], false}
  else
    redis.call('ZREM', p .. 'batch-cut', member)
  end
end
return out
",
    )
});

/// ARGV: prefix, member. The batch is handed on (or ended): forget it.
static HANDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', ARGV[1] .. 'batch-pending:' .. ARGV[2])
redis.call('ZREM', ARGV[1] .. 'batch-cut', ARGV[2])
return 1
",
    )
});

/// A batch cut from a webhook's waiting events, to be handed on as a delivery job.
#[derive(Debug, Clone)]
pub struct CutBatch {
    pub webhook: WebhookId,
    /// Fixed at the cut: the `webhook-id` of every attempt and replay.
    pub id: BatchId,
    pub tenant: TenantId,
    /// The webhook's generation when its events were accumulated.
    pub generation: u64,
    pub cut_at: DateTime<Utc>,
    /// In accumulation order.
    pub events: Vec<EnvelopeEvent>,
    /// Where each event came from, in the order of `events`.
    pub origins: Vec<EventOrigin>,
    /// The pending record's name.
    member: Vec<u8>,
}

impl CutBatch {
    pub fn batch_id(&self) -> BatchId {
        self.id
    }

    /// The first delivery job of the batch.
    pub fn job(&self) -> DeliveryJob {
        DeliveryJob {
            batch_id: self.id,
            tenant_id: self.tenant.clone(),
            webhook_id: self.webhook.clone(),
            generation: self.generation,
            series: 1,
            attempt: 1,
            created_at: self.cut_at,
            due_at: self.cut_at,
            events: self.events.clone(),
        }
    }
}

/// A cut or pending batch whose stored record cannot be read (corrupt, or written
/// by a version that encodes differently). Whatever could be read is kept, so that
/// the batch can end `failed` in the log under its id, with the events that are
/// still readable (a replay sends those).
#[derive(Debug, Clone)]
pub struct UnreadableBatch {
    pub webhook: Option<WebhookId>,
    pub id: Option<BatchId>,
    pub tenant: Option<TenantId>,
    pub generation: Option<u64>,
    pub cut_at: Option<DateTime<Utc>>,
    /// The events that could be read, in order.
    pub events: Vec<EnvelopeEvent>,
    /// What could not be read, in words.
    pub reason: String,
    member: Vec<u8>,
}

impl UnreadableBatch {
    /// The pending record's name, as stored (for logs).
    pub fn member(&self) -> String {
        String::from_utf8_lossy(&self.member).into_owned()
    }

    /// A delivery job that stands for the batch in the log, under `tenant` (its own
    /// when readable): `None` without a webhook or an id to log it under.
    pub fn job(&self, tenant: TenantId, now: DateTime<Utc>) -> Option<DeliveryJob> {
        let created_at = self.cut_at.unwrap_or(now);
        Some(DeliveryJob {
            batch_id: self.id?,
            tenant_id: tenant,
            webhook_id: self.webhook.clone()?,
            generation: self.generation.unwrap_or_default(),
            series: 1,
            attempt: 1,
            created_at,
            due_at: created_at,
            events: self.events.clone(),
        })
    }
}

/// A batch a script took out of the waiting events or off the pending ones.
#[derive(Debug, Clone)]
pub enum Cut {
    /// To be handed on as a delivery job.
    Ready(CutBatch),
    /// To be ended `failed` and forgotten: its record cannot be read.
    Unreadable(UnreadableBatch),
}

/// What appending an event came to.
#[derive(Debug)]
pub enum Append {
    /// The event was placed for this webhook before; nothing changed.
    Duplicate,
    /// The event waits; `cut` holds any batch the append completed.
    Placed { cut: Vec<Cut> },
}

/// The accumulator's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    /// How long the oldest event may wait before what waits is sent.
    pub flush_timeout: Duration,
    /// How long a cut batch may stay unhanded before another replica takes it.
    pub lease: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A field of a script's reply as bytes; `None` for nil (`false` in Lua).
fn bytes(v: &redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        redis::Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Reads one batch of a script's reply; nothing in it can fail the others.
fn read_cut(entry: &redis::Value) -> Cut {
    let fields: Vec<Option<Vec<u8>>> = match entry {
        redis::Value::Array(items) => items.iter().map(bytes).collect(),
        _ => Vec::new(),
    };
    let raw = |i: usize| fields.get(i).cloned().flatten();
    let text = |i: usize| raw(i).and_then(|b| String::from_utf8(b).ok());
    let member = raw(0).unwrap_or_default();
    let name = String::from_utf8_lossy(&member).into_owned();
    let (webhook_part, id_part) = name.split_once(':').unwrap_or((name.as_str(), ""));
    let webhook = WebhookId::parse(webhook_part).ok();
    // The record's id, else the one its name carries; a batch an earlier version
    // cut has neither, but a number.
    let id = text(4)
        .and_then(|id| BatchId::parse(&id))
        .or_else(|| BatchId::parse(id_part))
        .or_else(|| {
            let seq = id_part.parse().ok()?;
            Some(BatchId::counted(webhook.as_ref()?, seq))
        });
    let tenant = text(1).and_then(|t| TenantId::parse(&t).ok());
    let generation = text(2).and_then(|g| g.parse::<u64>().ok());
    let cut_at = text(3)
        .and_then(|c| c.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis);
    let stored = raw(5);
    let decoded = stored.as_deref().map(codec::split_batch);

    let problem = text(6).or_else(|| {
        let missing = [
            (webhook.is_none(), "webhook id"),
            (id.is_none(), "batch id"),
            (tenant.is_none(), "tenant"),
            (generation.is_none(), "generation"),
            (cut_at.is_none(), "cut time"),
            (stored.is_none(), "events"),
        ];
        if let Some((_, what)) = missing.iter().find(|(absent, _)| *absent) {
            return Some(format!("no readable {what}"));
        }
        None
    });
    let mut events = Vec::new();
    let mut origins = Vec::new();
    let mut bad_event = None;
    match decoded {
        Some(Ok(elements)) => {
            for (i, element) in elements.into_iter().enumerate() {
                match codec::decode_event(element) {
                    Ok(w) => {
                        events.push(w.event);
                        origins.push(w.origin);
                    }
                    Err(e) => {
                        bad_event.get_or_insert_with(|| format!("event {}: {e}", i + 1));
                    }
                }
            }
        }
        Some(Err(e)) => bad_event = Some(format!("events: {e}")),
        None => {}
    }
    match (
        problem.or(bad_event),
        webhook,
        id,
        tenant,
        generation,
        cut_at,
    ) {
        (None, Some(webhook), Some(id), Some(tenant), Some(generation), Some(cut_at)) => {
            Cut::Ready(CutBatch {
                webhook,
                id,
                tenant,
                generation,
                cut_at,
                events,
                origins,
                member,
            })
        }
        (problem, webhook, id, tenant, generation, cut_at) => Cut::Unreadable(UnreadableBatch {
            webhook,
            id,
            tenant,
            generation,
            cut_at,
            events,
            reason: format!(
                "the stored batch cannot be read: {}",
                problem.unwrap_or_default()
            ),
            member,
        }),
    }
}

fn read_cuts(entries: &[redis::Value]) -> Vec<Cut> {
    entries.iter().map(read_cut).collect()
}

fn reply_items(reply: redis::Value) -> Result<Vec<redis::Value>, StoreError> {
    match reply {
        redis::Value::Array(items) => Ok(items),
        redis::Value::Nil => Ok(Vec::new()),
        _ => Err(StoreError::Corrupt(
            "the batch accumulator answered with something else than a list".into(),
        )),
    }
}

/// A fresh id for the batches one script call cuts (see `next_id` in [`CUT_FN`]).
fn id_base() -> String {
    BatchId::generate().simple()
}

impl Store {
    /// Places `event` in the webhook's waiting list (batches of `n`), cutting a batch
    /// when `n` wait. Refuses an event placed before for this webhook.
    pub async fn append_to_batch(
        &self,
        webhook: &WebhookId,
        tenant: &TenantId,
        generation: u64,
        n: u8,
        event: &EnvelopeEvent,
        timing: BatchTiming,
    ) -> Result<Append, StoreError> {
        self.append_with_origin(
            webhook,
            tenant,
            generation,
            n,
            event,
            &EventOrigin::default(),
            timing,
        )
        .await
    }

    /// [`Store::append_to_batch`], keeping where the event came from beside it.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_with_origin(
        &self,
        webhook: &WebhookId,
        tenant: &TenantId,
        generation: u64,
        n: u8,
        event: &EnvelopeEvent,
        origin: &EventOrigin,
        timing: BatchTiming,
    ) -> Result<Append, StoreError> {
        let element =
            codec::encode_event(event, origin).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.conn().await?;
        let reply: redis::Value = APPEND
            .arg(self.keys.base())
            .arg(webhook.as_str())
            .arg(event.event_id.as_str())
            .arg(element)
            .arg(n.max(1))
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .arg(tenant.as_str())
            .arg(generation)
            .arg(PLACED_TTL.as_secs())
            .arg(id_base())
            .invoke_async(&mut *conn)
            .await?;
        let items = reply_items(reply)?;
        let Some((status, batches)) = items.split_first() else {
            return Err(StoreError::Corrupt("append: empty answer".into()));
        };
        if bytes(status).as_deref() == Some(b"duplicate") {
            return Ok(Append::Duplicate);
        }
        Ok(Append::Placed {
            cut: read_cuts(batches),
        })
    }

    /// Cuts a batch of every webhook whose flush deadline passed (at most `limit`).
    pub async fn flush_due(
        &self,
        limit: usize,
        timing: BatchTiming,
    ) -> Result<Vec<Cut>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: redis::Value = FLUSH_DUE
            .arg(self.keys.base())
            .arg(limit)
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .arg(id_base())
            .invoke_async(&mut *conn)
            .await?;
        Ok(read_cuts(&reply_items(reply)?))
    }

    /// After a configuration change: cuts whole `chunk`s of what waits, or
    /// everything (`drain`, for a webhook disabled, deleted or no longer batching).
    pub async fn recut(
        &self,
        webhook: &WebhookId,
        chunk: u8,
        drain: bool,
        timing: BatchTiming,
    ) -> Result<Vec<Cut>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: redis::Value = RECUT
            .arg(self.keys.base())
            .arg(webhook.as_str())
            .arg(chunk.max(1))
            .arg(if drain { "1" } else { "0" })
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .arg(id_base())
            .invoke_async(&mut *conn)
            .await?;
        Ok(read_cuts(&reply_items(reply)?))
    }

    /// Takes over cut batches whose replica did not hand them on within the lease.
    pub async fn reap_batches(
        &self,
        limit: usize,
        timing: BatchTiming,
    ) -> Result<Vec<Cut>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: redis::Value = REAP
            .arg(self.keys.base())
            .arg(limit)
            .arg(millis(timing.lease))
            .invoke_async(&mut *conn)
            .await?;
        Ok(read_cuts(&reply_items(reply)?))
    }

    /// The batch's delivery job is confirmed by the broker: the batch is no longer
    /// pending.
    pub async fn batch_handed_on(&self, batch: &CutBatch) -> Result<(), StoreError> {
        self.forget_pending(&batch.member).await
    }

    /// An unreadable batch has ended (`failed` in the log where it could be): it is
    /// no longer pending, and no reaper brings it back.
    pub async fn forget_unreadable(&self, batch: &UnreadableBatch) -> Result<(), StoreError> {
        self.forget_pending(&batch.member).await
    }

    async fn forget_pending(&self, member: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        HANDED
            .arg(self.keys.base())
            .arg(member)
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// The tenant's webhooks that have events waiting.
    pub async fn accumulating(&self, tenant: &TenantId) -> Result<Vec<WebhookId>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.batch_tenant(tenant))
            .query_async(&mut *conn)
            .await?;
        Ok(ids
            .iter()
            .filter_map(|i| WebhookId::parse(i).ok())
            .collect())
    }
}

/// ARGV: prefix, webhook. Forgets the accumulator's state of a webhook that is
/// gone for good (its tenant's purge), unless events wait for it: its sequence and
/// settings, and its flush deadline. Returns 1 if forgotten.
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p, wh = ARGV[1], ARGV[2]
if redis.call('LLEN', p .. 'batch:' .. wh) > 0 then return 0 end
redis.call('DEL', p .. 'batch-meta:' .. wh, p .. 'batch-seq:' .. wh)
redis.call('ZREM', p .. 'batch-due', wh)
return 1
",
    )
});

/// For the purge of a deleted tenant ([`crate::purge`]).
impl Store {
    /// Drops what waits for a webhook that is gone with its tenant (nobody is left
    /// to deliver it to, or to read that it was cancelled): its waiting events are
    /// cut, their placed markers deleted and the cut batches forgotten; then the
    /// accumulator's state of the webhook. Returns how many events were dropped.
    pub async fn drop_batches(
        &self,
        webhook: &WebhookId,
        timing: BatchTiming,
    ) -> Result<usize, StoreError> {
        let mut dropped = 0;
        // An event placed while this runs (a worker that had not heard of the
        // deletion yet) is dropped by the next round; the purge's last pass comes
        // long after any such worker has.
        for _ in 0..3 {
            for cut in self.recut(webhook, 10, true, timing).await? {
                let (events, member) = match &cut {
                    Cut::Ready(b) => (&b.events, &b.member),
                    Cut::Unreadable(b) => (&b.events, &b.member),
                };
                let markers: Vec<String> = events
                    .iter()
                    .map(|e| self.keys.placed(webhook, e.event_id.as_str()))
                    .collect();
                if !markers.is_empty() {
                    let mut conn = self.conn().await?;
                    redis::cmd("UNLINK")
                        .arg(&markers)
                        .query_async::<()>(&mut *conn)
                        .await?;
                }
                self.forget_pending(member).await?;
                dropped += events.len();
            }
            let mut conn = self.conn().await?;
            let forgotten: i64 = FORGET
                .arg(self.keys.base())
                .arg(webhook.as_str())
                .invoke_async(&mut *conn)
                .await?;
            if forgotten == 1 {
                break;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[Option<&[u8]>]) -> redis::Value {
        redis::Value::Array(
            fields
                .iter()
                .map(|f| f.map_or(redis::Value::Nil, |b| redis::Value::BulkString(b.to_vec())))
                .collect(),
        )
    }

    const EVENT: &str = r#"{"eventId":"e1","eventType":"EntityCreated","objectType":"Prospect","data":{"a":"x\ny"},"propertiesUpdated":null,"occurredAt":"2026-04-23T10:14:10Z"}"#;

    #[test]
    fn a_readable_batch_keeps_its_id_and_events() {
        let id = BatchId::generate();
        let element = format!(
            "5|{}",
            codec::encode_event(
                &serde_json::from_str(EVENT).unwrap(),
                &EventOrigin::default()
            )
            .unwrap()
        );
        let events = codec::frame([element.as_bytes()]);
        let member = format!("wh_1:{}", id.simple());
        let Cut::Ready(b) = read_cut(&entry(&[
            Some(member.as_bytes()),
            Some(b"acme"),
            Some(b"3"),
            Some(b"1776939300000"),
            Some(id.simple().as_bytes()),
            Some(&events),
            None,
        ])) else {
            panic!("readable");
        };
        assert_eq!((b.id, b.generation, b.tenant.as_str()), (id, 3, "acme"));
        assert_eq!(b.events[0].event_id.as_str(), "e1");
        assert_eq!(b.job().batch_id, id);
        // A record that lost its id field still has it in its name.
        let Cut::Ready(b) = read_cut(&entry(&[
            Some(member.as_bytes()),
            Some(b"acme"),
            Some(b"3"),
            Some(b"1776939300000"),
            None,
            Some(&events),
            None,
        ])) else {
            panic!("readable");
        };
        assert_eq!(b.id, id);
    }

    #[test]
    fn a_batch_an_earlier_version_numbered_keeps_its_numbered_id() {
        let element = format!("5|{EVENT}");
        let Cut::Ready(b) = read_cut(&entry(&[
            Some(b"wh_1:7"),
            Some(b"acme"),
            Some(b"0"),
            Some(b"1776939300000"),
            None,
            Some(element.as_bytes()),
            None,
        ])) else {
            panic!("readable");
        };
        assert_eq!(
            b.id,
            BatchId::counted(&WebhookId::parse("wh_1").unwrap(), 7)
        );
    }

    #[test]
    fn an_unreadable_batch_says_why_and_keeps_what_can_be_read() {
        let id = BatchId::generate();
        let good = format!("5|{EVENT}");
        let events = codec::frame([good.as_bytes(), b"garbage"]);
        let member = format!("wh_1:{}", id.simple());
        let Cut::Unreadable(u) = read_cut(&entry(&[
            Some(member.as_bytes()),
            Some(b"acme"),
            Some(b"0"),
            Some(b"1776939300000"),
            Some(id.simple().as_bytes()),
            Some(&events),
            None,
        ])) else {
            panic!("unreadable");
        };
        assert!(u.reason.contains("event 2"), "{}", u.reason);
        assert_eq!(u.events.len(), 1);
        let job = u.job(TenantId::parse("acme").unwrap(), Utc::now()).unwrap();
        assert_eq!((job.batch_id, job.events.len()), (id, 1));

        for broken in [
            entry(&[]),
            redis::Value::Int(3),
            entry(&[
                Some(b"wh_1:"),
                None,
                None,
                Some(b"1"),
                None,
                None,
                Some(b"WRONGTYPE"),
            ]),
            entry(&[
                Some(member.as_bytes()),
                Some(b"Not A Tenant"),
                Some(b"0"),
                Some(b"1"),
                Some(id.simple().as_bytes()),
                Some(&events[..3]),
                None,
            ]),
        ] {
            let Cut::Unreadable(u) = read_cut(&broken) else {
                panic!("unreadable: {broken:?}");
            };
            assert!(u.reason.starts_with("the stored batch cannot be read: "));
            assert!(u.reason.len() > "the stored batch cannot be read: ".len());
        }
    }
}
