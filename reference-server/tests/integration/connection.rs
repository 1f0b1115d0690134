//! §4 Connection management.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::messages::wait_until_disconnected;
use crate::support::*;

#[tokio::test]
async fn ws_conn_2_duplicate_replaces_old_and_gets_its_unacked_commands() {
    let server = TestServer::start().await;
    let mut old = server.agent("a1").await;
    let id = server
        .send_command(
            "a1",
            json!({"command_type": "send_message", "parameters": {"n": 1}}),
        )
        .await;
    assert_eq!(
        old.expect("command").await["data"]["command_id"],
        id.as_str()
    );

    let mut new = server.connect("a1").await;
    assert_eq!(
        old.ended(PROMPT).await,
        Ended::Closed(4000, "replaced".into())
    );
    let again = new.expect("command").await;
    assert_eq!(
        again["data"]["command_id"],
        id.as_str(),
        "unacked command redelivered on the new socket"
    );
    assert_eq!(again["data"]["attempt"], 2);
    new.ack(&id, true).await;
    server.wait_status(&id, "completed", PROMPT).await;
    assert!(new.round_trip().await.is_empty(), "the new socket stays up");
    let agent = server
        .wait_agent("a1", |a| a["history"][1]["reason"] == "replaced")
        .await;
    assert_eq!(agent["connected"], true);
    assert!(
        agent["history"][0]["disconnected_at"].is_null(),
        "the new connection is open"
    );
}

#[tokio::test]
async fn ws_conn_3_silent_agent_is_closed_4008_within_tolerance() {
    let timeout = Duration::from_millis(1000);
    let server = TestServer::start_with(|c| c.ping_timeout = timeout).await;
    let mut agent = server.agent("a1").await;
    let started = Instant::now();
    assert_eq!(
        agent.ended(timeout * 3).await,
        Ended::Closed(4008, "ping timeout".into())
    );
    let waited = started.elapsed();
    // WS-DLV-8: between ping_timeout and 1.5 × ping_timeout.
    assert!(
        waited >= timeout && waited <= timeout * 3 / 2,
        "closed after {waited:?}"
    );
    wait_until_disconnected(&server, "a1").await;
    let (_, body) = server.get("/api/agents/a1").await;
    assert_eq!(body["history"][0]["reason"], "ping_timeout");
}

#[tokio::test]
async fn ws_conn_3_any_frame_keeps_the_socket_alive() {
    let timeout = Duration::from_millis(600);
    let server = TestServer::start_with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.ping_timeout = timeout;
    })
    .await;
    let mut agent = server.agent("a1").await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < timeout * 3 {
        // Alternate application pings and WebSocket-level Ping frames.
        if n % 2 == 0 {
            agent.round_trip().await;
        } else {
            agent.ws.send(Message::Ping(vec![7].into())).await.unwrap();
        }
        n += 1;
        tokio::time::sleep(timeout / 4).await;
    }
    assert!(
        agent.round_trip().await.is_empty(),
        "still open after 3× the ping timeout"
    );
}

#[tokio::test]
async fn ws_conn_4_normal_close_is_recorded_at_once() {
    let server = TestServer::start().await;
    let agent = server.agent("a1").await;
    agent.close().await;
    wait_until_disconnected(&server, "a1").await;
    let (_, body) = server.get("/api/agents/a1").await;
    assert_eq!(body["history"][0]["reason"], "normal");
    assert!(body["history"][0]["disconnected_at"].is_string());
}

#[tokio::test]
async fn ws_conn_5_shutdown_closes_1012_and_queued_commands_survive() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    server.provision("a2").await;
    let queued = server
        .send_command("a2", json!({"command_type": "send_message"}))
        .await;
    let (dir, config) = server.stop().await;
    assert_eq!(
        agent.ended(PROMPT).await,
        Ended::Closed(1012, "service restart".into())
    );

    let server = TestServer::start_in(dir, config).await;
    let mut agent = server.connect("a2").await;
    assert_eq!(
        agent.expect("command").await["data"]["command_id"],
        queued.as_str()
    );
}

#[tokio::test]
async fn ws_conn_6_history_keeps_connects_disconnects_and_addresses() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        let agent = server.agent("a1").await;
        agent.close().await;
        wait_until_disconnected(&server, "a1").await;
    }
    let (_, body) = server.get("/api/agents/a1").await;
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for entry in history {
        assert!(entry["connected_at"].is_string());
        assert_eq!(entry["reason"], "normal");
        assert!(entry["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "edge_reconnects_total"), 2.0);
}

#[tokio::test]
async fn ws_conn_3_websocket_ping_frames_get_pong_frames() {
    use futures_util::StreamExt;
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    agent
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(PROMPT, agent.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer, Message::Pong(b"are you there".to_vec().into()));
}
