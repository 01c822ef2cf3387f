//! The batch accumulator of throttled webhooks (design §6–§7).
//!
//! Per webhook, events wait in a list (`placedMs|origin|event JSON`, in arrival
//! order; see [`EventOrigin`]) and its flush deadline (the oldest waiting event's time + the flush timeout) sits in
//! one sorted set shared by all webhooks. A batch is *cut* atomically, by exactly one
//! replica: when N events wait (at append), when the deadline passes (the flusher),
//! or when the webhook's configuration changes. A cut batch gets the next number of
//! the webhook's sequence (its id derives from it) and is kept as *pending* under a
//! lease until the replica that cut it has handed it on as a delivery job; if that
//! replica dies first, the lease expires and another one reaps and hands it on.
//! A per-(webhook, event) marker refuses an event placed before (24 h).
//!
//! Every script takes the time from Redis `TIME`. Keys are built inside the scripts
//! from the prefix, so the accumulator needs a standalone (or sentinel) Redis.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_core::envelope::DeliveryJob;
use courier_core::event::EnvelopeEvent;
use courier_core::ids::{BatchId, TenantId, WebhookId};
use redis::Script;

use crate::{Store, StoreError};

/// How long a placed event is refused again for the same webhook.
pub const PLACED_TTL: Duration = Duration::from_secs(24 * 3600);

/// `cut(p, wh, count, now, timeout, lease)`: moves up to `count` waiting events into
/// a pending batch and restarts the deadline from the oldest event still waiting.
const CUT_FN: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

local function cut(p, wh, count, now, timeout, lease)
  local list = p .. 'batch:' .. wh
  local items = redis.call('LRANGE', list, 0, count - 1)
  if #items == 0 then return nil end
  redis.call('LTRIM', list, #items, -1)
  local meta = redis.call('HMGET', p .. 'batch-meta:' .. wh, 'tenant', 'generation')
  local seq = redis.call('INCR', p .. 'batch-seq:' .. wh)
  local member = wh .. ':' .. seq
  local events = table.concat(items, '\n')
  redis.call('HSET', p .. 'batch-pending:' .. member,
    'tenant', meta[1], 'generation', meta[2], 'cut', now, 'events', events)
  redis.call('ZADD', p .. 'batch-cut', now + lease, member)
  local first = redis.call('LINDEX', list, 0)
  if first then
    redis.call('ZADD', p .. 'batch-due', tonumber(string.match(first, '^(%d+)|')) + timeout, wh)
  else
    redis.call('ZREM', p .. 'batch-due', wh)
    redis.call('SREM', p .. 'batch-tenant:' .. meta[1], wh)
  end
  return {member, meta[1], meta[2], tostring(now), events}
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{CUT_FN}{body}"))
}

/// ARGV: prefix, webhook, event id, `origin|event JSON`, N, timeout ms, lease ms, tenant,
/// generation, placed TTL s.
/// Returns {'duplicate'} or {'waiting'|'cut', batches...}.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, wh = ARGV[1], ARGV[2]
local n, timeout, lease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
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
    out[#out + 1] = cut(p, wh, math.max(n, 1), now, timeout, lease)
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
  out[#out + 1] = cut(p, wh, n, now, timeout, lease)
end
return out
",
    )
});

/// ARGV: prefix, most webhooks, timeout ms, lease ms.
/// Cuts one batch (up to N events) of every webhook whose deadline passed.
static FLUSH_DUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
local timeout, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
for _, wh in ipairs(redis.call('ZRANGEBYSCORE', p .. 'batch-due', '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local n = tonumber(redis.call('HGET', p .. 'batch-meta:' .. wh, 'n') or '10')
  local b = cut(p, wh, math.max(n, 1), now, timeout, lease)
  if b then out[#out + 1] = b else redis.call('ZREM', p .. 'batch-due', wh) end
end
return out
",
    )
});

/// ARGV: prefix, webhook, chunk, drain ('1' cuts everything), timeout ms, lease ms.
/// Cuts whole chunks after a configuration change (everything when draining).
static RECUT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, wh = ARGV[1], ARGV[2]
local chunk, timeout, lease = tonumber(ARGV[3]), tonumber(ARGV[5]), tonumber(ARGV[6])
local list = p .. 'batch:' .. wh
local now = now_ms()
local out = {}
while true do
  local len = redis.call('LLEN', list)
  if len == 0 or (ARGV[4] ~= '1' and len < chunk) then break end
  out[#out + 1] = cut(p, wh, chunk, now, timeout, lease)
end
if ARGV[4] ~= '1' then redis.call('HSET', p .. 'batch-meta:' .. wh, 'n', chunk) end
return out
",
    )
});

