//! The cluster on PostgreSQL: the database that holds the queue also says
//! which instance holds each agent's socket (`agent_sockets`), and carries
//! messages between instances with LISTEN/NOTIFY.
//!
//! - Each instance registers in `instances` at start and gets a `tag`: its
//!   NOTIFY channel is `edge_{schema}_{tag}` and its connection ids are
//!   `tag << 40 | n`, unique across instances and restarts.
//! - A dedicated connection LISTENs on that channel; every notification is
//!   an [`Inbound`] (JSON) passed to the inbox (`run_inbox`). No polling on the
//!   hot path: a command for an agent held elsewhere is one NOTIFY away.
//! - A new command for an agent held by another instance is stored as
//!   pushed to that instance's socket (`store/postgres/batch.rs` reads the
//!   holder under the agent's lock), and that instance only has to push
//!   it: no claim, no transaction of its own, and no read either, as the
//!   notification carries the row as committed (unless it is too long for
//!   one; then the holder reads it by id).
//! - New commands are announced by a notifier task ([`Cluster::announce`]),
//!   off the commit path: it takes every announcement waiting and, in (at
//!   most) two autocommit statements sent together, tells each instance
//!   once about all of them: `push` for commands stored as pushed to its
//!   sockets, `deliver` for commands that wait for an agent it holds now
//!   (looked up then). A `NOTIFY` takes a database-wide lock held through
//!   its transaction's commit (PostgreSQL's `async.c`), so one notifying
//!   transaction per command would serialise every instance's commits; one
//!   per batch does not. A lost notification costs latency, not a command:
//!   the heartbeat finds what was not pushed ([`PgCluster::stranded`]), a
//!   holder whose listener was down resyncs, and an agent that reconnects
//!   claims everything pending (WS-DLV-4).
//! - [`Cluster::hold`] locks the agent's row, reads the old holder, records
//!   the new one and, if another instance held it, NOTIFYs it to close that
//!   socket with 4000 (WS-CONN-2), in one transaction: the NOTIFY goes out
//!   only if the change committed. The same row lock is taken by command
//!   inserts (`store/postgres/batch.rs`), so an insert and a takeover are
//!   ordered: either the new holder's claim of pending commands sees the
//!   command, or the notifier's lookup after the insert committed sees the
//!   new holder (WS-DLV-1, WS-DLV-4).
//! - Liveness: a heartbeat every [`HEARTBEAT`]; an instance silent for
//!   [`STALE`] is dead (kill -9): its rows are removed by whoever notices, and
//!   `locate` never names it. Its agents reconnect elsewhere and get every
//!   command not finally acked, since their new connection ids differ
//!   (`Claim::AllPending`, WS-DLV-4, WS-DLV-6).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::limits::{Handover, Limits};
use super::{Cluster, Inbound, RemoteSocket};
use crate::store::postgres::{backend, pg_error, Db};
use crate::store::{CommandRow, ConnId, Millis, Status, StoreResult};
use crate::wire::now_millis;

/// How often an instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silent this long, an instance counts as dead.
pub const STALE: Duration = Duration::from_secs(10);
/// Bits of a connection id below the instance tag.
const CONN_BITS: u32 = 40;
/// Wait before reconnecting a lost LISTEN connection: short, since every
/// notification sent meanwhile is lost (and made up for only once listening
/// again); doubled after each failed attempt, up to [`RELISTEN_MAX_DELAY`],
/// so a database that is down is not hammered.
const RELISTEN_DELAY: Duration = Duration::from_millis(100);
const RELISTEN_MAX_DELAY: Duration = Duration::from_secs(5);
/// A NOTIFY payload must be shorter than 8,000 bytes; longer messages go
/// through `cluster_messages`.
const NOTIFY_MAX: usize = 7_999;
/// Stored messages nobody took (their instance died) are removed after this.
const STORED_FOR: Duration = Duration::from_secs(300);

/// The NOTIFY channel of instance `tag`. Channels are per database, not
/// per schema: the schema's name keeps two clusters in one database apart.
fn channel(schema: &str, tag: i64) -> String {
    format!("{}{tag}", channel_prefix(schema))
}

