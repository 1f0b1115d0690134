//! Several edge-server instances behind one load balancer: which instance
//! holds an agent's socket, and how the others reach it.
//!
//! The [`Cluster`] trait is what the rest of the server sees. One process on
//! SQLite has no other instance: [`Local`] answers "nobody else" at no cost.
//! On PostgreSQL, [`postgres::PgCluster`] keeps the agent → instance map in
//! the shared database and carries messages between instances with
//! LISTEN/NOTIFY; what arrives is an [`Inbound`], which [`run_inbox`] hands
//! to the local registry like any local caller would.
//!
//! What crosses instances (to add a kind: a variant of [`Inbound`], its
//! sender, and its case in [`apply`]):
//! - new commands stored as pushed to a socket held elsewhere (WS-DLV-1)
//!   → `Push`, many per message ([`Cluster::announce`]); commands that wait
//!   for an agent held elsewhere → `Deliver`, which that instance claims;
//! - a config update (WS-CFG-1) → `Config`;
//! - a takeover (WS-CONN-2): the old instance closes its socket with 4000;
//! - an agent's rate-limit windows, from the instance that held its socket
//!   to the one that holds it now (WS-RATE-2/3, [`limits`]) → `Limits`.

pub mod limits;
pub mod postgres;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::limits::{Handover, Limits};
use crate::raw_json::RawJson;
use crate::registry::{KickReason, SessionMsg};
use crate::state::AppState;
use crate::store::{CommandRow, ConnId, Millis, Status, StoreResult};

/// An agent's socket on another instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSocket {
    /// The instance's name (`--instance-id`).
    pub instance: String,
    /// The instance's number in the database; names its NOTIFY channel.
    pub instance_tag: i64,
    pub conn: ConnId,
    pub connected_at: Millis,
    pub remote_addr: String,
}

/// A message from another instance for a session of this one: JSON
/// `{"kind": "deliver"|"config"|"kick"|"stored", …}`.
///
/// Read through [`Envelope`] rather than serde's internally tagged enums,
/// which buffer a message before reading it and so cannot keep `config` as
/// the text that was posted (WS-CMD-2). The JSON is the same either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "Envelope")]
pub enum Inbound {
    /// WS-DLV-1: commands were stored for agents whose sockets are here:
    /// `[agent, command]` pairs, to claim and push.
    Deliver { commands: Vec<(String, String)> },
    /// WS-DLV-1: commands were stored as pushed to sockets of this instance
    /// (attempt 1 on that connection): push them, no claim. `rows`, if not
    /// empty, carries each command of `ids` as committed, in that order,
    /// pushed without reading it; otherwise the commands are read by id.
    /// Every message has `ids`, which is all an earlier version reads; rows
    /// this version cannot read (a later version's) are left out, and the
    /// commands read by id instead.
    Push {
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rows: Vec<CommandRow>,
    },
    /// WS-CFG-1: push this `config_update`, as posted (WS-CMD-2).
    Config { agent: String, config: RawJson },
    /// WS-CONN-2: the agent connected elsewhere; close `conn` with 4000.
    Kick { agent: String, conn: ConnId },
    /// WS-RATE-2/3: the windows of the agent's socket another instance
    /// held until this one took it over ([`limits`]).
    Limits { agent: String, limits: Limits },
    /// Commands stored as pushed to sockets of this instance that may never
    /// have been pushed (`[agent, command, attempt]`): found by this
    /// instance's own scan, never sent between instances.
    #[serde(skip)]
    Recheck {
        commands: Vec<(String, String, u32)>,
    },
    /// This instance's listener was down, so messages to it may have been
    /// lost: local sockets taken over elsewhere close with 4000, and the
    /// others claim what waits for them. Never sent between instances.
    #[serde(skip)]
    Resync,
    /// A message too long for a notification, stored under `id`: see
    /// [`Cluster::take_stored`].
    Stored { id: i64 },
}

/// Every member an [`Inbound`] may have; which ones it needs depends on `kind`.
#[derive(Deserialize)]
struct Envelope {
    kind: String,
    agent: Option<String>,
    commands: Option<Vec<(String, String)>>,
    ids: Option<Vec<String>>,
    /// Read apart (see [`Inbound::Push`]).
    rows: Option<Box<serde_json::value::RawValue>>,
    config: Option<RawJson>,
    conn: Option<ConnId>,
    id: Option<i64>,
    limits: Option<Limits>,
}

