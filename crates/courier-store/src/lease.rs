//! Leases: a name held by one holder at a time, across every replica, for a
//! while (so that a holder that dies lets go by itself). Operator operations that
//! must not run twice at once take one (a pass through the dead-letter queue).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::{Store, StoreError};

/// KEYS: lease. ARGV: holder, ttl ms. Takes the lease if free, renews it if the
/// holder has it; 1 if the holder has it now.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// KEYS: lease. ARGV: holder. Gives the lease up if the holder has it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

impl Store {
    /// Takes the lease `name` for `holder` for `ttl`, or renews it if `holder` has
    /// it already; false if another holder has it.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let taken: i64 = TAKE
            .key(self.keys.lease(name))
            .arg(holder)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut *conn)
            .await?;
        Ok(taken == 1)
    }

    /// Gives the lease `name` up, if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        RELEASE
            .key(self.keys.lease(name))
            .arg(holder)
            .invoke_async::<i64>(&mut *conn)
            .await?;
        Ok(())
    }
}
