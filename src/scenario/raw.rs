//! JSON as it was written (WS-CMD-2): members in document order, numbers as
//! exact decimals. A parsed `serde_json::Value` sorts object keys and rounds
//! numbers to `f64`, so it cannot tell a backend that relays `parameters`
//! as posted from one that re-sorts or re-rounds them; this reading can.
//!
//! Two texts are the same when they have the same members in the same
//! order with the same values: whitespace, string escapes (`"\u00e9"` is
//! `"é"`) and number spelling (`2.50` is `2.5`, `1e2` is `100`) do not
//! matter; key order, a lost digit, or `1` against `"1"` do.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON value with its object members in the order they were written.
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    Null,
    Bool(bool),
    Number(Decimal),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

/// An exact decimal: `negative × digits × 10^exponent`, with no leading
/// or trailing zeros in `digits` (zero is empty digits, never negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Reads a JSON number's text (already validated by the JSON parser).
    fn parse(text: &str) -> Decimal {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exp) = match unsigned.find(['e', 'E']) {
            Some(at) => (
                &unsigned[..at],
                unsigned[at + 1..].parse::<i64>().unwrap_or(0),
            ),
            None => (unsigned, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0');
        let kept = trimmed.trim_end_matches('0');
        let exponent = exp
            .saturating_sub(frac.len() as i64)
            .saturating_add((trimmed.len() - kept.len()) as i64);
        if kept.is_empty() {
            return Decimal {
                negative: false,
                digits: String::new(),
                exponent: 0,
            };
        }
        Decimal {
            negative,
            digits: kept.to_string(),
            exponent,
        }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.digits.is_empty() {
            return f.write_str("0");
        }
        let sign = if self.negative { "-" } else { "" };
        match self.exponent {
            0 => write!(f, "{sign}{}", self.digits),
            e if e > 0 && e <= 20 => write!(f, "{sign}{}{}", self.digits, "0".repeat(e as usize)),
            e if e < 0 && (-e as usize) < self.digits.len() => {
                let point = self.digits.len() - (-e as usize);
                write!(
                    f,
                    "{sign}{}.{}",
                    &self.digits[..point],
                    &self.digits[point..]
                )
            }
            e if e < 0 && -e <= 20 => {
                let zeros = (-e as usize) - self.digits.len();
                write!(f, "{sign}0.{}{}", "0".repeat(zeros), self.digits)
            }
            e => write!(f, "{sign}{}e{e}", self.digits),
        }
    }
}