impl TryFrom<Envelope> for Inbound {
    type Error = String;

    fn try_from(e: Envelope) -> Result<Inbound, String> {
        fn needs<T>(kind: &str, field: &str, value: Option<T>) -> Result<T, String> {
            value.ok_or_else(|| format!("a `{kind}` cluster message needs `{field}`"))
        }
        let kind = e.kind.as_str();
        match kind {
            "deliver" => Ok(Inbound::Deliver {
                commands: needs(kind, "commands", e.commands)?,
            }),
            "push" => {
                let ids = needs(kind, "ids", e.ids)?;
                let rows = e
                    .rows
                    .and_then(|rows| serde_json::from_str::<Vec<CommandRow>>(rows.get()).ok())
                    .filter(|rows| rows.iter().map(|r| &r.id).eq(ids.iter()))
                    .unwrap_or_default();
                Ok(Inbound::Push { ids, rows })
            }
            "config" => Ok(Inbound::Config {
                agent: needs(kind, "agent", e.agent)?,
                config: needs(kind, "config", e.config)?,
            }),
            "kick" => Ok(Inbound::Kick {
                agent: needs(kind, "agent", e.agent)?,
                conn: needs(kind, "conn", e.conn)?,
            }),
            "limits" => Ok(Inbound::Limits {
                agent: needs(kind, "agent", e.agent)?,
                limits: needs(kind, "limits", e.limits)?,
            }),
            "stored" => Ok(Inbound::Stored {
                id: needs(kind, "id", e.id)?,
            }),
            // `resync` is never sent between instances.
            other => Err(format!("unknown cluster message kind `{other}`")),
        }
    }
}

#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This instance's name (`GET /api/agents/{id}` shows it).
    fn instance(&self) -> &str;

    /// The first connection id of this process. Ids are unique across
    /// instances and restarts, so a stored `conn_id` never matches another
    /// connection (the `Claim` semantics rely on it).
    fn first_conn_id(&self) -> ConnId;

    /// WS-CONN-1 across instances: this instance now holds the agent's socket
    /// `conn`. If another instance held it, that one is told to close its
    /// socket with 4000 (WS-CONN-2). Returns once recorded, so a claim of the
    /// agent's pending commands that follows sees every command inserted
    /// before (see `store/postgres/batch.rs`), with what the agent's earlier
    /// sockets left of its rate-limit windows ([`limits`]).
    async fn hold(
        &self,
        agent_id: &str,
        conn: ConnId,
        connected_at: Millis,
        remote_addr: &str,
    ) -> StoreResult<Handover>;

    /// The socket `conn` closed (a newer holder is left alone). Its windows
    /// go with it: stored for the agent's next socket, or sent to the
    /// instance that took it over. True if they went (this instance may
    /// then forget them, [`limits`]).
    async fn release(&self, agent_id: &str, conn: ConnId, limits: &Limits) -> StoreResult<bool>;

    /// The agent's socket, if a live instance other than this one holds it.
    async fn locate(&self, agent_id: &str) -> StoreResult<Option<RemoteSocket>>;

    /// Every socket held by other live instances, by agent.
    async fn remote_sockets(&self) -> StoreResult<HashMap<String, RemoteSocket>>;

    /// Sends a message to the instance that holds `to` (at most once; a
    /// message to an instance that died is lost, and its agents get their
    /// commands when they reconnect, WS-DLV-4).
    async fn forward(&self, to: &RemoteSocket, message: &Inbound) -> StoreResult<()>;

    /// The message stored under `id` for this instance ([`Inbound::Stored`]),
    /// removed as it is read; None if it is gone.
    async fn take_stored(&self, _id: i64) -> StoreResult<Option<Inbound>> {
        Ok(None)
    }

    /// WS-DLV-1: `command` was stored (and committed). If it is stored as
    /// pushed to a socket another instance holds, that instance is told to
    /// push it; otherwise, if another live instance holds the agent's socket
    /// now, it is told to claim it (looked up after the commit, so a
    /// takeover cannot slip between: see `cluster/postgres.rs`). Later, with
    /// others: the cluster may gather several into one message. Best effort,
    /// like `forward`: a lost message costs latency, not the command.
    fn announce(&self, _command: &CommandRow) {}
}

