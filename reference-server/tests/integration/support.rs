//! Test support: a real edge-server on an ephemeral loopback port with a
//! temporary SQLite file, a raw WebSocket agent, and control-API calls.

use std::time::Duration;

use edge_server::{Config, RunningServer};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const EDGE_SECRET: &str = "test-edge-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const REGISTRATION_TOKEN: &str = "test-registration-token";

/// How long a test waits for something that should happen at once.
pub const PROMPT: Duration = Duration::from_secs(5);

/// Short timeouts and no rate limits, so tests are quick and independent;
/// tests about a limit turn it on.
pub fn test_config(dir: &TempDir) -> Config {
    let db = format!("sqlite://{}", dir.path().join("edge.db").display());
    let mut config = Config::for_secrets(EDGE_SECRET, ADMIN_TOKEN, &db);
    config.registration_token = Some(REGISTRATION_TOKEN.into());
    config.ping_interval = Duration::from_millis(500);
    config.ping_timeout = Duration::from_secs(30);
    config.ack_timeout = Duration::from_secs(30);
    config.backoff_base = Duration::from_millis(200);
    config.backoff_cap = Duration::from_secs(2);
    config.rate_connects_per_min = 0;
    config.rate_rejects_per_min = 0;
    config.rate_messages_per_min = 0;
    config.rate_ping_interval = Duration::ZERO;
    config.shutdown_grace = Duration::from_secs(5);
    config
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub addr: std::net::SocketAddr,
    pub config: Config,
    pub dir: TempDir,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(&dir);
        adjust(&mut config);
        TestServer::start_in(dir, config).await
    }

    /// Starts on the PostgreSQL database at `url` (shared by every server
    /// started on it: instances of one cluster).
    pub async fn start_pg(url: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let url = url.to_string();
        TestServer::start_with(move |config| {
            config.database_url = url;
            adjust(config);
        })
        .await
    }

    /// This server's instance name.
    pub fn instance(&self) -> String {
        let server = self.server.as_ref().expect("running");
        server.state.cluster.instance().to_string()
    }

    /// Starts on an existing directory (a restart on the same database).
    pub async fn start_in(dir: TempDir, config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = edge_server::start(config.clone(), listener)
            .await
            .expect("server starts");
        TestServer {
            addr: server.addr,
            server: Some(server),
            config,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Graceful shutdown; returns the directory so the database can be reused.
    pub async fn stop(mut self) -> (TempDir, Config) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        (self.dir, self.config)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, agent: &str) -> String {
        format!("ws://{}/edge/ws?edge_agent_id={}", self.addr, agent)
    }

    /// A control-API call with the admin token.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A call with `token` and a body sent as this exact text; the answer's
    /// status and text as it came (for WS-CMD-2, which is about the text).
    pub async fn post_text(&self, path: &str, token: &str, body: &str) -> (StatusCode, String) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    /// `GET` on the control API; the answer's text as it came.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.text().await.expect("body")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.api(reqwest::Method::GET, path, None).await
    }

    /// PUT /api/agents/{id}; returns the agent's HMAC token.
    pub async fn provision(&self, agent: &str) -> String {
        let (status, body) = self
            .api(
                reqwest::Method::PUT,
                &format!("/api/agents/{agent}"),
                Some(json!({})),
            )
            .await;
        assert!(status.is_success(), "provision {agent}: {status} {body}");
        body["auth_token"].as_str().expect("auth_token").to_string()
    }

    /// POST a command; returns (status, body).
    pub async fn command(&self, agent: &str, body: Value) -> (StatusCode, Value) {
        self.api(
            reqwest::Method::POST,
            &format!("/api/agents/{agent}/commands"),
            Some(body),
        )
        .await
    }

    /// POST a command that must be accepted; returns its id.
    pub async fn send_command(&self, agent: &str, body: Value) -> String {
        let (status, body) = self.command(agent, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["command_id"].as_str().expect("command_id").to_string()
    }

    pub async fn command_status(&self, command_id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/commands/{command_id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the control API until the command has `status` (WS-API-3 allows 100 ms).
    pub async fn wait_status(&self, command_id: &str, status: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let body = self.command_status(command_id).await;
            if body["status"] == status {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "command {command_id} never became {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET /api/agents/{agent}` until `done` holds; returns that view.
    pub async fn wait_agent(&self, agent: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            let (_, body) = self.get(&format!("/api/agents/{agent}")).await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent {agent} never got there: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Provisions and connects with the shared secret; reads `connected`.
    pub async fn agent(&self, agent: &str) -> Agent {
        self.provision(agent).await;
        self.connect(agent).await
    }

    /// Connects an already-known agent with the shared secret; reads `connected`.
    pub async fn connect(&self, agent: &str) -> Agent {
        let mut agent = self
            .try_connect(agent, Some(EDGE_SECRET), &[])
            .await
            .expect("upgrade accepted");
        let hello = agent.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        agent
    }

    /// An upgrade attempt: the socket, or the HTTP status and JSON body of the refusal.
    pub async fn try_connect(
        &self,
        agent: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Agent, (StatusCode, Value)> {
        connect_url(&self.ws_url(agent), token, headers).await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// Reads one metric's value from Prometheus text (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub async fn connect_url(
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Result<Agent, (StatusCode, Value)> {
    let mut request = url.into_client_request().expect("request");
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        request.headers_mut().insert("authorization", value);
    }
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).expect("header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Agent { ws }),
        Err(tungstenite::Error::Http(response)) => {
            let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null));
            Err((status, body.unwrap_or(Value::Null)))
        }
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// How a socket ended, as the agent saw it.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16, String),
    /// The TCP connection went away without a close frame.
    Dropped,
}

pub struct Agent {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Agent {
    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next application message, as JSON; panics on close or after [`PROMPT`].
    pub async fn recv(&mut self) -> Value {
        self.recv_within(PROMPT).await.expect("a message in time")
    }

    /// The next application message within `within`, or None if nothing came.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        let text = self.recv_text_within(within).await?;
        Some(serde_json::from_str(&text).expect("server sends JSON"))
    }

    /// The next application message as the text of its frame.
    pub async fn recv_text_within(&mut self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    /// The next message, which must be of `kind`: the text of its frame and
    /// the frame read as JSON.
    pub async fn expect_text(&mut self, kind: &str) -> (String, Value) {
        let text = self
            .recv_text_within(PROMPT)
            .await
            .expect("a message in time");
        let message: Value = serde_json::from_str(&text).expect("server sends JSON");
        assert_eq!(message["type"], kind, "expected {kind}, got {text}");
        (text, message)
    }

    /// Skips messages until the socket ends; returns how, within `within`.
    pub async fn ended(&mut self, within: Duration) -> Ended {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("socket still open after {within:?}"),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let frame: Option<CloseFrame> = frame;
                    return match frame {
                        Some(f) => Ended::Closed(u16::from(f.code), f.reason.to_string()),
                        None => Ended::Closed(1005, String::new()),
                    };
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return Ended::Dropped,
            }
        }
    }

    /// A spec-dialect ack.
    pub async fn ack(&mut self, command_id: &str, success: bool) {
        assert!(self.try_ack(command_id, success).await, "send");
    }

    /// An ack that may find the socket gone (its instance was killed): false.
    pub async fn try_ack(&mut self, command_id: &str, success: bool) -> bool {
        let ack = json!({
            "type": "command_ack",
            "data": { "command_id": command_id, "success": success, "error": if success { Value::Null } else { json!("failed on purpose") }, "timestamp": "2026-01-01T00:00:00Z" }
        });
        self.ws.send(Message::text(ack.to_string())).await.is_ok()
    }

    /// Sends a ping message and waits for its pong, returning what came before it.
    pub async fn round_trip(&mut self) -> Vec<Value> {
        self.send_json(json!({"type": "ping"})).await;
        let mut before = Vec::new();
        loop {
            let message = self.recv().await;
            if message["type"] == "pong" {
                return before;
            }
            before.push(message);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// A plain connection to the PostgreSQL schema at `url`, for a test's own
/// reads and writes.
pub async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}
