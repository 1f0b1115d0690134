//! Checks on raw JSON: dotted paths, expected values with a few wildcards,
//! and `{name}` placeholders. The harness reads the wire as JSON, never
//! through the server's types (DESIGN.md: two independent readings).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::timestamp;

/// The value at a dotted path (`data.code`, `commands.0.command_id`).
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Whether `actual` (at a path of `root`, maybe absent) is what `expected`
/// asks for. Wildcards: `"<any>"` present and not null, `"<absent>"`,
/// `"<string>"`, `"<number>"`, `"<array>"`, `"<object>"`, and the
/// [`Timestamp`] ones.
fn matches(root: &Value, actual: Option<&Value>, expected: &Value) -> bool {
    if let Some(Ok(wildcard)) = expected.as_str().and_then(timestamp_wildcard) {
        let read = |value: Option<&Value>| value.and_then(Value::as_str).and_then(timestamp::read);
        let Some((at, zoned)) = read(actual) else {
            return false;
        };
        return match wildcard {
            Timestamp::Any => true,
            Timestamp::After(path, offset) => {
                let offset = offset.as_secs_f64();
                // PATH, or a timestamp saved earlier (`{var}`, replaced by now).
                let base = read(lookup(root, path)).or_else(|| timestamp::read(path));
                base.is_some_and(|(base, _)| (at - base - offset).abs() <= (offset * 0.1).max(1.0))
            }
            Timestamp::Now => zoned && (at - timestamp::now()).abs() <= NOW_TOLERANCE.as_secs_f64(),
        };
    }
    match expected.as_str() {
        Some("<any>") => actual.is_some_and(|v| !v.is_null()),
        Some("<absent>") => actual.is_none_or(Value::is_null),
        Some("<string>") => actual.is_some_and(Value::is_string),
        Some("<number>") => actual.is_some_and(Value::is_number),
        Some("<array>") => actual.is_some_and(Value::is_array),
        Some("<object>") => actual.is_some_and(Value::is_object),
        _ => match (actual, expected) {
            (Some(Value::Number(a)), Value::Number(e)) => a.as_f64() == e.as_f64(),
            (Some(a), e) => a == e,
            (None, _) => false,
        },
    }
}

/// A `<timestamp…>` wildcard: each asks for an ISO-8601 date-time
/// ([`timestamp::parse`]), and maybe more.
#[derive(Debug, PartialEq)]
pub enum Timestamp<'a> {
    /// `<timestamp>`: any.
    Any,
    /// `<timestamp = PATH + DURATION>`: the timestamp at PATH (or a saved
    /// one, `{var}`) plus DURATION, within WS-DLV-8's tolerance (10 % or
    /// 1 s, whichever is larger).
    After(&'a str, Duration),
    /// `<timestamp ≈ now>`: one that says its zone (`Z` or an offset) and
    /// is within [`NOW_TOLERANCE`] of the harness's clock, so a zone
    /// mistaken or left out is caught.
    Now,
}

/// How far a `<timestamp ≈ now>` may be from the harness's clock: two
/// machines' clocks agree within that, and every zone's offset is a
/// multiple of 15 minutes, so a wrong zone is always further off.
pub const NOW_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A `<timestamp…>` wildcard: None when `expected` is not one; else which,
/// or what is wrong with it.
pub fn timestamp_wildcard(expected: &str) -> Option<Result<Timestamp<'_>, String>> {
    let inner = expected
        .strip_prefix("<timestamp")?
        .strip_suffix('>')?
        .trim();
    if inner.is_empty() {
        return Some(Ok(Timestamp::Any));
    }
    if inner == "≈ now" {
        return Some(Ok(Timestamp::Now));
    }
    let how = "write `<timestamp>`, `<timestamp ≈ now>` or `<timestamp = PATH + DURATION>`, e.g. `<timestamp = data.created_at + 300s>`";
    let Some((path, offset)) = inner.strip_prefix('=').and_then(|r| r.rsplit_once('+')) else {
        return Some(Err(format!("`{expected}`: {how}")));
    };
    Some(
        humantime::parse_duration(offset.trim())
            .map(|offset| Timestamp::After(path.trim(), offset))
            .map_err(|e| format!("`{expected}`: {e}; {how}")),
    )
}

/// The first field that does not match, as (path, expected, actual).
pub fn mismatch(value: &Value, fields: &[(String, Value)]) -> Option<(String, Value, Value)> {
    fields.iter().find_map(|(path, expected)| {
        let actual = lookup(value, path);
        (!matches(value, actual, expected)).then(|| {
            (
                path.clone(),
                expected.clone(),
                actual.cloned().unwrap_or(Value::Null),
            )
        })
    })
}

