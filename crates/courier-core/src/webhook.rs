//! Webhooks (subscriptions): their validated fields, the stored record, and the
//! decision of whether an event goes to a webhook.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, EventKey, Pattern};
use crate::errors::FieldErrors;
use crate::ids::{TenantId, WebhookId};
use crate::retry::{RetryDefaults, RetryInput, RetrySettings};
use crate::signing::{Secret, SignatureScheme};
use crate::target::{TargetPolicy, REFUSED_REASON};

pub const MAX_URL_LEN: usize = 2048;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_PATTERNS: usize = 64;
pub const MAX_CUSTOM_HEADERS: usize = 20;
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;

/// Header names a webhook may not set: Courier owns them.
const RESERVED_HEADERS: [&str; 3] = ["content-type", "user-agent", "traceparent"];
const RESERVED_PREFIXES: [&str; 2] = ["webhook-", "x-courier-"];

/// Header names that describe the connection or the message framing rather than the
/// request (RFC 9110 §7.6.1 and the framing headers): set by hand they would
/// confuse or smuggle requests through the receiver's proxies, so no webhook may
/// set them.
const CONNECTION_HEADERS: [&str; 12] = [
    "connection",
    "content-length",
    "expect",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the deployment allows as a target URL.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    /// Plain http (the dev profile); otherwise https only.
    pub allow_http: bool,
    /// The addresses deliveries may go to: an IP-literal URL outside them is refused
    /// at once (host names are checked by the worker when it connects).
    pub targets: TargetPolicy,
}

impl UrlPolicy {
    /// The dev profile's: http and loopback allowed.
    pub fn dev() -> Self {
        Self {
            allow_http: true,
            targets: TargetPolicy {
                allow_loopback: true,
                allowed: Vec::new(),
            },
        }
    }

    /// The production profile's: https only, global addresses only.
    pub fn production() -> Self {
        Self::default()
    }
}

/// Everything a webhook is validated against.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub catalog: &'a Catalog,
    pub urls: &'a UrlPolicy,
    pub retry: &'a RetryDefaults,
}

/// An absolute http(s) URL a webhook delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(s: &str, policy: &UrlPolicy) -> Result<Self, String> {
        if s.len() > MAX_URL_LEN {
            return Err(format!("must be at most {MAX_URL_LEN} characters"));
        }
        let url = url::Url::parse(s).map_err(|e| format!("is not an absolute URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_http => {}
            "http" => return Err("must use https".into()),
            other => return Err(format!("must be http or https, not {other}")),
        }
        let ip = match url.host() {
            None | Some(url::Host::Domain("")) => return Err("must name a host".into()),
            Some(url::Host::Domain(name)) => {
                if policy.targets.refuses_name(name) {
                    return Err(format!(
                        "names {name}, a loopback address; {REFUSED_REASON}"
                    ));
                }
                None
            }
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        };
        if let Some(refusal) = ip.and_then(|ip| policy.targets.check(ip).err()) {
            return Err(format!("names {refusal}; {REFUSED_REASON}"));
        }
        if url.fragment().is_some() {
            return Err("must not have a fragment".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(CREDENTIALS_IN_URL.into());
        }
        // Stored normalized, which may be longer (percent-encoding, punycode); the
        // stored form must pass again, or no later PATCH of the webhook would.
        let normalized = url.to_string();
        if normalized.len() > MAX_URL_LEN {
            return Err(format!(
                "must be at most {MAX_URL_LEN} characters once normalized (percent-encoded, punycode), not {}",
                normalized.len()
            ));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL as the API shows it: credentials that a record stored before URLs
    /// with credentials were refused may still carry are masked: the password, or
    /// a user name that comes alone (a token, as in `https://<token>@host/`).
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        match url::Url::parse(&self.0) {
            // Setting either fails only for URLs that cannot carry credentials,
            // and this one does.
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string().into()
            }
            Ok(mut url) if !url.username().is_empty() => {
                let _ = url.set_username("***");
                url.to_string().into()
            }
            _ => self.0.as_str().into(),
        }
    }
}

/// Why a URL with a user name or password is refused. Such a URL shows its
/// credentials wherever the URL is shown (reads, the audit log, logs); a custom
/// header's value is a secret, sealed at rest and never shown.
pub const CREDENTIALS_IN_URL: &str = "must not carry credentials (user:password@host); send them in a custom Authorization header instead, e.g. \"Authorization\": \"Basic <base64 of user:password>\"";

/// How many events may be grouped into one delivery: 0 or 1 sends each alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Throttling(u8);

impl Throttling {
    pub fn parse(n: i64) -> Result<Self, String> {
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= 10)
            .map(Self)
            .ok_or_else(|| "must be an integer from 0 to 10".into())
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether events wait in a batch (N ≥ 2).
    pub fn batches(self) -> bool {
        self.0 >= 2
    }
}

fn check_timeout(ms: i64) -> Result<u32, String> {
    u32::try_from(ms)
        .ok()
        .filter(|ms| (1000..=30_000).contains(ms))
        .ok_or_else(|| "must be from 1000 to 30000 milliseconds".into())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 || !name.bytes().all(is_token_char) {
        return Err("is not a valid header name".into());
    }
    let lower = name.to_ascii_lowercase();
    if CONNECTION_HEADERS.contains(&lower.as_str()) {
        return Err("describes the connection, not the request; it cannot be set".into());
    }
    if RESERVED_HEADERS.contains(&lower.as_str())
        || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
    {
        return Err("is reserved for Courier".into());
    }
    if value.len() > MAX_HEADER_VALUE_LEN
        || !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(format!(
            "value must be at most {MAX_HEADER_VALUE_LEN} visible ASCII characters"
        ));
    }
    Ok(())
}

