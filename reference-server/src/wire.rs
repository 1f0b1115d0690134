//! The message format of PROTOCOL.md §3: text in, text out, no sockets.
//!
//! `parse_text` turns an agent's text frame into an [`Inbound`] message or the
//! §3 bad-input error to answer with; the `*_frame` functions build what the
//! server sends. To add a message type: add a variant to [`Inbound`], a match
//! arm in `parse_text`, and handle it in `session.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::raw_json::RawJson;
use crate::store::{AckKind, CommandRow, Millis};

/// What an agent may send (Edge → backend table of §3).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// WS-PING-1.
    Ping,
    /// WS-ACK-1.
    Ack(Ack),
    /// WS-STATUS-1: stored as the agent's last status, as sent (WS-CMD-2).
    Status(RawJson),
}

/// An acknowledgement in either dialect (WS-ACK-1).
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub command_id: String,
    pub kind: AckKind,
}

/// §3 bad input: each answer is an `error` message and the socket stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidMessage(String),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
}

impl WireError {
    /// The `code` of the `error` message.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::InvalidJson(_) => "invalid_json",
            WireError::InvalidMessage(_) => "invalid_message",
            WireError::UnknownType(_) => "unknown_type",
        }
    }
}

/// Parses one text frame (§3).
pub fn parse_text(text: &str) -> Result<Inbound, WireError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| WireError::InvalidJson(e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(WireError::InvalidMessage(
            "a message is a JSON object with a string `type`".into(),
        ));
    };
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Err(WireError::InvalidMessage(
            "a message needs a string `type`".into(),
        ));
    };
    let data = object.get("data").unwrap_or(&Value::Null);
    match kind {
        "ping" => Ok(Inbound::Ping),
        "command_ack" => parse_ack(data).map(Inbound::Ack),
        "status" => match data {
            Value::Object(_) => raw_data(text).map(Inbound::Status),
            _ => Err(WireError::InvalidMessage(
                "`status` needs an object as `data`".into(),
            )),
        },
        other => Err(WireError::UnknownType(truncate(other, 64))),
    }
}

/// WS-CMD-2: the `data` member of a message as the agent wrote it (the
/// `Value` that `parse_text` checked has re-sorted keys and rounded numbers).
/// A repeated `data` key counts as the last one, as it does for `Value`.
fn raw_data(text: &str) -> Result<RawJson, WireError> {
    let members: HashMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| WireError::InvalidJson(e.to_string()))?;
    members
        .get("data")
        .map(|raw| RawJson::parse(raw.get()))
        .transpose()
        .map_err(|e| WireError::InvalidJson(e.to_string()))?
        .ok_or_else(|| WireError::InvalidMessage("a message without `data`".into()))
}

/// WS-ACK-1: `{"command_id", "success", "error"}` (spec) or
/// `{"command_id", "status", "error"?}` [compat]. Shared with the HTTP ack.
pub fn parse_ack(data: &Value) -> Result<Ack, WireError> {
    let invalid = |why: &str| WireError::InvalidMessage(format!("command_ack: {why}"));
    let object = data
        .as_object()
        .ok_or_else(|| invalid("`data` must be an object"))?;
    let command_id = match object.get("command_id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => id.clone(),
        _ => return Err(invalid("needs a non-empty string `command_id`")),
    };
    let error = match object.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) => Some(truncate(e, 4096)),
        Some(_) => return Err(invalid("`error` must be a string or null")),
    };
    let kind = match (object.get("success"), object.get("status")) {
        (Some(Value::Bool(true)), _) => AckKind::Completed,
        (Some(Value::Bool(false)), _) => AckKind::Failed { error },
        (Some(_), _) => return Err(invalid("`success` must be a boolean")),
        (None, Some(Value::String(status))) => match status.as_str() {
            "received" => AckKind::Received,
            "executing" => AckKind::Executing,
            "completed" => AckKind::Completed,
            "failed" => AckKind::Failed { error },
            _ => {
                return Err(invalid(
                    "`status` must be received, executing, completed or failed",
                ));
            }
        },
        (None, _) => return Err(invalid("needs `success` (boolean) or `status`")),
    };
    Ok(Ack { command_id, kind })
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text.to_string(),
    }
}

/// ISO-8601 / RFC 3339 with milliseconds, UTC.
pub fn iso8601(ms: Millis) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// One message: `{"type", "data"?, "timestamp"}` (§3).
#[derive(Serialize)]
struct Frame<'a, D> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    timestamp: String,
}

