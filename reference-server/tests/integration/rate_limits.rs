//! §7 Rate limits.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

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

/// A raw upgrade request (or, with `websocket` false, a plain GET of the
/// endpoint): the answer's status and `Retry-After` in seconds.
async fn upgrade_answer(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
    websocket: bool,
) -> (StatusCode, Option<u64>) {
    let mut request = reqwest::Client::new().get(server.url(&format!("/edge/ws{query}")));
    if websocket {
        request = request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("answer");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("whole seconds"));
    (response.status(), retry_after)
}

#[tokio::test]
async fn ws_rate_1_an_agent_past_its_limit_gets_429_before_any_other_check() {
    let server = TestServer::start_with(|c| c.rate_connects_per_min = 2).await;
    server.provision("a1").await;
    server.provision("a2").await;
    for _ in 0..2 {
        server.connect("a1").await.close().await;
    }
    let wrong = "Bearer wrong";
    let right = format!("Bearer {EDGE_SECRET}");
    let cases = [
        ("wrong token", vec![("authorization", wrong)], true),
        ("no token", vec![], true),
        (
            "X-Edge-Agent-Id differs",
            vec![("authorization", &right), ("x-edge-agent-id", "a2")],
            true,
        ),
        ("not a WebSocket", vec![("authorization", &right)], false),
        ("right token", vec![("authorization", &right)], true),
    ];
    for (what, headers, websocket) in cases {
        let (status, retry_after) =
            upgrade_answer(&server, "?edge_agent_id=a1", &headers, websocket).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}");
        assert!(
            retry_after.is_some_and(|s| (1..=60).contains(&s)),
            "{what}: Retry-After {retry_after:?}"
        );
    }
    // The limit is a1's: a stranger's wrong token for a2 is still a 401,
    // and it counted nothing against a2, which still connects.
    let (status, _) = upgrade_answer(
        &server,
        "?edge_agent_id=a2",
        &[("authorization", wrong)],
        true,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut a2 = server.connect("a2").await;
    assert!(a2.round_trip().await.is_empty());
    assert_eq!(
        metric(
            &server.metrics().await,
            "edge_connection_failures_total{reason=\"rate_limited\"}"
        ),
        5.0
    );
}

#[tokio::test]
async fn ws_rate_1_an_address_past_its_limit_gets_429_even_for_a_bad_request() {
    let server = TestServer::start_with(|c| c.rate_rejects_per_min = 2).await;
    server.provision("a1").await;
    for _ in 0..2 {
        let (status, _) = upgrade_answer(
            &server,
            "?edge_agent_id=a1",
            &[("authorization", "Bearer wrong")],
            true,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let right = format!("Bearer {EDGE_SECRET}");
    let cases: [(&str, &str, bool); 4] = [
        ("no edge_agent_id", "", true),
        ("invalid edge_agent_id", "?edge_agent_id=no%20spaces", true),
        ("not a WebSocket", "?edge_agent_id=a1", false),
        ("a valid upgrade", "?edge_agent_id=a1", true),
    ];
    for (what, query, websocket) in cases {
        let (status, retry_after) =
            upgrade_answer(&server, query, &[("authorization", &right)], websocket).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}");
        assert!(
            retry_after.is_some_and(|s| (1..=60).contains(&s)),
            "{what}: Retry-After {retry_after:?}"
        );
    }
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

/// Binary messages count too (and WebSocket control frames do not): past
/// the limit a binary message gets `rate_limited`, not `unsupported_frame`,
/// and a `ping` after them is not answered.
#[tokio::test]
async fn ws_rate_2_binary_messages_count_and_control_frames_do_not() {
    let server = TestServer::start_with(|c| c.rate_messages_per_min = 5).await;
    let mut agent = server.agent("a1").await;
    for _ in 0..10 {
        agent.send(Message::Ping(Vec::new().into())).await;
    }
    for _ in 0..5 {
        agent.send(Message::Binary(vec![0].into())).await;
        assert_eq!(
            agent.expect("error").await["data"]["code"],
            "unsupported_frame"
        );
    }
    agent.send(Message::Binary(vec![0].into())).await;
    assert_eq!(agent.expect("error").await["data"]["code"], "rate_limited");
    agent.send_json(json!({"type": "ping"})).await;
    assert_eq!(agent.expect("error").await["data"]["code"], "rate_limited");
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

#[tokio::test]
async fn ws_rate_3_a_reconnect_does_not_earn_another_pong() {
    let server = TestServer::start_with(|c| c.rate_ping_interval = Duration::from_secs(10)).await;
    let mut agent = server.agent("a1").await;
    agent.send_json(json!({"type": "ping"})).await;
    agent.expect("pong").await;
    agent.close().await;
    let mut again = server.connect("a1").await;
    again.send_json(json!({"type": "ping"})).await;
    assert_eq!(again.expect("error").await["data"]["code"], "rate_limited");
}