/// ARGV: prefix, most batches, lease ms. Re-leases and returns pending batches whose
/// lease expired (their replica died between cutting and handing on).
static REAP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p, lease = ARGV[1], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', p .. 'batch-cut', '-inf', now, 'LIMIT', 0, ARGV[2])) do
  local b = redis.call('HMGET', p .. 'batch-pending:' .. member, 'tenant', 'generation', 'cut', 'events')
  if b[4] then
    redis.call('ZADD', p .. 'batch-cut', now + lease, member)
    out[#out + 1] = {member, b[1], b[2], b[3], b[4]}
  else
    redis.call('ZREM', p .. 'batch-cut', member)
  end
end
return out
",
    )
});

/// ARGV: prefix, member. The batch is handed on: forget it.
static HANDED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', ARGV[1] .. 'batch-pending:' .. ARGV[2])
redis.call('ZREM', ARGV[1] .. 'batch-cut', ARGV[2])
return 1
",
    )
});

/// Where an accumulated event came from: when the gateway accepted it and the trace
/// context of its processing, kept beside it so that the batch's delivery can
/// report its latency and link to every event's trace.
///
/// In the list an item is `placedMs|acceptedMs|traceparent|tracestate|event JSON`
/// (absent fields empty; `%`, `|` and newlines of the trace state escaped). An item
/// without origin, `placedMs|event JSON`, is still read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOrigin {
    /// Unix milliseconds at which the gateway accepted the event.
    pub accepted_at_ms: Option<u64>,
    /// W3C `traceparent` of the span that placed the event.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with it.
    pub tracestate: Option<String>,
}

impl EventOrigin {
    /// `origin|event JSON`: what follows `placedMs|` in the list.
    fn encode(&self, json: &str) -> String {
        let accepted = self.accepted_at_ms.map(|ms| ms.to_string());
        let traceparent = self.traceparent.as_deref().map(escape);
        let tracestate = self.tracestate.as_deref().map(escape);
        format!(
            "{}|{}|{}|{json}",
            accepted.unwrap_or_default(),
            traceparent.unwrap_or_default(),
            tracestate.unwrap_or_default(),
        )
    }

    /// Splits what follows `placedMs|` into the origin and the event JSON.
    fn decode(rest: &str) -> Option<(Self, &str)> {
        if rest.starts_with('{') {
            return Some((Self::default(), rest));
        }
        let mut fields = rest.splitn(4, '|');
        let (accepted, traceparent, tracestate, json) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let text = |f: &str| (!f.is_empty()).then(|| unescape(f));
        let origin = Self {
            accepted_at_ms: if accepted.is_empty() {
                None
            } else {
                Some(accepted.parse().ok()?)
            },
            traceparent: text(traceparent),
            tracestate: text(tracestate),
        };
        Some((origin, json))
    }
}

fn escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('|', "%7C")
        .replace('\n', "%0A")
}

fn unescape(s: &str) -> String {
    s.replace("%0A", "\n")
        .replace("%7C", "|")
        .replace("%25", "%")
}

/// A batch cut from a webhook's waiting events, to be handed on as a delivery job.
#[derive(Debug, Clone)]
pub struct CutBatch {
    pub webhook: WebhookId,
    pub seq: u64,
    pub tenant: TenantId,
    /// The webhook's generation when its events were accumulated.
    pub generation: u64,
    pub cut_at: DateTime<Utc>,
    /// In accumulation order.
    pub events: Vec<EnvelopeEvent>,
    /// Where each event came from, in the order of `events`.
    pub origins: Vec<EventOrigin>,
}

impl CutBatch {
    pub fn batch_id(&self) -> BatchId {
        BatchId::for_batch(&self.webhook, self.seq)
    }

    /// The first delivery job of the batch.
    pub fn job(&self) -> DeliveryJob {
        DeliveryJob {
            batch_id: self.batch_id(),
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

    fn member(&self) -> String {
        format!("{}:{}", self.webhook, self.seq)
    }
}

/// What appending an event came to.
#[derive(Debug)]
pub enum Append {
    /// The event was placed for this webhook before; nothing changed.
    Duplicate,
    /// The event waits; `cut` holds any batch the append completed.
    Placed { cut: Vec<CutBatch> },
}

/// The accumulator's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    /// How long the oldest event may wait before what waits is sent.
    pub flush_timeout: Duration,
    /// How long a cut batch may stay unhanded before another replica takes it.
    pub lease: Duration,
}

type RawBatch = (String, String, String, String, String);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("accumulated batch: bad {what}"))
}

