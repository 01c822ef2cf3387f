//! The event catalog: the deployment's valid event keys (`objectType.eventType`), and
//! the subscription patterns that select among them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The catalog the project ships: Crono's event map.
pub const DEFAULT_CATALOG_JSON: &str = include_str!("../../../catalog/default.json");

/// Why a key, a pattern or a catalog file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("an event key is objectType.eventType, each a letter followed by up to 63 letters or digits")]
    BadKey,
    #[error("a pattern is '*' or objectType.eventType where either part may be '*'")]
    BadPattern,
    #[error("pattern '{0}' matches no event type of the catalog")]
    MatchesNothing(String),
    #[error("the catalog is not valid: {0}")]
    BadFile(String),
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric())
}

/// An object type or event type name, e.g. `Prospect` or `EntityCreated`.
pub fn is_type_name(s: &str) -> bool {
    is_name(s)
}

/// `objectType.eventType`, e.g. `Prospect.EntityCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    key: String,
    dot: usize,
}

impl EventKey {
    pub fn parse(s: &str) -> Result<Self, CatalogError> {
        let (object, event) = s.split_once('.').ok_or(CatalogError::BadKey)?;
        Self::new(object, event)
    }

    pub fn new(object_type: &str, event_type: &str) -> Result<Self, CatalogError> {
        if is_name(object_type) && is_name(event_type) {
            Ok(Self {
                key: format!("{object_type}.{event_type}"),
                dot: object_type.len(),
            })
        } else {
            Err(CatalogError::BadKey)
        }
    }

    pub fn object_type(&self) -> &str {
        &self.key[..self.dot]
    }

    pub fn event_type(&self) -> &str {
        &self.key[self.dot + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Any,
    Name(String),
}

impl Segment {
    fn parse(s: &str) -> Result<Self, CatalogError> {
        match s {
            "*" => Ok(Self::Any),
            name if is_name(name) => Ok(Self::Name(name.to_owned())),
            _ => Err(CatalogError::BadPattern),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Name(n) => n == name,
        }
    }
}

/// A subscription pattern: `*`, `Account.*`, `*.EntityDeleted` or an exact key.
/// `*` stands for a whole segment, never part of one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    object: Segment,
    event: Segment,
}

impl Pattern {
    /// Parses the syntax only; [`Catalog::pattern`] also checks it matches a key.
    pub fn parse(s: &str) -> Result<Self, CatalogError> {
        if s == "*" {
            return Ok(Self {
                text: s.to_owned(),
                object: Segment::Any,
                event: Segment::Any,
            });
        }
        let (object, event) = s.split_once('.').ok_or(CatalogError::BadPattern)?;
        Ok(Self {
            text: s.to_owned(),
            object: Segment::parse(object)?,
            event: Segment::parse(event)?,
        })
    }

    pub fn matches(&self, key: &EventKey) -> bool {
        self.object.matches(key.object_type()) && self.event.matches(key.event_type())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An example `data` object of the catalog, kept as its JSON text with the keys in
/// the file's order (a `serde_json::Map` would sort them), without the whitespace
/// between tokens: the text a subscriber receives in a test delivery, and the
/// example envelope shows.
#[derive(Debug, Clone)]
pub struct Example(Box<serde_json::value::RawValue>);

impl Example {
    /// Parses an example: a JSON object.
    pub fn parse(json: &str) -> Result<Self, CatalogError> {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
            .map_err(|e| CatalogError::BadFile(format!("an example is not a JSON object: {e}")))?;
        serde_json::value::RawValue::from_string(compact(json))
            .map(Self)
            .map_err(|e| CatalogError::BadFile(e.to_string()))
    }

    /// The example as JSON text, keys in the catalog's order.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The example as JSON, for embedding in an envelope.
    pub fn raw(&self) -> &serde_json::value::RawValue {
        &self.0
    }
}

/// `json` (valid JSON) without the whitespace between its tokens; strings, and so
/// the order and spelling of everything, as they are.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

impl Serialize for Example {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Example {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Self::parse(raw.get()).map_err(serde::de::Error::custom)
    }
}

/// One entry of the catalog file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventType {
    pub key: String,
    pub description: String,
    pub example: Example,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example_properties_updated: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CatalogFile {
    version: u32,
    event_types: Vec<EventType>,
}

/// The deployment's list of valid event keys, each with a description and an example.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: BTreeMap<EventKey, EventType>,
}

impl Catalog {
    /// Parses a catalog file (see `proto-schemas/catalog.schema.json`).
    pub fn from_json(json: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile =
            serde_json::from_str(json).map_err(|e| CatalogError::BadFile(e.to_string()))?;
        if file.version != 1 {
            return Err(CatalogError::BadFile(format!(
                "unsupported version {}",
                file.version
            )));
        }
        let mut entries = BTreeMap::new();
        for entry in file.event_types {
            let key = EventKey::parse(&entry.key)
                .map_err(|e| CatalogError::BadFile(format!("{}: {e}", entry.key)))?;
            if entries.insert(key, entry.clone()).is_some() {
                return Err(CatalogError::BadFile(format!(
                    "{} is listed twice",
                    entry.key
                )));
            }
        }
        if entries.is_empty() {
            return Err(CatalogError::BadFile("it lists no event type".into()));
        }
        Ok(Self { entries })
    }

