//! One agent's WebSocket, from `connected` to its close.
//!
//! A session is one task: it reads frames, answers them, pushes the commands
//! the store assigns to it, redelivers unacked ones on time (WS-DLV-3), and
//! closes the socket with the code PROTOCOL.md gives for each reason.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{FutureExt, SinkExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{info, warn};

use crate::cluster::limits::Limits;
use crate::metrics::Metrics;
use crate::ratelimit::Verdict;
use crate::registry::{Kick, KickReason, SessionHandle, SessionMsg};
use crate::state::AppState;
use crate::store::{rules, Channel, Claim, CommandRow, ConnId, Status};
use crate::wire::{self, now_millis, Advertised, Inbound};

/// How long a closing socket waits for the agent's own close frame, so the
/// agent reads our close code before the TCP connection goes away.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Close codes of PROTOCOL.md §3 and §4.
mod close {
    pub const NORMAL: u16 = 1000;
    pub const POLICY: u16 = 1008;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_UTF8: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const REPLACED: u16 = 4000;
    pub const PING_TIMEOUT: u16 = 4008;
}

/// A write did not complete: the socket is gone or stalled.
struct WriteFailed;

/// Runs a session until its socket closes; registers and unregisters it.
pub async fn run(
    state: Arc<AppState>,
    mut socket: WebSocket,
    agent_id: String,
    remote: SocketAddr,
) {
    let conn = state.next_conn_id();
    let (tx, mut rx) = mpsc::channel(state.config.send_queue as usize);
    let kick = Kick::child_of(&state.shutdown);
    let handle = SessionHandle {
        conn,
        connected_at: now_millis(),
        remote_addr: remote.to_string(),
        tx,
        kick: kick.clone(),
    };
    let connected_at = handle.connected_at;
    // WS-CONN-2: the newer connection wins; the old one closes with 4000.
    let replaced_here = state.registry.register(&agent_id, handle);
    if let Some(old) = &replaced_here {
        old.kick.kick(KickReason::Replaced);
    }
    // WS-CONN-1/2 across instances: recorded before the pending commands are
    // claimed; an old socket on another instance closes with 4000. The
    // agent's rate-limit windows come with it (WS-RATE-2/3).
    match state
        .cluster
        .hold(&agent_id, conn, connected_at, &remote.to_string())
        .await
    {
        Ok(handover) => handover.apply(&state, &agent_id, replaced_here.is_some()),
        Err(e) => warn!(
            agent_id,
            "could not record which instance holds the socket: {e}"
        ),
    }
    state.metrics.connections_total.inc();
    state.metrics.connections_active.inc();
    let started = Instant::now();

    let mut session = Session {
        state: state.clone(),
        agent_id,
        conn,
        remote,
        inflight: HashMap::new(),
        timers: BinaryHeap::new(),
    };
    let reason = session.serve(&mut socket, &mut rx, &kick).await;

    let Session { agent_id, .. } = session;
    state.registry.remove(&agent_id, conn);
    let limits = Limits::of(&state, &agent_id);
    match state.cluster.release(&agent_id, conn, &limits).await {
        // The windows went with the socket; a newer socket here keeps them.
        Ok(true) if state.registry.get(&agent_id).is_none() => Limits::forget(&state, &agent_id),
        Ok(_) => {}
        Err(e) => warn!(agent_id, "could not release the socket's record: {e}"),
    }
    state.metrics.connections_active.dec();
    Metrics::count(&state.metrics.disconnects, "reason", reason);
    if let Err(e) = state
        .store
        .record_disconnect(&agent_id, conn, reason, now_millis())
        .await
    {
        warn!(agent_id, "could not record disconnect: {e}");
    }
    info!(
        reason,
        "Edge agent {agent_id} disconnected (duration: {}s)",
        started.elapsed().as_secs()
    );
}

/// A command pushed on a socket and not acked there.
struct InFlight {
    attempt: u32,
    /// Pushed as `sent` and never acked: its ack is most likely decided on
    /// that row ([`crate::store::Store::ack_pushed`]). A command pushed
    /// again to a new socket while `received` is not.
    as_pushed: bool,
}

struct Session {
    state: Arc<AppState>,
    agent_id: String,
    conn: ConnId,
    remote: SocketAddr,
    /// Commands pushed on this socket and not acked here (those with no
    /// redelivery left too, so they are not pushed twice).
    inflight: HashMap<String, InFlight>,
    /// WS-DLV-3 redelivery times; entries whose attempt no longer matches
    /// `inflight` are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, String, u32)>>,
}