fn parse_batch(
    (member, tenant, generation, cut, events): RawBatch,
) -> Result<CutBatch, StoreError> {
    let (webhook, seq) = member.rsplit_once(':').ok_or_else(|| corrupt("member"))?;
    let (events, origins) = events
        .split('\n')
        .map(|item| {
            let (_, rest) = item.split_once('|').ok_or_else(|| corrupt("item"))?;
            let (origin, json) = EventOrigin::decode(rest).ok_or_else(|| corrupt("item"))?;
            let event = serde_json::from_str(json).map_err(|_| corrupt("event"))?;
            Ok((event, origin))
        })
        .collect::<Result<(Vec<_>, Vec<_>), StoreError>>()?;
    Ok(CutBatch {
        webhook: WebhookId::parse(webhook).map_err(|_| corrupt("webhook"))?,
        seq: seq.parse().map_err(|_| corrupt("seq"))?,
        tenant: TenantId::parse(&tenant).map_err(|_| corrupt("tenant"))?,
        generation: generation.parse().map_err(|_| corrupt("generation"))?,
        cut_at: cut
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| corrupt("time"))?,
        events,
        origins,
    })
}

fn parse_batches(raw: Vec<RawBatch>) -> Result<Vec<CutBatch>, StoreError> {
    raw.into_iter().map(parse_batch).collect()
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
        let json = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let item = origin.encode(&json);
        let mut conn = self.conn().await?;
        let reply: redis::Value = APPEND
            .arg(self.keys.base())
            .arg(webhook.as_str())
            .arg(event.event_id.as_str())
            .arg(item)
            .arg(n.max(1))
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .arg(tenant.as_str())
            .arg(generation)
            .arg(PLACED_TTL.as_secs())
            .invoke_async(&mut *conn)
            .await?;
        let redis::Value::Array(mut items) = reply else {
            return Err(corrupt("reply"));
        };
        let status: String = redis::from_redis_value(&items.remove(0))?;
        if status == "duplicate" {
            return Ok(Append::Duplicate);
        }
        let raw: Vec<RawBatch> = items
            .iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()?;
        Ok(Append::Placed {
            cut: parse_batches(raw)?,
        })
    }

    /// Cuts a batch of every webhook whose flush deadline passed (at most `limit`).
    pub async fn flush_due(
        &self,
        limit: usize,
        timing: BatchTiming,
    ) -> Result<Vec<CutBatch>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<RawBatch> = FLUSH_DUE
            .arg(self.keys.base())
            .arg(limit)
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .invoke_async(&mut *conn)
            .await?;
        parse_batches(raw)
    }

    /// After a configuration change: cuts whole `chunk`s of what waits, or
    /// everything (`drain`, for a webhook disabled, deleted or no longer batching).
    pub async fn recut(
        &self,
        webhook: &WebhookId,
        chunk: u8,
        drain: bool,
        timing: BatchTiming,
    ) -> Result<Vec<CutBatch>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<RawBatch> = RECUT
            .arg(self.keys.base())
            .arg(webhook.as_str())
            .arg(chunk.max(1))
            .arg(if drain { "1" } else { "0" })
            .arg(millis(timing.flush_timeout))
            .arg(millis(timing.lease))
            .invoke_async(&mut *conn)
            .await?;
        parse_batches(raw)
    }

    /// Takes over cut batches whose replica did not hand them on within the lease.
    pub async fn reap_batches(
        &self,
        limit: usize,
        timing: BatchTiming,
    ) -> Result<Vec<CutBatch>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<RawBatch> = REAP
            .arg(self.keys.base())
            .arg(limit)
            .arg(millis(timing.lease))
            .invoke_async(&mut *conn)
            .await?;
        parse_batches(raw)
    }

    /// The batch's delivery job is confirmed by the broker: the batch is no longer
    /// pending.
    pub async fn batch_handed_on(&self, batch: &CutBatch) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        HANDED
            .arg(self.keys.base())
            .arg(batch.member())
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }

    /// The tenant's webhooks that have events waiting.
    pub async fn accumulating(&self, tenant: &TenantId) -> Result<Vec<WebhookId>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}batch-tenant:{tenant}", self.keys.base()))
            .query_async(&mut *conn)
            .await?;
        Ok(ids
            .iter()
            .filter_map(|i| WebhookId::parse(i).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_survives_the_list_and_old_items_are_still_read() {
        let origin = EventOrigin {
            accepted_at_ms: Some(1_776_939_300_123),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("a=1|2,b=50%".into()),
        };
        let item = origin.encode(r#"{"eventId":"e|1"}"#);
        assert!(!item.contains('\n'));
        let (back, json) = EventOrigin::decode(&item).unwrap();
        assert_eq!(back, origin);
        assert_eq!(json, r#"{"eventId":"e|1"}"#);

        let none = EventOrigin::default().encode("{}");
        assert_eq!(none, "|||{}");
        assert_eq!(
            EventOrigin::decode(&none),
            Some((EventOrigin::default(), "{}"))
        );
        assert_eq!(
            EventOrigin::decode(r#"{"eventId":"old"}"#),
            Some((EventOrigin::default(), r#"{"eventId":"old"}"#))
        );
        assert_eq!(EventOrigin::decode("x|y|{}"), None);
    }
}
