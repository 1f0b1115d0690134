//! The `provision` and `connect` steps, and the tokens they present (WS-AUTH-*).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{fail, redact, Ctx, StepResult};
use crate::client::{self, Event, Upgrade};
use crate::scenario::matcher::{mismatch, substitute_fields, substitute_str};
use crate::scenario::{retry_after, ConnectOutcome};
use crate::target::truncated_token;

impl Ctx<'_> {
    /// Makes the backend know an agent: the control API, else registration.
    pub(super) async fn provision(&mut self, name: &str) -> StepResult {
        let id = self.agent_id(name);
        let target = self.target;
        let (url, request) = if let Some(admin) = &target.admin_token {
            let url = format!("{}/api/agents/{id}", target.http_base);
            (
                url.clone(),
                target.http.put(url).bearer_auth(admin).json(&json!({})),
            )
        } else if let Some(registration) = &target.registration_token {
            // WS-HTTP-3: a phone made from the id; the backend picks the id.
            let digits: String = id
                .bytes()
                .map(|b| char::from(b'0' + b % 10))
                .take(15)
                .collect();
            let url = format!("{}/edge/register", target.http_base);
            let body =
                json!({"user_phone": format!("+1{digits}"), "registration_token": registration});
            (url.clone(), target.http.post(url).json(&body))
        } else {
            return fail(
                "a way to provision agents",
                "no --admin-token or --registration-token",
            );
        };
        let response = request
            .send()
            .await
            .or_else(|e| fail(format!("{url} answers"), crate::tls::describe(&e)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        self.note(format!("provision {id}: {status} {body}"));
        if !status.is_success() {
            return fail(
                format!("provisioning {id} succeeds"),
                format!("{status} {body}"),
            );
        }
        let agent = self.agents.get_mut(name).expect("named above");
        if let Some(assigned) = body["edge_agent_id"].as_str() {
            agent.id = assigned.to_string();
            self.vars.insert(format!("id:{name}"), assigned.to_string());
        }
        agent.token = body["auth_token"].as_str().map(str::to_string);
        if let Some(token) = &agent.token {
            self.vars.insert(format!("token:{name}"), token.clone());
        }
        Ok(())
    }

    /// The `Authorization` header a token spec stands for (None: no header).
    pub(super) fn authorization(
        &mut self,
        spec: &str,
        agent: &str,
    ) -> Result<Option<String>, (String, String)> {
        let target = self.target;
        let id = self.agent_id(agent);
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        let deliberately_wrong = matches!(spec, "none" | "wrong" | "malformed" | "forged")
            || spec.starts_with("truncated:");
        let agent_token =
            |ctx: &mut Self, name: &str| -> Result<Option<String>, (String, String)> {
                let id = ctx.agent_id(name);
                let token = ctx
                    .agents
                    .get(name)
                    .and_then(|a| a.token.clone())
                    .or_else(|| target.mint(&id, 0));
                token.map(|t| bearer(&t)).ok_or_else(|| {
                    (
                        "a per-agent token".into(),
                        format!("none for {id}: pass --edge-secret or --hmac-secret"),
                    )
                })
            };
        // A secret the command line must have given, and a per-agent token
        // minted now, `age_s` seconds old (negative: from the future).
        let given = |value: Option<&str>, what: &str, flag: &str| {
            value
                .map(|v| format!("Bearer {v}"))
                .ok_or_else(|| (what.to_string(), format!("no {flag}")))
        };
        let minted = |age_s: i64| {
            target
                .mint(&id, age_s)
                .map(|t| format!("Bearer {t}"))
                .ok_or_else(|| {
                    (
                        "an HMAC key".to_string(),
                        "no --edge-secret or --hmac-secret".to_string(),
                    )
                })
        };
        let authorization = match spec {
            "none" => None,
            "edge" => match &target.edge_secret {
                Some(secret) if target.hmac_secret.is_none() => bearer(secret),
                _ => agent_token(self, agent)?,
            },
            "shared" => Some(given(target.edge_secret.as_deref(), "the shared secret", "--edge-secret")?),
            "agent" => agent_token(self, agent)?,
            "admin" => Some(given(target.admin_token.as_deref(), "the admin token", "--admin-token")?),
            "wrong" => bearer(&format!("wrong-{}", self.prefix)),
            "malformed" => Some("Basic ZWRnZTpzZWNyZXQ=".into()),
            "expired" => Some(minted(24 * 3600 + 600)?),
            "future" => Some(minted(-3600)?),
            // Still valid: 23 h old (valid for 24 h), and 4 min ahead (5 min of skew allowed).
            "aged" => Some(minted(23 * 3600)?),
            "skewed" => Some(minted(-240)?),
            "forged" => bearer(&target.forge(&id)),
            other => match (other.strip_prefix("other:"), other.strip_prefix("var:"), other.strip_prefix("truncated:")) {
                (Some(name), _, _) => agent_token(self, name)?,
                (_, Some(var), _) => bearer(&self.vars.get(var).cloned().unwrap_or_default()),
                (_, _, Some(kind @ ("edge" | "shared" | "agent" | "admin"))) => self
                    .authorization(kind, agent)?
                    .and_then(|a| a.strip_prefix("Bearer ").map(truncated_token))
                    .and_then(|t| bearer(&t)),
                _ => return fail("a token kind", format!("unknown token `{other}`: use edge, shared, agent, admin, none, wrong, malformed, expired, future, aged, skewed, forged, other:NAME, var:NAME or truncated:edge|shared|agent|admin")),
            },
        };
        // Remembered, so `log_has_no_secrets` can look for it.
        if let Some(token) = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            if !deliberately_wrong {
                self.sent_tokens.insert(token.to_string());
            }
        }
        Ok(authorization)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn connect(
        &mut self,
        conn: &str,
        agent: &str,
        token: &str,
        id: Option<&str>,
        header_id: Option<&str>,
        outcome: &ConnectOutcome,
        source: Option<&str>,
        welcome: Option<&[(String, Value)]>,
    ) -> StepResult {
        let agent_id = self.agent_id(agent);
        let query = match id {
            None => format!("?edge_agent_id={agent_id}"),
            Some("omit") => String::new(),
            Some("empty") => "?edge_agent_id=".into(),
            Some(raw) => format!(
                "?edge_agent_id={}",
                substitute_str(raw, &self.vars).replace(' ', "%20")
            ),
        };
        let url = format!("{}/edge/ws{query}", self.target.ws_base);
        let mut headers = Vec::new();
        if let Some(value) = self.authorization(token, agent)? {
            headers.push(("authorization".to_string(), value));
        }
        if let Some(header) = header_id {
            let value = if header == "same" {
                agent_id.clone()
            } else {
                substitute_str(header, &self.vars)
            };
            headers.push(("x-edge-agent-id".to_string(), value));
        }
        // Source addresses only make sense for a backend on loopback.
        let source = match source.filter(|_| self.target.spread_sources) {
            Some(ip) => Some(
                ip.parse()
                    .or_else(|_| fail("a source IP address", ip.to_string()))?,
            ),
            None => self.source,
        };
        let prompt = self.timings().prompt();
        let attempts = match outcome {
            ConnectOutcome::RateLimited { attempts, .. } => *attempts,
            _ => 1,
        };
        for attempt in 1..=attempts {
            let tls = self.target.tls.clone();
            // The upgrade request is the agent's first frame: the backend's
            // timers may start from it, never earlier (`after = "CONN.upgrade"`).
            let upgrade_sent = Instant::now();
            let upgrade = client::connect(&url, &headers, source, prompt, tls)
                .await
                .or_else(|e| fail("the backend answers the upgrade", e))?;
            match (outcome, upgrade) {
                (ConnectOutcome::Accepted, Upgrade::Open(mut socket)) => {
                    self.note(format!("{conn}: upgraded as {agent_id}"));
                    self.marks.insert(format!("{conn}.upgrade"), upgrade_sent);
                    // WS-MSG-1: a `connected` message, if the backend sends one, comes first.
                    let deadline = Instant::now() + prompt.min(Duration::from_secs(1));
                    let first = socket.next_event(deadline).await;
                    self.note(format!("{conn} ← {}", redact(&first.to_string())));
                    match first {
                        Event::Message(first) if first["type"] == "connected" => {
                            self.target.learn_timings(&first);
                            let welcome = welcome.map(|f| substitute_fields(f, &self.vars));
                            if let Some((path, expected, actual)) =
                                welcome.and_then(|f| mismatch(&first, &f))
                            {
                                return fail(
                                    format!("`connected` with {path} = {expected}"),
                                    format!("{path} = {actual} in {first}"),
                                );
                            }
                        }
                        Event::Message(first) if welcome.is_some() => {
                            return fail("`connected` as the first message", first.to_string())
                        }
                        Event::Nothing if welcome.is_some() => {
                            return fail("`connected` as the first message", "nothing")
                        }
                        Event::Message(first) => socket.unread(first),
                        Event::Nothing => {}
                        ended => {
                            return fail(
                                "the socket stays open after the upgrade",
                                ended.to_string(),
                            )
                        }
                    }
                    // Half the ping timeout: alive as a real agent, never chatty.
                    socket.keepalive = Some(self.timings().ping_timeout / 2);
                    self.conns.insert(conn.to_string(), (agent_id, *socket));
                    return Ok(());
                }
                (ConnectOutcome::Accepted, Upgrade::Refused { status, body, .. }) => {
                    return fail("the upgrade is accepted", format!("HTTP {status} {body}"));
                }
                (
                    ConnectOutcome::Refused { statuses, .. } | ConnectOutcome::Status(statuses),
                    Upgrade::Refused { status, body, .. },
                ) => {
                    self.note(format!("{conn}: refused with HTTP {status} {body}"));
                    return if statuses.contains(&status) {
                        Ok(())
                    } else {
                        fail(
                            format!("HTTP {statuses:?}"),
                            format!("HTTP {status} {body}"),
                        )
                    };
                }
                (ConnectOutcome::Refused { codes, statuses }, Upgrade::Open(mut socket)) => {
                    // WS-AUTH-2: accepted, then closed at once, with no application message.
                    let event = socket.next_event(Instant::now() + prompt).await;
                    self.note(format!("{conn}: upgraded, then {event}"));
                    return match event {
                        Event::Closed { code, .. } if codes.contains(&code) => Ok(()),
                        other => fail(
                            format!("HTTP {statuses:?}, or close {codes:?} before any message"),
                            format!("upgraded, then {other}"),
                        ),
                    };
                }
                (ConnectOutcome::Status(statuses), Upgrade::Open(_)) => {
                    return fail(format!("HTTP {statuses:?}"), "the upgrade was accepted");
                }
                (
                    ConnectOutcome::RateLimited { retry_after, .. },
                    Upgrade::Refused {
                        status: 429,
                        retry_after: header,
                        body,
                    },
                ) => {
                    self.note(format!(
                        "{conn}: attempt {attempt} answered 429 (Retry-After: {header:?}) {body}"
                    ));
                    let wrong = retry_after
                        .then(|| retry_after::problem(header.as_deref()))
                        .flatten();
                    return match wrong {
                        Some(wrong) => fail(
                            "429 with a Retry-After of whole seconds or an HTTP-date, within the minute",
                            wrong,
                        ),
                        None => Ok(()),
                    };
                }
                (ConnectOutcome::RateLimited { .. }, Upgrade::Refused { status, .. }) => {
                    self.note(format!("{conn}: attempt {attempt} answered {status}"));
                }
                (ConnectOutcome::RateLimited { .. }, Upgrade::Open(mut socket)) => {
                    socket.close(prompt).await;
                }
            }
        }
        fail(
            format!("HTTP 429 within {attempts} attempts"),
            format!("{attempts} attempts and no 429"),
        )
    }
}