/// Replaces `{name}` in every string of `value` by the variable's value.
pub fn substitute(value: &Value, vars: &HashMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(substitute_str(s, vars)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub fn substitute_str(text: &str, vars: &HashMap<String, String>) -> String {
    if !text.contains('{') {
        return text.to_string();
    }
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_into_objects_and_arrays() {
        let v = json!({"data": {"code": "x"}, "commands": [{"command_id": "c1"}]});
        assert_eq!(lookup(&v, "data.code"), Some(&json!("x")));
        assert_eq!(lookup(&v, "commands.0.command_id"), Some(&json!("c1")));
        assert_eq!(lookup(&v, "commands.1"), None);
        assert_eq!(lookup(&v, "data.code.deeper"), None);
    }

    #[test]
    fn wildcards_and_numbers() {
        let root = Value::Null;
        assert!(matches(&root, Some(&json!(2)), &json!(2.0)));
        assert!(matches(&root, Some(&json!("s")), &json!("<string>")));
        assert!(matches(&root, None, &json!("<absent>")));
        assert!(!matches(&root, Some(&Value::Null), &json!("<any>")));
        let found = mismatch(
            &json!({"a": 1}),
            &[("a".into(), json!(1)), ("b".into(), json!("<any>"))],
        );
        assert_eq!(found, Some(("b".into(), json!("<any>"), Value::Null)));
    }

    #[test]
    fn timestamps_alone_and_from_another_field() {
        let command = json!({"data": {
            "created_at": "2026-12-03T20:44:49.952Z",
            "expires_at": "2026-12-03T20:49:49.952Z",
            "after_269s": "2026-12-03T20:49:18.952Z",
            "after_271s": "2026-12-03T20:49:20.952Z",
            "after_329s": "2026-12-03T20:50:18.952Z",
            "after_331s": "2026-12-03T20:50:20.952Z",
            "epoch": "1796330689952",
            "http_date": "Thu, 03 Dec 2026 20:44:49 GMT",
        }});
        let field = |path: &str, expected: &str| {
            mismatch(&command, &[(path.into(), json!(expected))]).is_none()
        };
        assert!(field("data.created_at", "<timestamp>"));
        assert!(!field("data.epoch", "<timestamp>"));
        assert!(!field("data.http_date", "<timestamp>"));
        assert!(!field("data.absent", "<timestamp>"));
        // 300 s later, within WS-DLV-8's 10 % (30 s) and no further.
        let ttl = "<timestamp = data.created_at + 300s>";
        assert!(field("data.expires_at", ttl));
        assert!(field("data.after_271s", ttl));
        assert!(field("data.after_329s", ttl));
        assert!(!field("data.after_269s", ttl));
        assert!(!field("data.after_331s", ttl));
        // Short offsets get the 1 s floor.
        assert!(field(
            "data.created_at",
            "<timestamp = data.created_at + 1s>"
        ));
        assert!(!field(
            "data.expires_at",
            "<timestamp = data.http_date + 300s>"
        ));
        assert!(!field(
            "data.created_at",
            "<timestamp = data.expires_at + 1s>"
        ));
        // A timestamp saved earlier, put in by substitution.
        assert!(field(
            "data.created_at",
            "<timestamp = 2026-12-03T20:44:49.952+00:00 + 0s>"
        ));
        assert!(!field(
            "data.created_at",
            "<timestamp = 2026-12-03T20:44:47.952Z + 0s>"
        ));
    }

    #[test]
    fn now_is_a_zoned_timestamp_near_the_clock() {
        use std::time::SystemTime;
        let at = |offset_s: i64, zone: &str| {
            let (clock, by) = (
                SystemTime::now(),
                Duration::from_secs(offset_s.unsigned_abs()),
            );
            let t = if offset_s >= 0 {
                clock + by
            } else {
                clock - by
            };
            let utc = humantime::format_rfc3339_millis(t).to_string();
            json!(format!("{}{zone}", utc.trim_end_matches('Z')))
        };
        let now = |value: Value| {
            let root = json!({"t": value});
            mismatch(&root, &[("t".into(), json!("<timestamp ≈ now>"))]).is_none()
        };
        assert!(now(at(0, "Z")));
        assert!(now(at(-240, "Z")), "four minutes of clock skew");
        assert!(now(at(240, "+00:00")));
        assert!(!now(at(0, "")), "no zone: local time to the agent");
        assert!(!now(at(3600, "Z")), "local time of UTC+1 marked Z");
        assert!(!now(at(-900, "Z")), "a quarter-hour zone");
        assert!(!now(json!("1796330689952")));
        // A local time with its offset is the same instant: fine.
        let local = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(3600));
        assert!(now(json!(local.to_string().replace('Z', "+01:00"))));
    }

    #[test]
    fn timestamp_wildcards_are_read_or_refused_with_how_to() {
        assert_eq!(timestamp_wildcard("<string>"), None);
        assert_eq!(timestamp_wildcard("<timestamp>"), Some(Ok(Timestamp::Any)));
        assert_eq!(
            timestamp_wildcard("<timestamp ≈ now>"),
            Some(Ok(Timestamp::Now))
        );
        assert_eq!(
            timestamp_wildcard("<timestamp = data.created_at + 5m>"),
            Some(Ok(Timestamp::After(
                "data.created_at",
                Duration::from_secs(300)
            )))
        );
        for bad in [
            "<timestamp ~ now>",
            "<timestamp data.created_at>",
            "<timestamp = data.created_at>",
            "<timestamp = data.created_at + soon>",
        ] {
            let error = timestamp_wildcard(bad).unwrap().unwrap_err();
            assert!(error.contains("<timestamp = PATH + DURATION>"), "{error}");
        }
    }

    #[test]
    fn placeholders() {
        let vars = HashMap::from([("c1".to_string(), "cmd_7".to_string())]);
        assert_eq!(
            substitute(&json!({"data": {"command_id": "{c1}"}, "n": 1}), &vars),
            json!({"data": {"command_id": "cmd_7"}, "n": 1})
        );
        assert_eq!(
            substitute_str("/api/commands/{c1}", &vars),
            "/api/commands/cmd_7"
        );
    }
}