/// A webhook's custom headers, sent with every delivery. Their values often carry the
/// receiver's credentials (`Authorization: Bearer …`, `X-Api-Key`), so they are
/// secrets like the signing secret: stored encrypted, never shown by the API (which
/// lists their names only), and left out of `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomHeaders(BTreeMap<String, String>);

impl CustomHeaders {
    /// The headers as given, every problem recorded by field (`headers.<name>`).
    fn parse(headers: BTreeMap<String, String>, errors: &mut FieldErrors) -> Self {
        if headers.len() > MAX_CUSTOM_HEADERS {
            errors.add(
                "headers",
                format!("at most {MAX_CUSTOM_HEADERS} custom headers"),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in &headers {
            if let Err(e) = check_header(name, value) {
                errors.add(format!("headers.{name}"), e);
            } else if !seen.insert(name.to_ascii_lowercase()) {
                errors.add(format!("headers.{name}"), "is given twice");
            }
        }
        Self(headers)
    }

    /// Names and values, to send.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The names, which are not secret.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether a header of this name is set (names compare case-insensitively).
    pub fn contains(&self, name: &str) -> bool {
        self.0.keys().any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These headers with a patch applied: each named header is set or replaced
    /// (whatever the case of its stored name), a `null` removes it, the rest keep
    /// their values. A patch naming a header twice (names that differ only in
    /// case) is refused, as it would both set and remove it, or set it twice.
    fn patched(
        &self,
        patch: BTreeMap<String, Option<String>>,
        errors: &mut FieldErrors,
    ) -> BTreeMap<String, String> {
        let mut seen = std::collections::BTreeSet::new();
        for name in patch.keys() {
            if !seen.insert(name.to_ascii_lowercase()) {
                errors.add(
                    format!("headers.{name}"),
                    "is given twice (header names are case-insensitive)",
                );
            }
        }
        let mut headers = self.0.clone();
        headers.retain(|stored, _| !seen.contains(&stored.to_ascii_lowercase()));
        headers.extend(patch.into_iter().filter_map(|(n, v)| Some((n, v?))));
        headers
    }
}

/// Names only: the values are secrets.
impl std::fmt::Debug for CustomHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.names().map(|n| (n, "<redacted>")))
            .finish()
    }
}

/// Most field names one property filter may list.
pub const MAX_FILTER_FIELDS: usize = 256;

/// The field names of one property filter, in the order given, with a set of them
/// built once (when the webhook is parsed or loaded), so that matching an event
/// costs one lookup per field of its `propertiesUpdated`, whatever the filter's size.
#[derive(Clone, Default)]
pub struct FieldNames {
    names: Vec<String>,
    set: HashSet<String>,
}

impl FieldNames {
    pub fn new(names: Vec<String>) -> Self {
        let set = names.iter().cloned().collect();
        Self { names, set }
    }

    /// The names, as given.
    pub fn as_slice(&self) -> &[String] {
        &self.names
    }

    /// Whether any of `changed` is one of these names.
    pub fn shares_any(&self, changed: &[String]) -> bool {
        changed.iter().any(|c| self.set.contains(c))
    }
}

impl PartialEq for FieldNames {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for FieldNames {}

impl std::fmt::Debug for FieldNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.names.fmt(f)
    }
}

impl Serialize for FieldNames {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FieldNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::deserialize(d).map(Self::new)
    }
}

/// Update keys mapped to field names: an event of such a key is delivered only if its
/// `propertiesUpdated` shares a field with the list (`null` is delivered, `[]` is not).
pub type PropertyFilters = BTreeMap<String, FieldNames>;

/// A previous signing secret that keeps signing until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousSecret {
    pub secret: Secret,
    pub expires_at: DateTime<Utc>,
}

/// A webhook as stored, secrets included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: WebhookId,
    pub tenant_id: TenantId,
    pub name: String,
    pub url: WebhookUrl,
    pub events: Vec<Pattern>,
    pub throttling: Throttling,
    pub property_filters: PropertyFilters,
    #[serde(default)]
    pub retry_policy: RetrySettings,
    pub timeout_ms: u32,
    pub headers: CustomHeaders,
    pub signature_scheme: SignatureScheme,
    pub active: bool,
    /// Bumped by disable and delete: work created under an older one ends cancelled.
    pub generation: u64,
    pub secret: Secret,
    #[serde(default)]
    pub previous_secrets: Vec<PreviousSecret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether an event of `key` with these updated properties goes to a webhook that is
/// `active`, subscribed to `events` with these property `filters`.
pub fn wants(
    active: bool,
    events: &[Pattern],
    filters: &PropertyFilters,
    key: &EventKey,
    properties_updated: Option<&[String]>,
) -> bool {
    active
        && events.iter().any(|p| p.matches(key))
        && match (filters.get(key.as_str()), properties_updated) {
            (None, _) | (Some(_), None) => true,
            (Some(wanted), Some(changed)) => wanted.shares_any(changed),
        }
}

