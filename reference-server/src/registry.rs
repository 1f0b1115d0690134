//! WS-CONN-1: at most one live connection per `edge_agent_id`.
//!
//! The registry maps an agent to a [`SessionHandle`]: a bounded channel into
//! its session task and a way to make that session close. It holds no socket
//! itself, so a slow agent can never block whoever sends to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::raw_json::RawJson;
use crate::store::{CommandRow, ConnId, Millis};

/// What other parts of the server ask a session to do.
#[derive(Debug)]
pub enum SessionMsg {
    /// Push this command, already claimed for this connection (skipped if
    /// this connection pushed that attempt, or a later one, already).
    Push(Box<CommandRow>),
    /// Push this command if this session does not have it in flight and
    /// the store, read afresh, still has it as attempt `attempt` on this
    /// connection: a command stored as pushed here whose announcement from
    /// another instance may have been lost. Pushed as that attempt (it never
    /// went out); an acked one is not pushed again.
    Recheck { command_id: String, attempt: u32 },
    /// Claim this command for this connection if nobody pushed it here yet,
    /// then push it (a push that may have raced a reconnect).
    Deliver(String),
    /// WS-CFG-1: send a `config_update` with this data, as posted (WS-CMD-2).
    Config(RawJson),
    /// Claim and push whatever waits for the agent and was not pushed to
    /// this connection yet (messages to this instance may have been lost).
    ClaimPending,
}

/// Why a session is made to close; decides its close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KickReason {
    /// WS-CONN-2: a newer connection for the same agent (close 4000).
    Replaced = 1,
    /// The agent reads slower than commands arrive (close 1008).
    SlowConsumer = 2,
    /// WS-CONN-5: the server is shutting down (close 1012).
    Shutdown = 3,
}

/// Makes one session close, remembering the first reason given.
#[derive(Debug, Clone)]
pub struct Kick {
    token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl Kick {
    /// A kick that also fires when `shutdown` is cancelled.
    pub fn child_of(shutdown: &CancellationToken) -> Kick {
        Kick {
            token: shutdown.child_token(),
            reason: Arc::new(AtomicU8::new(0)),
        }
    }

    pub fn kick(&self, reason: KickReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    pub async fn kicked(&self) {
        self.token.cancelled().await;
    }

    /// Why the session was kicked; a cancelled parent means shutdown.
    pub fn reason(&self) -> KickReason {
        match self.reason.load(Ordering::Acquire) {
            1 => KickReason::Replaced,
            2 => KickReason::SlowConsumer,
            _ => KickReason::Shutdown,
        }
    }
}

/// A live connection, as the rest of the server sees it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub conn: ConnId,
    pub connected_at: Millis,
    pub remote_addr: String,
    pub tx: mpsc::Sender<SessionMsg>,
    pub kick: Kick,
}

impl SessionHandle {
    /// Hands a message to the session without waiting. If its queue is full
    /// the agent is too slow: it is disconnected and gets everything again,
    /// from the store, when it reconnects (nothing is lost).
    pub fn send(&self, msg: SessionMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.kick(KickReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, SessionHandle>>,
}

impl Registry {
    /// WS-CONN-2: registers a connection; the one it replaces, if any, is returned.
    pub fn register(&self, agent_id: &str, handle: SessionHandle) -> Option<SessionHandle> {
        self.lock().insert(agent_id.to_string(), handle)
    }

    /// Removes the agent's entry only if it is still this connection.
    pub fn remove(&self, agent_id: &str, conn: ConnId) -> bool {
        let mut sessions = self.lock();
        if sessions.get(agent_id).is_some_and(|h| h.conn == conn) {
            sessions.remove(agent_id);
            true
        } else {
            false
        }
    }

    pub fn get(&self, agent_id: &str) -> Option<SessionHandle> {
        self.lock().get(agent_id).cloned()
    }

    /// Every live connection, at this moment.
    pub fn snapshot(&self) -> Vec<(String, SessionHandle)> {
        self.lock()
            .iter()
            .map(|(id, handle)| (id.clone(), handle.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        self.sessions.lock().expect("registry lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(
        conn: ConnId,
        shutdown: &CancellationToken,
    ) -> (SessionHandle, mpsc::Receiver<SessionMsg>) {
        let (tx, rx) = mpsc::channel(1);
        let handle = SessionHandle {
            conn,
            connected_at: 0,
            remote_addr: "127.0.0.1:1".into(),
            tx,
            kick: Kick::child_of(shutdown),
        };
        (handle, rx)
    }

    #[test]
    fn ws_conn_2_register_returns_the_replaced_connection() {
        let shutdown = CancellationToken::new();
        let registry = Registry::default();
        let (first, _rx1) = handle(1, &shutdown);
        let (second, _rx2) = handle(2, &shutdown);
        assert!(registry.register("a", first).is_none());
        assert_eq!(registry.register("a", second).map(|h| h.conn), Some(1));
        assert!(
            !registry.remove("a", 1),
            "a stale connection does not remove its successor"
        );
        assert!(registry.remove("a", 2));
        assert!(registry.is_empty());
    }

    #[test]
    fn a_full_queue_kicks_the_slow_session() {
        let shutdown = CancellationToken::new();
        let (h, _rx) = handle(1, &shutdown);
        assert!(h.send(SessionMsg::Deliver("c1".into())));
        assert!(!h.send(SessionMsg::Deliver("c2".into())));
        assert!(h.kick.token.is_cancelled());
        assert_eq!(h.kick.reason(), KickReason::SlowConsumer);
    }

    #[test]
    fn shutdown_kicks_every_session() {
        let shutdown = CancellationToken::new();
        let (h, _rx) = handle(1, &shutdown);
        shutdown.cancel();
        assert!(h.kick.token.is_cancelled());
        assert_eq!(h.kick.reason(), KickReason::Shutdown);
    }
}