/// What precedes the tag in every channel of the cluster.
fn channel_prefix(schema: &str) -> String {
    let schema: String = schema.chars().take(40).collect();
    format!("edge_{schema}_")
}

pub struct PgCluster {
    db: Db,
    name: String,
    tag: i64,
    schema: String,
    /// For the notifier ([`Cluster::announce`]).
    announced: mpsc::UnboundedSender<Announcement>,
}

/// A new command, as the notifier needs it.
enum Announcement {
    /// Stored as pushed to a socket of instance `tag`: it pushes it.
    Push { tag: i64, command: Box<CommandRow> },
    /// Waiting: whichever other instance holds `agent` now claims it.
    Lookup { agent: String, command: String },
}

/// Most announcements one notifier statement carries.
const ANNOUNCE_BATCH: usize = 4_096;
/// What one notification carries (the `commands` of a `deliver`, the `ids`
/// and `rows` of a `push`) stays under this many bytes of JSON (a payload
/// must be shorter than 8,000).
const ANNOUNCE_CHUNK: usize = 7_000;

impl PgCluster {
    /// Registers this instance, starts listening on its channel (before
    /// returning, so nothing sent to it once it holds a socket is missed) and
    /// starts the heartbeat. Messages for local sessions arrive on the
    /// returned receiver; both tasks end with `shutdown`.
    pub async fn start(
        db: Db,
        name: String,
        shutdown: CancellationToken,
    ) -> StoreResult<(Arc<PgCluster>, mpsc::UnboundedReceiver<Inbound>)> {
        let now = now_millis();
        let row = db
            .query(
                "INSERT INTO instances (name, started_at, heartbeat_at) VALUES ($1, $2, $2) \
                 RETURNING tag, current_schema()",
                &[&name, &now],
            )
            .await?;
        let (tag, schema): (i64, String) = (row[0].get(0), row[0].get(1));
        // An earlier run under the same name is over: its sockets are gone.
        forget_instances(
            &db,
            "SELECT tag FROM instances WHERE name = $1 AND tag <> $2",
            &[&name, &tag],
        )
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let listening = listen(&db, &channel(&schema, tag), tx.clone()).await?;
        let (announced, announcements) = mpsc::unbounded_channel();
        let cluster = Arc::new(PgCluster {
            db,
            name,
            tag,
            schema,
            announced,
        });
        tokio::spawn(cluster.clone().notify(announcements, shutdown.clone()));
        tokio::spawn(
            cluster
                .clone()
                .keep_listening(listening, tx.clone(), shutdown.clone()),
        );
        tokio::spawn(cluster.clone().heartbeat(tx, shutdown));
        info!(instance = %cluster.name, tag, "joined the cluster");
        Ok((cluster, rx))
    }

    pub fn tag(&self) -> i64 {
        self.tag
    }

    /// Re-LISTENs whenever the listening connection is lost, until shutdown.
    /// Notifications sent while it was down are lost, so once listening
    /// again the local sessions resync ([`Inbound::Resync`]).
    async fn keep_listening(
        self: Arc<Self>,
        mut listening: tokio::task::JoinHandle<()>,
        tx: mpsc::UnboundedSender<Inbound>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    listening.abort();
                    return;
                }
                _ = &mut listening => {}
            }
            warn!(instance = %self.name, "lost the LISTEN connection; reconnecting");
            let mut delay = RELISTEN_DELAY;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RELISTEN_MAX_DELAY);
                match listen(&self.db, &channel(&self.schema, self.tag), tx.clone()).await {
                    Ok(task) => {
                        listening = task;
                        info!(instance = %self.name, "listening again; resyncing local sessions");
                        let _ = tx.send(Inbound::Resync);
                        // Pushes announced while deaf: what a resync's claims
                        // leave out (stored as pushed to these very sockets).
                        self.hand_over_stranded(now_millis(), &tx).await;
                        break;
                    }
                    Err(e) => warn!("cannot LISTEN again: {e}"),
                }
            }
        }
    }

    /// Says this instance is alive, forgets instances that stopped saying
    /// so, and hands its sessions any command left `queued` for them (a lost
    /// notification: see [`PgCluster::stranded`]).
    async fn heartbeat(
        self: Arc<Self>,
        inbox: mpsc::UnboundedSender<Inbound>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = now_millis();
            let beat = self
                .db
                .execute(
                    "UPDATE instances SET heartbeat_at = $2 WHERE tag = $1",
                    &[&self.tag, &now],
                )
                .await;
            if let Err(e) = beat {
                warn!("heartbeat failed: {e}");
                continue;
            }
            let stale = now - STALE.as_millis() as i64;
            let forgotten = forget_instances(
                &self.db,
                "SELECT tag FROM instances WHERE heartbeat_at < $1 AND tag <> $2",
                &[&stale, &self.tag],
            )
            .await;
            if let Err(e) = forgotten {
                warn!("cannot forget dead instances: {e}");
            }
            self.hand_over_stranded(now - HEARTBEAT.as_millis() as i64, &inbox)
                .await;
            let expired = now - STORED_FOR.as_millis() as i64;
            let swept = self
                .db
                .execute(
                    "DELETE FROM cluster_messages WHERE created_at < $1",
                    &[&expired],
                )
                .await;
            if let Err(e) = swept {
                warn!("cannot remove old cluster messages: {e}");
            }
        }
        // A clean stop: sessions released their sockets; the rest goes now.
        let gone = forget_instances(&self.db, "SELECT $1::BIGINT", &[&self.tag]).await;
        if let Err(e) = gone {
            warn!("cannot leave the cluster: {e}");
        }
    }
}

