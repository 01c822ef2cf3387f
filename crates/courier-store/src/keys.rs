//! Key names. Everything lives under `{prefix}courier:`.
//!
//! Redis holds hot, bounded state only: every key either expires or is bounded by
//! something that does not grow with history.
//! - **Configuration** (no expiry, as many as tenants, keys and webhooks):
//!   [`Keys::tenant`], [`Keys::tenants`], [`Keys::tenant_webhooks`],
//!   [`Keys::tenant_keys`], [`Keys::api_key`], [`Keys::webhook`].
//! - **Capped**: the audit streams ([`Keys::audit`], [`Keys::audit_all`]), trimmed to
//!   about 100,000 entries at every append.
//! - **Work in flight** (no expiry; they exist while events wait or a cut batch is
//!   pending, and go when it is handed on): the batch accumulator's
//!   [`Keys::batch_waiting`], [`Keys::batch_meta`], [`Keys::batch_due`],
//!   [`Keys::batch_tenant`], [`Keys::batch_pending`], [`Keys::batch_cut`].
//! - **Expiring**: [`Keys::placed`] and [`Keys::claim`] (the dedupe window, a
//!   running claim its lease), the delivery log's [`Keys::log`],
//!   [`Keys::log_attempts`], [`Keys::log_index`] and [`Keys::dead`] (the log
//!   retention; the indexes are also trimmed to it), [`Keys::rate_bucket`] (until
//!   the bucket would be full again).

