//! The backend under test: where it is, what the harness may do with it
//! (credentials, control API, command injection, restart), and its timers.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::scenario::matcher::substitute_str;
use crate::scenario::raw::Ordered;
use crate::scenario::Capability;
use crate::timing::Timings;

/// Restarts the backend and returns once it answers again.
pub type Restarter =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// How the harness restarts a backend it started itself (the embedded
/// edge-server): gracefully, and by killing it.
#[derive(Clone)]
pub struct Lifecycle {
    pub restart: Restarter,
    pub crash: Restarter,
    /// Where it logs, when the harness can read it.
    pub log: Option<PathBuf>,
}

/// How commands enter the backend.
#[derive(Debug, Clone)]
pub enum Inject {
    /// `POST /api/agents/{id}/commands` with the admin token (PROTOCOL.md §8).
    ControlApi,
    /// A user-given request: `METHOD URL` with `{agent}` and a JSON body
    /// template with `{agent}`, `{command_id}`, `{command_type}`,
    /// `{priority}` and `{parameters}` (raw JSON).
    Template {
        method: String,
        url: String,
        body: String,
        headers: Vec<(String, String)>,
    },
}

pub struct Target {
    /// `http://host:port` (or https), no trailing slash.
    pub http_base: String,
    /// `ws://host:port` (or wss).
    pub ws_base: String,
    pub edge_secret: Option<String>,
    pub hmac_secret: Option<String>,
    pub admin_token: Option<String>,
    pub registration_token: Option<String>,
    /// The user says the backend has no REGISTRATION_TOKEN (`--no-registration`).
    pub registration_disabled: bool,
    pub inject: Inject,
    pub restarter: Option<Restarter>,
    /// Kills the backend without a graceful shutdown and starts it again.
    pub crasher: Option<Restarter>,
    /// Where the backend's log goes (`--server-log`).
    pub server_log: Option<PathBuf>,
    /// Spread connections over 127.0.0.x (the backend is on loopback).
    pub spread_sources: bool,
    pub http: reqwest::Client,
    /// Whom the WebSocket upgrades trust over `wss://` (`--ca-cert`); None:
    /// the public roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Timers: flags first, then what `connected` advertised.
    pub timings: Mutex<Timings>,
    /// Timers given as flags (ping timeout, ack timeout) are not
    /// overwritten by what `connected` advertises.
    pub pinned: (bool, bool),
}

/// The client for the backend's HTTP endpoints (a load run's agents share
/// it, hence the bounded idle pool); `roots` are trusted besides the
/// public ones.
/// Why a backend cannot be addressed: a usage error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--url `{0}` must start with http://, https://, ws:// or wss://")]
    Scheme(String),
    /// The HTTP client could not be built (e.g. a root it cannot use).
    #[error("{0}")]
    Client(String),
}

fn http_client(roots: Vec<reqwest::Certificate>) -> Result<reqwest::Client, TargetError> {
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30));
    roots
        .into_iter()
        .fold(builder, |builder, root| builder.add_root_certificate(root))
        .build()
        .map_err(|e| TargetError::Client(e.to_string()))
}

impl Target {
    pub fn new(url: &str) -> Result<Target, TargetError> {
        let url = url.trim_end_matches('/');
        let (http_base, ws_base) = if let Some(rest) = url.strip_prefix("ws://") {
            (format!("http://{rest}"), url.to_string())
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (format!("https://{rest}"), url.to_string())
        } else if let Some(rest) = url.strip_prefix("http://") {
            (url.to_string(), format!("ws://{rest}"))
        } else if let Some(rest) = url.strip_prefix("https://") {
            (url.to_string(), format!("wss://{rest}"))
        } else {
            return Err(TargetError::Scheme(url.to_string()));
        };
        let host = http_base
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .to_string();
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Ok(Target {
            http_base,
            ws_base,
            edge_secret: None,
            hmac_secret: None,
            admin_token: None,
            registration_token: None,
            registration_disabled: false,
            inject: Inject::ControlApi,
            restarter: None,
            crasher: None,
            server_log: None,
            spread_sources: loopback && host != "localhost",
            http: http_client(Vec::new())?,
            tls: None,
            timings: Mutex::new(Timings::default()),
            pinned: (false, false),
        })
    }

    /// Trusts what [`crate::tls::trust`] gives (the public roots and
    /// `--ca-cert`), in the WebSocket upgrades and the HTTP requests.
    pub fn trust(&mut self, (tls, roots): &crate::tls::Trust) -> Result<(), TargetError> {
        self.tls = Some(tls.clone());
        if !roots.is_empty() {
            self.http = http_client(roots.clone())?;
        }
        Ok(())
    }

    pub fn timings(&self) -> Timings {
        *self.timings.lock().expect("timings lock")
    }