impl Session {
    /// Serves the socket; returns the disconnect reason for metrics and history.
    async fn serve(
        &mut self,
        socket: &mut WebSocket,
        rx: &mut mpsc::Receiver<SessionMsg>,
        kick: &Kick,
    ) -> &'static str {
        let config = &self.state.config;
        let ping_timeout = config.ping_timeout;
        // WS-MSG-1: `connected` comes first.
        let advertised = Advertised {
            ping_interval_s: config.ping_interval.as_secs(),
            ping_timeout_s: config.ping_timeout.as_secs(),
            ack_timeout_s: config.ack_timeout.as_secs(),
            max_attempts: config.max_attempts,
        };
        let hello = wire::connected_frame(
            &self.agent_id,
            &advertised,
            &[
                ("ping_interval_ms", config.ping_interval.as_millis()),
                ("ping_timeout_ms", config.ping_timeout.as_millis()),
                ("ack_timeout_ms", config.ack_timeout.as_millis()),
            ],
        );
        if self.write(socket, hello).await.is_err() {
            return "error";
        }
        let remote = self.remote.to_string();
        match self
            .state
            .store
            .record_connect(&self.agent_id, self.conn, &remote, now_millis())
            .await
        {
            Ok(true) => {
                self.state.metrics.reconnects.inc();
            }
            Ok(false) => {}
            Err(e) => warn!(agent_id = %self.agent_id, "could not record connect: {e}"),
        }
        info!(
            "Edge agent {} connected from IP {}",
            self.agent_id,
            self.remote.ip()
        );

        // WS-DLV-4: everything pending, at once, in priority order.
        if self.claim_pending(socket).await.is_err() {
            return "error";
        }