/// One instance alone (SQLite): nobody else to reach.
pub struct Local {
    name: String,
}

impl Local {
    pub fn new(name: String) -> Local {
        Local { name }
    }
}

#[async_trait]
impl Cluster for Local {
    fn instance(&self) -> &str {
        &self.name
    }

    fn first_conn_id(&self) -> ConnId {
        // Unique across restarts of this process: the start time in the high bits.
        crate::wire::now_millis() << 20
    }

    async fn hold(&self, _: &str, _: ConnId, _: Millis, _: &str) -> StoreResult<Handover> {
        Ok(Handover::default())
    }

    /// The windows stay in this process's limiters, for the next socket.
    async fn release(&self, _: &str, _: ConnId, _: &Limits) -> StoreResult<bool> {
        Ok(false)
    }

    async fn locate(&self, _: &str) -> StoreResult<Option<RemoteSocket>> {
        Ok(None)
    }

    async fn remote_sockets(&self) -> StoreResult<HashMap<String, RemoteSocket>> {
        Ok(HashMap::new())
    }

    async fn forward(&self, _: &RemoteSocket, _: &Inbound) -> StoreResult<()> {
        Ok(())
    }
}

/// Most messages the inbox takes at once.
const INBOX_BATCH: usize = 256;

/// Runs until shutdown: hands what other instances send to the local
/// sessions, in the order they arrived. Every message waiting is taken at
/// once, and a run of `Push` messages without rows is read in one
/// statement (`PgCluster`'s notifier sends rows too long for a
/// notification that way): each
/// instance that accepts commands notifies each holder once per batch, so
/// with several of them one read per message fell behind (measured: three
/// instances, pushes hundreds of ms late at 1,000 commands/s).
pub async fn run_inbox(state: Arc<AppState>, mut inbox: mpsc::UnboundedReceiver<Inbound>) {
    let mut waiting = Vec::with_capacity(INBOX_BATCH);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            n = inbox.recv_many(&mut waiting, INBOX_BATCH) => if n == 0 { return },
        }
        let mut to_push = Vec::new();
        for message in waiting.drain(..) {
            if let Inbound::Push { ids, rows } = message {
                if rows.is_empty() {
                    to_push.extend(ids);
                    continue;
                }
                // In order: what earlier messages named goes first.
                if !to_push.is_empty() {
                    push_stored(&state, &std::mem::take(&mut to_push)).await;
                }
                push_rows(&state, rows);
                continue;
            }
            if !to_push.is_empty() {
                push_stored(&state, &std::mem::take(&mut to_push)).await;
            }
            match message {
                Inbound::Resync => resync(&state).await,
                Inbound::Stored { id } => match state.cluster.take_stored(id).await {
                    Ok(Some(message)) => apply(&state, message),
                    Ok(None) => debug!(id, "a stored cluster message was already gone"),
                    Err(e) => warn!(id, "cannot read a stored cluster message: {e}"),
                },
                message => apply(&state, message),
            }
        }
        if !to_push.is_empty() {
            push_stored(&state, &to_push).await;
        }
    }
}

/// One message from another instance, applied to the local registry.
pub fn apply(state: &AppState, message: Inbound) {
    match message {
        // The session claims it for its connection first (Claim::One), so a
        // command that already reached it is not pushed twice.
        Inbound::Deliver { commands } => {
            for (agent, command) in commands {
                if let Some(session) = state.registry.get(&agent) {
                    session.send(SessionMsg::Deliver(command));
                }
            }
        }
        Inbound::Config { agent, config } => {
            if let Some(session) = state.registry.get(&agent) {
                session.send(SessionMsg::Config(config));
            }
        }
        // WS-CONN-2: only that connection; a newer local one stays.
        Inbound::Kick { agent, conn } => match state.registry.get(&agent) {
            Some(session) if session.conn == conn => session.kick.kick(KickReason::Replaced),
            _ => debug!(agent, conn, "takeover of a socket already gone"),
        },
        // Only while the socket is here: a window with no socket would count
        // twice if the agent came back within it.
        Inbound::Limits { agent, limits } => {
            if state.registry.get(&agent).is_some() {
                limits.add_to(state, &agent);
            }
        }
        Inbound::Recheck { commands } => {
            for (agent, command_id, attempt) in commands {
                if let Some(session) = state.registry.get(&agent) {
                    session.send(SessionMsg::Recheck {
                        command_id,
                        attempt,
                    });
                }
            }
        }
        Inbound::Resync | Inbound::Stored { .. } | Inbound::Push { .. } => {}
    }
}