    /// WS-MSG-1: takes the timers a `connected` message advertises
    /// (milliseconds when given, else seconds).
    pub fn learn_timings(&self, connected: &Value) {
        let data = &connected["data"];
        let read = |ms: &str, s: &str| {
            data[ms]
                .as_u64()
                .map(Duration::from_millis)
                .or_else(|| data[s].as_f64().map(Duration::from_secs_f64))
        };
        let mut timings = self.timings.lock().expect("timings lock");
        if let Some(d) = read("ping_interval_ms", "ping_interval_s") {
            timings.ping_interval = d;
        }
        if let Some(d) = read("ping_timeout_ms", "ping_timeout_s").filter(|_| !self.pinned.0) {
            timings.ping_timeout = d;
        }
        if let Some(d) = read("ack_timeout_ms", "ack_timeout_s").filter(|_| !self.pinned.1) {
            timings.ack_timeout = d;
        }
        if let Some(n) = data["max_attempts"].as_u64() {
            timings.max_attempts = n as u32;
        }
    }

    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::ControlApi => self.admin_token.is_some(),
            Capability::Hmac => self.hmac_key().is_some(),
            Capability::SharedSecret => self.edge_secret.is_some(),
            Capability::Registration => self.registration_token.is_some(),
            Capability::Restart => self.restarter.is_some(),
            Capability::Crash => self.crasher.is_some(),
            Capability::ServerLog => self.server_log.is_some(),
            Capability::RegistrationDisabled => self.registration_disabled,
            Capability::Tls => self.http_base.starts_with("https://"),
        }
    }

    fn hmac_key(&self) -> Option<&str> {
        self.hmac_secret.as_deref().or(self.edge_secret.as_deref())
    }

    /// WS-AUTH-5: a per-agent token issued `age_s` seconds ago (negative: in the future).
    pub fn mint(&self, agent_id: &str, age_s: i64) -> Option<String> {
        mint_with(self.hmac_key()?, agent_id, age_s)
    }

    /// A fresh, well-formed token for the agent whose signature was made
    /// with another key: a backend that decodes the token and trusts its id
    /// and time without checking the HMAC opens the socket (WS-AUTH-5).
    pub fn forge(&self, agent_id: &str) -> String {
        let key = format!("not-{}", self.hmac_key().unwrap_or("the-secret"));
        mint_with(&key, agent_id, 0).expect("HMAC takes any key")
    }

    /// Puts a command for `agent_id` into the backend. `body` is the
    /// control-API body as JSON text, sent with its members in the order
    /// written (WS-CMD-2) and `command_id` first.
    pub async fn inject(&self, agent_id: &str, command_id: &str, body: &str) -> Result<(), String> {
        let (method, url, payload, headers) = match &self.inject {
            Inject::ControlApi => {
                let admin = self
                    .admin_token
                    .as_deref()
                    .ok_or("injecting commands needs --admin-token or --inject")?;
                let url = format!("{}/api/agents/{agent_id}/commands", self.http_base);
                (
                    reqwest::Method::POST,
                    url,
                    with_command_id(body, command_id)?,
                    vec![("authorization".to_string(), format!("Bearer {admin}"))],
                )
            }
            Inject::Template {
                method,
                url,
                body: template,
                headers,
            } => {
                let body = Ordered::parse(body).map_err(|e| format!("a command body: {e}"))?;
                let member = |name: &str| body.lookup(name);
                let string = |name: &str, default: &str| match member(name) {
                    Some(Ordered::String(s)) => s.clone(),
                    _ => default.to_string(),
                };
                let vars = std::collections::HashMap::from([
                    ("agent".to_string(), agent_id.to_string()),
                    ("command_id".to_string(), command_id.to_string()),
                    (
                        "command_type".to_string(),
                        string("command_type", "send_message"),
                    ),
                    ("priority".to_string(), string("priority", "normal")),
                    (
                        "parameters".to_string(),
                        member("parameters").map_or("{}".to_string(), Ordered::to_string),
                    ),
                    (
                        "ttl_s".to_string(),
                        member("ttl_s").map_or("null".to_string(), Ordered::to_string),
                    ),
                ]);
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
                (
                    method,
                    substitute_str(url, &vars),
                    substitute_str(template, &vars),
                    headers.clone(),
                )
            }
        };
        let mut request = self
            .http
            .request(method, &url)
            .header("content-type", "application/json")
            .body(payload);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("injecting a command: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().await.unwrap_or_default();
            Err(format!("injecting a command: {status} {text}"))
        }
    }

    /// When the backend recorded the command's first ack: `acked_at` of
    /// `GET /api/commands/{id}` (WS-API-3); None while it has none.
    pub async fn acked_at(&self, command_id: &str) -> Result<Option<SystemTime>, String> {
        let admin = self
            .admin_token
            .as_deref()
            .ok_or("reading a command back needs --admin-token")?;
        let response = self
            .http
            .get(format!("{}/api/commands/{command_id}", self.http_base))
            .bearer_auth(admin)
            .send()
            .await
            .map_err(|e| format!("GET /api/commands: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET /api/commands: HTTP {}", status.as_u16()));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("GET /api/commands: {e}"))?;
        let Some(text) = body["acked_at"].as_str() else {
            return Ok(None);
        };
        let utc = text
            .strip_suffix("+00:00")
            .map_or(text.to_string(), |t| format!("{t}Z"));
        humantime::parse_rfc3339_weak(&utc)
            .map(Some)
            .map_err(|_| format!("acked_at `{text}` is not an RFC 3339 UTC time"))
    }

    pub async fn restart(&self) -> Result<(), String> {
        let restarter = self.restarter.as_ref().ok_or("no --restart-cmd")?;
        restarter().await
    }

    /// Restarts, crashes and log from the harness's own server.
    pub fn adopt(&mut self, lifecycle: Lifecycle) {
        self.restarter = Some(lifecycle.restart);
        self.crasher = Some(lifecycle.crash);
        self.server_log = lifecycle.log;
    }

    pub async fn crash(&self) -> Result<(), String> {
        let crasher = self.crasher.as_ref().ok_or("no --crash-cmd")?;
        crasher().await
    }

    /// Waits until `GET /health` answers 200.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = match self
                .http
                .get(format!("{}/health", self.http_base))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status().as_u16()),
                Err(e) => {
                    let text = crate::tls::chain(&e);
                    // A certificate that does not verify will not start to.
                    if crate::tls::is_certificate_failure(&text) {
                        return Err(text);
                    }
                    text
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the backend did not answer {}/health within {within:?} ({last})",
                    self.http_base
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `--restart-cmd` or `--crash-cmd` (`flag`): runs the command with `sh -c`, then waits for health
/// (trusting `trust`, as the run does).
pub fn shell_restarter(
    flag: &'static str,
    command: String,
    http_base: String,
    trust: crate::tls::Trust,
) -> Restarter {
    Arc::new(move || {
        let (command, http_base, trust) = (command.clone(), http_base.clone(), trust.clone());
        Box::pin(async move {
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .status()
                .await
                .map_err(|e| format!("{flag}: {e}"))?;
            if !status.success() {
                return Err(format!("{flag} exited with {status}"));
            }
            let mut target = Target::new(&http_base).map_err(|e| e.to_string())?;
            target.trust(&trust).map_err(|e| e.to_string())?;
            target.wait_healthy(Duration::from_secs(30)).await
        })
    })
}

/// The body text with `"command_id"` as its first member; the rest is
/// sent byte for byte as written.
pub(crate) fn with_command_id(body: &str, command_id: &str) -> Result<String, String> {
    let rest = body
        .trim_start()
        .strip_prefix('{')
        .ok_or("a command body must be a JSON object")?;
    let id = Value::String(command_id.to_string());
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    Ok(format!("{{\"command_id\":{id}{separator}{rest}"))
}

/// A token cut short, for a backend that compares secrets byte by byte
/// over the shorter of the two (a hand-rolled constant-time compare that
/// zips without checking lengths): a secret loses its second half; an HMAC
/// token keeps its message and loses half its signature, so only the
/// signature comparison can let it in.
pub fn truncated_token(token: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let signed = engine
        .decode(token)
        .ok()
        .and_then(|text| String::from_utf8(text).ok())
        .and_then(|text| {
            let (message, signature) = text.rsplit_once(':')?;
            let hex = signature.len() > 1 && signature.bytes().all(|b| b.is_ascii_hexdigit());
            hex.then(|| engine.encode(format!("{message}:{}", &signature[..signature.len() / 2])))
        });
    signed.unwrap_or_else(|| {
        token
            .chars()
            .take(token.chars().count().div_ceil(2))
            .collect()
    })
}

/// `base64("{id}::{unix_ts}:{hex(HMAC-SHA256(key, "{id}::{unix_ts}"))}")`, issued `age_s` ago.
fn mint_with(key: &str, agent_id: &str, age_s: i64) -> Option<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let message = format!("{agent_id}::{}", now - age_s);
    let signature = hmac_hex(key, &message);
    Some(base64::engine::general_purpose::STANDARD.encode(format!("{message}:{signature}")))
}

/// `hex(HMAC-SHA256(key, message))`: a per-agent token's signature (WS-AUTH-5).
pub fn hmac_hex(key: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_secret_is_its_first_half() {
        assert_eq!(truncated_token("s3cret-edge"), "s3cret");
        assert_eq!(truncated_token("ab"), "a");
        assert_eq!(truncated_token("a"), "a", "one character cannot be cut");
    }

    #[test]
    fn a_truncated_hmac_token_keeps_its_message_and_half_its_signature() {
        let token = mint_with("key", "agent-1", 0).unwrap();
        let engine = base64::engine::general_purpose::STANDARD;
        let read = |t: &str| String::from_utf8(engine.decode(t).unwrap()).unwrap();
        let (message, signature) = read(&token)
            .rsplit_once(':')
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .unwrap();
        let cut = read(&truncated_token(&token));
        assert_eq!(cut, format!("{message}:{}", &signature[..32]));
    }
}
