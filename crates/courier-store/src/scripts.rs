//! Lua scripts. Each runs atomically; times come from Redis `TIME`.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: tenant's webhook set. ARGV: webhook key prefix. Returns every webhook's id
/// and record, flat: id, JSON, id, JSON, ...
pub static TENANT_WEBHOOKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
  end
end
return out
",
    )
});

/// Claims an attempt and makes sure the log record exists for its series.
/// KEYS: claim, log record, log index, tenant's dead letters. ARGV: holder, lease ms,
/// tenant, webhook id, event ids JSON, payload ('' when the caller expects the record
/// to exist), series, batch id, retention s, trim ('1' also drops index entries
/// older than the retention), the webhook generation the work was created under.
/// Returns {'claimed'|'done'|'busy'|'superseded'|'missing', pttl}: 'done' also when
/// the series has already ended, 'superseded' when a newer series (a replay) has
/// started, 'missing' (nothing changed) when the record must be created and no
/// payload came. A new series resets the record to `pending` and takes the batch off
/// the dead letters.
///
/// Every `redis.call` costs a few microseconds of Redis's one thread, and this runs
/// once per attempt: a first attempt (no record yet) makes eight, a retry four.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == 'done' then return {'done', 0} end
local series = tonumber(ARGV[7])
local rec = redis.call('HMGET', KEYS[2], 'series', 'status')
local logged = tonumber(rec[1] or '0')
if logged > series then return {'superseded', 0} end
if logged == series and (rec[2] == 'delivered' or rec[2] == 'failed' or rec[2] == 'cancelled') then
  return {'done', 0}
end
if cur and cur ~= ARGV[1] then return {'busy', redis.call('PTTL', KEYS[1])} end
if logged == 0 and ARGV[6] == '' then return {'missing', 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local retention = tonumber(ARGV[9])
if logged < series then
  local t = redis.call('TIME')
  local now = t[1] * 1000 + math.floor(t[2] / 1000)
  if logged == 0 then
    redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'webhookId', ARGV[4], 'eventIds', ARGV[5],
      'payload', ARGV[6], 'series', series, 'status', 'pending', 'generation', ARGV[11],
      'createdAt', now, 'updatedAt', now)
    redis.call('ZADD', KEYS[3], now, ARGV[8])
    redis.call('EXPIRE', KEYS[3], retention)
    if ARGV[10] == '1' then
      redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention * 1000)
    end
  else
    -- The same batch, so the same payload and events: only the series moves on.
    redis.call('HSET', KEYS[2], 'series', series, 'status', 'pending', 'generation', ARGV[11],
      'updatedAt', now)
    redis.call('HDEL', KEYS[2], 'reason')
    redis.call('ZREM', KEYS[4], ARGV[8])
  end
end
redis.call('EXPIRE', KEYS[2], retention)
return {'claimed', 0}
",
    )
});

/// Records an attempt's result and, if the caller still holds the claim, applies it.
/// KEYS: claim, log record, attempts list, tenant's dead letters. ARGV: attempt JSON
/// ('' for none), status, series, claim TTL s, retention s, reason, batch id, holder.
/// The attempt is always appended. The rest happens only while the claim is the
/// caller's, or has expired with nobody else holding it: a holder whose lease ran
/// out and was taken over (the claim is another's, or `done`) changes nothing else.
/// Then the claim becomes `done` and the status moves only forward within the
/// record's current series; a batch that becomes `failed` keeps the reason and joins
/// the tenant's dead letters. (The record's expiry was renewed by the attempt's
/// claim.)
/// Returns 1 if the status was applied.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rank = {pending = 0, retrying = 1, delivered = 2, failed = 2, cancelled = 2}
local retention = tonumber(ARGV[5])
if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], retention)
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[8] then return 0 end
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[4])
local rec = redis.call('HMGET', KEYS[2], 'series', 'status')
if tonumber(rec[1] or '0') ~= tonumber(ARGV[3]) then return 0 end
local cur = rec[2] or 'pending'
if rank[cur] == 2 or rank[ARGV[2]] < rank[cur] then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if ARGV[2] == 'failed' then
  redis.call('HSET', KEYS[2], 'status', 'failed', 'updatedAt', now, 'reason', ARGV[6])
  redis.call('ZADD', KEYS[4], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - retention * 1000)
  redis.call('EXPIRE', KEYS[4], retention)
else
  redis.call('HSET', KEYS[2], 'status', ARGV[2], 'updatedAt', now)
end
return 1
",
    )
});

/// Marks a parked delivery job's batch `failed`, without an attempt, unless its series
/// has already ended or a newer one has started; creates the record if the series
/// was never claimed.
/// KEYS: log record, log index, tenant's dead letters. ARGV: tenant, webhook id, event
/// ids JSON, payload, series, batch id, retention s, reason.
/// Returns 1 if the batch was marked.
pub static MARK_DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local series = tonumber(ARGV[5])
local logged = tonumber(redis.call('HGET', KEYS[1], 'series') or '0')
if logged > series then return 0 end
if logged < series then
  if redis.call('HSETNX', KEYS[1], 'createdAt', now) == 1 then
    redis.call('ZADD', KEYS[2], now, ARGV[6])
  end
  redis.call('HSET', KEYS[1], 'tenant', ARGV[1], 'webhookId', ARGV[2], 'eventIds', ARGV[3],
    'payload', ARGV[4], 'series', series, 'status', 'pending', 'updatedAt', now)
else
  local cur = redis.call('HGET', KEYS[1], 'status')
  if cur == 'delivered' or cur == 'failed' or cur == 'cancelled' then return 0 end
end
local retention = tonumber(ARGV[7])
redis.call('HSET', KEYS[1], 'status', 'failed', 'updatedAt', now, 'reason', ARGV[8])
redis.call('EXPIRE', KEYS[1], retention)
redis.call('EXPIRE', KEYS[2], retention)
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention * 1000)
redis.call('EXPIRE', KEYS[3], retention)
return 1
",
    )
});

/// Starts a replayed series in the log: the record moves to the new series as
/// `pending` and leaves the tenant's dead letters. Nothing happens if the record is
/// gone or already at that series or a later one (the first claim then does it).
/// KEYS: log record, tenant's dead letters. ARGV: series, batch id.
/// Returns 1 if the record moved.
pub static MARK_REPLAYED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local series = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'series') or '0') >= series then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'series', series, 'status', 'pending', 'updatedAt', now)
redis.call('HDEL', KEYS[1], 'reason')
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
",
    )
});
