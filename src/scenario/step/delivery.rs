//! Steps about many deliveries at once: `fill` (posts until the pending
//! limit answers, WS-API-2, or a given number of commands), `expect_commands` (every accepted command
//! arrives, in order) and `expect_attempts` (each delivery of one command,
//! on its timer, WS-DLV-3, or on a reconnect, WS-DLV-4).

use std::collections::HashSet;

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{fail, Ctx, StepResult};
use crate::client::Event;
use crate::scenario::matcher::{mismatch, substitute_str};
use crate::scenario::{AttemptsBy, Body, ConnectOutcome, Window};
use crate::target::with_command_id;
use crate::timing::Timings;

impl Ctx<'_> {
    /// Posts `body` as new commands (fresh ids, one at a time, so the
    /// backend's order is the posting order) until an answer in `statuses`;
    /// with no `statuses`, `max` commands, every one of them accepted.
    pub(super) async fn fill(
        &mut self,
        agent: &str,
        body: &Body,
        statuses: &[u16],
        fields: &[(String, Value)],
        max: u32,
        save_as: Option<&str>,
    ) -> StepResult {
        let agent_id = self.agent_id(agent);
        let admin = self.target.admin_token.clone().ok_or((
            "the control API".to_string(),
            "no --admin-token".to_string(),
        ))?;
        let text = body.text(&self.vars);
        let url = format!("{}/api/agents/{agent_id}/commands", self.target.http_base);
        let mut accepted = Vec::new();
        while accepted.len() < max as usize {
            let command_id = self.next_command_id();
            let response = self
                .target
                .http
                .post(&url)
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(
                    with_command_id(&text, &command_id)
                        .or_else(|e| fail("a JSON object body", e))?,
                )
                .send()
                .await
                .or_else(|e| fail("the backend answers POST …/commands", e.to_string()))?;
            let status = response.status().as_u16();
            let answer = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                accepted.push(command_id);
                continue;
            }
            self.note(format!(
                "api POST …/commands ×{} → 2xx, then {status} {answer}",
                accepted.len()
            ));
            if statuses.is_empty() {
                return fail(
                    format!("{max} commands accepted"),
                    format!("HTTP {status} {answer} after {} accepted", accepted.len()),
                );
            }
            if !statuses.contains(&status) {
                return fail(
                    format!("2xx, then HTTP {statuses:?}"),
                    format!("HTTP {status} {answer} after {} accepted", accepted.len()),
                );
            }
            let value: Value =
                serde_json::from_str(&answer).unwrap_or_else(|_| Value::String(answer.clone()));
            if let Some((path, expected, actual)) = mismatch(&value, fields) {
                return fail(
                    format!("{path} = {expected}"),
                    format!("{path} = {actual} in {value}"),
                );
            }
            self.save_list(save_as, accepted);
            return Ok(());
        }
        self.note(format!("api POST …/commands ×{max} → 2xx"));
        if statuses.is_empty() {
            self.save_list(save_as, accepted);
            return Ok(());
        }
        fail(
            format!("HTTP {statuses:?} within {max} posts"),
            format!(
                "all {max} accepted: the pending limit (max_pending, 1,000 by default) is not enforced, or is set above {max}"
            ),
        )
    }

    /// Keeps the accepted ids as the list `name`, with `{name}.count` and
    /// `{name}.first`.
    fn save_list(&mut self, name: Option<&str>, accepted: Vec<String>) {
        let Some(name) = name else { return };
        self.vars
            .insert(format!("{name}.count"), accepted.len().to_string());
        if let Some(first) = accepted.first() {
            self.vars.insert(format!("{name}.first"), first.clone());
        }
        self.lists.insert(name.to_string(), accepted);
    }

    /// Every command of the list arrives within the window; first
    /// deliveries in list order (WS-DLV-4: FIFO within a priority).
    /// Redeliveries of a command already seen are skipped.
    pub(super) async fn expect_commands(
        &mut self,
        conn: &str,
        list: &str,
        within: &str,
    ) -> StepResult {
        let Some(ids) = self.lists.get(list).cloned() else {
            return fail(
                format!("a list `{list}` saved by a fill step"),
                "no such list",
            );
        };
        let deadline = Instant::now() + self.timings().scaled(self.eval(within)?);
        let wanted: HashSet<&String> = ids.iter().collect();
        let mut next = 0;
        while next < ids.len() {
            let event = self.conn(conn)?.next_event(deadline).await;
            let message = match event {
                Event::Message(message) => message,
                Event::Nothing => {
                    self.note(format!("{conn} ← {next} of {} commands", ids.len()));
                    return fail(
                        format!("all {} accepted commands within {within}", ids.len()),
                        format!(
                            "{next} arrived; {} never did, from {}",
                            ids.len() - next,
                            ids[next]
                        ),
                    );
                }
                other => {
                    self.note(format!("{conn} ← {other}"));
                    return fail(
                        format!("all {} accepted commands", ids.len()),
                        other.to_string(),
                    );
                }
            };
            if message["type"] != "command" {
                continue;
            }
            let id = message["data"]["command_id"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if id == ids[next] {
                next += 1;
            } else if ids[..next].contains(&id) {
                continue; // a redelivery
            } else if wanted.contains(&id) {
                self.note(format!("{conn} ← {message}"));
                return fail(
                    format!("{} next (first in, first out)", ids[next]),
                    format!("{id} first"),
                );
            } else {
                self.note(format!("{conn} ← {message}"));
                return fail(
                    format!("only the {} accepted commands", ids.len()),
                    format!("command {id}"),
                );
            }
        }
        self.note(format!("{conn} ← all {} commands, in order", ids.len()));
        Ok(())
    }

    /// Deliveries `from..=max_attempts` of one command: by timer, each
    /// ack_timeout + backoff(n) after the one before (WS-DLV-3, within
    /// WS-DLV-8's tolerance); by reconnect, at once after each reconnect,
    /// and nothing after one more (WS-DLV-4: none past max_attempts).
    pub(super) async fn expect_attempts(
        &mut self,
        conn: &str,
        command_id: &str,
        by: AttemptsBy,
        from: u32,
    ) -> StepResult {
        let command_id = substitute_str(command_id, &self.vars);
        let max = self.timings().max_attempts;
        if from > max {
            return fail(
                format!("attempt {from} to exist"),
                format!("the backend advertises max_attempts = {max}"),
            );
        }
        if by == AttemptsBy::Sync {
            return self
                .expect_sync_attempts(conn, &command_id, from, max)
                .await;
        }
        for n in from..=max {
            let window = match by {
                AttemptsBy::Timer if n > 1 => {
                    let due = format!("ack_timeout + backoff({})", n - 1);
                    Window {
                        after: (n > from).then(|| format!("attempt {}", n - 1)),
                        within: due.clone(),
                        not_before: (n > from).then_some(due),
                        tolerance: true,
                    }
                }
                _ => Window {
                    after: None,
                    within: "5s".into(),
                    not_before: None,
                    tolerance: false,
                },
            };
            if by == AttemptsBy::Reconnect {
                self.reconnect(conn).await?;
            }
            let fields = vec![
                ("data.command_id".to_string(), json!(command_id)),
                ("data.attempt".to_string(), json!(n)),
            ];
            let mark = format!("attempt {n}");
            self.expect(
                conn,
                "command",
                &fields,
                &[],
                &Default::default(),
                Some(&mark),
                &window,
            )
            .await?;
        }
        if by == AttemptsBy::Reconnect {
            // WS-DLV-4: none goes past max_attempts.
            self.reconnect(conn).await?;
            self.expect_silence(conn, Some("command"), "1s").await?;
        }
        Ok(())
    }

    /// `expect_attempts` by sync: agent `agent` polls `POST /edge/sync`
    /// (every 100 ms, with its own token) and attempt n of `command_id`
    /// must be in the first answer that holds the command; for n past the
    /// first, one sync just before ack_timeout + backoff(n-1) (less WS-DLV-8's
    /// tolerance) must not hold it yet, and it must come by that time plus
    /// the tolerance.
    async fn expect_sync_attempts(
        &mut self,
        agent: &str,
        command_id: &str,
        from: u32,
        max: u32,
    ) -> StepResult {
        const POLL: Duration = Duration::from_millis(100);
        let timings = self.timings();
        // When the sync that returned the attempt before was sent and answered.
        let mut previous: Option<(Instant, Instant)> = None;
        for n in from..=max {
            let due = timings.ack_timeout + Timings::backoff(n.saturating_sub(1));
            let tolerance = Timings::tolerance(due);
            let latest = match previous {
                None => Instant::now() + timings.scaled(Duration::from_secs(5)),
                Some((sent, answered)) => {
                    let earliest = sent + due.saturating_sub(tolerance);
                    tokio::time::sleep_until(earliest - POLL).await;
                    let (commands, ..) = self.sync_commands(agent).await?;
                    if let Some(early) = find_command(&commands, command_id) {
                        return fail(
                            format!(
                                "attempt {n} not before ack_timeout + backoff({}) (less the tolerance) after attempt {}",
                                n - 1,
                                n - 1
                            ),
                            format!(
                                "attempt {} returned {:?} after it",
                                early["attempt"],
                                Instant::now().saturating_duration_since(answered)
                            ),
                        );
                    }
                    answered + timings.scaled(due) + tolerance
                }
            };
            loop {
                let (commands, sent, answered) = self.sync_commands(agent).await?;
                match find_command(&commands, command_id) {
                    Some(command) if command["attempt"] == json!(n) => {
                        self.note(format!("sync → {command_id} attempt {n}"));
                        previous = Some((sent, answered));
                        break;
                    }
                    Some(command) => {
                        return fail(format!("attempt {n}"), format!("{command}"));
                    }
                    None if answered >= latest => {
                        return fail(
                            match n {
                                1 => "attempt 1 from the first sync".to_string(),
                                _ => format!(
                                    "attempt {n} from a sync by ack_timeout + backoff({}) (plus the tolerance) after attempt {}",
                                    n - 1,
                                    n - 1
                                ),
                            },
                            format!("no sync returned {command_id}"),
                        );
                    }
                    None => tokio::time::sleep(POLL).await,
                }
            }
        }
        Ok(())
    }

    /// One `POST /edge/sync` as `agent` with its own token: the `commands`
    /// of the answer, and when the request was sent and answered.
    async fn sync_commands(
        &mut self,
        agent: &str,
    ) -> Result<(Vec<Value>, Instant, Instant), (String, String)> {
        let agent_id = self.agent_id(agent);
        let authorization = self.authorization("agent", agent)?.unwrap_or_default();
        let url = format!("{}/edge/sync", self.target.http_base);
        let sent = Instant::now();
        let response = self
            .target
            .http
            .post(&url)
            .header("authorization", authorization)
            .json(&json!({ "edge_agent_id": agent_id }))
            .send()
            .await
            .or_else(|e| fail("POST /edge/sync answers", crate::tls::describe(&e)))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let answered = Instant::now();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        match body["commands"].as_array() {
            Some(commands) if status == 200 => Ok((commands.clone(), sent, answered)),
            _ => fail(
                "POST /edge/sync: HTTP 200 with a `commands` array",
                format!("HTTP {status} {body}"),
            ),
        }
    }

    /// Closes a connection and opens it again as the same agent. Many
    /// reconnects in a row meet the backend's connect limit (WS-RATE-1: 10 a
    /// minute by spec, and `max_attempts` is 10): a 429 is waited out, as a
    /// real agent would, for up to a window and a bit.
    async fn reconnect(&mut self, conn: &str) -> StepResult {
        let Some((agent_id, _)) = self.conns.get(conn) else {
            return fail(
                format!("a connection named `{conn}`"),
                "none (connect it first)",
            );
        };
        let agent = self
            .agents
            .iter()
            .find(|(_, agent)| &agent.id == agent_id)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| conn.to_string());
        self.close(conn).await?;
        let patience = Instant::now() + Duration::from_secs(65);
        loop {
            let connected = self
                .connect(
                    conn,
                    &agent,
                    "edge",
                    None,
                    None,
                    &ConnectOutcome::Accepted,
                    None,
                    None,
                )
                .await;
            match connected {
                Err((_, observed))
                    if observed.starts_with("HTTP 429") && Instant::now() < patience =>
                {
                    self.note(format!("{conn}: 429 on reconnect (WS-RATE-1), waiting 5 s"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                other => return other,
            }
        }
    }
}

/// The command with that id in a sync answer's `commands`.
fn find_command<'a>(commands: &'a [Value], command_id: &str) -> Option<&'a Value> {
    commands.iter().find(|c| c["command_id"] == command_id)
}