impl PgCluster {
    /// Commands accepted before `before` for agents whose socket is here,
    /// and maybe not pushed: still `queued` (to claim: `(agent, command)`),
    /// or stored as pushed to the socket held here (`(agent, command,
    /// attempt)`: the store cannot tell whether it went out, the session
    /// can, see `SessionMsg::Recheck`). Normally none is
    /// left: a command for a connected agent is pushed within milliseconds.
    /// One is left only if its announcement was lost (the notifier's
    /// statement failed, the submitter died between its commit and the
    /// announcement, or this instance's listener was down), so delivery
    /// never depends on a notification arriving.
    #[allow(clippy::type_complexity)]
    async fn stranded(
        &self,
        before: Millis,
    ) -> StoreResult<(Vec<(String, String)>, Vec<(String, String, u32)>)> {
        let rows = self.db.query(SQL_STRANDED, &[&self.tag, &before]).await?;
        let (mut claim, mut recheck) = (Vec::new(), Vec::new());
        for row in &rows {
            if row.get(2) {
                claim.push((row.get(0), row.get(1)));
            } else {
                let attempt = u32::try_from(row.get::<_, i64>(3)).unwrap_or(u32::MAX);
                recheck.push((row.get(0), row.get(1), attempt));
            }
        }
        Ok((claim, recheck))
    }

    /// Hands the local sessions what [`PgCluster::stranded`] finds.
    async fn hand_over_stranded(&self, before: Millis, inbox: &mpsc::UnboundedSender<Inbound>) {
        match self.stranded(before).await {
            Ok((claim, recheck)) => {
                if !claim.is_empty() {
                    warn!(
                        commands = claim.len(),
                        "commands were left queued for agents connected here; pushing them"
                    );
                    let _ = inbox.send(Inbound::Deliver { commands: claim });
                }
                if !recheck.is_empty() {
                    let _ = inbox.send(Inbound::Recheck { commands: recheck });
                }
            }
            Err(e) => warn!("cannot look for stranded commands: {e}"),
        }
    }

