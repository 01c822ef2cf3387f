//! The few management calls a scenario needs: a tenant with its API key, and
//! webhooks pointing at the receiver.

use anyhow::{bail, Context as _};
use courier_core::signing::Secret;
use serde_json::{json, Value};

/// A tenant created for one scenario.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant's API key (all scopes).
    pub key: String,
}

/// Courier's management API on one gateway.
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(http: reqwest::Client, base: String) -> Self {
        Self { http, base }
    }

    /// `POST /v1/tenants` with the operator token.
    pub async fn create_tenant(&self, admin_token: &str, name: &str) -> anyhow::Result<Tenant> {
        let body = self
            .call(
                "creating a tenant",
                admin_token,
                "/v1/tenants",
                json!({ "name": name }),
            )
            .await?;
        let key = body["apiKey"]["key"]
            .as_str()
            .context("tenant answer without apiKey.key")?;
        Ok(Tenant {
            key: key.to_owned(),
        })
    }

    /// `POST /v1/webhooks` subscribing `url` to every event; returns its secret.
    pub async fn create_webhook(
        &self,
        tenant: &Tenant,
        name: &str,
        url: &str,
        throttling: u8,
    ) -> anyhow::Result<Secret> {
        let body = self
            .call(
                "creating a webhook",
                &tenant.key,
                "/v1/webhooks",
                json!({ "name": name, "url": url, "events": ["*"], "throttling": throttling }),
            )
            .await?;
        let secret = body["secret"]
            .as_str()
            .context("webhook answer without secret")?;
        Secret::parse(secret).context("the webhook's secret does not parse")
    }

    async fn call(
        &self,
        what: &str,
        token: &str,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .with_context(|| what.to_owned())?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{what}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: answer is not JSON"))
    }
}