impl Webhook {
    /// Whether an event of `key` with these updated properties goes to this webhook.
    pub fn wants(&self, key: &EventKey, properties_updated: Option<&[String]>) -> bool {
        wants(
            self.active,
            &self.events,
            &self.property_filters,
            key,
            properties_updated,
        )
    }

    /// The secrets that sign a request made at `now`: the current one first.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.secret).chain(
            self.previous_secrets
                .iter()
                .filter(move |p| p.expires_at > now)
                .map(|p| &p.secret),
        )
    }
}

/// The body of `POST /v1/webhooks`, before validation.
#[derive(Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookInput {
    /// 1 to 128 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(example = "CRM sync", min_length = 1, max_length = 128)
    )]
    pub name: Option<String>,
    /// Absolute https URL (http only where the deployment allows it).
    #[cfg_attr(
        feature = "openapi",
        schema(example = "https://crm.example.com/hooks/courier", max_length = 2048)
    )]
    pub url: Option<String>,
    /// Event keys or patterns (`Account.*`, `*.EntityDeleted`, `*`), 1 to 64; each must match a catalog key.
    #[cfg_attr(feature = "openapi", schema(example = json!(["Prospect.*"]), min_items = 1, max_items = 64))]
    pub events: Option<Vec<String>>,
    /// 0 or 1 sends each event alone; N from 2 to 10 groups up to N events per delivery.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10))]
    pub throttling: Option<i64>,
    /// Update keys mapped to field names: such an event is delivered only if
    /// `propertiesUpdated` shares a field with the list (`null` is delivered, `[]` is not).
    pub property_filters: Option<BTreeMap<String, Vec<String>>>,
    pub retry_policy: Option<RetryInput>,
    /// 1000 to 30000; default 10000.
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 30000))]
    pub timeout_ms: Option<i64>,
    /// Custom headers sent with every delivery (reserved names refused), e.g. the
    /// receiver's API key. Their values are secrets: stored encrypted and never shown
    /// again; reads list only their names, as `headerNames`. At most 20.
    #[cfg_attr(feature = "openapi", schema(example = json!({"Authorization": "Bearer receiver-api-key"})))]
    pub headers: Option<BTreeMap<String, String>>,
    pub signature_scheme: Option<SignatureScheme>,
    /// Default true.
    pub active: Option<bool>,
    /// A client-supplied signing secret (`whsec_` + base64 of 24–64 bytes), for migrations;
    /// generated when absent.
    pub secret: Option<String>,
}

/// Leaves the client-supplied secret out, so a logged input never shows it.
impl std::fmt::Debug for WebhookInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookInput")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The body of `PATCH /v1/webhooks/{id}`: any subset of the mutable fields.
#[derive(Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPatch {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 2048))]
    pub url: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub events: Option<Vec<String>>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10))]
    pub throttling: Option<i64>,
    pub property_filters: Option<BTreeMap<String, Vec<String>>>,
    pub retry_policy: Option<RetryInput>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1000, maximum = 30000))]
    pub timeout_ms: Option<i64>,
    /// Changes to the custom headers: each named header is set, or replaced
    /// (names compare case-insensitively); `null` removes one. Headers not named
    /// keep their values, which reads never show.
    #[cfg_attr(feature = "openapi", schema(example = json!({"X-Api-Key": "new-key", "X-Old": null})))]
    pub headers: Option<BTreeMap<String, Option<String>>>,
    pub signature_scheme: Option<SignatureScheme>,
    pub active: Option<bool>,
}

/// Header names only, so a logged patch never shows a header value.
impl std::fmt::Debug for WebhookPatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPatch")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("throttling", &self.throttling)
            .field("property_filters", &self.property_filters)
            .field("retry_policy", &self.retry_policy)
            .field("timeout_ms", &self.timeout_ms)
            .field(
                "headers",
                &self.headers.as_ref().map(|h| h.keys().collect::<Vec<_>>()),
            )
            .field("signature_scheme", &self.signature_scheme)
            .field("active", &self.active)
            .finish()
    }
}

/// Most previous secrets that keep signing during rotations.
pub const MAX_PREVIOUS_SECRETS: usize = 3;

impl WebhookPatch {
    /// The webhook with the patch applied, every field validated again. Disabling
    /// bumps the generation, so work created before ends cancelled.
    pub fn apply(
        self,
        current: &Webhook,
        rules: Rules<'_>,
        now: DateTime<Utc>,
    ) -> Result<Webhook, FieldErrors> {
        let retry = &current.retry_policy;
        let mut errors = FieldErrors::default();
        let input = WebhookInput {
            name: Some(self.name.unwrap_or_else(|| current.name.clone())),
            url: Some(self.url.unwrap_or_else(|| current.url.as_str().to_owned())),
            events: Some(self.events.unwrap_or_else(|| {
                current
                    .events
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect()
            })),
            throttling: Some(
                self.throttling
                    .unwrap_or(i64::from(current.throttling.get())),
            ),
            property_filters: Some(self.property_filters.unwrap_or_else(|| {
                current
                    .property_filters
                    .iter()
                    .map(|(key, names)| (key.clone(), names.as_slice().to_vec()))
                    .collect()
            })),
            retry_policy: Some(self.retry_policy.unwrap_or_else(|| RetryInput {
                max_attempts: retry.max_attempts.map(i64::from),
                schedule: retry.schedule.as_ref().map(|s| {
                    s.delays()
                        .iter()
                        .map(|d| humantime::format_duration(*d).to_string())
                        .collect()
                }),
                retry_client_errors: Some(retry.retry_client_errors),
            })),
            timeout_ms: Some(self.timeout_ms.unwrap_or(i64::from(current.timeout_ms))),
            headers: Some(match self.headers {
                Some(patch) => current.headers.patched(patch, &mut errors),
                None => current.headers.0.clone(),
            }),
            signature_scheme: Some(self.signature_scheme.unwrap_or(current.signature_scheme)),
            active: Some(self.active.unwrap_or(current.active)),
            secret: None,
        };
        let next = match input.into_webhook(&current.tenant_id, rules, now) {
            Ok(next) if errors.is_empty() => next,
            Ok(_) => return Err(errors),
            Err(mut all) => {
                all.extend(errors);
                return Err(all);
            }
        };
        let disabled = current.active && !next.active;
        Ok(Webhook {
            id: current.id.clone(),
            secret: current.secret.clone(),
            previous_secrets: current.previous_secrets.clone(),
            created_at: current.created_at,
            generation: current.generation + u64::from(disabled),
            ..next
        })
    }
}