    /// The notifier: until shutdown, tells the holders of the agents of
    /// every command announced, one notification per holding instance (and
    /// per [`ANNOUNCE_CHUNK`]) for everything waiting.
    async fn notify(
        self: Arc<Self>,
        mut announcements: mpsc::UnboundedReceiver<Announcement>,
        shutdown: CancellationToken,
    ) {
        let mut waiting = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = announcements.recv_many(&mut waiting, ANNOUNCE_BATCH) => if n == 0 { return },
            }
            if let Err(e) = self.notify_holders(&waiting).await {
                warn!(
                    commands = waiting.len(),
                    "could not announce new commands: {e}"
                );
            }
            waiting.clear();
        }
    }

    /// Each instance gets one `push` per chunk of the commands stored as
    /// pushed to its sockets, and one `deliver` per chunk of the waiting
    /// commands whose agent it holds (looked up here).
    async fn notify_holders(&self, announced: &[Announcement]) -> StoreResult<()> {
        let prefix = channel_prefix(&self.schema);
        let mut pushes: HashMap<i64, Vec<&CommandRow>> = HashMap::new();
        let mut lookups = Lookups::default();
        for announcement in announced {
            match announcement {
                Announcement::Push { tag, command } => {
                    pushes.entry(*tag).or_default().push(&**command)
                }
                Announcement::Lookup { agent, command } => lookups.add(agent, command),
            }
        }
        let (mut channels, mut payloads) = (Vec::new(), Vec::new());
        for (tag, rows) in &pushes {
            for payload in push_payloads(rows) {
                channels.push(format!("{prefix}{tag}"));
                payloads.push(payload);
            }
        }
        let alive = now_millis() - STALE.as_millis() as i64;
        let client = self.db.client().await?;
        let push = client.prepare_cached(SQL_PUSH).await.map_err(pg_error)?;
        let deliver = client.prepare_cached(SQL_DELIVER).await.map_err(pg_error)?;
        let push_params: [&(dyn ToSql + Sync); 2] = [&channels, &payloads];
        let deliver_params: [&(dyn ToSql + Sync); 6] = [
            &prefix,
            &lookups.agents,
            &lookups.commands,
            &lookups.chunks,
            &self.tag,
            &alive,
        ];
        // Autocommit, one statement each, sent together: a transaction that
        // only notifies writes no WAL (it never gets a transaction id), so
        // there is no flush to skip and nothing for BEGIN/COMMIT to add;
        // the two kinds need not be delivered together.
        futures_util::try_join!(
            async {
                match channels.is_empty() {
                    true => Ok(0),
                    false => client.execute(&push, &push_params).await,
                }
            },
            async {
                match lookups.agents.is_empty() {
                    true => Ok(0),
                    false => client.execute(&deliver, &deliver_params).await,
                }
            },
        )
        .map_err(pg_error)?;
        Ok(())
    }
}

/// The commands stranded on the sockets an instance holds
/// ([`PgCluster::stranded`]): from those sockets, each agent's pending
/// commands by index, never a walk over every queued command (those of
/// offline agents can be many).
pub(crate) const SQL_STRANDED: &str =
    "SELECT s.agent_id, c.id, c.status = 'queued', c.attempts FROM agent_sockets s \
     CROSS JOIN LATERAL (SELECT id, status, attempts FROM commands \
     WHERE agent_id = s.agent_id AND created_at < $2 \
     AND (status = 'queued' OR (status = 'sent' AND conn_id = s.conn_id)) \
     ORDER BY priority, seq LIMIT 100) c \
     WHERE s.instance_tag = $1 LIMIT 1000";

/// One notification per row: `push` payloads are made in Rust.
const SQL_PUSH: &str = "SELECT pg_notify(x.channel, x.payload) \
     FROM unnest($1::TEXT[], $2::TEXT[]) AS x(channel, payload)";

/// Looks up each agent's live holder (other than this instance) and sends
/// each holder one `deliver` per chunk.
const SQL_DELIVER: &str = "SELECT pg_notify($1::TEXT || s.instance_tag, \
     json_build_object('kind', 'deliver', \
     'commands', json_agg(json_build_array(x.agent, x.command) ORDER BY x.ord))::TEXT) \
     FROM unnest($2::TEXT[], $3::TEXT[], $4::INT[]) WITH ORDINALITY \
     AS x(agent, command, chunk, ord) \
     JOIN agent_sockets s ON s.agent_id = x.agent \
     JOIN instances i ON i.tag = s.instance_tag \
     WHERE s.instance_tag <> $5 AND i.heartbeat_at > $6 \
     GROUP BY s.instance_tag, x.chunk";

/// `(agent, command)` pairs for [`SQL_DELIVER`], one array per column, each
/// with its chunk: a notification's `commands` stay under
/// [`ANNOUNCE_CHUNK`] bytes.
#[derive(Default)]
struct Lookups<'a> {
    agents: Vec<&'a str>,
    commands: Vec<&'a str>,
    chunks: Vec<i32>,
    bytes: usize,
}

