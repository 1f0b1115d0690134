//! WS-CMD-2: JSON relayed as it was posted.
//!
//! `serde_json::Value` keeps an object's members in a `BTreeMap` (sorted by
//! key: `"10"` before `"9"`) and its numbers as `i64`/`u64`/`f64` (`2.50`
//! becomes `2.5`, `12345678901234567890123` becomes `1.2345678901234568e22`).
//! An agent that hashes or signs what it receives would see a different
//! document from the one its backend sent. So `parameters` (and its
//! `payload` copy), `config_update` data and `status` data are kept as the
//! text that was posted: a [`RawJson`], checked to be valid JSON once, stored
//! as that text, and written into frames and control-API answers as is.
//!
//! serde_json's `preserve_order` and `arbitrary_precision` features would
//! keep them too, but features are unified across the workspace: they would
//! change the harness's own JSON handling as well.
//!
//! A [`RawJson`] serializes verbatim only through serde_json's serializer
//! (`serde_json::to_string`, `axum::Json`); putting one into a `Value`
//! (`json!`, `to_value`) parses it again and loses what it keeps.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// One JSON value, kept as the text it came as (without the whitespace
/// around it). Equal when the texts are equal.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it.
    pub fn parse(text: impl Into<String>) -> Result<RawJson, serde_json::Error> {
        RawJson::checked(RawValue::from_string(text.into())?)
    }

    /// A `RawValue` only checks the grammar loosely: it takes `1e999` and
    /// lone surrogates (`"\ud800"`), which agents parsing with serde_json
    /// (or any strict parser) cannot read. What `Value` refuses is refused
    /// here too, as it was before WS-CMD-2 kept the text.
    fn checked(raw: Box<RawValue>) -> Result<RawJson, serde_json::Error> {
        serde_json::from_str::<Value>(raw.get())?;
        Ok(RawJson(raw))
    }

    /// `{}`.
    pub fn empty_object() -> RawJson {
        RawJson::parse("{}").expect("{} is JSON")
    }

    /// Whether the value is a JSON object. (The text is valid JSON with no
    /// leading whitespace, so its first byte tells.)
    pub fn is_object(&self) -> bool {
        self.0.get().starts_with('{')
    }

    /// The JSON text, exactly as it was posted.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawJson, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        RawJson::checked(raw).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawJson {}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.as_str())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Proptest strategies for JSON *text* (not `Value`s, which would sort
/// keys and normalise numbers): members in any order, numbers as written
/// (`2.50`, 30-digit integers, exponents), any unicode, optional whitespace.
#[cfg(test)]
pub(crate) mod strategy {
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn string() -> impl Strategy<Value = String> {
        ".{0,12}".prop_map(|s| serde_json::to_string(&s).expect("a string serializes"))
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[0-9]{1,3}", "[a-z_]{0,6}", ".{0,4}"]
            .prop_map(|s| serde_json::to_string(&s).expect("a string serializes"))
    }

    /// Exponents stay small enough for serde_json's `f64` (it refuses 1e999).
    fn number() -> impl Strategy<Value = String> {
        "-?(0|[1-9][0-9]{0,30})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,2})?"
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just(""), Just(""), Just(" "), Just("\n  ")]
    }

    fn object(members: Vec<(String, String)>, ws: &str) -> String {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{ws}{k}{ws}:{ws}{v}{ws}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    /// Any JSON value, as text with no whitespace around it.
    pub fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            number(),
            string(),
        ];
        leaf.prop_recursive(3, 32, 5, |inner| {
            prop_oneof![
                (vec(inner.clone(), 0..5), space())
                    .prop_map(|(items, ws)| format!("[{}]", items.join(&format!(",{ws}")))),
                (vec((key(), inner), 0..5), space()).prop_map(|(m, ws)| object(m, ws)),
            ]
        })
    }

    /// A JSON object, as text with no whitespace around it.
    pub fn object_text() -> impl Strategy<Value = String> {
        (vec((key(), value()), 0..6), space()).prop_map(|(m, ws)| object(m, ws))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTED: &str = r#"{"z":1,"10":"ten","9":"nine","price":2.50,"big":12345678901234567890123,"ü":"ß","a":{"y":[3,{"b":1,"a":2}],"x":null}}"#;

    #[test]
    fn ws_cmd_2_kept_and_written_verbatim() {
        let raw = RawJson::parse(POSTED).unwrap();
        assert_eq!(raw.as_str(), POSTED);
        assert!(raw.is_object());
        #[derive(Serialize)]
        struct Frame<'a> {
            data: &'a RawJson,
        }
        let text = serde_json::to_string(&Frame { data: &raw }).unwrap();
        assert_eq!(text, format!(r#"{{"data":{POSTED}}}"#));
        // Read back from a larger document (as a request body is).
        let body: Body = serde_json::from_str(&text).unwrap();
        assert_eq!(body.data, raw);
    }

    #[derive(Deserialize)]
    struct Body {
        data: RawJson,
    }

    #[test]
    fn only_json_and_its_kind() {
        assert!(RawJson::parse("{").is_err());
        assert!(RawJson::parse("{} x").is_err());
        assert!(RawJson::parse("").is_err());
        // Refused as serde_json's `Value` refuses them (a RawValue alone takes them).
        for unreadable in [r#"{"a":1e999}"#, r#"{"a":"\ud800"}"#, r#"["\udc00 x"]"#] {
            assert!(RawJson::parse(unreadable).is_err(), "{unreadable}");
            let in_body = format!(r#"{{"data":{unreadable}}}"#);
            assert!(serde_json::from_str::<Body>(&in_body).is_err(), "{in_body}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            RawJson::parse(deep).is_err(),
            "past serde_json's nesting limit"
        );
        let padded = RawJson::parse("  {\"a\" : 1}\n").unwrap();
        assert_eq!(
            padded.as_str(),
            "{\"a\" : 1}",
            "surrounding whitespace dropped"
        );
        for not_object in ["[1]", "\"{\"", "3", "null", "true"] {
            assert!(
                !RawJson::parse(not_object).unwrap().is_object(),
                "{not_object}"
            );
        }
        assert_eq!(RawJson::empty_object().as_str(), "{}");
    }

    proptest::proptest! {
        /// Whatever object text is posted is kept and written back byte for byte.
        #[test]
        fn ws_cmd_2_any_object_round_trips_verbatim(text in strategy::object_text()) {
            let raw = RawJson::parse(text.clone()).unwrap();
            proptest::prop_assert!(raw.is_object());
            proptest::prop_assert_eq!(raw.as_str(), text.as_str());
            let written = serde_json::to_string(&raw).unwrap();
            proptest::prop_assert_eq!(written, text);
        }
    }
}
