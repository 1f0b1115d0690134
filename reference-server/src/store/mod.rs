//! Durable state: agents, commands, connection history, sync events.
//!
//! The [`Store`] trait is what the rest of the server sees; `sqlite/` is the
//! embedded default and `postgres/` the store several instances share. Both
//! pass one contract test suite, `contract/`: a behaviour every store must
//! keep is tested there once, not per store.
//! Every method that changes state returns only after the change is durable
//! (WS-DLV-6, WS-API-2): a caller that got `Ok` may tell the world.
//!
//! Times are milliseconds since the Unix epoch (`Millis`), so the store needs
//! no clock of its own: callers pass `now`, and tests can pass any time.

#[cfg(test)]
mod contract;
pub mod postgres;
pub mod rules;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::raw_json::RawJson;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Identifies one WebSocket connection of this process (or of another
/// instance later); the store remembers which connection got the last push so
/// a second push to the same connection is not claimed twice.
pub type ConnId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Backend(String),
    /// The database cannot be reached now (the connection was refused or
    /// lost, or the server is shutting down or starting up): unlike a
    /// `Backend` failure, the same request may well succeed in a moment.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage is closed")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How much the group commit has batched so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Transactions run (committed or not).
    pub batches: u64,
    /// Operations run in them.
    pub ops: u64,
    /// Acks written in one compare-and-set, outside any batch
    /// ([`Store::ack_pushed`] on PostgreSQL).
    pub acks_set_as_pushed: u64,
}

/// WS-DLV-2: the life of a command. (Serialized as [`Status::as_str`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sent,
    Received,
    Executing,
    Completed,
    Failed,
    Expired,
    Dead,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Sent,
        Status::Received,
        Status::Executing,
        Status::Completed,
        Status::Failed,
        Status::Expired,
        Status::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Received => "received",
            Status::Executing => "executing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// WS-ACK-3: a final state never changes again (except by an operator's retry).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Expired | Status::Dead
        )
    }
}

/// `high` before `normal` before `low` (WS-DLV-4). Stored as its rank;
/// serialized as [`Priority::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// `immediate` is accepted as `high` [compat].
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "high" | "immediate" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Priority {
        match rank {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Normal,
        }
    }
}

/// How a command reached the agent last. (Serialized as [`Channel::as_str`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Ws,
    Http,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Ws => "ws",
            Channel::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    pub user_phone: Option<String>,
    pub created_at: Millis,
    pub last_seen: Option<Millis>,
    /// WS-STATUS-1: the agent's last `status` data, as the agent sent it
    /// (WS-CMD-2).
    pub last_status: Option<RawJson>,
    /// Commands not in a final state.
    pub pending_commands: u64,
}

/// A command as stored. Serialized only to cross instances as committed
/// (`cluster::Inbound::Push`), so its holder pushes it without reading it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRow {
    /// Insertion order; FIFO within a priority (WS-DLV-4).
    pub seq: i64,
    pub id: String,
    pub agent_id: String,
    pub command_type: String,
    /// WS-CMD-2: as posted.
    pub parameters: RawJson,
    pub priority: Priority,
    pub status: Status,
    /// Deliveries so far, starting at 1 with the first push (WS-DLV-3).
    pub attempts: u32,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub sent_at: Option<Millis>,
    /// When the current attempt's ack timeout runs out.
    pub ack_deadline: Option<Millis>,
    /// When the next attempt is due if no ack comes (WS-DLV-3).
    pub next_attempt_at: Option<Millis>,
    /// First ack of any kind.
    pub acked_at: Option<Millis>,
    /// When it reached a final state.
    pub completed_at: Option<Millis>,
    pub error: Option<String>,
    pub delivered_via: Option<Channel>,
    /// The connection that got the last push, if it went over a socket.
    pub conn_id: Option<ConnId>,
}

