//! WS-CMD-2: `parameters` (and `payload`), `config_update` data and `status`
//! data reach the agent, or the control API, as they were posted: the same
//! members in the same order with the same values. These tests post raw
//! text and look for it, byte for byte, in the text of what comes out
//! (a parsed map would hide a re-sorted or rounded copy).
//! `cluster.rs` does the same across instances on PostgreSQL.

use std::time::Duration;

use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Keys that sort otherwise (`"10"` before `"9"`, `zeta` first), numbers a
/// `f64`/`u64` would change, nesting, and unicode both raw and escaped.
pub const PARAMETERS: &str = r#"{"zeta":"first","10":"ten","9":"nine","price":2.50,"big":12345678901234567890123,"nested":{"y":[3,{"b":1,"a":[]}],"x":null},"text":"ü ☃ \u2603 \ud83d\ude00","e":1.0e+2}"#;
pub const CONFIG: &str = r#"{"sync_interval":60,"log_level":"info","thresholds":{"9":0.10,"10":1E3},"list":[{"z":true,"a":false}],"max":98765432109876543210}"#;
pub const STATUS: &str = r#"{"uptime_seconds":12345678901234567890,"scheduled_messages":3,"memory_usage_mb":52.50,"queues":{"20":[],"3":{"b":"x","a":"y"}}}"#;

/// A control-API command body with [`PARAMETERS`].
pub fn command_body(command_id: &str) -> String {
    format!(
        r#"{{"command_type":"send_message","command_id":"{command_id}","parameters":{PARAMETERS},"priority":"high"}}"#
    )
}

/// `text` carries [`PARAMETERS`] as `parameters` and its `payload` copy.
pub fn assert_parameters_as_posted(text: &str) {
    let relayed = format!(r#""parameters":{PARAMETERS},"payload":{PARAMETERS}"#);
    assert!(text.contains(&relayed), "WS-CMD-2: not as posted: {text}");
}

/// `text` has `member` with exactly the text `posted`.
pub fn assert_member_as_posted(text: &str, member: &str, posted: &str) {
    let relayed = format!(r#""{member}":{posted}"#);
    assert!(
        text.contains(&relayed),
        "WS-CMD-2: `{member}` not as posted: {text}"
    );
}

#[tokio::test]
async fn ws_cmd_2_parameters_reach_the_agent_as_posted_on_every_push() {
    let server = TestServer::start_with(|c| c.ack_timeout = Duration::from_millis(300)).await;
    let mut agent = server.agent("a1").await;
    let (status, answer) = server
        .post_text("/api/agents/a1/commands", ADMIN_TOKEN, &command_body("c1"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // First delivery, then the redelivery when no ack came (WS-DLV-3).
    for attempt in [1, 2] {
        let (text, frame) = agent.expect_text("command").await;
        assert_eq!(frame["data"]["attempt"], attempt, "{text}");
        assert_parameters_as_posted(&text);
    }
    // The push on reconnect (WS-DLV-4), from the store.
    agent.close().await;
    let mut agent = server.connect("a1").await;
    let (text, frame) = agent.expect_text("command").await;
    assert!(frame["data"]["attempt"].as_u64().unwrap() > 2, "{text}");
    assert_parameters_as_posted(&text);
    agent.ack("c1", true).await;
    server.wait_status("c1", "completed", PROMPT).await;

    // The control API shows them as posted too, and so does a repeated post.
    let shown = server.get_text("/api/commands/c1").await;
    assert_member_as_posted(&shown, "parameters", PARAMETERS);
    let listed = server.get_text("/api/agents/a1/commands").await;
    assert_member_as_posted(&listed, "parameters", PARAMETERS);
    let (status, again) = server
        .post_text("/api/agents/a1/commands", ADMIN_TOKEN, &command_body("c1"))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_member_as_posted(&again, "parameters", PARAMETERS);

    // Without parameters (or with null), `{}` as before.
    for body in [
        r#"{"command_type":"send_message"}"#,
        r#"{"command_type":"send_message","parameters":null}"#,
    ] {
        let (status, answer) = server
            .post_text("/api/agents/a1/commands", ADMIN_TOKEN, body)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let (text, _) = agent.expect_text("command").await;
        assert!(text.contains(r#""parameters":{},"payload":{}"#), "{text}");
    }
    // A body that is not JSON, or that a strict parser cannot read, is
    // refused as before.
    for parameters in [r#"{"a":}"#, r#"{"a":1e999}"#, r#"{"a":"\udc00"}"#] {
        let body = format!(r#"{{"command_type":"send_message","parameters":{parameters}}}"#);
        let (status, answer) = server
            .post_text("/api/agents/a1/commands", ADMIN_TOKEN, &body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
    }
    // Unacked commands keep being redelivered: close before the server
    // goes (dropping a server with a redelivering session takes ~6 s).
    agent.close().await;
    server.stop().await;
}

#[tokio::test]
async fn ws_cmd_2_sync_returns_parameters_and_stores_status_as_posted() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let (status, answer) = server
        .post_text("/api/agents/a1/commands", ADMIN_TOKEN, &command_body("c1"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let sync = format!(r#"{{"edge_agent_id":"a1","status":{STATUS}}}"#);
    let (status, answer) = server.post_text("/edge/sync", EDGE_SECRET, &sync).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_parameters_as_posted(&answer);
    let agent = server.get_text("/api/agents/a1").await;
    assert_member_as_posted(&agent, "last_status", STATUS);
}

#[tokio::test]
async fn ws_cmd_2_config_update_reaches_the_agent_as_posted() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    // Whitespace around the object is not part of it.
    let (status, answer) = server
        .post_text(
            "/api/agents/a1/config",
            ADMIN_TOKEN,
            &format!(" \n{CONFIG}\n"),
        )
        .await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::ACCEPTED, r#"{"delivered":true}"#)
    );
    let (text, _) = agent.expect_text("config_update").await;
    assert_member_as_posted(&text, "data", CONFIG);

    // Still only objects (WS-CFG-1), and only JSON.
    // A number or string a strict parser cannot read is refused too.
    for body in [
        "[1,2]",
        r#""x""#,
        "3",
        "null",
        "{",
        "{} {}",
        r#"{"a":1e999}"#,
        r#"{"a":"\ud800"}"#,
    ] {
        let (status, answer) = server
            .post_text("/api/agents/a1/config", ADMIN_TOKEN, body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(answer.contains(r#""error":"invalid_body""#), "{answer}");
    }
    assert!(
        agent.round_trip().await.is_empty(),
        "nothing else was pushed"
    );
}

#[tokio::test]
async fn ws_cmd_2_status_is_stored_and_shown_as_sent() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    agent
        .send(Message::text(format!(
            r#"{{"type":"status","data":{STATUS}}}"#
        )))
        .await;
    // Stored once the ping sent after it is answered.
    assert!(agent.round_trip().await.is_empty());
    for path in [
        "/api/agents/a1",
        "/api/agents",
        "/api/agents?connected=true",
    ] {
        let shown = server.get_text(path).await;
        assert_member_as_posted(&shown, "last_status", STATUS);
    }

    // Still only objects (WS-STATUS-1): the stored one stays.
    agent
        .send(Message::text(r#"{"type":"status","data":[1,2]}"#))
        .await;
    let (text, error) = agent.expect_text("error").await;
    assert_eq!(error["data"]["code"], "invalid_message", "{text}");
    let shown = server.get_text("/api/agents/a1").await;
    assert_member_as_posted(&shown, "last_status", STATUS);
}
