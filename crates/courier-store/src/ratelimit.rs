//! The per-tenant ingest rate limit: a token bucket in Redis, so every gateway
//! replica draws from the same bucket.
//!
//! One Lua script per request refills the bucket for the time elapsed (Redis
//! `TIME`, never a replica's clock) and takes one token per event. A request of more
//! events than the burst is let through when the bucket is full and leaves it in
//! debt, so the long-run rate holds and no valid request is refused forever.

use std::sync::LazyLock;
use std::time::Duration;

use courier_core::ids::TenantId;
use redis::Script;

use crate::{Store, StoreError};

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: f64,
}

/// What asking the bucket for tokens came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Taken,
    /// Not enough tokens: enough will be there after this long.
    Limited {
        retry_after: Duration,
    },
}

/// KEYS: bucket. ARGV: tokens per second, burst, tokens wanted.
/// Returns {1, 0} when taken, {0, microseconds until enough} when not.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000000)
  at = now
end
local ttl = math.ceil((burst - tokens) / rate * 1000) + 1000
local need = math.min(n, burst)
if tokens < need then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', string.format('%.0f', at))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {0, math.ceil((need - tokens) * 1000000 / rate)}
end
tokens = tokens - n
ttl = math.ceil((burst - tokens) / rate * 1000) + 1000
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, 0}
",
    )
});

impl Store {
    /// Takes `n` tokens from the tenant's bucket, in one round trip.
    pub async fn take_tokens(
        &self,
        tenant: &TenantId,
        n: usize,
        bucket: Bucket,
    ) -> Result<Take, StoreError> {
        let mut conn = self.conn().await?;
        let (taken, wait_us): (i64, i64) = TAKE
            .key(self.keys.rate_bucket(tenant))
            .arg(bucket.per_second)
            .arg(bucket.burst)
            .arg(n)
            .invoke_async(&mut *conn)
            .await?;
        Ok(if taken == 1 {
            Take::Taken
        } else {
            Take::Limited {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            }
        })
    }
}
