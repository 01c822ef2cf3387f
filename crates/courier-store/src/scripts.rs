//! Lua scripts. Each runs atomically; times come from Redis `TIME`.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: tenant's webhook set. ARGV: webhook key prefix. Returns every webhook JSON.
pub static TENANT_WEBHOOKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v end
end
return out
",
    )
});

/// Claims an attempt and makes sure the log record exists for its series.
/// KEYS: claim, log record, log index. ARGV: holder, lease ms, tenant, webhook id,
/// event ids JSON, payload, series, batch id, retention s.
/// Returns {'claimed'|'done'|'busy', pttl}.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == 'done' then return {'done', 0} end
if cur and cur ~= ARGV[1] then return {'busy', redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local series = tonumber(ARGV[7])
if tonumber(redis.call('HGET', KEYS[2], 'series') or '0') < series then
  if redis.call('HSETNX', KEYS[2], 'createdAt', now) == 1 then
    redis.call('ZADD', KEYS[3], now, ARGV[8])
  end
  redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'webhookId', ARGV[4], 'eventIds', ARGV[5],
    'payload', ARGV[6], 'series', series, 'status', 'pending', 'updatedAt', now)
end
local retention = tonumber(ARGV[9])
redis.call('EXPIRE', KEYS[2], retention)
redis.call('EXPIRE', KEYS[3], retention)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - retention * 1000)
return {'claimed', 0}
",
    )
});

/// Records an attempt's result and marks its claim done.
/// KEYS: claim, log record, attempts list. ARGV: attempt JSON ('' for none), status,
/// series, claim TTL s, retention s.
/// The status moves only forward within the record's current series.
/// Returns 1 if the status was applied.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rank = {pending = 0, retrying = 1, delivered = 2, failed = 2, cancelled = 2}
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[4])
local retention = tonumber(ARGV[5])
if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], retention)
end
if tonumber(redis.call('HGET', KEYS[2], 'series') or '0') ~= tonumber(ARGV[3]) then return 0 end
local cur = redis.call('HGET', KEYS[2], 'status') or 'pending'
if rank[cur] == 2 or rank[ARGV[2]] < rank[cur] then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'updatedAt', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('EXPIRE', KEYS[2], retention)
return 1
",
    )
});