        let idle = sleep(ping_timeout);
        tokio::pin!(idle);
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                biased;
                _ = kick.kicked() => return self.close_for(kick.reason(), socket, rx).await,
                _ = &mut idle => {
                    // WS-CONN-3: a frame that arrived while this task was
                    // busy (a slow store call) is a sign of life; read what
                    // waits before calling the agent silent.
                    let Some(frame) = socket.recv().now_or_never() else {
                        self.close(socket, close::PING_TIMEOUT, "ping timeout").await;
                        return "ping_timeout";
                    };
                    idle.as_mut().reset(Instant::now() + ping_timeout);
                    if let Some(end) = self.on_frame(socket, frame).await {
                        return end;
                    }
                }
                Some(msg) = rx.recv() => {
                    if self.on_session_msg(socket, msg).await.is_err() {
                        return "error";
                    }
                }
                _ = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    if self.redeliver_due(socket).await.is_err() {
                        return "error";
                    }
                }
                frame = socket.recv() => {
                    // WS-CONN-3: any frame resets the idle deadline.
                    idle.as_mut().reset(Instant::now() + ping_timeout);
                    if let Some(end) = self.on_frame(socket, frame).await {
                        return end;
                    }
                }
            }
        }
    }

    /// One frame from the agent; `Some(reason)` when the session ends.
    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        frame: Option<Result<Message, axum::Error>>,
    ) -> Option<&'static str> {
        let frame = match frame {
            None => return Some("error"),
            Some(Err(e)) => {
                let (code, reason) = close_code_for(e);
                self.close(socket, code, reason).await;
                return Some("error");
            }
            Some(Ok(frame)) => frame,
        };
        let handled = match frame {
            // WS-RATE-2: every text or binary message counts; one past the
            // limit is answered and otherwise ignored.
            Message::Text(_) | Message::Binary(_) if self.over_message_limit() => {
                self.reply_error(
                    socket,
                    "rate_limited",
                    "too many messages; this one was ignored",
                    None,
                )
                .await
            }
            Message::Text(text) => self.on_text(socket, text.as_str()).await,
            Message::Binary(_) => {
                // §3: binary frames are answered, not fatal.
                self.reply_error(
                    socket,
                    "unsupported_frame",
                    "send JSON in text frames",
                    None,
                )
                .await
            }
            // WebSocket Pings are answered by the library (RFC 6455).
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            // WS-CONN-4: the agent closes; tungstenite answers the close.
            Message::Close(_) => {
                let _ = timeout(CLOSE_LINGER, socket.flush()).await;
                return Some("normal");
            }
        };
        handled.is_err().then_some("error")
    }

    async fn on_session_msg(
        &mut self,
        socket: &mut WebSocket,
        msg: SessionMsg,
    ) -> Result<(), WriteFailed> {
        match msg {
            // An attempt already pushed here is skipped: a command stored as
            // pushed to this connection by another instance can be announced
            // twice (`cluster::Inbound::Push`).
            SessionMsg::Push(row) => match self.inflight.get(&row.id) {
                Some(pushed) if pushed.attempt >= row.attempts => Ok(()),
                _ => self.push(socket, vec![*row]).await,
            },
            SessionMsg::Recheck {
                command_id,
                attempt,
            } => self.recheck(socket, command_id, attempt).await,
            SessionMsg::Deliver(command_id) => {
                let claim = Claim::One {
                    command_id,
                    conn: self.conn,
                };
                self.claim_and_push(socket, claim).await
            }
            SessionMsg::Config(config) => {
                self.write(socket, wire::config_update_frame(&config)).await
            }
            SessionMsg::ClaimPending => self.claim_pending(socket).await,
        }
    }

    /// Claims what waits for the agent and was not pushed to this
    /// connection yet, and pushes it (WS-DLV-4).
    async fn claim_pending(&mut self, socket: &mut WebSocket) -> Result<(), WriteFailed> {
        let claim = Claim::AllPending {
            agent_id: self.agent_id.clone(),
            conn: self.conn,
        };
        self.claim_and_push(socket, claim).await
    }

    /// [`SessionMsg::Recheck`]: pushed unless this session has it in flight
    /// or the store, read now, says otherwise. Any ack this session handled
    /// was committed before it reads, so a command acked here is never
    /// pushed again.
    async fn recheck(
        &mut self,
        socket: &mut WebSocket,
        command_id: String,
        attempt: u32,
    ) -> Result<(), WriteFailed> {
        if self.inflight.contains_key(&command_id) {
            return Ok(());
        }
        match self.state.store.command(&command_id).await {
            Ok(Some(row))
                if row.status == Status::Sent
                    && row.conn_id == Some(self.conn)
                    && row.attempts == attempt =>
            {
                self.push(socket, vec![row]).await
            }
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(agent_id = %self.agent_id, "could not read a command to push: {e}");
                Ok(())
            }
        }
    }

    /// A store error is logged and the commands stay for a later claim.
    async fn claim_and_push(
        &mut self,
        socket: &mut WebSocket,
        claim: Claim,
    ) -> Result<(), WriteFailed> {
        match self.state.store.claim(claim, now_millis()).await {
            Ok(rows) => self.push(socket, rows).await,
            Err(e) => {
                warn!(agent_id = %self.agent_id, "could not claim commands: {e}");
                Ok(())
            }
        }
    }

    /// Counts one message against WS-RATE-2's limit: true when it is past it.
    fn over_message_limit(&self) -> bool {
        let now = std::time::Instant::now();
        matches!(
            self.state.message_limiter.hit(&self.agent_id, now),
            Verdict::Limited { .. }
        )
    }

    /// §3: one text frame from the agent, within its message limit.
    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), WriteFailed> {
        match wire::parse_text(text) {
            Ok(Inbound::Ping) => {
                self.state.metrics.pings.inc();
                // WS-RATE-3: at most one ping per interval per agent is answered.
                let verdict = self
                    .state
                    .ping_limiter
                    .hit(&self.agent_id, std::time::Instant::now());
                if matches!(verdict, Verdict::Limited { .. }) {
                    return self
                        .reply_error(socket, "rate_limited", "too many pings", None)
                        .await;
                }
                self.state.metrics.pongs.inc();
                self.write(socket, wire::pong_frame()).await
            }
            Ok(Inbound::Ack(ack)) => {
                let pushed = self
                    .inflight
                    .get(&ack.command_id)
                    .is_some_and(|command| command.as_pushed);
                let outcome = self
                    .state
                    .acknowledge(&self.agent_id, &ack.command_id, ack.kind, pushed)
                    .await;
                match outcome {
                    Ok(crate::store::AckOutcome::Unknown) => {
                        // WS-ACK-3: never reveals whether another agent has it.
                        self.reply_error(
                            socket,
                            "unknown_command",
                            "no such command for this agent",
                            Some(&ack.command_id),
                        )
                        .await
                    }
                    Ok(_) => {
                        // WS-ACK-2: any ack stops redelivery on this connection.
                        self.inflight.remove(&ack.command_id);
                        Ok(())
                    }
                    Err(e) => {
                        warn!(agent_id = %self.agent_id, "could not store ack: {e}");
                        self.reply_error(
                            socket,
                            "internal_error",
                            "the ack was not recorded; send it again",
                            Some(&ack.command_id),
                        )
                        .await
                    }
                }
            }
            Ok(Inbound::Status(status)) => {
                // WS-STATUS-1.
                if let Err(e) = self
                    .state
                    .store
                    .set_agent_status(&self.agent_id, &status, now_millis())
                    .await
                {
                    warn!(agent_id = %self.agent_id, "could not store status: {e}");
                }
                Ok(())
            }
            Err(e) => {
                self.reply_error(socket, e.code(), &e.to_string(), None)
                    .await
            }
        }
    }

    /// WS-ERR-1: an `error` message; the connection stays open.
    async fn reply_error(
        &mut self,
        socket: &mut WebSocket,
        code: &'static str,
        message: &str,
        reference: Option<&str>,
    ) -> Result<(), WriteFailed> {
        Metrics::count(&self.state.metrics.bad_messages, "code", code);
        self.write(socket, wire::error_frame(code, message, reference))
            .await
    }

    /// Writes claimed commands in one flush and starts their redelivery timers.
    async fn push(
        &mut self,
        socket: &mut WebSocket,
        rows: Vec<CommandRow>,
    ) -> Result<(), WriteFailed> {
        if rows.is_empty() {
            return Ok(());
        }
        let write_timeout = self.state.config.write_timeout;
        let sent = timeout(write_timeout, async {
            for row in &rows {
                socket
                    .feed(Message::Text(wire::command_frame(row).into()))
                    .await?;
            }
            socket.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(WriteFailed);
        }
        let max_attempts = self.state.config.max_attempts;
        for row in rows {
            self.state
                .log_sent(&self.agent_id, &row.id, &row.command_type, Channel::Ws);
            // WS-DLV-3: only a `sent` command with attempts left is redelivered;
            // `received`/`executing` wait for their final ack.
            if row.status == Status::Sent && row.attempts < max_attempts {
                if let (Some(sent_at), Some(next)) = (row.sent_at, row.next_attempt_at) {
                    let due =
                        Instant::now() + Duration::from_millis((next - sent_at).max(0) as u64);
                    self.timers
                        .push(Reverse((due, row.id.clone(), row.attempts)));
                }
            }
            let as_pushed = rules::AckColumns::of(&row) == rules::AckColumns::PUSHED;
            let attempt = row.attempts;
            self.inflight
                .insert(row.id, InFlight { attempt, as_pushed });
        }
        Ok(())
    }

    /// WS-DLV-3: pushes again every command whose redelivery time has come.
    async fn redeliver_due(&mut self, socket: &mut WebSocket) -> Result<(), WriteFailed> {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, id, attempt)) = self.timers.pop().expect("peeked");
            if self.inflight.get(&id).map(|command| command.attempt) == Some(attempt) {
                self.inflight.remove(&id);
                due.push((id, attempt));
            }
        }
        for (command_id, attempt) in due {
            let claim = Claim::Redeliver {
                command_id,
                conn: self.conn,
                attempt,
            };
            self.claim_and_push(socket, claim).await?;
        }
        Ok(())
    }

    async fn close_for(
        &mut self,
        reason: KickReason,
        socket: &mut WebSocket,
        rx: &mut mpsc::Receiver<SessionMsg>,
    ) -> &'static str {
        match reason {
            KickReason::Replaced => {
                self.close(socket, close::REPLACED, "replaced").await;
                "replaced"
            }
            KickReason::SlowConsumer => {
                self.close(socket, close::POLICY, "slow consumer").await;
                "slow_consumer"
            }
            KickReason::Shutdown => {
                // WS-CONN-5: flush what was already handed to us, then 1012.
                while let Ok(msg) = rx.try_recv() {
                    if self.on_session_msg(socket, msg).await.is_err() {
                        return "shutdown";
                    }
                }
                self.close(socket, close::SERVICE_RESTART, "service restart")
                    .await;
                "shutdown"
            }
        }
    }

    /// Sends a close frame and waits briefly for the agent's answer.
    async fn close(&mut self, socket: &mut WebSocket, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self
            .write_message(socket, Message::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let _ = timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }

    async fn write(&mut self, socket: &mut WebSocket, text: String) -> Result<(), WriteFailed> {
        self.write_message(socket, Message::Text(text.into())).await
    }

    async fn write_message(
        &mut self,
        socket: &mut WebSocket,
        message: Message,
    ) -> Result<(), WriteFailed> {
        match timeout(self.state.config.write_timeout, socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }
}

/// §3: the close code for a WebSocket-level error.
fn close_code_for(error: axum::Error) -> (u16, &'static str) {
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) => match *e {
            tungstenite::Error::Capacity(_) => (close::TOO_BIG, "message too big"),
            tungstenite::Error::Utf8(_) => (close::INVALID_UTF8, "invalid UTF-8"),
            tungstenite::Error::Protocol(_) => (close::PROTOCOL_ERROR, "protocol error"),
            _ => (close::NORMAL, ""),
        },
        Err(_) => (close::PROTOCOL_ERROR, "protocol error"),
    }
}
