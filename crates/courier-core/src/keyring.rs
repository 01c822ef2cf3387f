//! Encryption of secrets at rest under a keyring of rotating keys.
//!
//! Webhook signing secrets must be readable by the worker (it signs with them), so
//! they cannot be stored as hashes like API keys; they are stored encrypted instead.
//! Each value is sealed with XChaCha20-Poly1305 under a random 192-bit nonce and
//! stored as `enc:v1:<key id>:<base64 of nonce ‖ ciphertext ‖ tag>`, bound to its
//! context (e.g. the webhook id) as associated data, so a sealed value copied into
//! another record does not open.
//!
//! A [`Keyring`] (`COURIER_SECRET_KEYS=newest,older,…`, each `id:base64 of 32 bytes`)
//! seals with its newest key and opens with whichever key a value names, so keys
//! rotate without downtime: deploy `new,old`, re-encrypt, later drop `old`.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

/// Start of every sealed value.
pub const SEALED_PREFIX: &str = "enc:v1:";
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const MAX_KEY_ID_LEN: usize = 32;

/// Id of the fixed key used in the dev profile without `COURIER_SECRET_KEYS`.
pub const DEV_KEY_ID: &str = "dev";
/// The dev profile's fixed key: public, so it protects nothing. Never use it in
/// production (the production profile refuses to start without its own keys).
const DEV_KEY: [u8; KEY_BYTES] = *b"courier-dev-key-NOT-SECRET-00000";

/// Why a keyring could not be read or a sealed value not opened. Never carries
/// key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("the keyring is empty; give at least one key as id:base64-of-32-bytes")]
    Empty,
    #[error("key {0}: expected id:base64-of-32-bytes")]
    Malformed(String),
    #[error("key id {0:?}: use 1 to 32 letters, digits, '-' or '_'")]
    BadId(String),
    #[error("key {0}: the base64 must decode to exactly 32 bytes")]
    BadKey(String),
    #[error("key id {0} is given twice")]
    Duplicate(String),
    #[error("the value is not sealed (enc:v1:<key id>:<base64>)")]
    NotSealed,
    #[error("the value is sealed with key {0}, which is not in the keyring")]
    UnknownKey(String),
    #[error("the value does not open with key {0}: it was altered, or sealed for another record")]
    Undecryptable(String),
}

struct NamedKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Keys to seal and open secrets with: the first is the newest, which seals.
pub struct Keyring {
    keys: Vec<NamedKey>,
}

impl Clone for Keyring {
    fn clone(&self) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .map(|k| NamedKey {
                    id: k.id.clone(),
                    cipher: k.cipher.clone(),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for Keyring {
    /// Key ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Keyring {
    /// Reads `id:base64,id:base64,…`, newest first. Error messages name key ids,
    /// never key material.
    pub fn parse(spec: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<NamedKey> = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| KeyringError::Malformed(format!("#{}", i + 1)))?;
            let id = id.trim();
            if !valid_id(id) {
                return Err(KeyringError::BadId(id.chars().take(40).collect()));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .ok()
                .filter(|b| b.len() == KEY_BYTES)
                .ok_or_else(|| KeyringError::BadKey(id.to_owned()))?;
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            keys.push(NamedKey {
                id: id.to_owned(),
                cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// The dev profile's keyring: one fixed, publicly known key. Insecure by design.
    pub fn dev() -> Self {
        Self {
            keys: vec![NamedKey {
                id: DEV_KEY_ID.to_owned(),
                cipher: XChaCha20Poly1305::new(Key::from_slice(&DEV_KEY)),
            }],
        }
    }

    /// A new random key in the `COURIER_SECRET_KEYS` form, `id:base64`.
    pub fn generate_entry(id: &str) -> String {
        let mut key = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        format!("{id}:{}", STANDARD.encode(key))
    }

    /// Key ids, newest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The id of the key that seals.
    pub fn newest_id(&self) -> &str {
        // `parse` and `dev` never build an empty keyring.
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Seals `plaintext` under the newest key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> String {
        let Some(key) = self.keys.first() else {
            return String::new();
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            // Only a plaintext of more than 256 GiB fails.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}:{}", key.id, STANDARD.encode(out))
    }

    /// Opens a value sealed under any key of the keyring with the same `context`.
    pub fn open(&self, sealed: &str, context: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let (id, encoded) = split_sealed(sealed).ok_or(KeyringError::NotSealed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_owned()))?;
        let undecryptable = || KeyringError::Undecryptable(id.to_owned());
        let bytes = STANDARD.decode(encoded).map_err(|_| undecryptable())?;
        if bytes.len() < NONCE_BYTES {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        key.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| undecryptable())
    }
}

/// Whether a stored string is a sealed value (rather than legacy plaintext).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The key id a sealed value names.
pub fn sealed_key_id(value: &str) -> Option<&str> {
    split_sealed(value).map(|(id, _)| id)
}

fn split_sealed(value: &str) -> Option<(&str, &str)> {
    value.strip_prefix(SEALED_PREFIX)?.split_once(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    #[test]
    fn sealed_values_open_with_the_same_context_only() {
        let k = ring(&Keyring::generate_entry("k1"));
        let sealed = k.seal(b"whsec_abc", b"wh_1");
        assert!(sealed.starts_with("enc:v1:k1:"));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(k.open(&sealed, b"wh_1").unwrap(), b"whsec_abc");
        assert_eq!(
            k.open(&sealed, b"wh_2"),
            Err(KeyringError::Undecryptable("k1".into()))
        );
        assert_ne!(
            k.seal(b"whsec_abc", b"wh_1"),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn rotation_seals_with_the_newest_and_opens_with_any() {
        let old_entry = Keyring::generate_entry("old");
        let old = ring(&old_entry);
        let sealed_old = old.seal(b"s", b"c");
        let rotated = ring(&format!("{},{old_entry}", Keyring::generate_entry("new")));
        assert_eq!(rotated.newest_id(), "new");
        assert_eq!(rotated.open(&sealed_old, b"c").unwrap(), b"s");
        let sealed_new = rotated.seal(b"s", b"c");
        assert_eq!(sealed_key_id(&sealed_new), Some("new"));
        assert_eq!(
            old.open(&sealed_new, b"c"),
            Err(KeyringError::UnknownKey("new".into()))
        );
    }

    #[test]
    fn altered_values_do_not_open() {
        let k = Keyring::dev();
        let sealed = k.seal(b"secret", b"c");
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(k.open(&altered, b"c").is_err());
        assert_eq!(k.open("whsec_plain", b"c"), Err(KeyringError::NotSealed));
        assert!(k.open("enc:v1:dev:AAAA", b"c").is_err());
    }

    #[test]
    fn bad_keyrings_are_refused_without_echoing_keys() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::Empty);
        assert_eq!(
            Keyring::parse("k1").unwrap_err(),
            KeyringError::Malformed("#1".into())
        );
        assert_eq!(
            Keyring::parse("k1:c2hvcnQ=").unwrap_err(),
            KeyringError::BadKey("k1".into())
        );
        assert!(matches!(
            Keyring::parse("bad id:AAAA").unwrap_err(),
            KeyringError::BadId(_)
        ));
        let e = Keyring::generate_entry("k1");
        assert_eq!(
            Keyring::parse(&format!("{e},{e}")).unwrap_err(),
            KeyringError::Duplicate("k1".into())
        );
        let debug = format!("{:?}", ring(&e));
        assert_eq!(debug, "Keyring { key_ids: [\"k1\"] }");
    }
}