/// [`Inbound::Push`] of commands not carried: reads them, then
/// [`push_rows`].
async fn push_stored(state: &AppState, ids: &[String]) {
    match state.store.commands_by_id(ids).await {
        Ok(rows) => push_rows(state, rows),
        // The heartbeat's scan finds them (`postgres::PgCluster::stranded`).
        Err(e) => warn!(commands = ids.len(), "cannot read commands to push: {e}"),
    }
}

/// Hands each command to its session if it is stored as pushed to that
/// session's connection and its TTL has not passed (WS-DLV-7; the sweeper
/// may not have marked it yet). Otherwise it was acked, or claimed by a
/// newer connection (which pushed it), or its socket is gone (the agent's
/// next connection claims it, WS-DLV-4). The session skips an attempt it
/// pushed already (a message sent twice). A carried row is as committed a
/// moment ago: if a newer connection on another instance claimed it since,
/// this socket, about to be closed with 4000, gets it too, and the edge
/// dedups it by `command_id` as after any redelivery (WS-DLV-3).
fn push_rows(state: &AppState, rows: Vec<CommandRow>) {
    let now = crate::wire::now_millis();
    for row in rows {
        if row.status != Status::Sent || row.expires_at.is_some_and(|at| at <= now) {
            continue;
        }
        if let Some(session) = state.registry.get(&row.agent_id) {
            if row.conn_id == Some(session.conn) {
                session.send(SessionMsg::Push(Box::new(row)));
            }
        }
    }
}