use courier_core::ids::{BatchId, TenantId, WebhookId};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    base: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            base: format!("{prefix}courier:"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}courier:`, the start of every key (scripts that build keys take it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Tenant record (JSON).
    pub fn tenant(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}", self.base)
    }

    /// Set of a tenant's webhook ids.
    pub fn tenant_webhooks(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}:webhooks", self.base)
    }

    /// The ids of a tenant's webhooks deleted within the last day, by the time of
    /// their deletion (sorted set, score in ms), so that the fan-out can end what a
    /// deleted webhook left in flight (see [`crate::Store::lost_attempts`]). Each
    /// deletion drops the entries older than a day, and the key expires a day
    /// after the last one.
    pub fn deleted_webhooks(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}:deleted-webhooks", self.base)
    }

    /// What earlier versions kept as [`Keys::deleted_webhooks`]: a set whose expiry
    /// every deletion renewed. Still read, and gone a day after the last deletion
    /// made by such a version.
    pub fn deleted_webhooks_before(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}:webhooks-deleted", self.base)
    }

    /// The purge of a deleted tenant (hash: `deletedAt` ms, `pass`, `auditId` of the
    /// deletion's entry in the operators' audit log). While it exists the id cannot
    /// be used again.
    pub fn tenant_purge(&self, t: &TenantId) -> String {
        format!("{}tenant-purge:{t}", self.base)
    }

    /// Batches whose delivery was under way when a purge pass removed their log
    /// record (set): the next pass removes what that delivery wrote after.
    pub fn tenant_purge_unsettled(&self, t: &TenantId) -> String {
        format!("{}tenant-purge:{t}:unsettled", self.base)
    }

    /// Every deleted tenant whose data is being purged, by the time its next pass
    /// may start (sorted set, score in ms of Redis time; a pass running pushes it
    /// ahead as its lease).
    pub fn tenant_purges(&self) -> String {
        format!("{}tenant-purges", self.base)
    }

    /// Every tenant id, by creation time (sorted set, score in ms).
    pub fn tenants(&self) -> String {
        format!("{}tenants", self.base)
    }

    /// Prefix of API key records; the hash follows.
    pub fn api_key_prefix(&self) -> String {
        format!("{}apikey:", self.base)
    }

    /// Channel on which every configuration change is announced (the tenant id).
    pub fn config_channel(&self) -> String {
        format!("{}config", self.base)
    }

    /// A tenant's audit log (stream).
    pub fn audit(&self, t: &TenantId) -> String {
        format!("{}audit:{t}", self.base)
    }

    /// Every tenant's audit log, for operators (stream).
    pub fn audit_all(&self) -> String {
        format!("{}audit", self.base)
    }

    /// Hash of a tenant's API keys: key id → hash of the key.
    pub fn tenant_keys(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}:keys", self.base)
    }

    /// API key record (JSON) under the SHA-256 of the key.
    pub fn api_key(&self, hash: &str) -> String {
        format!("{}apikey:{hash}", self.base)
    }

    /// Prefix of webhook records; the id follows.
    pub fn webhook_prefix(&self) -> String {
        format!("{}webhook:", self.base)
    }

    /// Webhook record (JSON).
    pub fn webhook(&self, id: &WebhookId) -> String {
        format!("{}webhook:{id}", self.base)
    }

    /// A tenant's ingest token bucket (hash: tokens, time of the last update).
    pub fn rate_bucket(&self, t: &TenantId) -> String {
        format!("{}ratelimit:{t}", self.base)
    }

    /// Events waiting for a webhook's next batch, oldest first (list; see
    /// [`crate::batch::codec`]). Built by the accumulator's scripts.
    pub fn batch_waiting(&self, webhook: &WebhookId) -> String {
        format!("{}batch:{webhook}", self.base)
    }

    /// Tenant, generation and batch size of what waits for a webhook (hash),
    /// deleted by the cut that leaves nothing waiting.
    pub fn batch_meta(&self, webhook: &WebhookId) -> String {
        format!("{}batch-meta:{webhook}", self.base)
    }

    /// Webhooks with events waiting, by flush deadline (sorted set, score in ms).
    pub fn batch_due(&self) -> String {
        format!("{}batch-due", self.base)
    }

    /// A tenant's webhooks with events waiting (set).
    pub fn batch_tenant(&self, t: &TenantId) -> String {
        format!("{}batch-tenant:{t}", self.base)
    }

    /// A cut batch until it is handed on (hash: `tenant`, `generation`, `cut`, `id`,
    /// `events`); `member` is `{webhook}:{batch id, 32 hex digits}`.
    pub fn batch_pending(&self, member: &str) -> String {
        format!("{}batch-pending:{member}", self.base)
    }

    /// Pending batches by the end of their lease (sorted set of members, score in ms).
    pub fn batch_cut(&self) -> String {
        format!("{}batch-cut", self.base)
    }

    /// Marker of an event placed in a webhook's batch (expires after a day).
    pub fn placed(&self, webhook: &WebhookId, event: &str) -> String {
        format!("{}placed:{webhook}:{event}", self.base)
    }

    /// Claim of one attempt: the holder while a worker POSTs (expiring with the
    /// lease), then `done` (expiring after the dedupe window).
    pub fn claim(&self, batch: &BatchId, series: u32, attempt: u32) -> String {
        format!("{}claim:{batch}:{series}:{attempt}", self.base)
    }

    /// Delivery log record (hash).
    pub fn log(&self, batch: &BatchId) -> String {
        format!("{}log:{batch}", self.base)
    }

    /// Attempts of a delivery log record (list of JSON).
    pub fn log_attempts(&self, batch: &BatchId) -> String {
        format!("{}log:{batch}:attempts", self.base)
    }

    /// A webhook's batches by creation time (sorted set, score in ms).
    pub fn log_index(&self, webhook: &WebhookId) -> String {
        format!("{}log-index:{webhook}", self.base)
    }

    /// A lease (see [`crate::lease`]): the holder, with a TTL.
    pub fn lease(&self, name: &str) -> String {
        format!("{}lease:{name}", self.base)
    }

    /// A tenant's dead letters: its `failed` batches by the time they failed (sorted
    /// set, score in ms). Added when a batch fails, removed when it is replayed.
    pub fn dead(&self, t: &TenantId) -> String {
        format!("{}dead:{t}", self.base)
    }
}