/// Written with serde_json's own serializer, so [`RawJson`] parts go out
/// verbatim (WS-CMD-2).
fn frame<D: Serialize>(kind: &str, data: Option<D>) -> String {
    let frame = Frame {
        kind,
        data,
        timestamp: iso8601(now_millis()),
    };
    // Only string keys and JSON values: nothing here can fail to serialize.
    serde_json::to_string(&frame).expect("a frame serializes")
}

/// What `connected` advertises (WS-MSG-1).
#[derive(Debug, Clone, Copy)]
pub struct Advertised {
    pub ping_interval_s: u64,
    pub ping_timeout_s: u64,
    pub ack_timeout_s: u64,
    pub max_attempts: u32,
}

/// WS-MSG-1: the first message on every socket. Timeouts are given in
/// seconds as the spec has them, and in milliseconds too so sub-second test
/// configurations are exact.
pub fn connected_frame(agent_id: &str, timing: &Advertised, ms: &[(&str, u128)]) -> String {
    let mut data = json!({
        "edge_agent_id": agent_id,
        "protocol_version": "1.0",
        "server_time": iso8601(now_millis()),
        "ping_interval_s": timing.ping_interval_s,
        "ping_timeout_s": timing.ping_timeout_s,
        "ack_timeout_s": timing.ack_timeout_s,
        "max_attempts": timing.max_attempts,
    });
    for (key, value) in ms {
        data[*key] = json!(*value as u64);
    }
    frame("connected", Some(data))
}

/// WS-CMD-1: the `data` of a `command` message (and of `/edge/sync`).
/// Serialize it with serde_json (`to_string`, `axum::Json`), not into a
/// `Value`, or `parameters` loses its order (WS-CMD-2).
#[derive(Debug, Serialize)]
pub struct CommandData<'a> {
    pub command_id: &'a str,
    pub command_type: &'a str,
    /// WS-CMD-2: as posted.
    pub parameters: &'a RawJson,
    /// [compat] a copy of `parameters`, as posted too (WS-CMD-2).
    pub payload: &'a RawJson,
    pub priority: &'static str,
    pub attempt: u32,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

pub fn command_data(command: &CommandRow) -> CommandData<'_> {
    CommandData {
        command_id: &command.id,
        command_type: &command.command_type,
        parameters: &command.parameters,
        payload: &command.parameters,
        priority: command.priority.as_str(),
        attempt: command.attempts,
        created_at: iso8601(command.created_at),
        expires_at: command.expires_at.map(iso8601),
    }
}

pub fn command_frame(command: &CommandRow) -> String {
    frame("command", Some(command_data(command)))
}

pub fn pong_frame() -> String {
    frame::<Value>("pong", None)
}

/// WS-ERR-1.
pub fn error_frame(code: &str, message: &str, reference: Option<&str>) -> String {
    let mut data = json!({ "code": code, "message": message });
    if let Some(reference) = reference {
        data["ref"] = Value::String(reference.into());
    }
    frame("error", Some(data))
}

