//! Runs the steps of one check against a target. Each step either passes or
//! fails with what was expected and what was seen; the transcript keeps what
//! crossed the wire for the report. `connect.rs` has the provision and
//! connect steps, `http.rs` the http and api steps.

mod connect;
mod delivery;
mod http;
mod log;
mod metrics;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::matcher::{lookup, mismatch, substitute, substitute_fields, substitute_str};
use super::raw::raw_mismatch;
use super::{Body, Payload, StepKind, Window};
use crate::client::{Conn, Event};
use crate::target::Target;
use crate::timing::Timings;

/// Why a step failed: what the rule wanted, and what the backend did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub line: usize,
    pub expected: String,
    pub observed: String,
}

type StepResult = Result<(), (String, String)>;

fn fail<T>(
    expected: impl Into<String>,
    observed: impl Into<String>,
) -> Result<T, (String, String)> {
    Err((expected.into(), observed.into()))
}

struct Agent {
    id: String,
    token: Option<String>,
}

/// The state of one check while it runs.
pub struct Ctx<'a> {
    target: &'a Target,
    /// Makes agent and command ids unique to this check and attempt.
    prefix: String,
    source: Option<IpAddr>,
    agents: HashMap<String, Agent>,
    conns: HashMap<String, (String, Conn)>,
    vars: HashMap<String, String>,
    /// Lists of command ids saved by `fill`.
    lists: HashMap<String, Vec<String>>,
    /// Pages saved by `metrics` steps (`snapshot = "NAME"`).
    snapshots: HashMap<String, crate::scenario::prometheus::Page>,
    /// Every bearer token this check's requests carried (not the deliberately
    /// wrong ones), for `log_has_no_secrets`.
    sent_tokens: BTreeSet<String>,
    /// The length of the backend's log when the check started.
    log_start: u64,
    marks: HashMap<String, Instant>,
    commands: u32,
    pub transcript: Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(target: &'a Target, prefix: String, source: Option<IpAddr>) -> Self {
        let mut vars = HashMap::new();
        if let Some(token) = &target.registration_token {
            vars.insert("registration_token".to_string(), token.clone());
        }
        // For checks that the edge secret opens nothing else (WS-HTTP-3);
        // a `…token` member, so the transcript redacts it.
        if let Some(secret) = &target.edge_secret {
            vars.insert("edge_secret".to_string(), secret.clone());
        }
        // A phone number unique to this check and attempt (WS-HTTP-3), of
        // always 15 digits, so a check can append 5 for the longest valid
        // one (WS-AUTH-3: `+?[0-9]{3,20}`) and 6 for one too long.
        let digits: String = prefix.bytes().map(|b| char::from(b'0' + b % 10)).collect();
        vars.insert(
            "phone".to_string(),
            format!("+1{:0>14}", &digits[digits.len().saturating_sub(14)..]),
        );
        Ctx {
            target,
            prefix,
            source,
            agents: HashMap::new(),
            conns: HashMap::new(),
            vars,
            lists: HashMap::new(),
            snapshots: HashMap::new(),
            sent_tokens: BTreeSet::new(),
            log_start: log::log_length(target),
            marks: HashMap::new(),
            commands: 0,
            transcript: Vec::new(),
        }
    }

    fn timings(&self) -> Timings {
        self.target.timings()
    }

    /// A variable saved by an earlier step.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn note(&mut self, line: String) {
        let line = redact(&line);
        const KEEP: usize = 40;
        if self.transcript.len() == KEEP {
            self.transcript.push("…".into());
        } else if self.transcript.len() < KEEP {
            self.transcript.push(line);
        }
    }

    fn eval(&self, expr: &str) -> Result<Duration, (String, String)> {
        self.timings()
            .eval(expr)
            .map_err(|e| ("a valid time expression".to_string(), e.to_string()))
    }

    fn agent_id(&mut self, name: &str) -> String {
        if let Some(agent) = self.agents.get(name) {
            return agent.id.clone();
        }
        let id = format!("{}-{name}", self.prefix);
        self.agents.insert(
            name.to_string(),
            Agent {
                id: id.clone(),
                token: None,
            },
        );
        self.vars.insert(format!("id:{name}"), id.clone());
        id
    }

    /// Runs one step; closes nothing on failure (the caller drops the context).
    pub async fn run(&mut self, line: usize, kind: &StepKind) -> Result<(), StepFailure> {
        let result = if http_only(kind) {
            // The sockets are lent to a keepalive loop while the step runs:
            // a live agent keeps pinging whatever the backend's API is
            // doing, and a poll may outlast the ping timeout.
            let mut conns = std::mem::take(&mut self.conns);
            let result = keeping_alive(&mut conns, self.step(kind)).await;
            self.conns = conns;
            result
        } else {
            self.step(kind).await
        };
        result.map_err(|(expected, observed)| StepFailure {
            line,
            expected,
            observed,
        })
    }

    async fn step(&mut self, kind: &StepKind) -> StepResult {
        match kind {
            StepKind::Provision { agent } => self.provision(agent).await,
            StepKind::Connect {
                conn,
                agent,
                token,
                id,
                header_id,
                outcome,
                source,
                welcome,
            } => {
                self.connect(
                    conn,
                    agent,
                    token,
                    id.as_deref(),
                    header_id.as_deref(),
                    outcome,
                    source.as_deref(),
                    welcome.as_deref(),
                )
                .await
            }
            StepKind::Send {
                conn,
                payload,
                repeat,
            } => self.send(conn, payload, *repeat).await,
            StepKind::Expect {
                conn,
                msg_type,
                fields,
                raw,
                save,
                mark,
                window,
            } => {
                self.expect(conn, msg_type, fields, raw, save, mark.as_deref(), window)
                    .await
            }
            StepKind::ExpectClose {
                conn,
                codes,
                reason,
                window,
            } => {
                self.expect_close(conn, codes, reason.as_deref(), window)
                    .await
            }
            StepKind::ExpectOpen { conn } => self.expect_open(conn).await,
            StepKind::WsPing { conn, within } => self.ws_ping(conn, within).await,
            StepKind::ExpectSilence {
                conn,
                msg_type,
                during,
            } => self.expect_silence(conn, msg_type.as_deref(), during).await,
            StepKind::Close { conn } => self.close(conn).await,
            StepKind::Command {
                agent,
                body,
                save_as,
            } => self.command(agent, body, save_as.as_deref()).await,
            StepKind::Fill {
                agent,
                body,
                statuses,
                fields,
                max,
                save_as,
            } => {
                self.fill(agent, body, statuses, fields, *max, save_as.as_deref())
                    .await
            }
            StepKind::ExpectCommands { conn, ids, within } => {
                self.expect_commands(conn, ids, within).await
            }
            StepKind::ExpectAttempts {
                conn,
                command_id,
                by,
                from,
            } => self.expect_attempts(conn, command_id, *by, *from).await,
            StepKind::Metrics {
                path,
                token,
                families,
                snapshot,
                since,
            } => {
                self.metrics(path, token, families, snapshot.as_deref(), since.as_ref())
                    .await
            }
            StepKind::Http(call) => self.http(call, false).await,
            StepKind::Api(call) => self.http(call, true).await,
            // Silent on every socket: an agent that sends nothing meanwhile.
            StepKind::Wait { during } => {
                tokio::time::sleep(self.eval(during)?).await;
                Ok(())
            }
            StepKind::Restart => {
                self.note("restarting the backend".into());
                let restarted = self.target.restart().await;
                restarted.or_else(|e| fail("the backend restarts", e))
            }
            StepKind::Log { text, within } => self.log(text, within).await,
            StepKind::LogHasNoSecrets => self.log_has_no_secrets(),
            StepKind::Crash => {
                self.note("crashing the backend (killed, then started again)".into());
                let back = self.target.crash().await;
                back.or_else(|e| fail("the backend comes back after a crash", e))
            }
        }
    }

    fn conn(&mut self, name: &str) -> Result<&mut Conn, (String, String)> {
        match self.conns.get_mut(name) {
            Some((_, conn)) => Ok(conn),
            None => fail(
                format!("a connection named `{name}`"),
                "no such connection in this check (connect it first)",
            ),
        }
    }

    async fn send(&mut self, conn: &str, payload: &Payload, repeat: u32) -> StepResult {
        let payload = match payload {
            Payload::Json(value) => Payload::Json(substitute(value, &self.vars)),
            // Only `{name}` of a variable is replaced: other braces stay.
            Payload::Text(text) => Payload::Text(substitute_str(text, &self.vars)),
            other => other.clone(),
        };
        let shown = match &payload {
            Payload::Json(v) => v.to_string(),
            Payload::Text(t) => format!("text {t:?}"),
            Payload::Binary(b) => format!("binary {} bytes", b.len()),
            Payload::Frame(kind) => format!("frame {kind}"),
        };
        let suffix = if repeat > 1 {
            format!(" ×{repeat}")
        } else {
            String::new()
        };
        self.note(format!(
            "{conn} → {}{suffix}",
            shown.chars().take(200).collect::<String>()
        ));
        let socket = self.conn(conn)?;
        for _ in 0..repeat {
            let sent = match &payload {
                Payload::Json(v) => socket.send_text(v.to_string()).await,
                Payload::Text(t) => socket.send_text(t.clone()).await,
                Payload::Binary(b) => socket.send_binary(b.clone()).await,
                Payload::Frame(kind) => socket.send_frame(kind).await,
            };
            sent.or_else(|e| fail("the frame is sent", e))?;
        }
        Ok(())
    }

    /// The window a step's event must land in: (earliest, deadline).
    fn window(
        &self,
        window: &Window,
        started: Instant,
    ) -> Result<(Instant, Instant), (String, String)> {
        let base = match &window.after {
            Some(mark) => *self
                .marks
                .get(mark)
                .ok_or((format!("a mark `{mark}`"), "no such mark yet".to_string()))?,
            None => started,
        };
        let timings = self.timings();
        let within = self.eval(&window.within)?;
        let not_before = window
            .not_before
            .as_deref()
            .map(|e| self.eval(e))
            .transpose()?
            .unwrap_or_default();
        let slack = if window.tolerance {
            Timings::tolerance(within)
        } else {
            Duration::ZERO
        };
        let earliest = base
            + not_before.saturating_sub(if window.tolerance {
                Timings::tolerance(not_before)
            } else {
                Duration::ZERO
            });
        Ok((earliest, base + timings.scaled(within) + slack))
    }

    fn timing_error(
        &self,
        earliest: Instant,
        at: Instant,
        window: &Window,
    ) -> Option<(String, String)> {
        (at < earliest).then(|| {
            let base = window
                .after
                .as_ref()
                .and_then(|m| self.marks.get(m))
                .copied();
            let after = base
                .map(|b| {
                    format!(
                        "{:?} after `{}`",
                        at.saturating_duration_since(b),
                        window.after.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            (
                format!(
                    "not before {} {}",
                    window.not_before.as_deref().unwrap_or("0s"),
                    window
                        .after
                        .as_deref()
                        .map(|m| format!("after `{m}`"))
                        .unwrap_or_default()
                ),
                format!("too early: {after}"),
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn expect(
        &mut self,
        conn: &str,
        msg_type: &str,
        fields: &[(String, Value)],
        raw: &[(String, String)],
        save: &std::collections::BTreeMap<String, String>,
        mark: Option<&str>,
        window: &Window,
    ) -> StepResult {
        let (earliest, deadline) = self.window(window, Instant::now())?;
        let fields = substitute_fields(fields, &self.vars);
        let mut skipped = Vec::new();
        loop {
            let event = self.conn(conn)?.next_event(deadline).await;
            let at = Instant::now();
            self.note(format!("{conn} ← {event}"));
            let message = match event {
                Event::Message(message) => message,
                Event::Nothing => {
                    let seen = if skipped.is_empty() {
                        "nothing".to_string()
                    } else {
                        format!("only {}", skipped.join(", "))
                    };
                    return fail(
                        format!("a `{msg_type}` message within {}", window.within),
                        seen,
                    );
                }
                other => return fail(format!("a `{msg_type}` message"), other.to_string()),
            };
            if message["type"] != msg_type {
                skipped.push(message.to_string());
                continue;
            }
            if let Some(error) = self.timing_error(earliest, at, window) {
                return Err(error);
            }
            if let Some((path, expected, actual)) = mismatch(&message, &fields) {
                return fail(
                    format!("`{msg_type}` with {path} = {expected}"),
                    format!("{path} = {actual} in {message}"),
                );
            }
            let raw: Vec<(String, String)> = raw
                .iter()
                .map(|(path, text)| (path.clone(), substitute_str(text, &self.vars)))
                .collect();
            if let Some((path, expected, actual)) = raw_mismatch(&message.text, &raw) {
                return fail(
                    format!("`{msg_type}` with {path} as posted (same members, order and values): {expected}"),
                    format!("{path} = {actual}"),
                );
            }
            for (var, path) in save {
                let value = lookup(&message, path)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
                self.vars.insert(var.clone(), value.unwrap_or_default());
            }
            if let Some(mark) = mark {
                self.marks.insert(mark.to_string(), at);
            }
            return Ok(());
        }
    }

    async fn expect_close(
        &mut self,
        conn: &str,
        codes: &[u16],
        reason: Option<&str>,
        window: &Window,
    ) -> StepResult {
        let (earliest, deadline) = self.window(window, Instant::now())?;
        loop {
            let event = self.conn(conn)?.next_event_silently(deadline).await;
            let at = Instant::now();
            self.note(format!("{conn} ← {event}"));
            match event {
                Event::Closed { code, reason: got }
                    if codes.is_empty() || codes.contains(&code) =>
                {
                    if let Some(wanted) = reason.filter(|wanted| *wanted != got) {
                        return fail(
                            format!("close {code} reason {wanted:?}"),
                            format!("reason {got:?}"),
                        );
                    }
                    return self.timing_error(earliest, at, window).map_or(Ok(()), Err);
                }
                Event::Message(_) | Event::NotJson(_) | Event::Binary(_) => continue,
                Event::Dropped(_) if codes.is_empty() => {
                    return self.timing_error(earliest, at, window).map_or(Ok(()), Err)
                }
                Event::Nothing => {
                    return fail(
                        format!("close {codes:?} within {}", window.within),
                        "the socket is still open",
                    )
                }
                other => return fail(format!("close {codes:?}"), other.to_string()),
            }
        }
    }

    /// The socket still works: an ack for a command nobody has is answered
    /// `unknown_command` (WS-ACK-3), which proves the backend still reads it.
    async fn expect_open(&mut self, conn: &str) -> StepResult {
        let probe = format!("{}-probe-{}", self.prefix, self.commands);
        self.commands += 1;
        let ack = json!({"type": "command_ack", "data": {"command_id": probe, "success": true, "error": null}});
        let deadline = Instant::now() + self.timings().prompt();
        let socket = self.conn(conn)?;
        socket
            .send_text(ack.to_string())
            .await
            .or_else(|e| fail("the socket is open", e))?;
        let mut kept = Vec::new();
        let result = loop {
            match socket.next_event(deadline).await {
                Event::Message(m)
                    if m["type"] == "error"
                        && (m["data"]["ref"] == probe.as_str() || m["data"]["ref"].is_null()) =>
                {
                    break Ok(())
                }
                Event::Message(m) => kept.push(m),
                Event::NotJson(_) | Event::Binary(_) => continue,
                Event::Nothing => {
                    break fail(
                        "the socket still answers (an `error` for an unknown command)",
                        "no answer",
                    )
                }
                other => break fail("the socket stays open", other.to_string()),
            }
        };
        for message in kept.into_iter().rev() {
            socket.unread_front(message);
        }
        result
    }

    async fn ws_ping(&mut self, conn: &str, within: &str) -> StepResult {
        let payload = format!("{}-ping-{}", self.prefix, self.commands);
        self.commands += 1;
        let deadline = Instant::now() + self.eval(within)?;
        let answer = self.conn(conn)?.ping(payload.as_bytes(), deadline).await;
        self.note(format!("{conn} → WebSocket Ping {payload:?}: {answer:?}"));
        answer.or_else(|observed| {
            fail(
                format!("a Pong carrying {payload:?} within {within}"),
                observed,
            )
        })
    }

    async fn expect_silence(
        &mut self,
        conn: &str,
        msg_type: Option<&str>,
        during: &str,
    ) -> StepResult {
        let deadline = Instant::now() + self.eval(during)?;
        loop {
            let event = self.conn(conn)?.next_event(deadline).await;
            match event {
                Event::Nothing => return Ok(()),
                Event::Message(m) if msg_type.is_some_and(|t| m["type"] != t) => continue,
                other => {
                    self.note(format!("{conn} ← {other}"));
                    return fail(
                        format!("no {} for {during}", msg_type.unwrap_or("message")),
                        other.to_string(),
                    );
                }
            }
        }
    }

    async fn close(&mut self, conn: &str) -> StepResult {
        let prompt = self.timings().prompt();
        self.conn(conn)?.close(prompt).await;
        self.conns.remove(conn);
        self.note(format!("{conn}: closed (1000)"));
        Ok(())
    }

    /// A command id unique to this check and attempt.
    fn next_command_id(&mut self) -> String {
        self.commands += 1;
        format!("{}-c{}", self.prefix, self.commands)
    }

    async fn command(&mut self, agent: &str, body: &Body, save_as: Option<&str>) -> StepResult {
        let agent_id = self.agent_id(agent);
        let command_id = self.next_command_id();
        let body = body.text(&self.vars);
        self.note(format!("inject {command_id} for {agent_id}: {body}"));
        self.target
            .inject(&agent_id, &command_id, &body)
            .await
            .or_else(|e| fail("the backend accepts the command", e))?;
        if let Some(var) = save_as {
            self.vars.insert(var.to_string(), command_id);
        }
        Ok(())
    }

    /// Closes every socket the check opened.
    pub async fn finish(&mut self) {
        for (_, (_, mut conn)) in self.conns.drain() {
            if !conn.is_ended() {
                conn.close(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Steps that talk to the backend over HTTP only (or read its log), and
/// leave the sockets to [`keeping_alive`].
fn http_only(kind: &StepKind) -> bool {
    matches!(
        kind,
        StepKind::Provision { .. }
            | StepKind::Command { .. }
            | StepKind::Fill { .. }
            | StepKind::Metrics { .. }
            | StepKind::Http(_)
            | StepKind::Api(_)
            | StepKind::Log { .. }
            | StepKind::LogHasNoSecrets
    )
}

/// Runs `step` while sending each socket's keepalive Ping as it falls due.
async fn keeping_alive<T>(
    conns: &mut HashMap<String, (String, Conn)>,
    step: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(step);
    loop {
        let Some(due) = conns.values().filter_map(|(_, c)| c.keepalive_due()).min() else {
            return step.await;
        };
        tokio::select! {
            out = &mut step => return out,
            () = tokio::time::sleep_until(due) => {
                for (_, conn) in conns.values_mut() {
                    if conn.keepalive_due().is_some_and(|at| at <= Instant::now()) {
                        conn.send_keepalive().await;
                    }
                }
            }
        }
    }
}

/// Hides token values in what the report shows (secrets never appear in
/// reports): the value of any `"…token…": "…"` pair becomes `<redacted>`.
pub fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("token\":\"") {
        let (head, tail) = rest.split_at(at + "token\":\"".len());
        out.push_str(head);
        out.push_str("<redacted>");
        rest = tail.find('"').map_or("", |end| &tail[end..]);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact(r#"{"edge_agent_id":"a","auth_token":"c2VjcmV0"}"#),
            r#"{"edge_agent_id":"a","auth_token":"<redacted>"}"#
        );
        assert_eq!(redact("no secrets here"), "no secrets here");
    }
}
