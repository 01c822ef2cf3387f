//! Key names. Everything lives under `{prefix}courier:`.

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

    /// Set of the ids of a tenant's webhooks deleted within the last day, so that
    /// the fan-out can end what a deleted webhook left in flight (see
    /// [`crate::Store::lost_attempts`]).
    pub fn deleted_webhooks(&self, t: &TenantId) -> String {
        format!("{}tenant:{t}:webhooks-deleted", self.base)
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

    /// Claim of one attempt: `running:{holder}` while a worker POSTs, then `done`.
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

    /// A tenant's dead letters: its `failed` batches by the time they failed (sorted
    /// set, score in ms). Added when a batch fails, removed when it is replayed.
    pub fn dead(&self, t: &TenantId) -> String {
        format!("{}dead:{t}", self.base)
    }
}