/// A command as the control API accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    pub id: String,
    pub agent_id: String,
    pub command_type: String,
    /// WS-CMD-2: as posted.
    pub parameters: RawJson,
    pub priority: Priority,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// Stored. If a connection was given, it is stored as `sent`, attempt 1,
    /// for that connection: the caller pushes it.
    Created(CommandRow),
    /// Same `command_id` for the same agent: nothing changed (WS-API-2).
    Existing(CommandRow),
    /// Same `command_id` for another agent.
    Conflict,
    /// The agent has `max_pending` commands not yet final.
    QueueFull,
    UnknownAgent,
}

/// WS-DLV-3 timing, fixed for the life of a store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryPolicy {
    pub ack_timeout_ms: i64,
    pub max_attempts: u32,
    pub backoff_base_ms: i64,
    pub backoff_cap_ms: i64,
    pub max_pending: u64,
}

impl DeliveryPolicy {
    /// PROTOCOL.md's defaults (WS-DLV-3, WS-API-2).
    pub const PROTOCOL_DEFAULTS: DeliveryPolicy = DeliveryPolicy {
        ack_timeout_ms: 30_000,
        max_attempts: 10,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        max_pending: 1_000,
    };

    /// WS-DLV-3: attempt n+1 is due at tₙ + ack_timeout + min(base · 2ⁿ⁻¹, cap).
    pub fn next_attempt_at(&self, sent_at: Millis, attempt: u32) -> Millis {
        let exp = attempt.saturating_sub(1).min(30);
        let backoff = self
            .backoff_base_ms
            .saturating_mul(1i64 << exp)
            .min(self.backoff_cap_ms);
        sent_at + self.ack_timeout_ms + backoff
    }
}

/// Which commands to mark as pushed (one more attempt each) and return.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// WS-DLV-4: on (re)connect, every pending command of the agent that has
    /// attempts left and is not expired, in priority then FIFO order.
    /// `queued` becomes `sent`; `received`/`executing` keep their state.
    /// Commands already pushed to this same connection are left out: they
    /// were stored as pushed while the session was starting, and their push
    /// is on its way (`InsertOutcome::Created` with a connection).
    AllPending { agent_id: String, conn: ConnId },
    /// One command for this connection, if it is not final, not expired, has
    /// attempts left, and was not already pushed to this same connection
    /// (or is still `queued`). Used when a push may have raced a reconnect.
    One { command_id: String, conn: ConnId },
    /// WS-DLV-3 redelivery on the same connection: only if the command is still
    /// `sent`, still on `conn`, and still at `attempt` (nobody acked or
    /// re-pushed it meanwhile), and has attempts left and is not expired.
    Redeliver {
        command_id: String,
        conn: ConnId,
        attempt: u32,
    },
    /// WS-DLV-5: `/edge/sync`: `queued` ones, and `sent` ones whose
    /// `next_attempt_at` has come, with attempts left, not expired; they go
    /// via `http` and their `conn_id` is cleared.
    Http { agent_id: String },
}

