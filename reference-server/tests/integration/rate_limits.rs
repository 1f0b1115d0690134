//! §7 Rate limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn ws_rate_1_connection_attempts_per_agent_are_limited_with_retry_after() {
    let server = TestServer::start_with(|c| c.rate_connects_per_min = 3).await;
    server.provision("a1").await;
    server.provision("a2").await;
    for _ in 0..3 {
        let agent = server.connect("a1").await;
        agent.close().await;
    }
    let (status, body) = server
        .try_connect("a1", Some(EDGE_SECRET), &[])
        .await
        .err()
        .expect("limited");
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let raw = reqwest::Client::new()
        .get(server.url("/edge/ws?edge_agent_id=a1"))
        .bearer_auth(EDGE_SECRET)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = raw.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    // Another agent is not affected, and commands still reach it.
    let mut other = server.connect("a2").await;
    let id = server
        .send_command("a2", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(
        other.expect("command").await["data"]["command_id"],
        id.as_str()
    );
}

#[tokio::test]
async fn ws_rate_1_strangers_cannot_lock_an_agent_out() {
    let server = TestServer::start_with(|c| {
        c.rate_connects_per_min = 3;
        c.rate_rejects_per_min = 0;
    })
    .await;
    server.provision("a1").await;
    for _ in 0..10 {
        let (status, _) = server
            .try_connect("a1", Some("wrong"), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let mut agent = server.connect("a1").await;
    assert!(agent.round_trip().await.is_empty());
}

#[tokio::test]
async fn ws_rate_1_refused_upgrades_are_limited_per_address() {
    let server = TestServer::start_with(|c| c.rate_rejects_per_min = 3).await;
    server.provision("a1").await;
    for _ in 0..3 {
        let (status, _) = server
            .try_connect("a1", Some("wrong"), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Past the limit, even a correct upgrade from that address gets 429 first.
    let (status, _) = server
        .try_connect("a1", Some(EDGE_SECRET), &[])
        .await
        .err()
        .expect("limited");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn ws_rate_2_messages_past_the_limit_get_rate_limited_and_are_ignored() {
    let server = TestServer::start_with(|c| c.rate_messages_per_min = 5).await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    for _ in 0..5 {
        agent.send_json(json!({"type": "status", "data": {}})).await;
    }
    agent.ack(&id, true).await;
    let error = agent.expect("error").await;
    assert_eq!(error["data"]["code"], "rate_limited");
    assert_eq!(
        server.command_status(&id).await["status"],
        "sent",
        "the limited ack was ignored"
    );
    // Delivery to the agent goes on.
    let next = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(
        agent.expect("command").await["data"]["command_id"],
        next.as_str()
    );
}

#[tokio::test]
async fn ws_rate_3_at_most_one_ping_answered_per_interval() {
    let server = TestServer::start_with(|c| c.rate_ping_interval = Duration::from_secs(10)).await;
    let mut agent = server.agent("a1").await;
    agent.send_json(json!({"type": "ping"})).await;
    agent.expect("pong").await;
    agent.send_json(json!({"type": "ping"})).await;
    assert_eq!(agent.expect("error").await["data"]["code"], "rate_limited");
}
