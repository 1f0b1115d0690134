//! Checks on raw JSON: dotted paths, expected values with a few wildcards,
//! and `{name}` placeholders. The harness reads the wire as JSON, never
//! through the server's types (DESIGN.md: two independent readings).

use std::collections::HashMap;

use serde_json::Value;

/// The value at a dotted path (`data.code`, `commands.0.command_id`).
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Whether `actual` (at a path, maybe absent) is what `expected` asks for.
/// Wildcards: `"<any>"` present and not null, `"<absent>"`, `"<string>"`,
/// `"<number>"`, `"<array>"`, `"<object>"`.
pub fn matches(actual: Option<&Value>, expected: &Value) -> bool {
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

/// The first field that does not match, as (path, expected, actual).
pub fn mismatch(value: &Value, fields: &[(String, Value)]) -> Option<(String, Value, Value)> {
    fields.iter().find_map(|(path, expected)| {
        let actual = lookup(value, path);
        (!matches(actual, expected)).then(|| {
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
        assert!(matches(Some(&json!(2)), &json!(2.0)));
        assert!(matches(Some(&json!("s")), &json!("<string>")));
        assert!(matches(None, &json!("<absent>")));
        assert!(!matches(Some(&Value::Null), &json!("<any>")));
        let found = mismatch(
            &json!({"a": 1}),
            &[("a".into(), json!(1)), ("b".into(), json!("<any>"))],
        );
        assert_eq!(found, Some(("b".into(), json!("<any>"), Value::Null)));
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
