//! §5 Command delivery.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn ws_cmd_1_command_carries_every_field() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let parameters = json!({"thread_id": "+13105551234", "message": "Hello"});
    let body = json!({"command_type": "send_message", "parameters": parameters, "priority": "high", "ttl_s": 60});
    let id = server.send_command("a1", body).await;
    let command = agent.expect("command").await;
    let data = &command["data"];
    assert_eq!(data["command_id"], id.as_str());
    assert_eq!(data["command_type"], "send_message");
    assert_eq!(data["parameters"], parameters);
    assert_eq!(
        data["payload"], parameters,
        "[compat] payload copies parameters"
    );
    assert_eq!(data["priority"], "high");
    assert_eq!(data["attempt"], 1);
    assert!(data["created_at"].is_string() && data["expires_at"].is_string());
}

#[tokio::test]
async fn ws_dlv_1_offline_command_waits_and_is_pushed_on_connect() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let (status, body) = server
        .command("a1", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(body["status"], "queued", "{status} {body}");
    let id = body["command_id"].as_str().unwrap().to_string();
    let mut agent = server.connect("a1").await;
    assert_eq!(
        agent.expect("command").await["data"]["command_id"],
        id.as_str()
    );
    let (_, online) = server
        .command("a1", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(online["status"], "sent");
}

#[tokio::test]
async fn ws_ack_2_both_dialects_and_progress_states() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let a = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let b = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let c = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    for _ in 0..3 {
        agent.expect("command").await;
    }
    agent.ack(&a, true).await;
    agent.send_json(json!({"type": "command_ack", "data": {"command_id": b, "status": "failed", "error": "no network"}})).await;
    agent
        .send_json(json!({"type": "command_ack", "data": {"command_id": c, "status": "received"}}))
        .await;
    assert!(agent.round_trip().await.is_empty(), "acks get no answer");
    assert_eq!(server.command_status(&a).await["status"], "completed");
    let failed = server.command_status(&b).await;
    assert_eq!(
        (failed["status"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("no network"))
    );
    assert_eq!(server.command_status(&c).await["status"], "received");
    agent
        .send_json(json!({"type": "command_ack", "data": {"command_id": c, "status": "executing"}}))
        .await;
    agent.send_json(json!({"type": "command_ack", "data": {"command_id": c, "status": "completed", "completed_at": "2026-01-01T00:00:00Z"}})).await;
    agent.round_trip().await;
    let done = server.command_status(&c).await;
    assert_eq!(done["status"], "completed");
    assert!(done["acked_at"].is_string() && done["completed_at"].is_string());
}

#[tokio::test]
async fn ws_ack_3_acks_are_idempotent_and_final_states_stay() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    agent.ack(&id, true).await;
    agent.ack(&id, true).await;
    agent.ack(&id, false).await;
    agent
        .send_json(json!({"type": "command_ack", "data": {"command_id": id, "status": "received"}}))
        .await;
    assert!(agent.round_trip().await.is_empty());
    let body = server.command_status(&id).await;
    assert_eq!(body["status"], "completed");
    assert!(body.get("error").is_none());
}

#[tokio::test]
async fn ws_ack_3_unknown_and_foreign_commands_get_unknown_command() {
    let server = TestServer::start().await;
    let mut a1 = server.agent("a1").await;
    server.provision("the-other-one").await;
    let foreign = server
        .send_command("the-other-one", json!({"command_type": "send_message"}))
        .await;
    for id in ["never-existed", foreign.as_str()] {
        a1.ack(id, true).await;
        let error = a1.expect("error").await;
        assert_eq!(error["data"]["code"], "unknown_command");
        assert!(
            !error.to_string().contains("the-other-one"),
            "never reveals the other agent"
        );
    }
    assert_eq!(server.command_status(&foreign).await["status"], "queued");
}

