//! Tenants and their API keys. A key is shown once; only its SHA-256 is stored.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ids::TenantId;

/// What an API key may do.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events.
    Publish,
    /// Change webhooks.
    Manage,
    /// See webhooks, deliveries and logs.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Publish, Scope::Manage, Scope::Read];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A freshly issued key: the plaintext exists only in this value and the response.
pub struct NewApiKey {
    pub plaintext: String,
    pub record: ApiKeyRecord,
}

/// What is stored for a key, under the hash of its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
}

impl ApiKeyRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Issues a key of 256 random bits: `ck_` + 64 hex digits.
pub fn issue_api_key(tenant: &TenantId, scopes: Vec<Scope>, now: DateTime<Utc>) -> NewApiKey {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    NewApiKey {
        plaintext: format!("ck_{}", hex::encode(bytes)),
        record: ApiKeyRecord {
            id: format!("key_{}", Uuid::now_v7().simple()),
            tenant_id: tenant.clone(),
            scopes,
            created_at: now,
        },
    }
}

/// The stored form of a key or token: lowercase hex SHA-256.
pub fn hash_api_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_are_random_and_hash_stably() {
        let t = TenantId::parse("acme").unwrap();
        let a = issue_api_key(&t, Scope::ALL.to_vec(), Utc::now());
        let b = issue_api_key(&t, Scope::ALL.to_vec(), Utc::now());
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.plaintext.len(), 3 + 64);
        assert_eq!(hash_api_key(&a.plaintext), hash_api_key(&a.plaintext));
        assert_ne!(hash_api_key(&a.plaintext), hash_api_key(&b.plaintext));
        assert!(!hash_api_key(&a.plaintext).contains(&a.plaintext[3..]));
    }

    #[test]
    fn scopes_gate_what_a_key_allows() {
        let t = TenantId::parse("acme").unwrap();
        let k = issue_api_key(&t, vec![Scope::Read], Utc::now());
        assert!(k.record.allows(Scope::Read));
        assert!(!k.record.allows(Scope::Publish));
        assert_eq!(serde_json::to_string(&Scope::Manage).unwrap(), "\"manage\"");
    }
}