/// An object's members in document order, each still as raw text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl Ordered {
    /// Reads JSON text, keeping member order and exact numbers.
    pub fn parse(text: &str) -> Result<Ordered, String> {
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::from_raw(raw.get())
    }

    fn from_raw(text: &str) -> Result<Ordered, String> {
        let text = text.trim();
        let parsed = match text.as_bytes().first() {
            Some(b'{') => Ordered::Object(
                serde_json::from_str::<Members>(text)
                    .map_err(|e| e.to_string())?
                    .0
                    .into_iter()
                    .map(|(key, raw)| Ok((key, Self::from_raw(raw.get())?)))
                    .collect::<Result<_, String>>()?,
            ),
            Some(b'[') => Ordered::Array(
                serde_json::from_str::<Vec<Box<RawValue>>>(text)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|raw| Self::from_raw(raw.get()))
                    .collect::<Result<_, String>>()?,
            ),
            Some(b'"') => Ordered::String(serde_json::from_str(text).map_err(|e| e.to_string())?),
            Some(b't') => Ordered::Bool(true),
            Some(b'f') => Ordered::Bool(false),
            Some(b'n') => Ordered::Null,
            _ => Ordered::Number(Decimal::parse(text)),
        };
        Ok(parsed)
    }

    /// The member at a dotted path (`data.parameters`, `commands.0`).
    pub fn lookup(&self, path: &str) -> Option<&Ordered> {
        path.split('.').try_fold(self, |value, key| match value {
            Ordered::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Ordered::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }
}

/// The first member of `text` that differs from its written form, as
/// (path, expected, observed); `expected` pairs a dotted path with JSON text.
pub fn raw_mismatch(text: &str, expected: &[(String, String)]) -> Option<(String, String, String)> {
    let whole = match Ordered::parse(text) {
        Ok(whole) => whole,
        Err(e) => return Some(("the answer".into(), "JSON".into(), e)),
    };
    expected.iter().find_map(|(path, written)| {
        let want = match Ordered::parse(written) {
            Ok(want) => want,
            Err(e) => return Some((path.clone(), written.clone(), format!("(not JSON: {e})"))),
        };
        let got = whole.lookup(path);
        (got != Some(&want)).then(|| {
            let got = got.map_or_else(|| "absent".to_string(), Ordered::to_string);
            (path.clone(), want.to_string(), got)
        })
    })
}

impl fmt::Display for Ordered {
    /// Compact JSON in document order (numbers in their shortest exact form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let string = |f: &mut fmt::Formatter<'_>, s: &str| {
            write!(f, "{}", serde_json::Value::String(s.to_string()))
        };
        match self {
            Ordered::Null => f.write_str("null"),
            Ordered::Bool(b) => write!(f, "{b}"),
            Ordered::Number(n) => write!(f, "{n}"),
            Ordered::String(s) => string(f, s),
            Ordered::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Ordered::Object(members) => {
                f.write_str("{")?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    string(f, key)?;
                    write!(f, ":{value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: &str, b: &str) -> bool {
        Ordered::parse(a).unwrap() == Ordered::parse(b).unwrap()
    }

    #[test]
    fn member_order_matters_spelling_does_not() {
        assert!(same(r#"{"b":1,"a":2}"#, r#"{ "b": 1, "a": 2 }"#));
        assert!(!same(r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#));
        assert!(!same(r#"{"10":1,"9":2}"#, r#"{"9":2,"10":1}"#));
        assert!(same(r#"{"s":"\u00e9"}"#, r#"{"s":"é"}"#));
        assert!(same("2.50", "2.5"));
        assert!(same("1e2", "100"));
        assert!(same("-0", "0.0"));
        assert!(same("0.0012", "1.2e-3"));
        assert_eq!(Ordered::parse("0.750").unwrap().to_string(), "0.75");
        assert_eq!(Ordered::parse("-12.5e3").unwrap().to_string(), "-12500");
        assert!(!same("12345678901234567890123", "1.2345678901234568e22"));
        assert!(!same("1", "\"1\""));
        assert!(!same("[1,2]", "[2,1]"));
    }

    #[test]
    fn lookup_follows_dotted_paths() {
        let v = Ordered::parse(r#"{"data":{"parameters":{"z":1,"a":[true,null]}}}"#).unwrap();
        assert_eq!(
            v.lookup("data.parameters").unwrap().to_string(),
            r#"{"z":1,"a":[true,null]}"#
        );
        assert_eq!(v.lookup("data.parameters.a.1"), Some(&Ordered::Null));
        assert_eq!(v.lookup("data.nothing"), None);
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(Ordered::parse("{\"a\":").is_err());
        assert!(Ordered::parse("").is_err());
    }

    fn arb_json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (-1.0e6f64..1.0e6).prop_map(|x| serde_json::Value::from(x).to_string()),
            "[a-zé\"\\\\ ]{0,8}".prop_map(|s| serde_json::Value::String(s).to_string()),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z0-9]{1,4}", inner), 0..5).prop_map(|members| {
                    let mut seen = std::collections::HashSet::new();
                    let body: Vec<String> = members
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, v)| format!("{}:{v}", serde_json::Value::String(k)))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// Fed by the network: any JSON text reads, and prints back as
        /// valid JSON of the same value.
        #[test]
        fn any_json_round_trips(text in arb_json()) {
            let ordered = Ordered::parse(&text).unwrap();
            let printed = ordered.to_string();
            prop_assert!(serde_json::from_str::<serde_json::Value>(&printed).is_ok(), "{}", printed);
            prop_assert_eq!(&Ordered::parse(&printed).unwrap(), &ordered);
        }

        #[test]
        fn any_text_reads_or_errs(text in ".{0,64}") {
            let _ = Ordered::parse(&text);
        }
    }
}