#[tokio::test]
async fn ws_dlv_3_unacked_command_is_redelivered_with_backoff_then_dead() {
    let ack_timeout = Duration::from_millis(400);
    let server = TestServer::start_with(|c| {
        c.ack_timeout = ack_timeout;
        c.backoff_base = Duration::from_millis(200);
        c.max_attempts = 3;
    })
    .await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let mut arrivals = Vec::new();
    for attempt in 1..=3 {
        let command = agent.expect("command").await;
        assert_eq!(command["data"]["command_id"], id.as_str());
        assert_eq!(command["data"]["attempt"], attempt);
        arrivals.push(Instant::now());
    }
    // tₙ₊₁ = tₙ + ack_timeout + 200 ms · 2ⁿ⁻¹ (within 10 % or 1 s; loopback is far tighter).
    let gap1 = arrivals[1] - arrivals[0];
    let gap2 = arrivals[2] - arrivals[1];
    assert!(
        gap1 >= Duration::from_millis(600) && gap1 < Duration::from_millis(900),
        "gap 1 {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(800) && gap2 < Duration::from_millis(1100),
        "gap 2 {gap2:?}"
    );
    assert!(
        agent
            .recv_within(Duration::from_millis(1200))
            .await
            .is_none(),
        "no fourth attempt"
    );
    let dead = server
        .wait_status(&id, "dead", Duration::from_secs(2))
        .await;
    assert_eq!(dead["attempts"], 3);
}

#[tokio::test]
async fn ws_dlv_3_progress_ack_stops_redelivery() {
    let server = TestServer::start_with(|c| c.ack_timeout = Duration::from_millis(300)).await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    agent
        .send_json(
            json!({"type": "command_ack", "data": {"command_id": id, "status": "executing"}}),
        )
        .await;
    assert!(
        agent
            .recv_within(Duration::from_millis(1500))
            .await
            .is_none(),
        "no redelivery after executing"
    );
    assert_eq!(server.command_status(&id).await["status"], "executing");
}

#[tokio::test]
async fn ws_dlv_4_pending_commands_arrive_on_connect_in_priority_order() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let mut expected_high = Vec::new();
    let mut expected_normal = Vec::new();
    let mut expected_low = Vec::new();
    for i in 0..4 {
        for (priority, list) in [
            ("low", &mut expected_low),
            ("normal", &mut expected_normal),
            ("high", &mut expected_high),
        ] {
            let id = server.send_command("a1", json!({"command_type": "send_message", "priority": priority, "parameters": {"i": i}})).await;
            list.push(id);
        }
    }
    let immediate = server
        .send_command(
            "a1",
            json!({"command_type": "send_message", "priority": "immediate"}),
        )
        .await;
    expected_high.push(immediate);
    let expected: Vec<String> = [expected_high, expected_normal, expected_low].concat();
    let mut agent = server.connect("a1").await;
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(
            agent.expect("command").await["data"]["command_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn ws_dlv_4_progress_commands_are_repushed_keeping_their_state() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    agent
        .send_json(json!({"type": "command_ack", "data": {"command_id": id, "status": "received"}}))
        .await;
    agent.round_trip().await;
    agent.close().await;
    let mut agent = server.connect("a1").await;
    let again = agent.expect("command").await;
    assert_eq!(
        (
            again["data"]["command_id"].as_str(),
            again["data"]["attempt"].as_u64()
        ),
        (Some(id.as_str()), Some(2))
    );
    assert_eq!(server.command_status(&id).await["status"], "received");
}

#[tokio::test]
async fn ws_dlv_7_command_past_its_ttl_expires_and_is_never_sent() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message", "ttl_s": 1}))
        .await;
    let expired = server
        .wait_status(&id, "expired", Duration::from_secs(3))
        .await;
    assert_eq!(expired["attempts"], 0);
    let mut agent = server.connect("a1").await;
    assert!(
        agent
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "an expired command is never sent"
    );
}

#[tokio::test]
async fn ws_api_4_dead_and_expired_stay_listable_and_can_be_retried() {
    let server = TestServer::start_with(|c| {
        c.ack_timeout = Duration::from_millis(200);
        c.max_attempts = 1;
    })
    .await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    server
        .wait_status(&id, "dead", Duration::from_secs(3))
        .await;
    let (_, dead) = server.get("/api/agents/a1/commands?status=dead").await;
    assert_eq!(dead[0]["command_id"], id.as_str());

    let (status, body) = server
        .api(
            reqwest::Method::POST,
            &format!("/api/commands/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let again = agent.expect("command").await;
    assert_eq!(
        (
            again["data"]["command_id"].as_str(),
            again["data"]["attempt"].as_u64()
        ),
        (Some(id.as_str()), Some(1))
    );
    agent.ack(&id, true).await;
    server.wait_status(&id, "completed", PROMPT).await;
    let (status, body) = server
        .api(
            reqwest::Method::POST,
            &format!("/api/commands/{id}/retry"),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert_eq!(body["error"], "not_retryable");
}