/// WS-CFG-1; the config as posted (WS-CMD-2).
pub fn config_update_frame(config: &RawJson) -> String {
    frame("config_update", Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_ack_dialects() {
        let spec = parse_text(
            r#"{"type":"command_ack","data":{"command_id":"c1","success":false,"error":"boom"}}"#,
        );
        assert_eq!(
            spec,
            Ok(Inbound::Ack(Ack {
                command_id: "c1".into(),
                kind: AckKind::Failed {
                    error: Some("boom".into())
                }
            }))
        );
        let compat =
            parse_text(r#"{"type":"command_ack","data":{"command_id":"c1","status":"executing"}}"#);
        assert_eq!(
            compat,
            Ok(Inbound::Ack(Ack {
                command_id: "c1".into(),
                kind: AckKind::Executing
            }))
        );
    }

    #[test]
    fn bad_input_table() {
        let code = |text: &str| parse_text(text).unwrap_err().code();
        assert_eq!(code("not json"), "invalid_json");
        assert_eq!(code(r#"{"data":1}"#), "invalid_message");
        assert_eq!(code(r#"{"type":7}"#), "invalid_message");
        assert_eq!(code("[1,2]"), "invalid_message");
        assert_eq!(code(r#"{"type":"teleport"}"#), "unknown_type");
        assert_eq!(
            code(r#"{"type":"command_ack","data":{"success":true}}"#),
            "invalid_message"
        );
        assert_eq!(
            code(r#"{"type":"command_ack","data":{"command_id":"c","status":"done"}}"#),
            "invalid_message"
        );
        assert_eq!(code(r#"{"type":"status","data":3}"#), "invalid_message");
    }

    fn row_with(parameters: &str) -> CommandRow {
        CommandRow {
            seq: 1,
            id: "c1".into(),
            agent_id: "a".into(),
            command_type: "send_message".into(),
            parameters: RawJson::parse(parameters).unwrap(),
            priority: crate::store::Priority::High,
            status: crate::store::Status::Sent,
            attempts: 2,
            created_at: 0,
            expires_at: Some(1000),
            sent_at: None,
            ack_deadline: None,
            next_attempt_at: None,
            acked_at: None,
            completed_at: None,
            error: None,
            delivered_via: None,
            conn_id: None,
        }
    }

    #[test]
    fn command_frame_carries_payload_copy() {
        let row = row_with(r#"{"message":"hi"}"#);
        let value: Value = serde_json::from_str(&command_frame(&row)).unwrap();
        assert_eq!(value["type"], "command");
        assert_eq!(value["data"]["payload"], value["data"]["parameters"]);
        assert_eq!(value["data"]["attempt"], 2);
        assert_eq!(value["data"]["priority"], "high");
        assert_eq!(value["data"]["expires_at"], "1970-01-01T00:00:01.000Z");
    }

    const POSTED: &str = r#"{"z":{"10":1,"9":[2.50,{"b":null,"a":true}]},"big":12345678901234567890123,"ü":"\u00fc ß"}"#;

    #[test]
    fn ws_cmd_2_command_and_config_frames_carry_the_text_as_posted() {
        let frame = command_frame(&row_with(POSTED));
        assert!(
            frame.contains(&format!(r#""parameters":{POSTED},"payload":{POSTED},"#)),
            "{frame}"
        );
        let frame = config_update_frame(&RawJson::parse(POSTED).unwrap());
        assert!(frame.starts_with(&format!(r#"{{"type":"config_update","data":{POSTED},"#)));
        assert!(serde_json::from_str::<Value>(&frame).is_ok());
        assert!(!pong_frame().contains("data"));
    }

    #[test]
    fn ws_cmd_2_status_data_as_sent() {
        let status = |text: &str| match parse_text(text) {
            Ok(Inbound::Status(raw)) => raw.as_str().to_string(),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            status(&format!(r#"{{"type":"status","data":{POSTED}}}"#)),
            POSTED
        );
        assert_eq!(
            status(&format!(r#"{{ "data" : {POSTED} , "type":"status"}}"#)),
            POSTED,
            "data before type, whitespace around it"
        );
        // A repeated member counts as its last, as it does for the check.
        assert_eq!(
            status(r#"{"type":"status","data":{"a":1},"data":{"b":2.50}}"#),
            r#"{"b":2.50}"#
        );
        assert_eq!(
            parse_text(r#"{"type":"status","data":{"a":1},"data":[1]}"#)
                .unwrap_err()
                .code(),
            "invalid_message"
        );
    }

    proptest! {
        /// WS-CMD-2: any object an agent sends as `status` data is kept as
        /// it wrote it, wherever `data` sits in the message.
        #[test]
        fn ws_cmd_2_any_status_data_is_kept_verbatim(
            data in crate::raw_json::strategy::object_text(),
            data_first in any::<bool>(),
        ) {
            let text = if data_first {
                format!(r#"{{"data":{data},"type":"status"}}"#)
            } else {
                format!(r#"{{"type":"status","data":{data}}}"#)
            };
            match parse_text(&text) {
                Ok(Inbound::Status(raw)) => prop_assert_eq!(raw.as_str(), data.as_str()),
                other => prop_assert!(false, "{}: {:?}", text, other),
            }
        }

        /// WS-CMD-2: any posted parameters go out twice, as posted, in a
        /// frame that is JSON.
        #[test]
        fn ws_cmd_2_any_parameters_are_relayed_verbatim(
            parameters in crate::raw_json::strategy::object_text(),
        ) {
            let frame = command_frame(&row_with(&parameters));
            let expected = format!(r#""parameters":{parameters},"payload":{parameters},"#);
            prop_assert!(frame.contains(&expected));
            prop_assert!(serde_json::from_str::<Value>(&frame).is_ok());
        }

        /// No text makes the parser panic, and every error has a §3 code.
        #[test]
        fn any_text_parses_or_names_its_error(text in ".{0,300}") {
            if let Err(e) = parse_text(&text) {
                prop_assert!(["invalid_json", "invalid_message", "unknown_type"].contains(&e.code()));
            }
        }

        /// Arbitrary JSON objects with arbitrary types and data never panic.
        #[test]
        fn any_json_object(kind in "[a-z_]{0,12}", data in any_json()) {
            let text = json!({"type": kind, "data": data}).to_string();
            let _ = parse_text(&text);
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
