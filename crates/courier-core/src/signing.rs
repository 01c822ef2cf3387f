//! Request signing for webhook deliveries.
//!
//! Two schemes are supported, chosen per webhook with [`SignatureScheme`]:
//!
//! - [`SignatureScheme::Standard`] follows the Standard Webhooks specification: the
//!   `webhook-signature` header carries `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`,
//!   keyed with the decoded bytes of the [`Secret`]. During a secret rotation the header
//!   holds one space-separated entry per valid secret ([`signature_header`]). Receivers
//!   verify with the `standardwebhooks` or `svix` libraries; [`verify`] does the same.
//! - [`SignatureScheme::HmacSha256Hex`] sends `x-courier-signature: sha256=<hex HMAC-SHA256(key, body)>`,
//!   keyed with the UTF-8 bytes of the whole secret string ([`sign_hex`], [`verify_hex`]).
//!
//! Everything here is a pure function over bytes; the caller supplies the clock.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of every secret string.
const SECRET_PREFIX: &str = "whsec_";
/// Fewest decoded bytes a secret may have.
const MIN_SECRET_BYTES: usize = 24;
/// Most decoded bytes a secret may have.
const MAX_SECRET_BYTES: usize = 64;
/// Decoded bytes of a generated secret.
const GENERATED_SECRET_BYTES: usize = 32;
/// Version tag of the only Standard Webhooks signature entry this module produces and checks.
const STANDARD_VERSION: &str = "v1";
/// Prefix of an `x-courier-signature` value.
const HEX_PREFIX: &str = "sha256=";

/// How many seconds a Standard Webhooks timestamp may differ from the receiver's clock.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// Standard base64 that decodes with or without trailing `=` padding.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A webhook signing secret: `whsec_` + standard base64 of 24–64 bytes. The HMAC key of the
/// standard scheme is the decoded bytes; the hmac-sha256-hex scheme keys with the UTF-8 bytes
/// of the whole string. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The full `whsec_...` string, exactly as parsed or generated.
    full: String,
    /// The bytes the base64 part decodes to.
    key: Vec<u8>,
}

impl Secret {
    /// Parses a `whsec_` secret, accepting the base64 part with or without padding.
    pub fn parse(s: &str) -> Result<Secret, SecretError> {
        let encoded = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64_LENIENT
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength { len: key.len() });
        }
        Ok(Secret {
            full: s.to_owned(),
            key,
        })
    }

    /// A new secret of 32 bytes from the operating system's random number generator.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; GENERATED_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let full = format!("{SECRET_PREFIX}{}", STANDARD.encode(&key));
        Secret { full, key }
    }

    /// The `whsec_...` string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The decoded bytes: the HMAC key of the standard scheme.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…redacted)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Secret::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a [`Secret`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The string does not start with `whsec_`.
    #[error("a secret starts with `whsec_`, followed by base64 of 24 to 64 bytes")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("a secret is `whsec_` followed by standard base64 of 24 to 64 bytes; the part after `whsec_` is not valid base64")]
    InvalidBase64,
    /// The base64 decodes to too few or too many bytes.
    #[error("a secret is `whsec_` followed by base64 of 24 to 64 bytes; this one decodes to {len} bytes")]
    BadLength {
        /// The number of decoded bytes.
        len: usize,
    },
}

/// How a webhook's requests are signed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
    #[default]
    Standard,
    /// `x-courier-signature: sha256=<hex HMAC-SHA256 of the body>`, keyed with the secret string.
    HmacSha256Hex,
}

/// Why a Standard Webhooks request failed verification.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The `webhook-timestamp` header is not an integer number of unix seconds.
    #[error("the webhook timestamp is not unix seconds")]
    InvalidTimestamp,
    /// The timestamp is more than [`TIMESTAMP_TOLERANCE_SECS`] away from the receiver's clock.
    #[error("the webhook timestamp is more than {TIMESTAMP_TOLERANCE_SECS} seconds from now")]
    TimestampOutOfTolerance,
    /// No `v1` entry of the signature header matches the request.
    #[error("no signature matches the request")]
    NoMatchingSignature,
}