impl<'a> Lookups<'a> {
    fn add(&mut self, agent: &'a str, command: &'a str) {
        // `["agent", "command"], ` as PostgreSQL writes it (a space after
        // each comma): the API admits only ids that JSON needs no escape
        // for ([A-Za-z0-9_.:-]), so the size is arithmetic.
        let size = agent.len() + command.len() + 10;
        let mut chunk = self.chunks.last().copied().unwrap_or(0);
        if self.bytes + size > ANNOUNCE_CHUNK {
            (chunk, self.bytes) = (chunk + 1, 0);
        }
        self.bytes += size;
        self.agents.push(agent);
        self.commands.push(command);
        self.chunks.push(chunk);
    }
}

/// The `push` notifications for one instance's commands, in their order.
/// Each carries the rows as committed, so the holder pushes them without a
/// round trip to the database (one fewer between the `202` and the push);
/// a row too long for a notification goes by id alone, and its holder
/// reads it. A notification carries rows or only ids, never both, so the
/// holder (which reads a run of id-only ones at once) keeps the order.
fn push_payloads(rows: &[&CommandRow]) -> Vec<String> {
    /// A run of commands that share a notification.
    struct Chunk {
        ids: Vec<String>,
        rows: Vec<String>,
        bytes: usize,
    }
    let mut chunks: Vec<Chunk> = Vec::new();
    for row in rows {
        // `"id",` in `ids`, and the row and its comma in `rows`: the API
        // admits only ids that JSON needs no escape for ([A-Za-z0-9_.:-]).
        let id_bytes = row.id.len() + 3;
        // (Parameters too long alone are not serialized to find that out.)
        let json = (id_bytes + row.parameters.as_str().len() < ANNOUNCE_CHUNK)
            .then(|| serde_json::to_string(row).expect("a command row is JSON"))
            .filter(|json| id_bytes + json.len() < ANNOUNCE_CHUNK);
        let carried = json.is_some();
        let json_bytes = json.as_ref().map_or(0, |json| json.len() + 1);
        let bytes = id_bytes + json_bytes;
        match chunks.last_mut() {
            Some(chunk)
                if chunk.rows.is_empty() != carried && chunk.bytes + bytes <= ANNOUNCE_CHUNK =>
            {
                chunk.bytes += bytes;
                chunk.ids.push(row.id.clone());
                chunk.rows.extend(json);
            }
            _ => chunks.push(Chunk {
                ids: vec![row.id.clone()],
                rows: Vec::from_iter(json),
                bytes,
            }),
        }
    }
    chunks
        .into_iter()
        .map(|chunk| {
            let ids = serde_json::to_string(&chunk.ids).expect("ids are JSON");
            match chunk.rows.is_empty() {
                true => format!(r#"{{"kind":"push","ids":{ids}}}"#),
                false => format!(
                    r#"{{"kind":"push","ids":{ids},"rows":[{}]}}"#,
                    chunk.rows.join(",")
                ),
            }
        })
        .collect()
}

/// Removes the instances `select` names (one column: tag), and their sockets.
async fn forget_instances(
    db: &Db,
    select: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> StoreResult<()> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let tags: Vec<i64> = tx
        .query(select, params)
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tags.is_empty() {
        tx.execute(
            "DELETE FROM agent_sockets WHERE instance_tag = ANY($1)",
            &[&tags],
        )
        .await
        .map_err(pg_error)?;
        tx.execute("DELETE FROM instances WHERE tag = ANY($1)", &[&tags])
            .await
            .map_err(pg_error)?;
        info!(?tags, "forgot instances that stopped");
    }
    tx.commit().await.map_err(pg_error)
}

/// Opens a connection, LISTENs on the instance's channel and returns the
/// task that forwards its notifications to `tx` (it ends when the
/// connection does).
async fn listen(
    db: &Db,
    channel: &str,
    tx: mpsc::UnboundedSender<Inbound>,
) -> StoreResult<tokio::task::JoinHandle<()>> {
    let (client, mut connection) = db.connect_raw().await?;
    // The connection must be polled for the LISTEN to complete, and its
    // notifications arrive there. The task keeps the client (so the session
    // and its LISTEN stay open) once the LISTEN is done.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let (keep_tx, keep_rx) = tokio::sync::oneshot::channel::<tokio_postgres::Client>();
    let task = tokio::spawn(async move {
        let mut keep = Some(keep_rx);
        let mut _client = None;
        while let Some(message) = messages.next().await {
            if let Some(client) = keep.as_mut().and_then(|rx| rx.try_recv().ok()) {
                _client = Some(client);
                keep = None;
            }
            match message {
                Ok(AsyncMessage::Notification(n)) => match serde_json::from_str(n.payload()) {
                    Ok(inbound) => {
                        if tx.send(inbound).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!("ignored a malformed cluster message: {e}"),
                },
                Ok(_) => {}
                Err(e) => {
                    warn!("LISTEN connection failed: {e}");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await
        .map_err(pg_error)?;
    // If the task already ended, the client is dropped with the send.
    let _ = keep_tx.send(client);
    Ok(task)
}

#[async_trait]
impl Cluster for PgCluster {
    fn instance(&self) -> &str {
        &self.name
    }

    fn first_conn_id(&self) -> ConnId {
        (self.tag << CONN_BITS) + 1
    }

    fn announce(&self, command: &CommandRow) {
        // A connection id names its instance in its high bits.
        let announcement = match command.conn_id.map(|conn| conn >> CONN_BITS) {
            Some(tag) if tag != self.tag && command.status == Status::Sent => Announcement::Push {
                tag,
                command: Box::new(command.clone()),
            },
            _ => Announcement::Lookup {
                agent: command.agent_id.clone(),
                command: command.id.clone(),
            },
        };
        let _ = self.announced.send(announcement);
    }

    async fn hold(
        &self,
        agent_id: &str,
        conn: ConnId,
        connected_at: Millis,
        remote_addr: &str,
    ) -> StoreResult<Handover> {
        // One round trip. The agent's lock orders this against command
        // inserts for the agent (see module doc); the old holder is read
        // once it is granted. WS-CONN-2: an old socket on another instance
        // closes with 4000 (`Inbound::Kick`; a socket of this instance was
        // replaced in the local registry already). The windows a released
        // socket left are read after the new row is written: a release that
        // deleted the old row first has committed them by then (the insert
        // waits for it), and one that comes later finds this instance
        // holding the socket and sends them (`limits.rs`).
        let prefix = channel_prefix(&self.schema);
        let rows = self
            .db
            .transaction(&[
                (
                    "SELECT 1 FROM agents WHERE id = $1 FOR NO KEY UPDATE",
                    &[&agent_id],
                ),
                (
                    "SELECT s.conn_id, pg_notify($2::TEXT || s.instance_tag, \
                     json_build_object('kind', 'kick', 'agent', s.agent_id, \
                     'conn', s.conn_id)::TEXT) FROM agent_sockets s \
                     WHERE s.agent_id = $1 AND s.instance_tag <> $3",
                    &[&agent_id, &prefix, &self.tag],
                ),
                (
                    "INSERT INTO agent_sockets (agent_id, instance_tag, conn_id, connected_at, \
                     remote_addr) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id) DO UPDATE \
                     SET instance_tag = EXCLUDED.instance_tag, conn_id = EXCLUDED.conn_id, \
                     connected_at = EXCLUDED.connected_at, remote_addr = EXCLUDED.remote_addr",
                    &[&agent_id, &self.tag, &conn, &connected_at, &remote_addr],
                ),
                (
                    "SELECT conn_id, limits FROM agent_limits WHERE agent_id = $1",
                    &[&agent_id],
                ),
            ])
            .await?;
        let released = match rows[3].first() {
            Some(row) => {
                let limits = serde_json::from_str(row.get::<_, &str>(1)).map_err(backend)?;
                Some((row.get(0), limits))
            }
            None => None,
        };
        Ok(Handover {
            taken_over: rows[1].first().map(|row| row.get(0)),
            released,
        })
    }

    async fn release(&self, agent_id: &str, conn: ConnId, limits: &Limits) -> StoreResult<bool> {
        // In one transaction: the delete and the store commit together, so a
        // hold of the agent waits for both or sees neither; and a holder the
        // delete did not find (it took the socket over first) is sent the
        // windows.
        let prefix = channel_prefix(&self.schema);
        let stored = serde_json::to_string(limits).expect("limits serialise");
        let message = serde_json::json!({"kind": "limits", "agent": agent_id, "limits": limits});
        let message = message.to_string();
        self.db
            .transaction(&[
                (
                    "WITH gone AS (DELETE FROM agent_sockets WHERE agent_id = $1 \
                     AND instance_tag = $2 AND conn_id = $3 RETURNING agent_id) \
                     INSERT INTO agent_limits (agent_id, conn_id, limits) \
                     SELECT agent_id, $3, $4 FROM gone ON CONFLICT (agent_id) DO UPDATE \
                     SET conn_id = EXCLUDED.conn_id, limits = EXCLUDED.limits",
                    &[&agent_id, &self.tag, &conn, &stored],
                ),
                (
                    "SELECT pg_notify($3::TEXT || s.instance_tag, $4) FROM agent_sockets s \
                     WHERE s.agent_id = $1 AND s.instance_tag <> $2",
                    &[&agent_id, &self.tag, &prefix, &message],
                ),
            ])
            .await?;
        Ok(true)
    }

    async fn locate(&self, agent_id: &str) -> StoreResult<Option<RemoteSocket>> {
        let alive = now_millis() - STALE.as_millis() as i64;
        let rows = self
            .db
            .query(
                "SELECT s.agent_id, i.name, s.instance_tag, s.conn_id, s.connected_at, \
                 s.remote_addr FROM agent_sockets s JOIN instances i ON i.tag = s.instance_tag \
                 WHERE s.agent_id = $1 AND s.instance_tag <> $2 AND i.heartbeat_at > $3",
                &[&agent_id, &self.tag, &alive],
            )
            .await?;
        Ok(rows.first().map(|r| remote_socket(r).1))
    }

    async fn remote_sockets(&self) -> StoreResult<HashMap<String, RemoteSocket>> {
        let alive = now_millis() - STALE.as_millis() as i64;
        let rows = self
            .db
            .query(
                "SELECT s.agent_id, i.name, s.instance_tag, s.conn_id, s.connected_at, \
                 s.remote_addr FROM agent_sockets s JOIN instances i ON i.tag = s.instance_tag \
                 WHERE s.instance_tag <> $1 AND i.heartbeat_at > $2",
                &[&self.tag, &alive],
            )
            .await?;
        Ok(rows.iter().map(remote_socket).collect())
    }

    async fn forward(&self, to: &RemoteSocket, message: &Inbound) -> StoreResult<()> {
        let payload = serde_json::to_string(message).map_err(backend)?;
        let to = channel(&self.schema, to.instance_tag);
        if payload.len() <= NOTIFY_MAX {
            return self
                .db
                .execute("SELECT pg_notify($1, $2)", &[&to, &payload])
                .await
                .map(|_| ());
        }
        // Too long to notify: stored, and its id notified, in one statement
        // (the NOTIFY goes out when the row is committed).
        self.db
            .execute(
                "WITH m AS (INSERT INTO cluster_messages (payload, created_at) \
                 VALUES ($2, $3) RETURNING id) \
                 SELECT pg_notify($1, json_build_object('kind', 'stored', 'id', m.id)::TEXT) FROM m",
                &[&to, &payload, &now_millis()],
            )
            .await
            .map(|_| ())
    }

    async fn take_stored(&self, id: i64) -> StoreResult<Option<Inbound>> {
        let row = self
            .db
            .query(
                "DELETE FROM cluster_messages WHERE id = $1 RETURNING payload",
                &[&id],
            )
            .await?;
        row.first()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(backend))
            .transpose()
    }
}

fn remote_socket(r: &tokio_postgres::Row) -> (String, RemoteSocket) {
    (
        r.get(0),
        RemoteSocket {
            instance: r.get(1),
            instance_tag: r.get(2),
            conn: r.get(3),
            connected_at: r.get(4),
            remote_addr: r.get(5),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::pushed_row as row;
    use crate::store::postgres::testing::schema_for;
    use crate::store::postgres::PgStore;
    use crate::store::DeliveryPolicy;
    use proptest::prelude::*;

    proptest! {
        /// WS-DLV-1, WS-CMD-2: whatever the commands announced to one
        /// instance, each `push` notification stays under PostgreSQL's
        /// payload limit and reads back as a `push`; together they name
        /// every command once, in order; a notification carries its rows or
        /// none; every row short enough is carried, exactly as committed
        /// (parameters as posted).
        #[test]
        fn push_notifications_carry_every_row_that_fits_in_order(
            commands in proptest::collection::vec(
                ("[A-Za-z0-9_.:-]{1,64}", 0usize..9_000, "[a-zé\\\\\"\n]{0,3}"),
                1..40,
            ),
        ) {
            let rows: Vec<CommandRow> = commands
                .iter()
                .enumerate()
                .map(|(n, (id, size, text))| {
                    let text = serde_json::to_string(&text.repeat(size / 3 + 1)).unwrap();
                    row(format!("{n}-{id}"), &format!(r#"{{"t":{text},"n":1.50}}"#))
                })
                .collect();
            let refs: Vec<&CommandRow> = rows.iter().collect();
            let (mut named, mut carried) = (Vec::new(), Vec::new());
            for payload in push_payloads(&refs) {
                prop_assert!(payload.len() <= NOTIFY_MAX, "{} bytes", payload.len());
                let Ok(Inbound::Push { ids, rows }) = serde_json::from_str(&payload) else {
                    panic!("not a push: {payload}");
                };
                prop_assert!(rows.is_empty() || rows.len() == ids.len());
                named.extend(ids);
                carried.extend(rows);
            }
            let all: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            prop_assert_eq!(named, all);
            let fits = |r: &&CommandRow| {
                serde_json::to_string(r).unwrap().len() + r.id.len() + 4 <= ANNOUNCE_CHUNK
            };
            let expected: Vec<CommandRow> = rows.iter().filter(fits).cloned().collect();
            prop_assert_eq!(carried, expected);
        }
    }

    /// WS-DLV-1: however many commands one notifier run announces to an
    /// instance, and however short their ids, its `push` and `deliver`
    /// notifications stay under PostgreSQL's payload limit (whose JSON has a
    /// space after each comma and colon), and each command is in one of them.
    #[tokio::test]
    async fn notifications_of_the_shortest_ids_stay_under_the_payload_limit() {
        let test = "notifications_of_the_shortest_ids_stay_under_the_payload_limit";
        let Some(url) = schema_for(test).await else {
            return;
        };
        let policy = DeliveryPolicy::PROTOCOL_DEFAULTS;
        let store = PgStore::open(&url, policy).await.unwrap();
        let shutdown = CancellationToken::new();
        let start =
            |name: &str| PgCluster::start(store.db().clone(), name.into(), shutdown.clone());
        let (a, _) = start("A").await.unwrap();
        let (b, mut inbox) = start("B").await.unwrap();
        b.hold("a", b.first_conn_id(), 0, "127.0.0.1:1")
            .await
            .unwrap();

        // Two characters each, all different: PostgreSQL delivers a
        // notification repeated in one transaction only once.
        const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let id = |n: usize| {
            String::from_utf8(vec![CHARS[n / CHARS.len()], CHARS[n % CHARS.len()]]).unwrap()
        };
        let announced = 2_000;
        let waiting: Vec<Announcement> = (0..announced)
            .flat_map(|n| {
                [
                    Announcement::Lookup {
                        agent: "a".into(),
                        command: id(n),
                    },
                    Announcement::Push {
                        tag: b.tag(),
                        command: Box::new(row(id(n), "{}")),
                    },
                ]
            })
            .collect();
        a.notify_holders(&waiting).await.unwrap();
        let (mut delivered, mut pushed) = (0, 0);
        while delivered < announced || pushed < announced {
            let message = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .expect("B is told within 10 s")
                .expect("B's inbox is open");
            match message {
                Inbound::Deliver { commands } => delivered += commands.len(),
                Inbound::Push { ids, rows } => {
                    assert_eq!(rows.len(), ids.len(), "every row fits: all carried");
                    pushed += ids.len()
                }
                other => panic!("B got {other:?}"),
            }
        }
        assert_eq!((delivered, pushed), (announced, announced));
        shutdown.cancel();
    }
}
