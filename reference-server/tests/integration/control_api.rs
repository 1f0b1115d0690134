//! §8 Control API and §9 metrics.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn ws_api_1_only_the_admin_token_opens_the_control_api() {
    let server = TestServer::start().await;
    let agent_token = server.provision("a1").await;
    for token in [EDGE_SECRET, agent_token.as_str(), "nonsense"] {
        let response = server
            .http
            .get(server.url("/api/agents"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        server
            .http
            .get(server.url("/api/stats"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = server
        .try_connect("a1", Some(ADMIN_TOKEN), &[])
        .await
        .err()
        .expect("admin token opens no socket");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn provisioning_answers_201_then_200() {
    let server = TestServer::start().await;
    let (status, body) = server
        .api(
            Method::PUT,
            "/api/agents/a1",
            Some(json!({"user_phone": "+15550001"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["edge_agent_id"], "a1");
    assert!(body["auth_token"].is_string());
    let (status, _) = server.api(Method::PUT, "/api/agents/a1", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.api(Method::PUT, "/api/agents/bad%20id", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ws_api_2_command_ids_are_idempotent_per_agent() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    server.provision("a2").await;
    let body = json!({"command_type": "send_message", "command_id": "order-17"});
    let (status, first) = server.command("a1", body.clone()).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (StatusCode::ACCEPTED, Some("queued"))
    );
    let (status, again) = server.command("a1", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, server.command_status("order-17").await);
    let (status, conflict) = server.command("a2", body).await;
    assert_eq!(
        (status, conflict["error"].as_str()),
        (StatusCode::CONFLICT, Some("command_id_conflict"))
    );
}

#[tokio::test]
async fn ws_api_2_full_queue_refuses_and_never_drops() {
    let server = TestServer::start_with(|c| c.max_pending = 3).await;
    server.provision("a1").await;
    let mut accepted = Vec::new();
    for i in 0..3 {
        accepted.push(
            server
                .send_command(
                    "a1",
                    json!({"command_type": "send_message", "command_id": format!("c{i}")}),
                )
                .await,
        );
    }
    let (status, body) = server
        .command("a1", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("queue_full"))
    );
    let (status, _) = server
        .command(
            "a1",
            json!({"command_type": "send_message", "command_id": "c0"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a repeat is answered even when the queue is full"
    );
    let mut agent = server.connect("a1").await;
    for id in &accepted {
        let command = agent.expect("command").await;
        assert_eq!(command["data"]["command_id"], id.as_str());
        agent.ack(id, true).await;
    }
    agent.round_trip().await;
    assert_eq!(
        server
            .command("a1", json!({"command_type": "send_message"}))
            .await
            .0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn ws_api_2_bad_bodies_and_unknown_agents() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    for body in [
        json!({}),
        json!({"command_type": "Send-Message"}),
        json!({"command_type": "x", "priority": "urgent"}),
        json!({"command_type": "x", "ttl_s": 0}),
    ] {
        let (status, answer) = server.command("a1", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(answer["message"].is_string());
    }
    let (status, _) = server.command("ghost", json!({"command_type": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get("/api/commands/ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ws_api_3_state_changes_show_within_100_ms() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    assert_eq!(server.command_status(&id).await["status"], "sent");
    agent.ack(&id, true).await;
    let started = std::time::Instant::now();
    server
        .wait_status(&id, "completed", std::time::Duration::from_millis(100))
        .await;
    assert!(started.elapsed() <= std::time::Duration::from_millis(100));
}

#[tokio::test]
async fn agents_list_filters_by_connection_and_stats_count() {
    let server = TestServer::start().await;
    let _online = server.agent("on").await;
    server.provision("off").await;
    let (_, connected) = server.get("/api/agents?connected=true").await;
    let ids: Vec<&str> = connected
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["edge_agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["on"]);
    let (_, all) = server.get("/api/agents").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    server
        .send_command("off", json!({"command_type": "send_message"}))
        .await;
    let (status, stats) = server.get("/api/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["connections"]["active"], 1);
    assert_eq!(stats["commands"]["queued"], 1);
}

#[tokio::test]
async fn ws_obs_1_metrics_cover_connections_commands_acks_and_latency() {
    let server = TestServer::start().await;
    let mut agent = server.agent("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    agent.expect("command").await;
    agent.ack(&id, true).await;
    agent.round_trip().await;
    server.wait_status(&id, "completed", PROMPT).await;
    let _ = server.try_connect("a1", Some("wrong"), &[]).await;
    let text = server.metrics().await;
    assert_eq!(metric(&text, "edge_connections_active"), 1.0);
    assert_eq!(metric(&text, "edge_connections_total"), 1.0);
    assert_eq!(
        metric(
            &text,
            r#"edge_connection_failures_total{reason="unauthorized"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&text, r#"edge_commands_total{outcome="accepted"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"edge_commands_total{outcome="completed"}"#),
        1.0
    );
    assert_eq!(
        metric(&text, r#"edge_delivery_attempts_total{channel="ws"}"#),
        1.0
    );
    assert_eq!(metric(&text, r#"edge_acks_total{result="completed"}"#), 1.0);
    assert_eq!(metric(&text, "edge_command_first_ack_seconds_count"), 1.0);
    assert_eq!(metric(&text, "edge_command_completed_seconds_count"), 1.0);
    assert_eq!(metric(&text, "edge_pings_total"), 1.0);
    assert_eq!(metric(&text, "edge_pongs_total"), 1.0);
    agent.close().await;
    crate::messages::wait_until_disconnected(&server, "a1").await;
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, r#"edge_disconnects_total{reason="normal"}"#),
        1.0
    );
}