    /// The catalog the project ships.
    pub fn builtin() -> Self {
        match Self::from_json(DEFAULT_CATALOG_JSON) {
            Ok(c) => c,
            // The shipped file is checked by this crate's tests.
            Err(e) => unreachable!("the built-in catalog is invalid: {e}"),
        }
    }

    pub fn contains(&self, key: &EventKey) -> bool {
        self.entries.contains_key(key)
    }

    pub fn get(&self, key: &EventKey) -> Option<&EventType> {
        self.entries.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &EventKey> {
        self.entries.keys()
    }

    pub fn entries(&self) -> impl Iterator<Item = &EventType> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a subscription pattern that must match at least one catalog key.
    pub fn pattern(&self, s: &str) -> Result<Pattern, CatalogError> {
        let pattern = Pattern::parse(s)?;
        if self.keys().any(|k| pattern.matches(k)) {
            Ok(pattern)
        } else {
            Err(CatalogError::MatchesNothing(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> EventKey {
        EventKey::parse(s).unwrap()
    }

    #[test]
    fn builtin_catalog_has_the_27_crono_keys() {
        let c = Catalog::builtin();
        assert_eq!(c.len(), 27);
        for object in ["Account", "Prospect", "Opportunity", "Lead"] {
            for event in ["EntityCreated", "EntityUpdated", "EntityDeleted"] {
                assert!(c.contains(&EventKey::new(object, event).unwrap()));
            }
        }
        assert!(c.contains(&key("Strategy.StrategyProspectReplied")));
        assert!(c.contains(&key("Signal.SignalHiring")));
        assert!(c.contains(&key("Notification.NotificationLinkedinVoiceNoteReplied")));
        assert!(c.entries().all(|e| !e.description.is_empty()));
    }

    #[test]
    fn keys_split_into_object_and_event_type() {
        let k = key("Prospect.EntityCreated");
        assert_eq!(k.object_type(), "Prospect");
        assert_eq!(k.event_type(), "EntityCreated");
        assert!(EventKey::parse("Prospect").is_err());
        assert!(EventKey::parse("Prospect.Entity.Created").is_err());
        assert!(EventKey::parse("Pros pect.X").is_err());
        assert!(EventKey::parse(".X").is_err());
    }

    #[test]
    fn wildcards_match_whole_segments() {
        let created = key("Account.EntityCreated");
        let deleted = key("Prospect.EntityDeleted");
        assert!(Pattern::parse("*").unwrap().matches(&created));
        assert!(Pattern::parse("Account.*").unwrap().matches(&created));
        assert!(!Pattern::parse("Account.*").unwrap().matches(&deleted));
        assert!(Pattern::parse("*.EntityDeleted").unwrap().matches(&deleted));
        assert!(!Pattern::parse("*.EntityDeleted").unwrap().matches(&created));
        assert!(Pattern::parse("*.*").unwrap().matches(&deleted));
        assert!(Pattern::parse("Account.EntityCreated")
            .unwrap()
            .matches(&created));
        for bad in ["", "Acc*.X", "Account", "Account.*.x", "a b.c", "**"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn catalog_patterns_must_match_a_key() {
        let c = Catalog::builtin();
        assert!(c.pattern("Account.*").is_ok());
        assert!(c.pattern("*.EntityDeleted").is_ok());
        assert_eq!(
            c.pattern("Invoice.*"),
            Err(CatalogError::MatchesNothing("Invoice.*".into()))
        );
    }

    #[test]
    fn catalog_files_with_duplicates_or_bad_keys_are_refused() {
        let dup = r#"{"version":1,"eventTypes":[
            {"key":"A.B","description":"x","example":{}},
            {"key":"A.B","description":"y","example":{}}]}"#;
        assert!(Catalog::from_json(dup).is_err());
        let bad = r#"{"version":1,"eventTypes":[{"key":"AB","description":"x","example":{}}]}"#;
        assert!(Catalog::from_json(bad).is_err());
        assert!(Catalog::from_json(r#"{"version":1,"eventTypes":[]}"#).is_err());
    }

    #[test]
    fn examples_keep_the_catalog_order_without_whitespace() {
        let c = Catalog::from_json(
            r#"{"version":1,"eventTypes":[{"key":"A.B","description":"x",
                "example": { "z": 1, "a": [ "x y", "q\"\\ \n" ], "m" : {"b":true,"a":null} }}]}"#,
        )
        .unwrap();
        let e = c.get(&key("A.B")).unwrap();
        assert_eq!(
            e.example.json(),
            r#"{"z":1,"a":["x y","q\"\\ \n"],"m":{"b":true,"a":null}}"#
        );
        assert_eq!(serde_json::to_string(&e.example).unwrap(), e.example.json());
        let not_object =
            r#"{"version":1,"eventTypes":[{"key":"A.B","description":"x","example":[1]}]}"#;
        assert!(Catalog::from_json(not_object).is_err());
    }
}