/// What an agent said about a command (WS-ACK-1, WS-ACK-2).
#[derive(Debug, Clone, PartialEq)]
pub enum AckKind {
    Received,
    Executing,
    Completed,
    Failed { error: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    /// The state changed; `before` is the state it had.
    Updated { before: Status, command: CommandRow },
    /// A repeated ack, or one after a final state: nothing changed (WS-ACK-3).
    Unchanged(CommandRow),
    /// No such command for this agent (another agent's is "unknown" too).
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RetryOutcome {
    Requeued(CommandRow),
    NotRetryable(CommandRow),
    Unknown,
}

/// A state change the sweeper made (TTL → `expired`, attempts → `dead`).
#[derive(Debug, Clone, PartialEq)]
pub struct Swept {
    pub command_id: String,
    pub agent_id: String,
    pub status: Status,
}

/// One connection of an agent, for WS-CONN-6.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub conn: ConnId,
    pub connected_at: Millis,
    pub disconnected_at: Option<Millis>,
    pub reason: Option<String>,
    pub remote_addr: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the agent if it is new; returns whether it was created.
    /// An existing agent keeps its id; a given phone replaces the stored one.
    async fn upsert_agent(
        &self,
        id: &str,
        user_phone: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool>;
    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRow>>;
    async fn agents(&self) -> StoreResult<Vec<AgentRow>>;
    /// WS-STATUS-1, stored as sent (WS-CMD-2).
    async fn set_agent_status(&self, id: &str, status: &RawJson, now: Millis) -> StoreResult<()>;

    /// WS-CONN-6: a connection began; returns whether the agent had connected before.
    async fn record_connect(
        &self,
        agent_id: &str,
        conn: ConnId,
        remote_addr: &str,
        now: Millis,
    ) -> StoreResult<bool>;
    /// WS-CONN-6: a connection ended (also updates the agent's `last_seen`).
    async fn record_disconnect(
        &self,
        agent_id: &str,
        conn: ConnId,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()>;
    /// Newest first, at most `limit`.
    async fn history(&self, agent_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>>;

    /// WS-API-2: idempotent by id, refuses past `max_pending`. With
    /// `push_to`, the command is stored as already pushed to that connection.
    /// Without, a store shared by several instances stores it as pushed to
    /// the socket a live instance holds for the agent, if any (the created
    /// row's `conn_id`), for that instance to push (`Cluster::announce`).
    async fn insert_command(
        &self,
        command: NewCommand,
        push_to: Option<ConnId>,
    ) -> StoreResult<InsertOutcome>;
    async fn command(&self, id: &str) -> StoreResult<Option<CommandRow>>;
    /// The commands of these ids that exist, in no particular order.
    async fn commands_by_id(&self, ids: &[String]) -> StoreResult<Vec<CommandRow>> {
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            rows.extend(self.command(id).await?);
        }
        Ok(rows)
    }
    /// An agent's commands in insertion order, optionally of one state.
    async fn commands(
        &self,
        agent_id: &str,
        status: Option<Status>,
        limit: u32,
    ) -> StoreResult<Vec<CommandRow>>;
    /// Marks the claimed commands as pushed now (attempts + 1, `sent_at`,
    /// deadlines from the policy) and returns them as stored after that.
    async fn claim(&self, claim: Claim, now: Millis) -> StoreResult<Vec<CommandRow>>;
    /// Applies an ack from `agent_id` (WS-ACK-2, WS-ACK-3).
    async fn ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome>;
    /// [`Store::ack`] of a command pushed over the acking socket, which has
    /// not acked it before: the row is most likely as pushed (`sent`, never
    /// acked). PostgreSQL decides the ack on that row and writes it only if
    /// the row is still so, in one round trip instead of a batch's two,
    /// falling back to `ack` if the row changed. The outcome is `ack`'s.
    async fn ack_pushed(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome> {
        self.ack(agent_id, command_id, ack, now).await
    }
    /// WS-API-4: `dead`/`expired` → `queued`, attempts 0, TTL cleared.
    async fn retry(&self, command_id: &str, now: Millis) -> StoreResult<RetryOutcome>;
    /// WS-DLV-7 and WS-DLV-3: TTL passed → `expired`; `sent` with no attempts
    /// left and its ack deadline passed → `dead`.
    async fn sweep(&self, now: Millis) -> StoreResult<Vec<Swept>>;

    /// WS-HTTP-1: stores a sync event once; returns false if it was already there.
    async fn record_event(
        &self,
        agent_id: &str,
        event_id: &str,
        event_type: &str,
        details: &Value,
        now: Millis,
    ) -> StoreResult<bool>;

    /// Count of commands in each state.
    async fn status_counts(&self) -> StoreResult<Vec<(Status, u64)>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row crossing instances names its states as the database and the
    /// API do.
    #[test]
    fn serialized_names_are_the_stored_names() {
        let json = |v: String| format!("\"{v}\"");
        for status in Status::ALL {
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                json(status.as_str().into())
            );
        }
        for priority in [Priority::High, Priority::Normal, Priority::Low] {
            assert_eq!(
                serde_json::to_string(&priority).unwrap(),
                json(priority.as_str().into())
            );
        }
        for channel in [Channel::Ws, Channel::Http] {
            assert_eq!(
                serde_json::to_string(&channel).unwrap(),
                json(channel.as_str().into())
            );
        }
    }
}
