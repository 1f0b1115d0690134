//! §3 Messages: `connected`, ping/pong, status, config, and the bad-input table.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

#[tokio::test]
async fn ws_msg_1_connected_comes_first_with_the_timeouts() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let mut agent = server
        .try_connect("a1", Some(EDGE_SECRET), &[])
        .await
        .unwrap();
    let hello = agent.recv().await;
    assert_eq!(hello["type"], "connected");
    let data = &hello["data"];
    assert_eq!(data["edge_agent_id"], "a1");
    assert_eq!(data["protocol_version"], "1.0");
    assert!(data["server_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(data["ping_timeout_s"], 30);
    assert_eq!(data["ack_timeout_s"], 30);
    assert_eq!(data["max_attempts"], 10);
    assert_eq!(data["ping_interval_ms"], 500);
    assert!(hello["timestamp"].is_string());
}

#[tokio::test]
async fn ws_ping_1_every_ping_gets_a_pong() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    for _ in 0..3 {
        assert!(agent.round_trip().await.is_empty(), "nothing but the pong");
    }
}

#[tokio::test]
async fn ws_err_1_bad_input_is_answered_and_the_socket_stays_open() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let cases: [(&str, &str); 7] = [
        ("this is not json", "invalid_json"),
        (r#"{"data": {}}"#, "invalid_message"),
        (r#"{"type": 42}"#, "invalid_message"),
        (r#"["type", "ping"]"#, "invalid_message"),
        (r#"{"type": "launch_rockets"}"#, "unknown_type"),
        (
            r#"{"type": "command_ack", "data": {"success": true}}"#,
            "invalid_message",
        ),
        (
            r#"{"type": "command_ack", "data": {"command_id": "c", "status": "done"}}"#,
            "invalid_message",
        ),
    ];
    for (text, code) in cases {
        agent.send(Message::text(text)).await;
        let answer = agent.expect("error").await;
        assert_eq!(answer["data"]["code"], code, "for {text}");
        assert!(answer["data"]["message"].is_string());
    }
    agent.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(
        agent.expect("error").await["data"]["code"],
        "unsupported_frame"
    );
    assert!(
        agent.round_trip().await.is_empty(),
        "still open and answering"
    );
}

#[tokio::test]
async fn ws_err_1_text_frame_over_64_kib_closes_1009() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let big = format!(
        r#"{{"type":"status","data":{{"pad":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    agent.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(
        agent.ended(PROMPT).await,
        Ended::Closed(1009, "message too big".into())
    );
    // A message just under the limit is fine.
    let mut agent = server.connect("a1").await;
    let ok = format!(
        r#"{{"type":"status","data":{{"pad":"{}"}}}}"#,
        "x".repeat(60 * 1024)
    );
    agent.ws.send(Message::text(ok)).await.unwrap();
    assert!(agent.round_trip().await.is_empty());
}

#[tokio::test]
async fn ws_err_1_invalid_utf8_closes_1007() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    agent.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(
        agent.ended(PROMPT).await,
        Ended::Closed(1007, "invalid UTF-8".into())
    );
}

#[tokio::test]
async fn ws_err_1_other_protocol_errors_close_1002() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    // A masked frame with the reserved opcode 0x3 (RFC 6455 §5.2).
    let mut header = Vec::new();
    FrameHeader {
        opcode: OpCode::Data(Data::Reserved(3)),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    }
    .format(0, &mut header)
    .unwrap();
    match agent.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.write_all(&header).await.unwrap(),
        _ => unreachable!("plain ws"),
    }
    assert_eq!(
        agent.ended(PROMPT).await,
        Ended::Closed(1002, "protocol error".into())
    );
}

#[tokio::test]
async fn ws_status_1_status_is_stored_as_the_last_status() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let status = json!({"scheduled_messages": 3, "uptime_seconds": 3600, "memory_usage_mb": 45});
    agent
        .send_json(json!({"type": "status", "data": status}))
        .await;
    assert!(agent.round_trip().await.is_empty(), "status gets no answer");
    let (_, body) = server.get("/api/agents/a1").await;
    assert_eq!(body["last_status"], status);
}

#[tokio::test]
async fn ws_cfg_1_config_update_reaches_a_connected_agent() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let config = json!({"sync_interval": 60, "log_level": "info"});
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            "/api/agents/a1/config",
            Some(config.clone()),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    assert_eq!(body["delivered"], true);
    assert_eq!(agent.expect("config_update").await["data"], config);
    agent.close().await;
    wait_until_disconnected(&server, "a1").await;
    let offline = server
        .api(reqwest::Method::POST, "/api/agents/a1/config", Some(config))
        .await;
    assert_eq!(offline.1["delivered"], false);
}

pub async fn wait_until_disconnected(server: &TestServer, agent: &str) {
    server
        .wait_agent(agent, |a| a["connected"] == Value::Bool(false))
        .await;
}