/// Makes up for messages lost while this instance could not hear them
/// (see [`Inbound::Resync`]): a socket the cluster now places on another
/// instance, connected there after ours, was taken over (WS-CONN-2); every
/// other one claims its pending commands, which pushes those whose NOTIFY
/// was lost (WS-DLV-1).
async fn resync(state: &AppState) {
    let elsewhere = match state.cluster.remote_sockets().await {
        Ok(sockets) => sockets,
        Err(e) => {
            warn!("cannot resync with the cluster: {e}");
            HashMap::new()
        }
    };
    let sessions = state.registry.snapshot();
    let mut kicked = 0;
    for (agent, session) in &sessions {
        // Newer than ours: a takeover. (Older: ours is still recording
        // itself as the holder, and stays.)
        let taken_over = elsewhere
            .get(agent)
            .is_some_and(|remote| remote.connected_at >= session.connected_at);
        if taken_over {
            session.kick.kick(KickReason::Replaced);
            kicked += 1;
        } else {
            session.send(SessionMsg::ClaimPending);
        }
    }
    info!(
        sessions = sessions.len(),
        kicked, "resynced with the cluster"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A command stored as pushed (attempt 1) to connection 7.
    pub(super) fn pushed_row(id: String, parameters: &str) -> CommandRow {
        CommandRow {
            seq: 1,
            id,
            agent_id: "a".into(),
            command_type: "send_message".into(),
            parameters: RawJson::parse(parameters).unwrap(),
            priority: crate::store::Priority::Normal,
            status: Status::Sent,
            attempts: 1,
            created_at: 1_796_400_000_000,
            expires_at: None,
            sent_at: Some(1_796_400_000_000),
            ack_deadline: Some(1_796_400_030_000),
            next_attempt_at: Some(1_796_400_031_000),
            acked_at: None,
            completed_at: None,
            error: None,
            delivered_via: Some(crate::store::Channel::Ws),
            conn_id: Some(7),
        }
    }

    fn read(text: &str) -> Result<Inbound, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn every_kind_reads_as_it_is_written() {
        let config = RawJson::parse(r#"{"z":1,"10":2.50,"9":[{"b":1,"a":2}]}"#).unwrap();
        let messages = [
            Inbound::Deliver {
                commands: vec![("x".into(), "c1".into()), ("y".into(), "c2".into())],
            },
            Inbound::Config {
                agent: "x".into(),
                config,
            },
            Inbound::Kick {
                agent: "x".into(),
                conn: 7,
            },
            Inbound::Push {
                ids: vec!["c1".into(), "c2".into()],
                rows: Vec::new(),
            },
            Inbound::Push {
                ids: vec!["c1".into(), "c2".into()],
                rows: vec![
                    pushed_row("c1".into(), r#"{"z":1,"10":2.50}"#),
                    pushed_row("c2".into(), "[]"),
                ],
            },
            Inbound::Stored { id: 9 },
            Inbound::Limits {
                agent: "x".into(),
                limits: Limits {
                    messages: Some((1_796_400_000_000, 60)),
                    pings: None,
                },
            },
        ];
        for message in messages {
            let text = serde_json::to_string(&message).unwrap();
            assert_eq!(read(&text).unwrap(), message, "{text}");
        }
    }

    #[test]
    fn ws_cmd_2_a_config_crosses_instances_as_posted() {
        let posted = r#"{"z":1,"10":2.50,"9":12345678901234567890123,"a":{"y":[],"x":"ü"}}"#;
        let message = Inbound::Config {
            agent: "x".into(),
            config: RawJson::parse(posted).unwrap(),
        };
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(
            text,
            format!(r#"{{"kind":"config","agent":"x","config":{posted}}}"#)
        );
        match read(&text).unwrap() {
            Inbound::Config { config, .. } => assert_eq!(config.as_str(), posted),
            other => panic!("{other:?}"),
        }
        // Members in another order, as a `json_build_object` or another
        // version might write them, read the same.
        let reordered = format!(r#"{{"config":{posted},"agent":"x","kind":"config"}}"#);
        assert_eq!(read(&reordered).unwrap(), message);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for text in [
            r#"{"kind":"config","agent":"x"}"#,
            r#"{"kind":"deliver","agent":"x","command":"c1"}"#,
            r#"{"kind":"deliver","commands":[["x"]]}"#,
            r#"{"kind":"push","commands":[["x","c1"]]}"#,
            r#"{"kind":"push","ids":"c1"}"#,
            r#"{"kind":"kick","agent":"x","conn":"7"}"#,
            r#"{"kind":"limits","agent":"x"}"#,
            r#"{"kind":"limits","agent":"x","limits":{"messages":[1,-5],"pings":null}}"#,
            r#"{"kind":"resync"}"#,
            r#"{"kind":"teleport"}"#,
            r#"{"agent":"x"}"#,
            "[]",
            "",
        ] {
            assert!(read(text).is_err(), "{text}");
        }
        // Rows that are not the ids' (in their order), or that this
        // version cannot read (a later version's), are left out: the
        // commands are read by id.
        let row = |id: &str| serde_json::to_string(&pushed_row(id.into(), "{}")).unwrap();
        let unknown_state = row("c1").replace(r#""sent""#, r#""parked""#);
        for (ids, rows) in [
            (r#"["c1"]"#, row("c2")),
            (r#"["c1","c2"]"#, row("c1")),
            (r#"["c1","c2"]"#, format!("{},{}", row("c2"), row("c1"))),
            (r#"["c1"]"#, unknown_state),
            (r#"["c1"]"#, "7".into()),
        ] {
            let text = format!(r#"{{"kind":"push","ids":{ids},"rows":[{rows}]}}"#);
            match read(&text) {
                Ok(Inbound::Push { rows, .. }) => assert_eq!(rows, [], "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // What `forward` notifies for a stored message.
        assert_eq!(
            read(r#"{"kind" : "stored", "id" : 42}"#).unwrap(),
            Inbound::Stored { id: 42 }
        );
    }

    proptest! {
        /// WS-CMD-2: any config object crosses instances byte for byte.
        #[test]
        fn ws_cmd_2_any_config_round_trips(config in crate::raw_json::strategy::object_text()) {
            let message = Inbound::Config {
                agent: "x".into(),
                config: RawJson::parse(config.clone()).unwrap(),
            };
            let text = serde_json::to_string(&message).unwrap();
            match read(&text) {
                Ok(Inbound::Config { config: got, .. }) => prop_assert_eq!(got.as_str(), config.as_str()),
                other => prop_assert!(false, "{}: {:?}", text, other),
            }
        }

        /// No NOTIFY payload makes the reader panic.
        #[test]
        fn any_payload_reads_or_fails(text in ".{0,200}") {
            let _ = read(&text);
        }
    }
}