impl Webhook {
    /// Makes `new` the signing secret; the current one keeps signing until
    /// `now + previous_ttl` (not at all for a zero TTL, e.g. a leaked secret). Expired
    /// previous secrets are dropped and at most [`MAX_PREVIOUS_SECRETS`] are kept.
    pub fn rotate_secret(
        &mut self,
        new: Secret,
        previous_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) {
        let old = std::mem::replace(&mut self.secret, new);
        self.previous_secrets.retain(|p| p.expires_at > now);
        if previous_ttl > chrono::Duration::zero() {
            self.previous_secrets.insert(
                0,
                PreviousSecret {
                    secret: old,
                    expires_at: now + previous_ttl,
                },
            );
        }
        self.previous_secrets.truncate(MAX_PREVIOUS_SECRETS);
        self.updated_at = now;
    }
}

impl WebhookInput {
    /// Validates a create request into a new webhook of `tenant`, reporting every
    /// problem by field.
    pub fn into_webhook(
        self,
        tenant: &TenantId,
        rules: Rules<'_>,
        now: DateTime<Utc>,
    ) -> Result<Webhook, FieldErrors> {
        let Rules {
            catalog,
            urls: policy,
            retry,
        } = rules;
        let mut errors = FieldErrors::default();
        let name = match self.name.as_deref().map(str::trim) {
            None => {
                errors.add("name", "is required");
                String::new()
            }
            Some(n) if n.is_empty() || n.chars().count() > MAX_NAME_LEN => {
                errors.add("name", format!("must be 1 to {MAX_NAME_LEN} characters"));
                String::new()
            }
            Some(n) => n.to_owned(),
        };
        let url = match self.url.as_deref().map(|u| WebhookUrl::parse(u, policy)) {
            None => {
                errors.add("url", "is required");
                None
            }
            Some(Err(e)) => {
                errors.add("url", e);
                None
            }
            Some(Ok(u)) => Some(u),
        };
        let events = check_patterns(self.events, catalog, &mut errors);
        let throttling = self
            .throttling
            .map(Throttling::parse)
            .transpose()
            .map_err(|e| errors.add("throttling", e))
            .ok()
            .flatten()
            .unwrap_or_default();
        let timeout_ms = self
            .timeout_ms
            .map(check_timeout)
            .transpose()
            .map_err(|e| errors.add("timeoutMs", e))
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        let headers = CustomHeaders::parse(self.headers.unwrap_or_default(), &mut errors);
        let property_filters = self.property_filters.unwrap_or_default();
        check_property_filters(&property_filters, catalog, &mut errors);
        let property_filters = property_filters
            .into_iter()
            .map(|(key, names)| (key, FieldNames::new(names)))
            .collect();
        let retry_policy = self
            .retry_policy
            .unwrap_or_default()
            .validate(retry, &mut errors);
        let secret = match self.secret.as_deref().map(Secret::parse) {
            None => Secret::generate(),
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                errors.add("secret", e.to_string());
                Secret::generate()
            }
        };
        let (Some(url), true) = (url, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(Webhook {
            id: WebhookId::generate(),
            tenant_id: tenant.clone(),
            name,
            url,
            events,
            throttling,
            property_filters,
            retry_policy,
            timeout_ms,
            headers,
            signature_scheme: self.signature_scheme.unwrap_or_default(),
            active: self.active.unwrap_or(true),
            generation: 0,
            secret,
            previous_secrets: Vec::new(),
            created_at: now,
            updated_at: now,
        })
    }
}

fn check_patterns(
    patterns: Option<Vec<String>>,
    catalog: &Catalog,
    errors: &mut FieldErrors,
) -> Vec<Pattern> {
    let Some(patterns) = patterns else {
        errors.add("events", "is required: a list of event keys or patterns");
        return Vec::new();
    };
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        errors.add("events", format!("must list 1 to {MAX_PATTERNS} patterns"));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(patterns.len());
    for (i, p) in patterns.iter().enumerate() {
        match catalog.pattern(p) {
            Ok(p) if !out.contains(&p) => out.push(p),
            Ok(_) => errors.add(format!("events[{i}]"), "is listed twice"),
            Err(e) => errors.add(format!("events[{i}]"), e.to_string()),
        }
    }
    out
}

