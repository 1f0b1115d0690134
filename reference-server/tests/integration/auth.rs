//! §2 Authentication and authorization.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn ws_auth_1_missing_token_is_refused_with_401() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let (status, body) = server
        .try_connect("a1", None, &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn ws_auth_1_wrong_or_malformed_token_is_refused() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    for token in ["wrong", "", ADMIN_TOKEN] {
        let (status, _) = server
            .try_connect("a1", Some(token), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
    }
    let basic = [("authorization", "Basic dXNlcjpwYXNz")];
    let (status, _) = server
        .try_connect("a1", None, &basic)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn ws_auth_2_refusal_is_json_and_never_echoes_the_token() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let (_, body) = server
        .try_connect("a1", Some("s3cret-guess"), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].is_string());
    assert!(!body.to_string().contains("s3cret-guess"));
}

#[tokio::test]
async fn ws_auth_3_agent_id_is_required_and_checked() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let header = [("x-edge-agent-id", "a1")];
    let base = format!("ws://{}/edge/ws", server.addr);
    for url in [
        base.clone(),
        format!("{base}?edge_agent_id="),
        format!("{base}?edge_agent_id=bad%20id"),
    ] {
        let (status, _) = connect_url(&url, Some(EDGE_SECRET), &header)
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
    }
    let long = "a".repeat(129);
    let (status, _) = server
        .try_connect(&long, Some(EDGE_SECRET), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let other = [("x-edge-agent-id", "a2")];
    let (status, body) = server
        .try_connect("a1", Some(EDGE_SECRET), &other)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The header may duplicate the query parameter.
    let mut agent = server
        .try_connect("a1", Some(EDGE_SECRET), &header)
        .await
        .expect("accepted");
    agent.expect("connected").await;
}

#[tokio::test]
async fn ws_auth_4_unknown_agent_is_refused_with_403() {
    let server = TestServer::start().await;
    let (status, body) = server
        .try_connect("stranger", Some(EDGE_SECRET), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "unknown_agent");
}

#[tokio::test]
async fn ws_auth_5_hmac_token_opens_only_its_own_socket() {
    let server = TestServer::start().await;
    let token = server.provision("a1").await;
    server.provision("a2").await;
    let mut own = server
        .try_connect("a1", Some(&token), &[])
        .await
        .expect("own token opens");
    assert_eq!(own.expect("connected").await["data"]["edge_agent_id"], "a1");
    let (status, _) = server
        .try_connect("a2", Some(&token), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "one agent's token never opens another's socket"
    );
}

#[tokio::test]
async fn ws_auth_5_expired_and_forged_tokens_are_refused() {
    let server = TestServer::start().await;
    server.provision("a1").await;
    let day_ago = edge_server::wire::now_millis() / 1000 - 24 * 3600 - 10;
    let expired = edge_server::auth::mint_hmac_token(EDGE_SECRET, "a1", "", day_ago);
    let forged =
        edge_server::auth::mint_hmac_token("not-the-secret", "a1", "", day_ago + 24 * 3600);
    for token in [expired, forged] {
        let (status, _) = server
            .try_connect("a1", Some(&token), &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn ws_auth_5_token_kinds_can_be_restricted() {
    let server =
        TestServer::start_with(|c| c.token_kinds = edge_server::config::TokenKinds::Hmac).await;
    let token = server.provision("a1").await;
    let (status, _) = server
        .try_connect("a1", Some(EDGE_SECRET), &[])
        .await
        .err()
        .expect("shared secret refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut agent = server
        .try_connect("a1", Some(&token), &[])
        .await
        .expect("hmac accepted");
    agent.expect("connected").await;
}

#[tokio::test]
async fn ws_auth_6_tls_serves_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/health", server.addr.port());
    let health: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    let put = format!("https://localhost:{}/api/agents/a1", server.addr.port());
    let response = client
        .put(&put)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let mut roots =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://localhost:{}/edge/ws?edge_agent_id=a1",
            server.addr.port()
        ))
        .unwrap();
    roots.headers_mut().insert(
        "authorization",
        format!("Bearer {EDGE_SECRET}").parse().unwrap(),
    );
    let mut store = rustls::RootCertStore::empty();
    store.add(cert.cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(tls));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(roots, None, false, Some(connector))
            .await
            .unwrap();
    let mut agent = Agent { ws };
    agent.expect("connected").await;
    // Plain HTTP to a TLS port gets nothing useful.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/health", server.addr.port())).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
