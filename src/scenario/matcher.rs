//! Checks on raw JSON: dotted paths, expected values with a few wildcards,
//! and `{name}` placeholders. The harness reads the wire as JSON, never
//! through the server's types (DESIGN.md: two independent readings).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::timestamp;

/// The value at a dotted path (`data.code`, `commands.0.command_id`). A
/// segment `[member=value]` is the first element of an array that is an
/// object whose `member` is `value` (a string, or a number or bool written
/// as text): `[edge_agent_id=a-1].connected`. A list holds other clients'
/// entries too, so a check finds its own by what it is, not where.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    segments(path).try_fold(value, |v, key| match (v, selector(key)) {
        (Value::Array(items), Some((member, wanted))) => items
            .iter()
            .find(|item| item.get(member).is_some_and(|m| scalar_is(m, wanted))),
        (Value::Object(map), None) => map.get(key),
        (Value::Array(items), None) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A path's segments: split at dots, except inside `[…]` (a selected
/// value, such as an id, may hold a dot).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    path.split(move |c| {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        c == '.' && depth == 0
    })
}

/// What is wrong with a path's `[…]` segments, if anything: each must be
/// a whole segment `[member=value]`, so a typo is an error when the file is
/// read rather than a field that is never found.
pub fn path_error(path: &str) -> Option<String> {
    let bad = segments(path).find(|segment| {
        (segment.contains('[') || segment.contains(']'))
            && selector(segment).is_none_or(|(member, _)| member.is_empty())
    })?;
    Some(format!(
        "field path `{path}`: `{bad}` is not a selector; write `[member=value]` as a whole segment, e.g. `[edge_agent_id={{id:a}}].connected`"
    ))
}

/// `[member=value]` as (member, value); None for a plain key or index.
fn selector(segment: &str) -> Option<(&str, &str)> {
    segment
        .strip_prefix('[')?
        .strip_suffix(']')?
        .split_once('=')
}

/// Whether a JSON scalar reads as `text` (`"a-1"`, `7`, `true`); numbers
/// compare as numbers, as field values do (`2` is `2.0`).
fn scalar_is(value: &Value, text: &str) -> bool {
    match value {
        Value::String(s) => s == text,
        Value::Number(n) => n.as_f64().is_some_and(|n| text.parse() == Ok(n)),
        Value::Bool(b) => text.parse() == Ok(*b),
        _ => false,
    }
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

/// `fields` with `{name}` replaced in paths (`[edge_agent_id={id:a}]`) and
/// in expected values.
pub fn substitute_fields(
    fields: &[(String, Value)],
    vars: &HashMap<String, String>,
) -> Vec<(String, Value)> {
    fields
        .iter()
        .map(|(path, expected)| (substitute_str(path, vars), substitute(expected, vars)))
        .collect()
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
    use proptest::prelude::*;
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
    fn a_selector_finds_an_element_by_a_member() {
        let v = json!([
            {"edge_agent_id": "h.1-b", "connected": false, "n": 7},
            {"edge_agent_id": "h.1-a", "connected": true, "n": 8},
            {"edge_agent_id": "h.1-a", "connected": false},
            "not an object",
        ]);
        assert_eq!(
            lookup(&v, "[edge_agent_id=h.1-a].connected"),
            Some(&json!(true))
        );
        assert_eq!(lookup(&v, "[n=7].edge_agent_id"), Some(&json!("h.1-b")));
        assert_eq!(
            lookup(&v, "[n=8.0].edge_agent_id"),
            Some(&json!("h.1-a")),
            "as numbers"
        );
        assert_eq!(
            lookup(&v, "[connected=false].edge_agent_id"),
            Some(&json!("h.1-b"))
        );
        assert_eq!(lookup(&v, "[edge_agent_id=h.1-c]"), None);
        assert_eq!(
            lookup(&v, "[edge_agent_id=h.1]"),
            None,
            "whole values, not prefixes"
        );
        let nested = json!({"agents": v});
        assert_eq!(
            lookup(&nested, "agents.[n=8].edge_agent_id"),
            Some(&json!("h.1-a"))
        );
        assert_eq!(
            lookup(&json!({"x": 1}), "[x=1]"),
            None,
            "selects in arrays only"
        );
        assert!(matches(
            &v,
            lookup(&v, "[edge_agent_id=h.1-c]"),
            &json!("<absent>")
        ));
    }

    #[test]
    fn a_malformed_selector_is_refused_with_how_to() {
        for good in [
            "data.code",
            "[edge_agent_id={id:a}].connected",
            "a.[k=v.w].b",
            "[k=]",
        ] {
            assert_eq!(path_error(good), None, "{good}");
        }
        for bad in [
            "[edge_agent_id]",
            "[=v]",
            "x[k=v]",
            "[k=v",
            "k=v]",
            "[k=v]x",
        ] {
            let error = path_error(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(error.contains("[member=value]"), "{error}");
        }
    }

    #[test]
    fn placeholders_are_replaced_in_paths_and_values() {
        let vars = HashMap::from([("id:a".to_string(), "h.1-a".to_string())]);
        let fields = [(
            "[edge_agent_id={id:a}].edge_agent_id".to_string(),
            json!("{id:a}"),
        )];
        assert_eq!(
            substitute_fields(&fields, &vars),
            [(
                "[edge_agent_id=h.1-a].edge_agent_id".to_string(),
                json!("h.1-a")
            )]
        );
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

    proptest! {
        /// Fed by the network: whatever the list, `[member=value]` finds the
        /// first element whose member is that value, or nothing when none is.
        #[test]
        fn a_selector_finds_the_first_element_with_the_value(
            ids in proptest::collection::vec("[a-z0-9.-]{1,8}", 0..12),
            wanted in "[a-z0-9.-]{1,8}",
        ) {
            let list = Value::Array(
                ids.iter().enumerate().map(|(i, id)| json!({"id": id, "i": i})).collect(),
            );
            let expected = ids.iter().position(|id| *id == wanted).map(|i| json!(i));
            prop_assert_eq!(lookup(&list, &format!("[id={wanted}].i")), expected.as_ref());
        }

        /// A path without brackets reads as it always did: split at dots.
        #[test]
        fn plain_paths_split_at_every_dot(path in "[a-z0-9.]{0,20}") {
            prop_assert_eq!(segments(&path).collect::<Vec<_>>(), path.split('.').collect::<Vec<_>>());
            prop_assert_eq!(path_error(&path), None);
        }
    }
}
