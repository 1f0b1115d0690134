//! §6 HTTP fallback: sync, HTTP ack, registration, JSON errors.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, Value) {
    let mut request = server.http.post(server.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn ws_http_1_sync_returns_pending_commands_and_acks_events() {
    let server = TestServer::start().await;
    let token = server.provision("a1").await;
    let low = server
        .send_command(
            "a1",
            json!({"command_type": "send_message", "priority": "low"}),
        )
        .await;
    let high = server
        .send_command(
            "a1",
            json!({"command_type": "send_message", "priority": "high"}),
        )
        .await;
    let body = json!({
        "edge_agent_id": "a1",
        "pending_events": [{"event_id": "e1", "event_type": "message_sent", "details": {}}],
        "status": {"uptime_seconds": 5},
    });
    let (status, answer) = post(&server, "/edge/sync", Some(&token), &[], body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let ids: Vec<&str> = answer["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [high.as_str(), low.as_str()], "WS-DLV-4 order");
    assert_eq!(answer["ack_events"], json!(["e1"]));
    assert_eq!(answer["config_updates"]["sync_interval"], 15);
    let sent = server.command_status(&high).await;
    assert_eq!(
        (sent["status"].as_str(), sent["delivered_via"].as_str()),
        (Some("sent"), Some("http"))
    );

    // Not due again before the redelivery time; the repeated event is acked again.
    let (_, again) = post(&server, "/edge/sync", Some(&token), &[], body).await;
    assert_eq!(again["commands"], json!([]));
    assert_eq!(again["ack_events"], json!(["e1"]));
    let (_, agent) = server.get("/api/agents/a1").await;
    assert_eq!(agent["last_status"]["uptime_seconds"], 5);
}

#[tokio::test]
async fn ws_http_1_an_agent_syncs_only_as_itself() {
    let server = TestServer::start().await;
    let token = server.provision("a1").await;
    server.provision("a2").await;
    let (status, _) = post(
        &server,
        "/edge/sync",
        Some(&token),
        &[],
        json!({"edge_agent_id": "a2"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &server,
        "/edge/sync",
        None,
        &[],
        json!({"edge_agent_id": "a1"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(
        &server,
        "/edge/sync",
        Some(EDGE_SECRET),
        &[],
        json!({"edge_agent_id": "a2"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the shared secret may name any known agent"
    );
}

#[tokio::test]
async fn ws_dlv_5_sync_redelivers_after_ack_timeout() {
    let server =
        TestServer::start_with(|c| c.ack_timeout = std::time::Duration::from_millis(200)).await;
    let token = server.provision("a1").await;
    let id = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let sync = || {
        post(
            &server,
            "/edge/sync",
            Some(&token),
            &[],
            json!({"edge_agent_id": "a1"}),
        )
    };
    assert_eq!(sync().await.1["commands"][0]["attempt"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(450)).await; // ack_timeout + backoff 200 ms
    let second = sync().await.1;
    assert_eq!(
        (
            second["commands"][0]["command_id"].as_str(),
            second["commands"][0]["attempt"].as_u64()
        ),
        (Some(id.as_str()), Some(2))
    );
}

#[tokio::test]
async fn ws_http_2_ack_over_http_in_both_forms() {
    let server = TestServer::start().await;
    let token = server.provision("a1").await;
    let a = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let b = server
        .send_command("a1", json!({"command_type": "send_message"}))
        .await;
    let (status, body) = post(
        &server,
        "/edge/command/ack",
        Some(&token),
        &[],
        json!({"command_id": a, "success": true}),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"acknowledged": true}))
    );
    let header = [("x-edge-agent-id", "a1")];
    let (status, _) = post(
        &server,
        "/edge/ack_command",
        Some(EDGE_SECRET),
        &header,
        json!({"command_id": b, "status": "failed", "error": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.command_status(&a).await["status"], "completed");
    assert_eq!(server.command_status(&b).await["status"], "failed");

    let (status, body) = post(
        &server,
        "/edge/command/ack",
        Some(EDGE_SECRET),
        &[],
        json!({"command_id": a, "success": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("missing_agent_id"))
    );
    let (status, body) = post(
        &server,
        "/edge/command/ack",
        Some(&token),
        &[],
        json!({"command_id": "nope", "success": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_command"))
    );
    let (status, _) = post(
        &server,
        "/edge/command/ack",
        Some(&token),
        &[],
        json!({"success": true}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ws_http_3_registration_is_idempotent_per_phone() {
    let server = TestServer::start().await;
    let body = json!({"user_phone": "+13105551234", "registration_token": REGISTRATION_TOKEN});
    let (status, first) = post(&server, "/edge/register", None, &[], body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, second) = post(&server, "/edge/register", None, &[], body).await;
    assert_eq!(first["edge_agent_id"], second["edge_agent_id"]);
    let id = first["edge_agent_id"].as_str().unwrap();
    let token = first["auth_token"].as_str().unwrap();
    let mut agent = server
        .try_connect(id, Some(token), &[])
        .await
        .expect("the registered token opens the socket");
    agent.expect("connected").await;

    let wrong = json!({"user_phone": "+13105551234", "registration_token": "guess"});
    assert_eq!(
        post(&server, "/edge/register", None, &[], wrong).await.0,
        StatusCode::UNAUTHORIZED
    );
    let bad_phone = json!({"user_phone": "call me", "registration_token": REGISTRATION_TOKEN});
    assert_eq!(
        post(&server, "/edge/register", None, &[], bad_phone)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn ws_http_3_registration_disabled_without_a_token() {
    let server = TestServer::start_with(|c| c.registration_token = None).await;
    let body = json!({"user_phone": "+13105551234", "registration_token": "x"});
    let (status, answer) = post(&server, "/edge/register", None, &[], body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("registration_disabled"))
    );
}

#[tokio::test]
async fn ws_http_4_every_error_is_json() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/api/nowhere").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let response = server
        .http
        .delete(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    let huge = "x".repeat(100 * 1024);
    let response = server
        .http
        .post(server.url("/edge/sync"))
        .bearer_auth(EDGE_SECRET)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = post(
        &server,
        "/edge/register",
        None,
        &[],
        Value::String("{".into()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].is_string());
    let health: Value = server
        .http
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
}
