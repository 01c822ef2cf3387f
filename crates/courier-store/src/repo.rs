//! Tenants, API keys and webhooks.

use courier_core::ids::{TenantId, WebhookId};
use courier_core::tenant::{hash_api_key, ApiKeyRecord, Tenant};
use courier_core::webhook::Webhook;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;

use crate::{scripts, Store, StoreError};

/// What creating a webhook came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateWebhook {
    Created,
    /// The tenant already has this many webhooks.
    LimitReached(usize),
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    // Plain records of strings, numbers and maps always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

impl Store {
    /// Creates the tenant unless one with that id exists; returns whether it did.
    pub async fn create_tenant(&self, tenant: &Tenant) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let created: bool = conn
            .set_nx(self.keys.tenant(&tenant.id), encode(tenant))
            .await?;
        Ok(created)
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn.get(self.keys.tenant(id)).await?;
        json.map(|j| decode("tenant", &j)).transpose()
    }

    /// Stores an API key record under the hash of its plaintext.
    pub async fn put_api_key(&self, hash: &str, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .atomic()
            .set(self.keys.api_key(hash), encode(record))
            .sadd(self.keys.tenant_keys(&record.tenant_id), hash)
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }

    /// Looks a presented key up by its hash.
    pub async fn api_key(&self, plaintext: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn
            .get(self.keys.api_key(&hash_api_key(plaintext)))
            .await?;
        json.map(|j| decode("api key", &j)).transpose()
    }

    /// Creates the webhook unless its tenant already has `limit`, atomically across
    /// gateway replicas.
    pub async fn create_webhook(
        &self,
        webhook: &Webhook,
        limit: usize,
    ) -> Result<CreateWebhook, StoreError> {
        let mut conn = self.conn().await?;
        let created: i64 = scripts::CREATE_WEBHOOK
            .key(self.keys.tenant_webhooks(&webhook.tenant_id))
            .key(self.keys.webhook(&webhook.id))
            .arg(webhook.id.as_str())
            .arg(encode(webhook))
            .arg(limit)
            .invoke_async(&mut *conn)
            .await?;
        Ok(if created == 1 {
            CreateWebhook::Created
        } else {
            CreateWebhook::LimitReached(limit)
        })
    }

    pub async fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        let mut conn = self.conn().await?;
        let json: Option<String> = conn.get(self.keys.webhook(id)).await?;
        json.map(|j| decode("webhook", &j)).transpose()
    }

    /// Every webhook of a tenant, in one round trip.
    pub async fn tenant_webhooks(&self, tenant: &TenantId) -> Result<Vec<Webhook>, StoreError> {
        let mut conn = self.conn().await?;
        let jsons: Vec<String> = scripts::TENANT_WEBHOOKS
            .key(self.keys.tenant_webhooks(tenant))
            .arg(self.keys.webhook_prefix())
            .invoke_async(&mut *conn)
            .await?;
        jsons.iter().map(|j| decode("webhook", j)).collect()
    }
}