/// `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>` (Standard Webhooks).
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = standard_mac(secret, msg_id, timestamp, body)
        .finalize()
        .into_bytes();
    format!("{STANDARD_VERSION},{}", STANDARD.encode(tag))
}

/// The `webhook-signature` header value: one `v1,` entry per secret, space-separated, in the given order.
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .into_iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verifies a Standard Webhooks request as a receiver would: the timestamp header parses as unix seconds and is within
/// ±TIMESTAMP_TOLERANCE_SECS of `now`, and at least one space-separated `v1,<sig>` entry of `signature_header`
/// matches (constant-time comparison, e.g. hmac's `verify_slice` after base64-decoding the entry); entries with other
/// versions (e.g. `v1a,...`) are ignored.
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp_header
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    if now.abs_diff(timestamp) > TIMESTAMP_TOLERANCE_SECS.unsigned_abs() {
        return Err(VerifyError::TimestampOutOfTolerance);
    }

    let mac = standard_mac(secret, msg_id, timestamp, body);
    let matches = signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == STANDARD_VERSION)
        .filter_map(|(_, encoded)| BASE64_LENIENT.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// hmac-sha256-hex scheme: `sha256=<lowercase hex HMAC-SHA256(secret.as_str().as_bytes(), body)>` (the `x-courier-signature` header).
pub fn sign_hex(secret: &Secret, body: &[u8]) -> String {
    let tag = hex_mac(secret, body).finalize().into_bytes();
    let mut out = String::with_capacity(HEX_PREFIX.len() + 2 * tag.len());
    out.push_str(HEX_PREFIX);
    for byte in tag {
        out.push(hex_digit(byte >> 4));
        out.push(hex_digit(byte & 0x0f));
    }
    out
}

/// Constant-time check of an `x-courier-signature` value.
///
/// Hex digits are accepted in either case; anything but `sha256=` followed by exactly
/// the digest's hex digits is rejected.
pub fn verify_hex(secret: &Secret, header: &str, body: &[u8]) -> bool {
    let Some(digits) = header.strip_prefix(HEX_PREFIX) else {
        return false;
    };
    let Some(tag) = decode_hex(digits) else {
        return false;
    };
    hex_mac(secret, body).verify_slice(&tag).is_ok()
}

/// An HMAC keyed with `key`.
fn keyed_mac(key: &[u8]) -> HmacSha256 {
    // HMAC hashes or pads its key to the block size, so every key length is accepted.
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The Standard Webhooks HMAC over `"{msg_id}.{timestamp}.{body}"`, not yet finalized.
fn standard_mac(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed_mac(secret.key());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The hmac-sha256-hex HMAC over the body, keyed with the whole secret string.
fn hex_mac(secret: &Secret, body: &[u8]) -> HmacSha256 {
    let mut mac = keyed_mac(secret.as_str().as_bytes());
    mac.update(body);
    mac
}

/// The lowercase hex digit of a nibble (`0..=15`).
fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// The value of one hex digit, in either case.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Decodes an even-length hex string; `None` for an odd length or a non-hex character.
fn decode_hex(digits: &str) -> Option<Vec<u8>> {
    let bytes = digits.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some((hex_value(pair[0])? << 4) | hex_value(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1_614_265_330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    /// `hmac.new(VECTOR_SECRET, VECTOR_BODY, hashlib.sha256).hexdigest()`, computed with Python.
    const VECTOR_HEX: &str =
        "sha256=80ec8a89ce3cd22133a1066caecb4d04fea7467657c8514d717ec42c38a5c94c";

    fn vector_secret() -> Secret {
        Secret::parse(VECTOR_SECRET).unwrap()
    }

    fn secret_of_len(len: usize) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(vec![7u8; len]))
    }

    fn verify_vector(signature_header: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(
            &vector_secret(),
            VECTOR_ID,
            &VECTOR_TIMESTAMP.to_string(),
            signature_header,
            body,
            now,
        )
    }

    /// The vector's signature with its last base64 character replaced.
    fn tampered_signature() -> String {
        let mut tampered = VECTOR_SIGNATURE.trim_end_matches('=').to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'E' { 'F' } else { 'E' });
        tampered.push('=');
        tampered
    }

    #[test]
    fn sign_matches_the_standard_webhooks_vector() {
        let secret = vector_secret();
        assert_eq!(secret.key().len(), 24);
        assert_eq!(
            sign(&secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
    }

    #[test]
    fn verify_accepts_the_standard_webhooks_vector() {
        assert_eq!(
            verify_vector(VECTOR_SIGNATURE, VECTOR_BODY, VECTOR_TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn verify_rejects_a_signature_with_a_changed_last_character() {
        let tampered = tampered_signature();
        assert_ne!(tampered, VECTOR_SIGNATURE);
        assert_eq!(
            verify_vector(&tampered, VECTOR_BODY, VECTOR_TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        // Changing the padding character itself must not slip through either.
        let no_pad = VECTOR_SIGNATURE.trim_end_matches('=');
        assert_eq!(
            verify_vector(&format!("{no_pad}A"), VECTOR_BODY, VECTOR_TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn verify_ignores_unknown_versions_beside_a_valid_v1() {
        let (_, sig) = VECTOR_SIGNATURE.split_once(',').unwrap();
        for header in [
            format!("v2,abc123 {VECTOR_SIGNATURE}"),
            format!("{VECTOR_SIGNATURE} v1a,xyz"),
            format!("v1a,{sig} {VECTOR_SIGNATURE}"),
        ] {
            assert_eq!(
                verify_vector(&header, VECTOR_BODY, VECTOR_TIMESTAMP),
                Ok(()),
                "{header}"
            );
        }
    }

    #[test]
    fn verify_rejects_a_header_with_only_unknown_versions() {
        let (_, sig) = VECTOR_SIGNATURE.split_once(',').unwrap();
        for header in [
            "v2,abc123".to_owned(),
            "v1a,xyz".to_owned(),
            format!("v1a,{sig}"),
            format!("v2,{sig} v1a,{sig}"),
            sig.to_owned(),
            String::new(),
        ] {
            assert_eq!(
                verify_vector(&header, VECTOR_BODY, VECTOR_TIMESTAMP),
                Err(VerifyError::NoMatchingSignature),
                "{header:?}"
            );
        }
    }

    #[test]
    fn verify_rejects_timestamps_beyond_the_tolerance() {
        for now in [VECTOR_TIMESTAMP + 301, VECTOR_TIMESTAMP - 301] {
            assert_eq!(
                verify_vector(VECTOR_SIGNATURE, VECTOR_BODY, now),
                Err(VerifyError::TimestampOutOfTolerance)
            );
        }
    }

    #[test]
    fn verify_accepts_timestamps_within_the_tolerance() {
        for now in [
            VECTOR_TIMESTAMP + 299,
            VECTOR_TIMESTAMP - 299,
            VECTOR_TIMESTAMP + TIMESTAMP_TOLERANCE_SECS,
            VECTOR_TIMESTAMP - TIMESTAMP_TOLERANCE_SECS,
        ] {
            assert_eq!(verify_vector(VECTOR_SIGNATURE, VECTOR_BODY, now), Ok(()));
        }
    }

    #[test]
    fn verify_rejects_a_non_numeric_timestamp() {
        for timestamp in ["", "abc", "1614265330.5", "2021-02-25T15:02:10Z"] {
            assert_eq!(
                verify(
                    &vector_secret(),
                    VECTOR_ID,
                    timestamp,
                    VECTOR_SIGNATURE,
                    VECTOR_BODY,
                    VECTOR_TIMESTAMP
                ),
                Err(VerifyError::InvalidTimestamp),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn verify_tolerates_extreme_timestamps_without_overflow() {
        let secret = vector_secret();
        let header = sign(&secret, VECTOR_ID, i64::MIN, VECTOR_BODY);
        assert_eq!(
            verify(
                &secret,
                VECTOR_ID,
                &i64::MIN.to_string(),
                &header,
                VECTOR_BODY,
                i64::MAX
            ),
            Err(VerifyError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn verify_rejects_a_modified_body() {
        assert_eq!(
            verify_vector(
                VECTOR_SIGNATURE,
                br#"{"test": 2432232315}"#,
                VECTOR_TIMESTAMP
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn verify_rejects_a_different_message_id() {
        assert_eq!(
            verify(
                &vector_secret(),
                "msg_other",
                &VECTOR_TIMESTAMP.to_string(),
                VECTOR_SIGNATURE,
                VECTOR_BODY,
                VECTOR_TIMESTAMP
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn signature_header_with_two_secrets_verifies_with_either() {
        let old = vector_secret();
        let new = Secret::generate();
        let header = signature_header([&new, &old], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);

        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            entries,
            [
                sign(&new, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY).as_str(),
                VECTOR_SIGNATURE
            ]
        );
        for secret in [&old, &new] {
            assert_eq!(
                verify(
                    secret,
                    VECTOR_ID,
                    &VECTOR_TIMESTAMP.to_string(),
                    &header,
                    VECTOR_BODY,
                    VECTOR_TIMESTAMP
                ),
                Ok(())
            );
        }
        assert_eq!(
            verify(
                &Secret::generate(),
                VECTOR_ID,
                &VECTOR_TIMESTAMP.to_string(),
                &header,
                VECTOR_BODY,
                VECTOR_TIMESTAMP
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn signature_header_with_no_secrets_is_empty() {
        assert_eq!(
            signature_header([], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            ""
        );
    }

    #[test]
    fn secret_parse_rejects_a_missing_prefix() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            Secret::parse("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        );
    }

    #[test]
    fn secret_parse_rejects_invalid_base64() {
        for s in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La!aSw",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-aSw",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
        ] {
            assert_eq!(Secret::parse(s), Err(SecretError::InvalidBase64), "{s}");
        }
    }

    #[test]
    fn secret_parse_rejects_too_short_and_too_long_keys() {
        assert_eq!(
            Secret::parse(&secret_of_len(23)),
            Err(SecretError::BadLength { len: 23 })
        );
        assert_eq!(
            Secret::parse(&secret_of_len(65)),
            Err(SecretError::BadLength { len: 65 })
        );
        assert_eq!(
            Secret::parse("whsec_"),
            Err(SecretError::BadLength { len: 0 })
        );
    }

    #[test]
    fn secret_parse_accepts_24_and_64_byte_keys() {
        for len in [24, 64] {
            let s = secret_of_len(len);
            let secret = Secret::parse(&s).unwrap();
            assert_eq!(secret.key(), vec![7u8; len]);
            assert_eq!(secret.as_str(), s);
        }
    }

    #[test]
    fn secret_parse_accepts_base64_with_or_without_padding() {
        let padded = secret_of_len(32);
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        let a = Secret::parse(&padded).unwrap();
        let b = Secret::parse(unpadded).unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(b.as_str(), unpadded);
    }

    #[test]
    fn secret_generate_gives_32_bytes_that_round_trip_through_parse() {
        let secret = Secret::generate();
        assert_eq!(secret.key().len(), 32);
        assert!(secret.as_str().starts_with("whsec_"));
        assert_eq!(Secret::parse(secret.as_str()).unwrap(), secret);
        assert_ne!(Secret::generate(), secret);
    }

    #[test]
    fn secret_debug_does_not_print_the_secret() {
        let secret = vector_secret();
        let debug = format!("{secret:?} {:?}", Some(&secret));
        assert!(!debug.contains(VECTOR_SECRET), "{debug}");
        assert!(
            !debug.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{debug}"
        );
    }

    #[test]
    fn secret_error_messages_describe_the_format() {
        assert!(SecretError::InvalidBase64
            .to_string()
            .contains("`whsec_` followed by"));
        assert!(SecretError::BadLength { len: 23 }
            .to_string()
            .contains("23 bytes"));
    }

    #[test]
    fn signature_scheme_serializes_in_kebab_case() {
        assert_eq!(
            serde_json::to_string(&SignatureScheme::Standard).unwrap(),
            r#""standard""#
        );
        assert_eq!(
            serde_json::to_string(&SignatureScheme::HmacSha256Hex).unwrap(),
            r#""hmac-sha256-hex""#
        );
        assert_eq!(
            serde_json::from_str::<SignatureScheme>(r#""hmac-sha256-hex""#).unwrap(),
            SignatureScheme::HmacSha256Hex
        );
        assert_eq!(SignatureScheme::default(), SignatureScheme::Standard);
    }

    #[test]
    fn secret_serializes_as_its_string() {
        let secret = vector_secret();
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, format!("\"{VECTOR_SECRET}\""));
        assert_eq!(serde_json::from_str::<Secret>(&json).unwrap(), secret);
    }

    #[test]
    fn secret_deserialization_rejects_an_invalid_string() {
        for json in [
            r#""MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw""#,
            r#""whsec_not base64""#,
            r#""whsec_AAAA""#,
            "42",
        ] {
            assert!(serde_json::from_str::<Secret>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn sign_hex_is_sha256_and_64_lowercase_hex_digits() {
        let header = sign_hex(&Secret::generate(), b"body");
        let digits = header.strip_prefix("sha256=").unwrap();
        assert_eq!(digits.len(), 64);
        assert!(digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn sign_hex_keys_with_the_whole_secret_string() {
        assert_eq!(sign_hex(&vector_secret(), VECTOR_BODY), VECTOR_HEX);
    }

    #[test]
    fn verify_hex_accepts_the_fixed_vector() {
        assert!(verify_hex(&vector_secret(), VECTOR_HEX, VECTOR_BODY));
        assert!(verify_hex(
            &vector_secret(),
            &VECTOR_HEX
                .to_ascii_uppercase()
                .replacen("SHA256=", "sha256=", 1),
            VECTOR_BODY
        ));
    }

    #[test]
    fn verify_hex_rejects_a_changed_character() {
        let mut tampered = VECTOR_HEX.to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(!verify_hex(&vector_secret(), &tampered, VECTOR_BODY));
    }

    #[test]
    fn verify_hex_rejects_a_missing_prefix() {
        let digits = VECTOR_HEX.strip_prefix("sha256=").unwrap();
        assert!(!verify_hex(&vector_secret(), digits, VECTOR_BODY));
        assert!(!verify_hex(
            &vector_secret(),
            &format!("sha1={digits}"),
            VECTOR_BODY
        ));
    }

    #[test]
    fn verify_hex_rejects_malformed_values() {
        let secret = vector_secret();
        for header in [
            "",
            "sha256=",
            &VECTOR_HEX[..VECTOR_HEX.len() - 1],
            &VECTOR_HEX[..VECTOR_HEX.len() - 2],
            &format!("{VECTOR_HEX}00"),
            &VECTOR_HEX.replacen('8', "g", 1),
        ] {
            assert!(!verify_hex(&secret, header, VECTOR_BODY), "{header}");
        }
        assert!(!verify_hex(&secret, VECTOR_HEX, b"other body"));
    }

    fn arb_secret() -> impl Strategy<Value = Secret> {
        proptest::collection::vec(any::<u8>(), MIN_SECRET_BYTES..=MAX_SECRET_BYTES).prop_map(
            |key| Secret::parse(&format!("{SECRET_PREFIX}{}", STANDARD.encode(key))).unwrap(),
        )
    }

    proptest! {
        #[test]
        fn signed_requests_verify_only_with_their_secret(
            secret in arb_secret(),
            other in arb_secret(),
            msg_id in ".*",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            timestamp in -4_000_000_000i64..4_000_000_000,
        ) {
            let header = sign(&secret, &msg_id, timestamp, &body);
            let ts = timestamp.to_string();
            prop_assert_eq!(verify(&secret, &msg_id, &ts, &header, &body, timestamp), Ok(()));
            prop_assume!(other.key() != secret.key());
            prop_assert_eq!(
                verify(&other, &msg_id, &ts, &header, &body, timestamp),
                Err(VerifyError::NoMatchingSignature)
            );
            prop_assert!(verify_hex(&secret, &sign_hex(&secret, &body), &body));
            prop_assert!(!verify_hex(&other, &sign_hex(&secret, &body), &body));
        }
    }
}