fn check_property_filters(
    filters: &BTreeMap<String, Vec<String>>,
    catalog: &Catalog,
    errors: &mut FieldErrors,
) {
    for (key, fields) in filters {
        let field = format!("propertyFilters.{key}");
        match EventKey::parse(key) {
            Ok(k) if catalog.contains(&k) => {}
            _ => {
                errors.add(field, "is not an event key of the catalog");
                continue;
            }
        }
        if fields.len() > MAX_FILTER_FIELDS {
            errors.add(
                field,
                format!(
                    "lists {} field names; at most {MAX_FILTER_FIELDS} are allowed",
                    fields.len()
                ),
            );
        } else if fields.iter().any(|f| f.is_empty() || f.len() > 128) {
            errors.add(field, "field names are 1 to 128 characters");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy)]
    enum Profile {
        Dev,
        Prod,
    }
    use Profile::{Dev as DEV, Prod as PROD};

    fn create(json: serde_json::Value, profile: Profile) -> Result<Webhook, FieldErrors> {
        let policy = match profile {
            DEV => UrlPolicy::dev(),
            PROD => UrlPolicy::production(),
        };
        create_with(json, &policy)
    }

    fn create_with(json: serde_json::Value, policy: &UrlPolicy) -> Result<Webhook, FieldErrors> {
        let input: WebhookInput = serde_json::from_value(json).unwrap();
        let catalog = Catalog::builtin();
        let retry = RetryDefaults::default();
        let rules = Rules {
            catalog: &catalog,
            urls: policy,
            retry: &retry,
        };
        input.into_webhook(&TenantId::parse("acme").unwrap(), rules, Utc::now())
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({"name": "crm", "url": "https://example.com/hook", "events": ["Prospect.*"]})
    }

    #[test]
    fn a_minimal_webhook_gets_the_defaults_and_a_generated_secret() {
        let wh = create(minimal(), PROD).unwrap();
        assert!(wh.active);
        assert_eq!(wh.throttling.get(), 0);
        assert_eq!(wh.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(wh.signature_scheme, SignatureScheme::Standard);
        assert_eq!(wh.secret.key().len(), 32);
        assert!(wh.id.as_str().starts_with("wh_"));
    }

    #[test]
    fn http_urls_need_a_profile_that_allows_them() {
        let mut body = minimal();
        body["url"] = "http://127.0.0.1:9000/hook".into();
        assert_eq!(
            create(body.clone(), PROD).unwrap_err().get("url"),
            Some("must use https")
        );
        assert!(create(body, DEV).is_ok());
    }

    #[test]
    fn ip_literal_urls_outside_the_target_policy_are_refused() {
        let with_url = |url: &str| {
            let mut body = minimal();
            body["url"] = url.into();
            body
        };
        for (url, words) in [
            ("https://10.0.0.1/x", "names 10.0.0.1, a private address"),
            ("https://127.0.0.1/x", "names 127.0.0.1, a loopback address"),
            ("https://[::1]/x", "names ::1, a loopback address"),
            (
                "https://169.254.169.254/latest/meta-data",
                "names 169.254.169.254, the cloud metadata address",
            ),
            (
                "https://[::ffff:10.0.0.1]/x",
                "names 10.0.0.1, a private address",
            ),
            ("https://0x7f.1/x", "names 127.0.0.1, a loopback address"),
            (
                "https://localhost:8443/x",
                "names localhost, a loopback address",
            ),
        ] {
            let errs = create(with_url(url), PROD).unwrap_err();
            assert_eq!(
                errs.get("url"),
                Some(format!("{words}; deliveries there are not allowed").as_str()),
                "{url}"
            );
        }
        assert_eq!(
            create(with_url("http://10.0.0.1/x"), DEV)
                .unwrap_err()
                .get("url"),
            Some("names 10.0.0.1, a private address; deliveries there are not allowed")
        );
        assert!(create(with_url("http://127.0.0.1:9000/x"), DEV).is_ok());
        assert!(create(with_url("http://[::1]:9000/x"), DEV).is_ok());
        assert!(create(with_url("https://93.184.216.34/x"), PROD).is_ok());
        let opened = UrlPolicy {
            allow_http: false,
            targets: TargetPolicy {
                allow_loopback: false,
                allowed: crate::target::parse_cidrs("10.0.0.0/8").unwrap(),
            },
        };
        assert!(create_with(with_url("https://10.0.0.1/x"), &opened).is_ok());
    }

    #[test]
    fn a_url_is_measured_as_stored_so_it_passes_again() {
        // 1420 bytes as given, 4220 once percent-encoded.
        let long = format!("https://example.com/{}", "é".repeat(700));
        assert!(long.len() <= MAX_URL_LEN);
        let err = WebhookUrl::parse(&long, &UrlPolicy::production()).unwrap_err();
        assert!(err.contains("once normalized"), "{err}");
        // Under the limit once normalized: accepted, and accepted again as stored.
        let fits = format!("https://example.com/{}", "é".repeat(300));
        let url = WebhookUrl::parse(&fits, &UrlPolicy::production()).unwrap();
        assert!(url.as_str().len() <= MAX_URL_LEN);
        assert_eq!(
            WebhookUrl::parse(url.as_str(), &UrlPolicy::production()).unwrap(),
            url
        );
    }

    #[test]
    fn every_invalid_field_is_named() {
        let errs = create(
            serde_json::json!({
                "name": "", "url": "ftp://x", "events": ["Invoice.*", "Prospect.*"],
                "throttling": 11, "timeoutMs": 999,
                "headers": {"X-Courier-Foo": "1", "bad name": "x", "Webhook-Id": "2"},
                "propertyFilters": {"Nope.EntityUpdated": ["a"]},
                "secret": "nope"
            }),
            DEV,
        )
        .unwrap_err();
        let fields: Vec<_> = errs.fields().collect();
        assert_eq!(
            fields,
            [
                "events[0]",
                "headers.Webhook-Id",
                "headers.X-Courier-Foo",
                "headers.bad name",
                "name",
                "propertyFilters.Nope.EntityUpdated",
                "secret",
                "throttling",
                "timeoutMs",
                "url"
            ]
        );
    }

    #[test]
    fn reserved_headers_are_refused_case_insensitively() {
        for name in [
            "Content-Type",
            "User-Agent",
            "traceparent",
            "webhook-signature",
            "X-Courier-Attempt",
        ] {
            assert_eq!(
                check_header(name, "x"),
                Err("is reserved for Courier".into())
            );
        }
        assert!(check_header("X-Api-Key", "abc").is_ok());
        assert!(check_header("X-Api-Key", "line\nbreak").is_err());
    }

    #[test]
    fn connection_and_framing_headers_are_refused_in_any_case() {
        for name in [
            "Connection",
            "TRANSFER-ENCODING",
            "upgrade",
            "TE",
            "Expect",
            "Keep-Alive",
            "Proxy-Connection",
            "trailer",
            "Host",
            "content-length",
            "Proxy-Authorization",
        ] {
            assert_eq!(
                check_header(name, "x"),
                Err("describes the connection, not the request; it cannot be set".into()),
                "{name}"
            );
        }
        // Names that merely start like them are ordinary headers.
        for name in ["Connection-Id", "X-Upgrade", "Tenant", "Hosts"] {
            assert!(check_header(name, "x").is_ok(), "{name}");
        }
        let mut body = minimal();
        body["headers"] = serde_json::json!({"Transfer-Encoding": "chunked", "X-Ok": "1"});
        let errs = create(body, PROD).unwrap_err();
        assert_eq!(
            errs.fields().collect::<Vec<_>>(),
            ["headers.Transfer-Encoding"]
        );
    }

    #[test]
    fn urls_with_credentials_are_refused_with_the_way_to_send_them() {
        for url in [
            "https://crm:s3cret@example.com/hook",
            "https://crm@example.com/hook",
            "https://:s3cret@example.com/hook",
            "https://cr%40m:s3cret%3A@example.com/hook",
        ] {
            let err = WebhookUrl::parse(url, &UrlPolicy::production()).unwrap_err();
            assert_eq!(err, CREDENTIALS_IN_URL, "{url}");
            assert!(err.contains("Authorization"), "{err}");
            assert!(
                !err.contains("s3cret") && !err.contains("crm"),
                "the error repeats no credential: {err}"
            );
        }
        // An `@` in the path or query is no credential.
        assert!(
            WebhookUrl::parse("https://example.com/a@b?c=d@e", &UrlPolicy::production()).is_ok()
        );
    }

    #[test]
    fn a_stored_url_with_credentials_loads_delivers_masked_and_must_change_at_the_next_edit() {
        let mut wh = create(minimal(), PROD).unwrap();
        let json = serde_json::to_string(&wh).unwrap().replace(
            "https://example.com/hook",
            "https://crm:s3cret@example.com/hook",
        );
        wh = serde_json::from_str(&json).unwrap();
        assert_eq!(wh.url.as_str(), "https://crm:s3cret@example.com/hook");
        assert_eq!(wh.url.shown(), "https://crm:***@example.com/hook");
        let token = serde_json::to_string(&wh)
            .unwrap()
            .replace("crm:s3cret@", "ghp_t0ken@");
        let token: Webhook = serde_json::from_str(&token).unwrap();
        assert_eq!(token.url.shown(), "https://***@example.com/hook");
        let errs = rules_apply(serde_json::json!({"name": "renamed"}), &wh).unwrap_err();
        assert_eq!(errs.get("url"), Some(CREDENTIALS_IN_URL));
        let fixed = rules_apply(
            serde_json::json!({
                "url": "https://example.com/hook",
                "headers": {"Authorization": "Basic Y3JtOnMzY3JldA=="}
            }),
            &wh,
        )
        .unwrap();
        assert_eq!(fixed.url.as_str(), "https://example.com/hook");
        assert!(fixed.headers.contains("authorization"));
        // Without a password nothing is masked.
        let plain =
            WebhookUrl::parse("https://example.com/hook", &UrlPolicy::production()).unwrap();
        assert_eq!(plain.shown(), "https://example.com/hook");
    }

    #[test]
    fn a_property_filter_lists_at_most_its_limit_of_field_names() {
        let names = |n: usize| (0..n).map(|i| format!("f{i}")).collect::<Vec<_>>();
        let mut body = minimal();
        body["propertyFilters"] =
            serde_json::json!({"Prospect.EntityUpdated": names(MAX_FILTER_FIELDS)});
        let wh = create(body.clone(), PROD).unwrap();
        let upd = EventKey::parse("Prospect.EntityUpdated").unwrap();
        let last = format!("f{}", MAX_FILTER_FIELDS - 1);
        assert!(wh.wants(&upd, Some(&[last])));
        body["propertyFilters"] =
            serde_json::json!({"Prospect.EntityUpdated": names(MAX_FILTER_FIELDS + 1)});
        let errs = create(body, PROD).unwrap_err();
        assert_eq!(
            errs.get("propertyFilters.Prospect.EntityUpdated"),
            Some("lists 257 field names; at most 256 are allowed")
        );
    }

    #[test]
    fn matching_costs_one_lookup_per_updated_field_however_large_the_filter() {
        // A record stored before the limit, with a filter far over it, still loads
        // and matches; with a list of the same size this took minutes when each
        // updated field was compared with every filtered one.
        let wh = create(minimal(), PROD).unwrap();
        let mut stored = serde_json::to_value(&wh).unwrap();
        let filtered: Vec<String> = (0..100_000).map(|i| format!("field{i}")).collect();
        stored["propertyFilters"] = serde_json::json!({ "Prospect.EntityUpdated": filtered });
        let wh: Webhook = serde_json::from_value(stored).unwrap();
        let upd = EventKey::parse("Prospect.EntityUpdated").unwrap();
        let changed: Vec<String> = (0..100_000).map(|i| format!("other{i}")).collect();
        let started = std::time::Instant::now();
        assert!(!wh.wants(&upd, Some(&changed)));
        let mut hit = changed.clone();
        hit.push("field99999".into());
        assert!(wh.wants(&upd, Some(&hit)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn property_filters_keep_their_order_through_the_store() {
        let mut body = minimal();
        body["propertyFilters"] = serde_json::json!({"Prospect.EntityUpdated": ["title", "email"]});
        let wh = create(body, PROD).unwrap();
        let json = serde_json::to_value(&wh).unwrap();
        assert_eq!(
            json["propertyFilters"],
            serde_json::json!({"Prospect.EntityUpdated": ["title", "email"]})
        );
        let back: Webhook = serde_json::from_value(json).unwrap();
        assert_eq!(back, wh);
        assert!(back.wants(
            &EventKey::parse("Prospect.EntityUpdated").unwrap(),
            Some(&["email".to_owned()])
        ));
    }

    #[test]
    fn empty_or_missing_events_are_refused() {
        let mut body = minimal();
        body["events"] = serde_json::json!([]);
        assert!(create(body, PROD).unwrap_err().get("events").is_some());
        let body = serde_json::json!({"name": "x", "url": "https://e.com"});
        assert!(create(body, PROD).unwrap_err().get("events").is_some());
    }

    #[test]
    fn property_filters_decide_update_events() {
        let mut body = minimal();
        body["propertyFilters"] = serde_json::json!({"Prospect.EntityUpdated": ["email", "title"]});
        let wh = create(body, PROD).unwrap();
        let upd = EventKey::parse("Prospect.EntityUpdated").unwrap();
        let created = EventKey::parse("Prospect.EntityCreated").unwrap();
        assert!(wh.wants(&upd, Some(&["title".to_owned()])));
        assert!(!wh.wants(&upd, Some(&["phone".to_owned()])));
        assert!(!wh.wants(&upd, Some(&[])));
        assert!(wh.wants(&upd, None));
        assert!(wh.wants(&created, Some(&[])));
        assert!(!wh.wants(&EventKey::parse("Account.EntityCreated").unwrap(), None));
    }

    #[test]
    fn inactive_webhooks_want_nothing() {
        let mut body = minimal();
        body["active"] = false.into();
        let wh = create(body, PROD).unwrap();
        assert!(!wh.wants(&EventKey::parse("Prospect.EntityCreated").unwrap(), None));
    }

    #[test]
    fn expired_previous_secrets_stop_signing() {
        let mut wh = create(minimal(), PROD).unwrap();
        let now = Utc::now();
        wh.previous_secrets = vec![
            PreviousSecret {
                secret: Secret::generate(),
                expires_at: now + chrono::Duration::hours(1),
            },
            PreviousSecret {
                secret: Secret::generate(),
                expires_at: now - chrono::Duration::seconds(1),
            },
        ];
        let signing: Vec<_> = wh.signing_secrets(now).collect();
        assert_eq!(signing.len(), 2);
        assert_eq!(signing[0], &wh.secret);
        assert_eq!(signing[1], &wh.previous_secrets[0].secret);
    }

    fn rules_apply(patch: serde_json::Value, current: &Webhook) -> Result<Webhook, FieldErrors> {
        let patch: WebhookPatch = serde_json::from_value(patch).unwrap();
        let catalog = Catalog::builtin();
        let retry = RetryDefaults::default();
        let rules = Rules {
            catalog: &catalog,
            urls: &UrlPolicy::dev(),
            retry: &retry,
        };
        patch.apply(current, rules, Utc::now())
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let mut body = minimal();
        body["retryPolicy"] = serde_json::json!({"maxAttempts": 2, "schedule": ["0s", "1s"]});
        let wh = create(body, PROD).unwrap();
        let patched = rules_apply(
            serde_json::json!({"events": ["Account.*"], "throttling": 5}),
            &wh,
        )
        .unwrap();
        assert_eq!(patched.id, wh.id);
        assert_eq!(patched.secret, wh.secret);
        assert_eq!(patched.name, wh.name);
        assert_eq!(patched.url, wh.url);
        assert_eq!(patched.retry_policy, wh.retry_policy);
        assert_eq!(patched.events[0].as_str(), "Account.*");
        assert_eq!(patched.throttling.get(), 5);
        assert_eq!(patched.generation, wh.generation);
        assert_eq!(patched.created_at, wh.created_at);
    }

    #[test]
    fn disabling_bumps_the_generation_and_enabling_does_not() {
        let wh = create(minimal(), PROD).unwrap();
        let off = rules_apply(serde_json::json!({"active": false}), &wh).unwrap();
        assert_eq!(off.generation, wh.generation + 1);
        let on = rules_apply(serde_json::json!({"active": true}), &off).unwrap();
        assert_eq!(on.generation, off.generation);
    }

    #[test]
    fn an_invalid_patch_names_the_field() {
        let wh = create(minimal(), PROD).unwrap();
        let errs = rules_apply(serde_json::json!({"timeoutMs": 5}), &wh).unwrap_err();
        assert!(errs.get("timeoutMs").is_some());
        assert!(
            serde_json::from_value::<WebhookPatch>(serde_json::json!({"secret": "x"})).is_err()
        );
    }

    #[test]
    fn rotation_keeps_at_most_three_previous_secrets_until_they_expire() {
        let mut wh = create(minimal(), PROD).unwrap();
        let now = Utc::now();
        let first = wh.secret.clone();
        for _ in 0..5 {
            wh.rotate_secret(Secret::generate(), chrono::Duration::hours(24), now);
        }
        assert_eq!(wh.previous_secrets.len(), MAX_PREVIOUS_SECRETS);
        assert!(wh.previous_secrets.iter().all(|p| p.secret != first));
        assert_eq!(wh.signing_secrets(now).count(), 4);
        let later = now + chrono::Duration::hours(25);
        assert_eq!(wh.signing_secrets(later).count(), 1);
        let before = wh.secret.clone();
        wh.rotate_secret(Secret::generate(), chrono::Duration::zero(), now);
        assert!(
            wh.previous_secrets.iter().all(|p| p.secret != before),
            "a zero TTL revokes at once"
        );
    }

    #[test]
    fn a_headers_patch_sets_replaces_and_removes_only_what_it_names() {
        let mut body = minimal();
        body["headers"] = serde_json::json!({"Authorization": "Bearer a", "X-Team": "sales"});
        let wh = create(body, PROD).unwrap();
        let patched = rules_apply(
            serde_json::json!({"headers": {"authorization": "Bearer b", "X-Team": null, "X-New": "1"}}),
            &wh,
        )
        .unwrap();
        let headers: Vec<_> = patched.headers.iter().collect();
        assert_eq!(headers, [("X-New", "1"), ("authorization", "Bearer b")]);
        // Other fields leave the stored values alone.
        let renamed = rules_apply(serde_json::json!({"name": "renamed"}), &wh).unwrap();
        assert_eq!(renamed.headers, wh.headers);
        let emptied = rules_apply(
            serde_json::json!({"headers": {"AUTHORIZATION": null, "x-team": null, "X-Absent": null}}),
            &wh,
        )
        .unwrap();
        assert!(emptied.headers.is_empty());
    }

    #[test]
    fn a_headers_patch_is_validated_like_a_create() {
        let wh = create(minimal(), PROD).unwrap();
        for (patch, field) in [
            (serde_json::json!({"X-A": "1", "x-a": "2"}), "headers.x-a"),
            (serde_json::json!({"X-A": "1", "x-a": null}), "headers.x-a"),
            (serde_json::json!({"Host": "evil"}), "headers.Host"),
            (serde_json::json!({"X-A": "line\nbreak"}), "headers.X-A"),
        ] {
            let errs = rules_apply(serde_json::json!({ "headers": patch }), &wh).unwrap_err();
            assert!(errs.get(field).is_some(), "{errs}");
        }
        let many: serde_json::Map<_, _> = (0..=MAX_CUSTOM_HEADERS)
            .map(|i| (format!("X-{i}"), serde_json::Value::from("v")))
            .collect();
        let errs = rules_apply(serde_json::json!({ "headers": many }), &wh).unwrap_err();
        assert!(errs.get("headers").is_some(), "{errs}");
    }

    #[test]
    fn header_values_stay_out_of_debug_output() {
        let mut body = minimal();
        body["headers"] = serde_json::json!({"X-Api-Key": "key-value-123"});
        let wh = create(body, PROD).unwrap();
        let shown = format!("{wh:?}");
        assert!(
            shown.contains("X-Api-Key") && !shown.contains("key-value-123"),
            "{shown}"
        );
        let patch: WebhookPatch =
            serde_json::from_value(serde_json::json!({"headers": {"X-Api-Key": "key-value-123"}}))
                .unwrap();
        let shown = format!("{patch:?}");
        assert!(
            shown.contains("X-Api-Key") && !shown.contains("key-value-123"),
            "{shown}"
        );
        assert!(wh.headers.contains("x-api-key"));
    }

    #[test]
    fn stored_webhooks_round_trip() {
        let wh = create(minimal(), PROD).unwrap();
        let json = serde_json::to_string(&wh).unwrap();
        assert_eq!(serde_json::from_str::<Webhook>(&json).unwrap(), wh);
    }
}
