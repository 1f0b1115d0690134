//! The embedded [`Store`]: one SQLite file, one writer thread, group commit.
//!
//! A dedicated OS thread (`edge-store`) owns the only [`Connection`]. Every
//! trait method sends it an operation (a closure) and awaits the answer on a
//! oneshot channel. The thread blocks for the first operation, takes up to
//! [`MAX_BATCH`]` - 1` more that are already waiting, and runs them all in one
//! `BEGIN IMMEDIATE` transaction, each inside its own `SAVEPOINT` so a failing
//! operation rolls back only itself. It then `COMMIT`s once (one fsync for the
//! whole batch, `synchronous=FULL`) and only then answers every caller: a
//! caller that got `Ok` knows its change is on disk (WS-DLV-6, WS-API-2). If
//! the commit fails, every operation of the batch gets an error.
//!
//! Reads go through the same thread, so they always see every write that has
//! been answered before them (WS-API-3).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    AckKind, AckOutcome, AgentRow, Channel, Claim, CommandRow, ConnId, DeliveryPolicy, HistoryRow,
    InsertOutcome, Millis, NewCommand, Priority, RetryOutcome, Status, Store, StoreError,
    StoreResult, Swept,
};

/// Most operations committed together in one transaction.
const MAX_BATCH: usize = 513;
/// WS-CONN-6: connection history rows kept per agent.
const HISTORY_KEEP: i64 = 50;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The non-final states (WS-DLV-4), spelled exactly as in the partial indexes'
/// `WHERE` so that SQLite can use them.
macro_rules! pending {
    () => {
        "status IN ('queued','sent','received','executing')"
    };
}

/// The columns [`command_row`] reads, in its order.
macro_rules! cmd_cols {
    () => {
        "seq, id, agent_id, command_type, parameters, priority, status, attempts, created_at, \
         expires_at, sent_at, ack_deadline, next_attempt_at, acked_at, completed_at, error, \
         delivered_via, conn_id"
    };
}

// The statements that run per command or every sweep, named so that a test
// can check they use the indexes meant for them. `INDEXED BY` pins the
// partial index: without statistics SQLite would rather walk all of an
// agent's commands through `commands_agent`.

/// WS-API-2: an agent's commands not yet final.
const SQL_COUNT_PENDING: &str = concat!(
    "SELECT COUNT(*) FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!()
);
/// Claims share: not final, not expired (WS-DLV-7), attempts left (WS-DLV-3).
/// WS-DLV-4: every pending command of the agent, priority then FIFO.
const SQL_CLAIM_ALL: &str = concat!(
    "SELECT seq, attempts FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!(),
    " AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND conn_id IS NOT ?4 ORDER BY priority, seq"
);
/// One command, unless that connection already has it (and it is not `queued`).
const SQL_CLAIM_ONE: &str = concat!(
    "SELECT seq, attempts FROM commands WHERE id = ?1 AND ",
    pending!(),
    " AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND (status = 'queued' OR conn_id IS NOT ?4)"
);
/// WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
const SQL_CLAIM_REDELIVER: &str = "SELECT seq, attempts FROM commands WHERE id = ?1 \
     AND status = 'sent' AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND conn_id = ?4 AND attempts = ?5";
/// WS-DLV-5: `queued`, and `sent` ones due again; never `received`/`executing`.
const SQL_CLAIM_HTTP: &str = concat!(
    "SELECT seq, attempts FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!(),
    " AND (status = 'queued' OR (status = 'sent' AND next_attempt_at <= ?2)) \
     AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 ORDER BY priority, seq"
);
/// WS-DLV-7: TTL passed in a non-final state (index `commands_expiry`).
const SQL_EXPIRE: &str = concat!(
    "UPDATE commands SET status = 'expired', completed_at = ?1 \
     WHERE expires_at <= ?1 AND expires_at IS NOT NULL AND ",
    pending!(),
    " RETURNING id, agent_id"
);
/// WS-DLV-3: `sent`, no attempts left, last ack timeout passed (index
/// `commands_dead`). `received`/`executing` are never dead (WS-DLV-4).
const SQL_DEAD: &str = "UPDATE commands SET status = 'dead', completed_at = ?1 \
     WHERE status = 'sent' AND attempts >= ?2 AND ack_deadline <= ?1 RETURNING id, agent_id";
const SQL_COMMAND_BY_ID: &str = concat!("SELECT ", cmd_cols!(), " FROM commands WHERE id = ?1");

/// Schema versions; `PRAGMA user_version` says how many have been applied.
const MIGRATIONS: &[&str] = &[concat!(
    "
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    user_phone  TEXT,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER,
    last_status TEXT
);
CREATE TABLE commands (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    agent_id        TEXT NOT NULL,
    command_type    TEXT NOT NULL,
    parameters      TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    sent_at         INTEGER,
    ack_deadline    INTEGER,
    next_attempt_at INTEGER,
    acked_at        INTEGER,
    completed_at    INTEGER,
    error           TEXT,
    delivered_via   TEXT,
    conn_id         INTEGER
);
-- WS-DLV-4: pending commands of an agent in push order; also counts them.
CREATE INDEX commands_pending ON commands (agent_id, priority, seq) WHERE ",
    pending!(),
    ";
-- Listing an agent's commands in insertion order.
CREATE INDEX commands_agent ON commands (agent_id, seq);
-- Sweeper, WS-DLV-7: TTLs of commands not yet final.
CREATE INDEX commands_expiry ON commands (expires_at) WHERE expires_at IS NOT NULL AND ",
    pending!(),
    ";
-- Sweeper, WS-DLV-3: `sent` commands by attempts (few have used them all), then deadline.
CREATE INDEX commands_dead ON commands (attempts, ack_deadline) WHERE status = 'sent';
CREATE TABLE connection_history (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id        TEXT NOT NULL,
    conn_id         INTEGER NOT NULL,
    connected_at    INTEGER NOT NULL,
    disconnected_at INTEGER,
    reason          TEXT,
    remote_addr     TEXT NOT NULL
);
CREATE INDEX connection_history_agent ON connection_history (agent_id, id);
CREATE TABLE sync_events (
    agent_id    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    details     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (agent_id, event_id)
) WITHOUT ROWID;
-- Commands per state, kept by triggers so `status_counts` never scans.
CREATE TABLE command_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER commands_count_insert AFTER INSERT ON commands BEGIN
    INSERT INTO command_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER commands_count_update AFTER UPDATE OF status ON commands
WHEN OLD.status <> NEW.status BEGIN
    UPDATE command_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO command_counts (status, n) VALUES (NEW.status, 1)
        ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER commands_count_delete AFTER DELETE ON commands BEGIN
    UPDATE command_counts SET n = n - 1 WHERE status = OLD.status;
END;
"
)];

/// How much the group commit has batched so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Transactions run (committed or not).
    pub batches: u64,
    /// Operations run in them.
    pub ops: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    ops: AtomicU64,
}

/// SQLite-backed [`Store`]. Cheap to clone; the writer thread ends (after
/// finishing the batch in hand) when the last clone is dropped, and the drop
/// waits for it, so the file is closed once the store is gone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Box<dyn Op>>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, brings its schema up
    /// to date and starts the writer thread.
    pub fn open(path: &Path, policy: DeliveryPolicy) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path).map_err(backend)?;
        configure(&conn)?;
        migrate(&mut conn)?;

        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Box<dyn Op>>();
        let worker = Worker {
            conn,
            policy,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("edge-store".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                counters,
            }),
        })
    }

    /// Group-commit counters (for metrics).
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.inner.counters.batches.load(Ordering::Relaxed),
            ops: self.inner.counters.ops.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on the writer thread inside the next batch; answers once the
    /// batch is committed.
    async fn call<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &DeliveryPolicy) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op = Box::new(Call {
            f: Some(f),
            result: None,
            tx,
        });
        self.inner
            .tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(op)
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "cannot switch to WAL mode (got {mode})"
        )));
    }
    // WS-DLV-6, WS-API-2: a commit is on disk before anybody hears of it.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this server knows ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The writer thread.

/// One queued operation: run it (inside a savepoint), then answer its caller
/// once the batch's fate is known.
trait Op: Send {
    /// Runs the operation; returns whether it succeeded.
    fn run(&mut self, conn: &Connection, policy: &DeliveryPolicy) -> bool;
    /// Answers the caller: its own error if it failed, else `batch_error` if
    /// the batch did not commit, else its result.
    fn reply(self: Box<Self>, batch_error: Option<&str>);
}

struct Call<F, R> {
    f: Option<F>,
    result: Option<StoreResult<R>>,
    tx: oneshot::Sender<StoreResult<R>>,
}

impl<F, R> Op for Call<F, R>
where
    R: Send,
    F: FnOnce(&Connection, &DeliveryPolicy) -> rusqlite::Result<R> + Send,
{
    fn run(&mut self, conn: &Connection, policy: &DeliveryPolicy) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = match catch_unwind(AssertUnwindSafe(|| f(conn, policy))) {
            Ok(r) => r.map_err(backend),
            Err(_) => Err(StoreError::Backend("store operation panicked".into())),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reply(self: Box<Self>, batch_error: Option<&str>) {
        let answer = match (self.result, batch_error) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(why)) => Err(StoreError::Backend(why.to_owned())),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Backend("store operation did not run".into())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.tx.send(answer);
    }
}

struct Worker {
    conn: Connection,
    policy: DeliveryPolicy,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(self, rx: mpsc::Receiver<Box<dyn Op>>) {
        let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
        // Ends when every sender is gone (the last `SqliteStore` was dropped).
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn run_batch(&self, batch: &mut Vec<Box<dyn Op>>) {
        let mut failure = self
            .exec("BEGIN IMMEDIATE")
            .err()
            .map(|e| format!("cannot begin a transaction: {e}"));
        if failure.is_none() {
            for op in batch.iter_mut() {
                if let Err(e) = self.exec("SAVEPOINT op") {
                    failure = Some(format!("cannot open a savepoint: {e}"));
                    break;
                }
                let ok = op.run(&self.conn, &self.policy);
                let end = if ok {
                    self.exec("RELEASE op")
                } else {
                    // Only this operation is undone; the batch goes on.
                    self.exec("ROLLBACK TO op")
                        .and_then(|()| self.exec("RELEASE op"))
                };
                if let Err(e) = end {
                    failure = Some(format!("cannot close a savepoint: {e}"));
                    break;
                }
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (I/O error, full disk…).
                    failure = Some("the transaction was rolled back".into());
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.exec("COMMIT") {
                failure = Some(format!("commit failed: {e}"));
            }
        }
        if failure.is_some() && !self.conn.is_autocommit() {
            let _ = self.exec("ROLLBACK");
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Only now, after the commit, does anybody hear of the outcome.
        for op in batch.drain(..) {
            op.reply(failure.as_deref());
        }
    }
}

// ---------------------------------------------------------------------------
// Row mapping.

fn conversion_error(col: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, what.into())
}

fn json_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Value> {
    let text: String = row.get(col)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(col, format!("bad JSON: {e}")))
}

fn opt_json_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Value>> {
    match row.get_ref(col)? {
        ValueRef::Null => Ok(None),
        _ => json_col(row, col).map(Some),
    }
}

fn status_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Status> {
    let text: String = row.get(col)?;
    Status::parse(&text).ok_or_else(|| conversion_error(col, format!("unknown status {text:?}")))
}

fn channel_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Channel>> {
    let text: Option<String> = row.get(col)?;
    match text.as_deref() {
        None => Ok(None),
        Some("ws") => Ok(Some(Channel::Ws)),
        Some("http") => Ok(Some(Channel::Http)),
        Some(other) => Err(conversion_error(col, format!("unknown channel {other:?}"))),
    }
}

/// Reads the columns of [`cmd_cols!`].
fn command_row(r: &Row<'_>) -> rusqlite::Result<CommandRow> {
    Ok(CommandRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        agent_id: r.get(2)?,
        command_type: r.get(3)?,
        parameters: json_col(r, 4)?,
        priority: Priority::from_rank(r.get(5)?),
        status: status_col(r, 6)?,
        attempts: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        sent_at: r.get(10)?,
        ack_deadline: r.get(11)?,
        next_attempt_at: r.get(12)?,
        acked_at: r.get(13)?,
        completed_at: r.get(14)?,
        error: r.get(15)?,
        delivered_via: channel_col(r, 16)?,
        conn_id: r.get(17)?,
    })
}

/// Reads what [`agent_row`] needs; `pending_commands` via `commands_pending`.
macro_rules! agent_select {
    () => {
        concat!(
            "SELECT a.id, a.user_phone, a.created_at, a.last_seen, a.last_status, \
             (SELECT COUNT(*) FROM commands INDEXED BY commands_pending WHERE agent_id = a.id AND ",
            pending!(),
            ") FROM agents a"
        )
    };
}

fn agent_row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        user_phone: r.get(1)?,
        created_at: r.get(2)?,
        last_seen: r.get(3)?,
        last_status: opt_json_col(r, 4)?,
        pending_commands: r.get::<_, i64>(5)?.max(0) as u64,
    })
}

fn command_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<CommandRow>> {
    conn.prepare_cached(SQL_COMMAND_BY_ID)?
        .query_row([id], command_row)
        .optional()
}

/// Marks the given commands (`(seq, attempts)`, in the order to return them)
/// as pushed now over `via`, one more attempt each (WS-DLV-3, WS-DLV-4).
fn mark_pushed(
    conn: &Connection,
    policy: &DeliveryPolicy,
    candidates: Vec<(i64, u32)>,
    now: Millis,
    via: Channel,
    to: Option<ConnId>,
) -> rusqlite::Result<Vec<CommandRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        // `queued` becomes `sent`; `sent` stays; `received`/`executing` keep
        // their progress (WS-DLV-4).
        "UPDATE commands SET status = CASE status WHEN 'queued' THEN 'sent' ELSE status END, \
         attempts = attempts + 1, sent_at = ?2, ack_deadline = ?3, next_attempt_at = ?4, \
         delivered_via = ?5, conn_id = ?6 WHERE seq = ?1 RETURNING ",
        cmd_cols!()
    ))?;
    candidates
        .into_iter()
        .map(|(seq, attempts)| {
            let attempt = attempts.saturating_add(1);
            stmt.query_row(
                params![
                    seq,
                    now,
                    now + policy.ack_timeout_ms,
                    policy.next_attempt_at(now, attempt),
                    via.as_str(),
                    to,
                ],
                command_row,
            )
        })
        .collect()
}

fn candidates(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(i64, u32)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

// ---------------------------------------------------------------------------
// The trait.

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_agent(
        &self,
        id: &str,
        user_phone: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let id = id.to_owned();
        let phone = user_phone.map(str::to_owned);
        self.call(move |c, _| {
            let created = c
                .prepare_cached(
                    "INSERT INTO agents (id, user_phone, created_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id) DO NOTHING",
                )?
                .execute(params![id, phone, now])?
                == 1;
            if !created && phone.is_some() {
                c.prepare_cached("UPDATE agents SET user_phone = ?2 WHERE id = ?1")?
                    .execute(params![id, phone])?;
            }
            Ok(created)
        })
        .await
    }

    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRow>> {
        let id = id.to_owned();
        self.call(move |c, _| {
            c.prepare_cached(concat!(agent_select!(), " WHERE a.id = ?1"))?
                .query_row([id], agent_row)
                .optional()
        })
        .await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRow>> {
        self.call(|c, _| {
            let mut stmt = c.prepare_cached(concat!(agent_select!(), " ORDER BY a.id"))?;
            let rows = stmt.query_map([], agent_row)?;
            rows.collect()
        })
        .await
    }

    async fn set_agent_status(&self, id: &str, status: &Value, now: Millis) -> StoreResult<()> {
        let id = id.to_owned();
        let status = status.to_string();
        // WS-STATUS-1; a status message also means the agent was seen.
        self.call(move |c, _| {
            c.prepare_cached("UPDATE agents SET last_status = ?2, last_seen = ?3 WHERE id = ?1")?
                .execute(params![id, status, now])?;
            Ok(())
        })
        .await
    }

    async fn record_connect(
        &self,
        agent_id: &str,
        conn: ConnId,
        remote_addr: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let agent_id = agent_id.to_owned();
        let remote_addr = remote_addr.to_owned();
        // WS-CONN-6.
        self.call(move |c, _| {
            let before = c
                .prepare_cached("SELECT 1 FROM connection_history WHERE agent_id = ?1 LIMIT 1")?
                .exists([&agent_id])?;
            c.prepare_cached(
                "INSERT INTO connection_history (agent_id, conn_id, connected_at, remote_addr) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![agent_id, conn, now, remote_addr])?;
            // Keep only the newest HISTORY_KEEP rows of this agent.
            c.prepare_cached(
                "DELETE FROM connection_history WHERE agent_id = ?1 AND id <= \
                 (SELECT id FROM connection_history WHERE agent_id = ?1 \
                  ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![agent_id, HISTORY_KEEP])?;
            c.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE id = ?1")?
                .execute(params![agent_id, now])?;
            Ok(before)
        })
        .await
    }

    async fn record_disconnect(
        &self,
        agent_id: &str,
        conn: ConnId,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let agent_id = agent_id.to_owned();
        let reason = reason.to_owned();
        // WS-CONN-6: the newest row of that connection (ids restart with the
        // process), unless it was already closed.
        self.call(move |c, _| {
            c.prepare_cached(
                "UPDATE connection_history SET disconnected_at = ?3, reason = ?4 \
                 WHERE id = (SELECT id FROM connection_history WHERE agent_id = ?1 \
                             AND conn_id = ?2 ORDER BY id DESC LIMIT 1) \
                 AND disconnected_at IS NULL",
            )?
            .execute(params![agent_id, conn, now, reason])?;
            c.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE id = ?1")?
                .execute(params![agent_id, now])?;
            Ok(())
        })
        .await
    }

    async fn history(&self, agent_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
        let agent_id = agent_id.to_owned();
        self.call(move |c, _| {
            let mut stmt = c.prepare_cached(
                "SELECT conn_id, connected_at, disconnected_at, reason, remote_addr \
                 FROM connection_history WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![agent_id, limit], |r| {
                Ok(HistoryRow {
                    conn: r.get(0)?,
                    connected_at: r.get(1)?,
                    disconnected_at: r.get(2)?,
                    reason: r.get(3)?,
                    remote_addr: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn insert_command(
        &self,
        command: NewCommand,
        push_to: Option<ConnId>,
    ) -> StoreResult<InsertOutcome> {
        self.call(move |c, policy| {
            let cmd = command;
            let known = c
                .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
                .exists([&cmd.agent_id])?;
            if !known {
                return Ok(InsertOutcome::UnknownAgent);
            }
            // WS-API-2: idempotent by id, even when the queue is full.
            if let Some(existing) = command_by_id(c, &cmd.id)? {
                return Ok(if existing.agent_id == cmd.agent_id {
                    InsertOutcome::Existing(existing)
                } else {
                    InsertOutcome::Conflict
                });
            }
            let pending: i64 = c
                .prepare_cached(SQL_COUNT_PENDING)?
                .query_row([&cmd.agent_id], |r| r.get(0))?;
            // WS-API-2: refuse, never drop.
            if pending.max(0) as u64 >= policy.max_pending {
                return Ok(InsertOutcome::QueueFull);
            }
            let t = cmd.created_at;
            let (status, attempts, sent_at, ack_deadline, next_attempt_at, via) = match push_to {
                // WS-DLV-1: stored as attempt 1 on that connection; the caller pushes it.
                Some(_) => (
                    Status::Sent,
                    1u32,
                    Some(t),
                    Some(t + policy.ack_timeout_ms),
                    Some(policy.next_attempt_at(t, 1)),
                    Some(Channel::Ws.as_str()),
                ),
                None => (Status::Queued, 0, None, None, None, None),
            };
            let row = c
                .prepare_cached(concat!(
                    "INSERT INTO commands (id, agent_id, command_type, parameters, priority, \
                     status, attempts, created_at, expires_at, sent_at, ack_deadline, \
                     next_attempt_at, delivered_via, conn_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                     RETURNING ",
                    cmd_cols!()
                ))?
                .query_row(
                    params![
                        cmd.id,
                        cmd.agent_id,
                        cmd.command_type,
                        cmd.parameters.to_string(),
                        cmd.priority.rank(),
                        status.as_str(),
                        attempts,
                        t,
                        cmd.expires_at,
                        sent_at,
                        ack_deadline,
                        next_attempt_at,
                        via,
                        push_to,
                    ],
                    command_row,
                )?;
            Ok(InsertOutcome::Created(row))
        })
        .await
    }

    async fn command(&self, id: &str) -> StoreResult<Option<CommandRow>> {
        let id = id.to_owned();
        self.call(move |c, _| command_by_id(c, &id)).await
    }

    async fn commands(
        &self,
        agent_id: &str,
        status: Option<Status>,
        limit: u32,
    ) -> StoreResult<Vec<CommandRow>> {
        let agent_id = agent_id.to_owned();
        self.call(move |c, _| {
            let mut stmt = c.prepare_cached(concat!(
                "SELECT ",
                cmd_cols!(),
                " FROM commands WHERE agent_id = ?1 AND (?2 IS NULL OR status = ?2) \
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![agent_id, status.map(Status::as_str), limit],
                command_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn claim(&self, claim: Claim, now: Millis) -> StoreResult<Vec<CommandRow>> {
        self.call(move |c, p| {
            let max = p.max_attempts;
            // Common to every claim: not final, not expired (WS-DLV-7), attempts
            // left (WS-DLV-3).
            match claim {
                // WS-DLV-4: everything pending, priority then FIFO.
                Claim::AllPending { agent_id, conn } => {
                    let found = candidates(c, SQL_CLAIM_ALL, params![agent_id, now, max, conn])?;
                    mark_pushed(c, p, found, now, Channel::Ws, Some(conn))
                }
                Claim::One { command_id, conn } => {
                    let found = candidates(c, SQL_CLAIM_ONE, params![command_id, now, max, conn])?;
                    mark_pushed(c, p, found, now, Channel::Ws, Some(conn))
                }
                // WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
                Claim::Redeliver {
                    command_id,
                    conn,
                    attempt,
                } => {
                    let found = candidates(
                        c,
                        SQL_CLAIM_REDELIVER,
                        params![command_id, now, max, conn, attempt],
                    )?;
                    mark_pushed(c, p, found, now, Channel::Ws, Some(conn))
                }
                // WS-DLV-5: `queued`, and `sent` ones due again; never
                // `received`/`executing`.
                Claim::Http { agent_id } => {
                    let found = candidates(c, SQL_CLAIM_HTTP, params![agent_id, now, max])?;
                    mark_pushed(c, p, found, now, Channel::Http, None)
                }
            }
        })
        .await
    }

    async fn ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome> {
        let agent_id = agent_id.to_owned();
        let command_id = command_id.to_owned();
        self.call(move |c, _| {
            // WS-ACK-3: another agent's command is "unknown" too.
            let row = match command_by_id(c, &command_id)? {
                Some(row) if row.agent_id == agent_id => row,
                _ => return Ok(AckOutcome::Unknown),
            };
            // WS-ACK-3: a final state never changes.
            if row.status.is_final() {
                return Ok(AckOutcome::Unchanged(row));
            }
            let before = row.status;
            // WS-ACK-2.
            let (to, final_error) = match ack {
                AckKind::Completed => (Status::Completed, Some(None)),
                AckKind::Failed { error } => (Status::Failed, Some(error)),
                AckKind::Received if matches!(before, Status::Queued | Status::Sent) => {
                    (Status::Received, None)
                }
                AckKind::Executing
                    if matches!(before, Status::Queued | Status::Sent | Status::Received) =>
                {
                    (Status::Executing, None)
                }
                // Progress only moves forward; a repeat changes nothing (WS-ACK-3).
                AckKind::Received | AckKind::Executing => return Ok(AckOutcome::Unchanged(row)),
            };
            let command = match final_error {
                Some(error) => c
                    .prepare_cached(concat!(
                        "UPDATE commands SET status = ?2, acked_at = COALESCE(acked_at, ?3), \
                         completed_at = ?3, error = ?4 WHERE seq = ?1 RETURNING ",
                        cmd_cols!()
                    ))?
                    .query_row(params![row.seq, to.as_str(), now, error], command_row)?,
                None => c
                    .prepare_cached(concat!(
                        "UPDATE commands SET status = ?2, acked_at = COALESCE(acked_at, ?3) \
                         WHERE seq = ?1 RETURNING ",
                        cmd_cols!()
                    ))?
                    .query_row(params![row.seq, to.as_str(), now], command_row)?,
            };
            Ok(AckOutcome::Updated { before, command })
        })
        .await
    }

    async fn retry(&self, command_id: &str, _now: Millis) -> StoreResult<RetryOutcome> {
        let command_id = command_id.to_owned();
        // WS-API-4.
        self.call(move |c, _| {
            let Some(row) = command_by_id(c, &command_id)? else {
                return Ok(RetryOutcome::Unknown);
            };
            if !matches!(row.status, Status::Dead | Status::Expired) {
                return Ok(RetryOutcome::NotRetryable(row));
            }
            let row = c
                .prepare_cached(concat!(
                    "UPDATE commands SET status = 'queued', attempts = 0, expires_at = NULL, \
                     sent_at = NULL, ack_deadline = NULL, next_attempt_at = NULL, \
                     conn_id = NULL, completed_at = NULL, error = NULL WHERE seq = ?1 RETURNING ",
                    cmd_cols!()
                ))?
                .query_row([row.seq], command_row)?;
            Ok(RetryOutcome::Requeued(row))
        })
        .await
    }

    async fn sweep(&self, now: Millis) -> StoreResult<Vec<Swept>> {
        self.call(move |c, p| {
            let mut swept = Vec::new();
            // WS-DLV-7 (index commands_expiry).
            {
                let mut stmt = c.prepare_cached(SQL_EXPIRE)?;
                let rows = stmt.query_map([now], |r| {
                    Ok(Swept {
                        command_id: r.get(0)?,
                        agent_id: r.get(1)?,
                        status: Status::Expired,
                    })
                })?;
                for row in rows {
                    swept.push(row?);
                }
            }
            // WS-DLV-3: the last attempt's ack timeout passed (index commands_dead).
            // `received`/`executing` are never dead (WS-DLV-4).
            let mut stmt = c.prepare_cached(SQL_DEAD)?;
            let rows = stmt.query_map(params![now, p.max_attempts], |r| {
                Ok(Swept {
                    command_id: r.get(0)?,
                    agent_id: r.get(1)?,
                    status: Status::Dead,
                })
            })?;
            for row in rows {
                swept.push(row?);
            }
            Ok(swept)
        })
        .await
    }

    async fn record_event(
        &self,
        agent_id: &str,
        event_id: &str,
        event_type: &str,
        details: &Value,
        now: Millis,
    ) -> StoreResult<bool> {
        let agent_id = agent_id.to_owned();
        let event_id = event_id.to_owned();
        let event_type = event_type.to_owned();
        let details = details.to_string();
        // WS-HTTP-1: stored once.
        self.call(move |c, _| {
            let n = c
                .prepare_cached(
                    "INSERT INTO sync_events (agent_id, event_id, event_type, details, received_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )?
                .execute(params![agent_id, event_id, event_type, details, now])?;
            Ok(n == 1)
        })
        .await
    }

    async fn status_counts(&self) -> StoreResult<Vec<(Status, u64)>> {
        self.call(|c, _| {
            let mut stmt = c.prepare_cached("SELECT status, n FROM command_counts WHERE n > 0")?;
            let rows = stmt.query_map([], |r| Ok((status_col(r, 0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = rows
                .map(|row| row.map(|(s, n)| (s, n.max(0) as u64)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            counts.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
            Ok(counts)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;

    const T0: Millis = 1_700_000_000_000;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            ack_timeout_ms: 30_000,
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            max_pending: 10_000,
        }
    }

    fn open_with(dir: &tempfile::TempDir, policy: DeliveryPolicy) -> SqliteStore {
        SqliteStore::open(&dir.path().join("edge.db"), policy).expect("open store")
    }

    async fn setup() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(&dir, policy());
        assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
        assert!(store.upsert_agent("a2", None, T0).await.unwrap());
        (dir, store)
    }

    fn new_cmd(id: &str, agent: &str, priority: Priority, at: Millis) -> NewCommand {
        NewCommand {
            id: id.into(),
            agent_id: agent.into(),
            command_type: "send_message".into(),
            parameters: json!({"to": "+1", "text": id, "n": [1, 2]}),
            priority,
            created_at: at,
            expires_at: None,
        }
    }

    async fn insert(store: &SqliteStore, cmd: NewCommand) -> CommandRow {
        match store.insert_command(cmd, None).await.unwrap() {
            InsertOutcome::Created(row) => row,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    fn ids(rows: &[CommandRow]) -> Vec<&str> {
        rows.iter().map(|r| r.id.as_str()).collect()
    }

    async fn status_of(store: &SqliteStore, id: &str) -> Status {
        store.command(id).await.unwrap().unwrap().status
    }

    #[tokio::test]
    async fn agents_upsert_status_history_events() {
        let (_dir, store) = setup().await;
        // Existing agent: not created; phone replaced only when given.
        assert!(!store.upsert_agent("a1", None, T0 + 5).await.unwrap());
        let a1 = store.agent("a1").await.unwrap().unwrap();
        assert_eq!(a1.user_phone.as_deref(), Some("+100"));
        assert_eq!(a1.created_at, T0);
        assert!(!store
            .upsert_agent("a1", Some("+200"), T0 + 6)
            .await
            .unwrap());
        let a1 = store.agent("a1").await.unwrap().unwrap();
        assert_eq!(a1.user_phone.as_deref(), Some("+200"));
        assert_eq!(a1.last_status, None);
        assert!(store.agent("nobody").await.unwrap().is_none());

        let status = json!({"uptime_seconds": 12, "scheduled_messages": [1, 2]});
        store.set_agent_status("a1", &status, T0 + 7).await.unwrap();
        let a1 = store.agent("a1").await.unwrap().unwrap();
        assert_eq!(a1.last_status, Some(status));
        assert_eq!(a1.last_seen, Some(T0 + 7));

        insert(&store, new_cmd("c1", "a1", Priority::Normal, T0)).await;
        insert(&store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
        store
            .ack("a1", "c2", AckKind::Completed, T0 + 1)
            .await
            .unwrap();
        let all = store.agents().await.unwrap();
        assert_eq!(
            all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        assert_eq!(all[0].pending_commands, 1);
        assert_eq!(all[1].pending_commands, 0);

        // History: first connect is not "before"; later ones are.
        assert!(!store
            .record_connect("a1", 1, "10.0.0.1:5", T0 + 10)
            .await
            .unwrap());
        assert_eq!(
            store.agent("a1").await.unwrap().unwrap().last_seen,
            Some(T0 + 10)
        );
        store
            .record_disconnect("a1", 1, "replaced", T0 + 20)
            .await
            .unwrap();
        assert_eq!(
            store.agent("a1").await.unwrap().unwrap().last_seen,
            Some(T0 + 20)
        );
        assert!(store
            .record_connect("a1", 2, "10.0.0.2:5", T0 + 30)
            .await
            .unwrap());
        let h = store.history("a1", 10).await.unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].conn, 2);
        assert_eq!(h[0].disconnected_at, None);
        assert_eq!(h[0].remote_addr, "10.0.0.2:5");
        assert_eq!(h[1].conn, 1);
        assert_eq!(h[1].connected_at, T0 + 10);
        assert_eq!(h[1].disconnected_at, Some(T0 + 20));
        assert_eq!(h[1].reason.as_deref(), Some("replaced"));
        assert_eq!(store.history("a1", 1).await.unwrap().len(), 1);
        // Only the newest 50 rows are kept.
        for i in 0..60 {
            store
                .record_connect("a1", 100 + i, "x", T0 + 100 + i)
                .await
                .unwrap();
        }
        let h = store.history("a1", 1_000).await.unwrap();
        assert_eq!(h.len(), 50);
        assert_eq!(h[0].conn, 159);
        assert_eq!(h[49].conn, 110);

        // Sync events are stored once per agent.
        let d = json!({"k": 1});
        assert!(store.record_event("a1", "e1", "t", &d, T0).await.unwrap());
        assert!(!store
            .record_event("a1", "e1", "t", &d, T0 + 1)
            .await
            .unwrap());
        assert!(store.record_event("a2", "e1", "t", &d, T0).await.unwrap());
    }

    #[tokio::test]
    async fn insert_idempotency_conflict_queue_full_unknown_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(
            &dir,
            DeliveryPolicy {
                max_pending: 2,
                ..policy()
            },
        );
        store.upsert_agent("a1", None, T0).await.unwrap();
        store.upsert_agent("a2", None, T0).await.unwrap();

        assert_eq!(
            store
                .insert_command(new_cmd("x", "ghost", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::UnknownAgent
        );
        let c1 = insert(&store, new_cmd("c1", "a1", Priority::High, T0)).await;
        assert_eq!(c1.status, Status::Queued);
        assert_eq!(c1.attempts, 0);
        assert_eq!(c1.priority, Priority::High);
        assert_eq!(
            c1.parameters,
            json!({"to": "+1", "text": "c1", "n": [1, 2]})
        );
        assert_eq!(c1.sent_at, None);
        assert_eq!(c1.delivered_via, None);
        assert_eq!(store.command("c1").await.unwrap(), Some(c1.clone()));

        // Same id, same agent: the stored one, unchanged (even with other fields).
        let mut again = new_cmd("c1", "a1", Priority::Low, T0 + 99);
        again.parameters = json!({"different": true});
        assert_eq!(
            store.insert_command(again, Some(7)).await.unwrap(),
            InsertOutcome::Existing(c1.clone())
        );
        // Same id, other agent.
        assert_eq!(
            store
                .insert_command(new_cmd("c1", "a2", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::Conflict
        );

        // Pushed at once: stored as attempt 1 on that connection.
        let c2 = match store
            .insert_command(new_cmd("c2", "a1", Priority::Normal, T0 + 1), Some(42))
            .await
            .unwrap()
        {
            InsertOutcome::Created(row) => row,
            other => panic!("{other:?}"),
        };
        assert_eq!(c2.status, Status::Sent);
        assert_eq!(c2.attempts, 1);
        assert_eq!(c2.sent_at, Some(T0 + 1));
        assert_eq!(c2.ack_deadline, Some(T0 + 1 + 30_000));
        assert_eq!(
            c2.next_attempt_at,
            Some(policy().next_attempt_at(T0 + 1, 1))
        );
        assert_eq!(c2.delivered_via, Some(Channel::Ws));
        assert_eq!(c2.conn_id, Some(42));
        assert!(c2.seq > c1.seq);

        // Queue full (2 pending): refused, but a repeat is still Existing.
        assert_eq!(
            store
                .insert_command(new_cmd("c3", "a1", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::QueueFull
        );
        assert!(store.command("c3").await.unwrap().is_none());
        assert!(matches!(
            store
                .insert_command(new_cmd("c2", "a1", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::Existing(row) if row == c2
        ));
        // Another agent's queue is separate.
        insert(&store, new_cmd("d1", "a2", Priority::Normal, T0)).await;
        // A final command frees a slot.
        store
            .ack("a1", "c1", AckKind::Completed, T0 + 2)
            .await
            .unwrap();
        insert(&store, new_cmd("c3", "a1", Priority::Normal, T0)).await;
        assert_eq!(
            store.agent("a1").await.unwrap().unwrap().pending_commands,
            2
        );

        let listed = store.commands("a1", None, 100).await.unwrap();
        assert_eq!(ids(&listed), ["c1", "c2", "c3"]);
        let listed = store
            .commands("a1", Some(Status::Completed), 100)
            .await
            .unwrap();
        assert_eq!(ids(&listed), ["c1"]);
        assert_eq!(store.commands("a1", None, 2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn claim_all_pending_order_and_skips() {
        let (_dir, store) = setup().await;
        insert(&store, new_cmd("low1", "a1", Priority::Low, T0)).await;
        insert(&store, new_cmd("n1", "a1", Priority::Normal, T0)).await;
        insert(&store, new_cmd("h1", "a1", Priority::High, T0)).await;
        insert(&store, new_cmd("n2", "a1", Priority::Normal, T0)).await;
        insert(&store, new_cmd("h2", "a1", Priority::High, T0)).await;
        insert(&store, new_cmd("low2", "a1", Priority::Low, T0)).await;
        insert(&store, new_cmd("other", "a2", Priority::High, T0)).await;
        let mut exp = new_cmd("expired", "a1", Priority::High, T0);
        exp.expires_at = Some(T0 + 500);
        insert(&store, exp).await;
        insert(&store, new_cmd("done", "a1", Priority::High, T0)).await;
        store
            .ack("a1", "done", AckKind::Failed { error: None }, T0)
            .await
            .unwrap();
        insert(&store, new_cmd("working", "a1", Priority::Normal, T0)).await;
        store
            .ack("a1", "working", AckKind::Executing, T0)
            .await
            .unwrap();

        let now = T0 + 1_000;
        let got = store
            .claim(
                Claim::AllPending {
                    agent_id: "a1".into(),
                    conn: 5,
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            ids(&got),
            ["h1", "h2", "n1", "n2", "working", "low1", "low2"]
        );
        for row in &got {
            assert_eq!(row.attempts, 1);
            assert_eq!(row.sent_at, Some(now));
            assert_eq!(row.ack_deadline, Some(now + 30_000));
            assert_eq!(row.next_attempt_at, Some(policy().next_attempt_at(now, 1)));
            assert_eq!(row.delivered_via, Some(Channel::Ws));
            assert_eq!(row.conn_id, Some(5));
            assert_eq!(store.command(&row.id).await.unwrap().as_ref(), Some(row));
        }
        // Progress is kept; queued became sent.
        assert_eq!(got[4].status, Status::Executing);
        assert!(got
            .iter()
            .filter(|r| r.id != "working")
            .all(|r| r.status == Status::Sent));
        assert_eq!(status_of(&store, "expired").await, Status::Queued);

        // Two more reconnects use up max_attempts (3); then nothing is claimed.
        let got = store
            .claim(
                Claim::AllPending {
                    agent_id: "a1".into(),
                    conn: 6,
                },
                now + 1,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 7);
        assert!(got.iter().all(|r| r.attempts == 2 && r.conn_id == Some(6)));
        assert_eq!(
            got[0].next_attempt_at,
            Some(policy().next_attempt_at(now + 1, 2))
        );
        let got = store
            .claim(
                Claim::AllPending {
                    agent_id: "a1".into(),
                    conn: 7,
                },
                now + 2,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 7);
        assert!(got.iter().all(|r| r.attempts == 3));
        let got = store
            .claim(
                Claim::AllPending {
                    agent_id: "a1".into(),
                    conn: 8,
                },
                now + 3,
            )
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "exhausted commands claimed: {:?}",
            ids(&got)
        );
        // The exhausted `executing` one keeps its state (WS-DLV-4).
        assert_eq!(status_of(&store, "working").await, Status::Executing);
    }

    #[tokio::test]
    async fn claim_redeliver_and_one() {
        let (_dir, store) = setup().await;
        let c = match store
            .insert_command(new_cmd("c1", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap()
        {
            InsertOutcome::Created(row) => row,
            other => panic!("{other:?}"),
        };
        assert_eq!((c.attempts, c.conn_id), (1, Some(1)));
        let later = T0 + 40_000;
        let redeliver = |conn, attempt| Claim::Redeliver {
            command_id: "c1".into(),
            conn,
            attempt,
        };
        // Wrong attempt or wrong connection: nothing.
        assert!(store
            .claim(redeliver(1, 2), later)
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .claim(redeliver(2, 1), later)
            .await
            .unwrap()
            .is_empty());
        let got = store.claim(redeliver(1, 1), later).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].attempts, got[0].status), (2, Status::Sent));
        assert_eq!(got[0].sent_at, Some(later));
        assert_eq!(
            got[0].next_attempt_at,
            Some(policy().next_attempt_at(later, 2))
        );
        // The same redelivery again is stale now.
        assert!(store
            .claim(redeliver(1, 1), later)
            .await
            .unwrap()
            .is_empty());

        // One: not to the connection that already has it.
        let one = |conn| Claim::One {
            command_id: "c1".into(),
            conn,
        };
        assert!(store.claim(one(1), later).await.unwrap().is_empty());
        let got = store.claim(one(2), later + 1).await.unwrap();
        assert_eq!((got[0].attempts, got[0].conn_id), (3, Some(2)));
        // Attempts are used up (max 3): neither One nor Redeliver claims it.
        assert!(store.claim(one(3), later + 2).await.unwrap().is_empty());
        assert!(store
            .claim(redeliver(2, 3), later + 2)
            .await
            .unwrap()
            .is_empty());

        // Redeliver only while `sent`: a progress ack stops it.
        store
            .insert_command(new_cmd("c2", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap();
        store
            .ack("a1", "c2", AckKind::Received, T0 + 1)
            .await
            .unwrap();
        assert!(store
            .claim(
                Claim::Redeliver {
                    command_id: "c2".into(),
                    conn: 1,
                    attempt: 1
                },
                later
            )
            .await
            .unwrap()
            .is_empty());
        // ... but One (a reconnect race) still re-pushes it on another connection,
        // keeping its progress.
        let got = store
            .claim(
                Claim::One {
                    command_id: "c2".into(),
                    conn: 9,
                },
                later,
            )
            .await
            .unwrap();
        assert_eq!((got[0].status, got[0].attempts), (Status::Received, 2));

        // One claims a queued command whatever the connection; skips final,
        // expired and unknown ones.
        insert(&store, new_cmd("q", "a1", Priority::Normal, T0)).await;
        let got = store
            .claim(
                Claim::One {
                    command_id: "q".into(),
                    conn: 1,
                },
                T0,
            )
            .await
            .unwrap();
        assert_eq!((got[0].status, got[0].attempts), (Status::Sent, 1));
        store.ack("a1", "q", AckKind::Completed, T0).await.unwrap();
        assert!(store
            .claim(
                Claim::One {
                    command_id: "q".into(),
                    conn: 2
                },
                T0
            )
            .await
            .unwrap()
            .is_empty());
        let mut e = new_cmd("e", "a1", Priority::Normal, T0);
        e.expires_at = Some(T0 + 10);
        insert(&store, e).await;
        assert!(store
            .claim(
                Claim::One {
                    command_id: "e".into(),
                    conn: 2
                },
                T0 + 10
            )
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .claim(
                    Claim::One {
                        command_id: "e".into(),
                        conn: 2
                    },
                    T0 + 9
                )
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .claim(
                Claim::One {
                    command_id: "nope".into(),
                    conn: 2
                },
                T0
            )
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn claim_http() {
        let (_dir, store) = setup().await;
        let push = |id: &str, p| new_cmd(id, "a1", p, T0);
        insert(&store, push("q_low", Priority::Low)).await;
        store
            .insert_command(push("sent_due", Priority::Normal), Some(1))
            .await
            .unwrap();
        insert(&store, push("q_high", Priority::High)).await;
        store
            .insert_command(push("received", Priority::High), Some(1))
            .await
            .unwrap();
        store
            .ack("a1", "received", AckKind::Received, T0)
            .await
            .unwrap();
        let mut late = push("sent_later", Priority::High);
        late.created_at = T0 + 20_000;
        store.insert_command(late, Some(1)).await.unwrap();

        let due = policy().next_attempt_at(T0, 1);
        // Before anything is due: only the queued ones.
        let got = store
            .claim(
                Claim::Http {
                    agent_id: "a1".into(),
                },
                due - 1,
            )
            .await
            .unwrap();
        assert_eq!(ids(&got), ["q_high", "q_low"]);
        for row in &got {
            assert_eq!(row.status, Status::Sent);
            assert_eq!(row.delivered_via, Some(Channel::Http));
            assert_eq!(row.conn_id, None);
            assert_eq!(row.attempts, 1);
        }
        // At the due time: the due `sent` one (not `received`, not the later one).
        let got = store
            .claim(
                Claim::Http {
                    agent_id: "a1".into(),
                },
                due,
            )
            .await
            .unwrap();
        assert_eq!(ids(&got), ["sent_due"]);
        assert_eq!(got[0].attempts, 2);
        assert_eq!(got[0].conn_id, None);
        assert_eq!(got[0].delivered_via, Some(Channel::Http));
        assert_eq!(
            got[0].next_attempt_at,
            Some(policy().next_attempt_at(due, 2))
        );
        assert!(store
            .claim(
                Claim::Http {
                    agent_id: "a1".into()
                },
                due
            )
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .claim(
                Claim::Http {
                    agent_id: "a2".into()
                },
                due
            )
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn ack_transitions() {
        let (_dir, store) = setup().await;
        store
            .insert_command(new_cmd("c1", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap();

        assert_eq!(
            store.ack("a2", "c1", AckKind::Completed, T0).await.unwrap(),
            AckOutcome::Unknown
        );
        assert_eq!(
            store
                .ack("a1", "nope", AckKind::Completed, T0)
                .await
                .unwrap(),
            AckOutcome::Unknown
        );
        assert_eq!(status_of(&store, "c1").await, Status::Sent);

        match store
            .ack("a1", "c1", AckKind::Received, T0 + 1)
            .await
            .unwrap()
        {
            AckOutcome::Updated { before, command } => {
                assert_eq!(before, Status::Sent);
                assert_eq!(command.status, Status::Received);
                assert_eq!(command.acked_at, Some(T0 + 1));
                assert_eq!(command.completed_at, None);
            }
            other => panic!("{other:?}"),
        }
        // Repeats change nothing.
        assert!(matches!(
            store.ack("a1", "c1", AckKind::Received, T0 + 2).await.unwrap(),
            AckOutcome::Unchanged(row) if row.status == Status::Received && row.acked_at == Some(T0 + 1)
        ));
        match store
            .ack("a1", "c1", AckKind::Executing, T0 + 3)
            .await
            .unwrap()
        {
            AckOutcome::Updated { before, command } => {
                assert_eq!(before, Status::Received);
                assert_eq!(command.status, Status::Executing);
                assert_eq!(command.acked_at, Some(T0 + 1));
            }
            other => panic!("{other:?}"),
        }
        // Never backwards.
        assert!(matches!(
            store.ack("a1", "c1", AckKind::Received, T0 + 4).await.unwrap(),
            AckOutcome::Unchanged(row) if row.status == Status::Executing
        ));
        assert!(matches!(
            store
                .ack("a1", "c1", AckKind::Executing, T0 + 4)
                .await
                .unwrap(),
            AckOutcome::Unchanged(_)
        ));
        match store
            .ack(
                "a1",
                "c1",
                AckKind::Failed {
                    error: Some("boom".into()),
                },
                T0 + 5,
            )
            .await
            .unwrap()
        {
            AckOutcome::Updated { before, command } => {
                assert_eq!(before, Status::Executing);
                assert_eq!(command.status, Status::Failed);
                assert_eq!(command.error.as_deref(), Some("boom"));
                assert_eq!(command.completed_at, Some(T0 + 5));
            }
            other => panic!("{other:?}"),
        }
        // Final never changes (WS-ACK-3).
        for kind in [
            AckKind::Completed,
            AckKind::Received,
            AckKind::Failed { error: None },
        ] {
            assert!(matches!(
                store.ack("a1", "c1", kind, T0 + 6).await.unwrap(),
                AckOutcome::Unchanged(row) if row.status == Status::Failed
                    && row.completed_at == Some(T0 + 5)
                    && row.error.as_deref() == Some("boom")
            ));
        }

        // Straight from queued to completed; first ack sets acked_at.
        insert(&store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
        match store
            .ack("a1", "c2", AckKind::Completed, T0 + 7)
            .await
            .unwrap()
        {
            AckOutcome::Updated { before, command } => {
                assert_eq!(before, Status::Queued);
                assert_eq!(command.status, Status::Completed);
                assert_eq!(command.acked_at, Some(T0 + 7));
                assert_eq!(command.completed_at, Some(T0 + 7));
                assert_eq!(command.error, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.ack("a1", "c2", AckKind::Completed, T0 + 8).await.unwrap(),
            AckOutcome::Unchanged(row) if row.completed_at == Some(T0 + 7)
        ));
    }

    #[tokio::test]
    async fn sweep_expired_and_dead_then_retry() {
        let dir = tempfile::tempdir().unwrap();
        let p = DeliveryPolicy {
            max_attempts: 2,
            ..policy()
        };
        let store = open_with(&dir, p);
        store.upsert_agent("a1", None, T0).await.unwrap();

        let mut ttl = new_cmd("ttl", "a1", Priority::Normal, T0);
        ttl.expires_at = Some(T0 + 5_000);
        insert(&store, ttl).await;
        let mut ttl_done = new_cmd("ttl_done", "a1", Priority::Normal, T0);
        ttl_done.expires_at = Some(T0 + 5_000);
        insert(&store, ttl_done).await;
        store
            .ack("a1", "ttl_done", AckKind::Completed, T0)
            .await
            .unwrap();
        let mut ttl_exec = new_cmd("ttl_exec", "a1", Priority::Normal, T0);
        ttl_exec.expires_at = Some(T0 + 6_000);
        insert(&store, ttl_exec).await;
        store
            .ack("a1", "ttl_exec", AckKind::Executing, T0)
            .await
            .unwrap();
        // Pushed twice (max 2), never acked.
        store
            .insert_command(new_cmd("doomed", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap();
        store
            .claim(
                Claim::Redeliver {
                    command_id: "doomed".into(),
                    conn: 1,
                    attempt: 1,
                },
                T0 + 31_000,
            )
            .await
            .unwrap();
        // Pushed twice but received: never dead.
        store
            .insert_command(new_cmd("busy", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap();
        store
            .claim(
                Claim::One {
                    command_id: "busy".into(),
                    conn: 2,
                },
                T0 + 31_000,
            )
            .await
            .unwrap();
        store
            .ack("a1", "busy", AckKind::Received, T0 + 31_001)
            .await
            .unwrap();
        // Pushed once, not acked: still has an attempt left.
        store
            .insert_command(new_cmd("waiting", "a1", Priority::Normal, T0), Some(1))
            .await
            .unwrap();

        assert!(store.sweep(T0 + 4_999).await.unwrap().is_empty());
        let swept = store.sweep(T0 + 5_000).await.unwrap();
        assert_eq!(
            swept,
            vec![Swept {
                command_id: "ttl".into(),
                agent_id: "a1".into(),
                status: Status::Expired
            }]
        );
        let row = store.command("ttl").await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.completed_at),
            (Status::Expired, Some(T0 + 5_000))
        );
        assert_eq!(status_of(&store, "ttl_done").await, Status::Completed);

        // doomed's last deadline: T0 + 31_000 + 30_000.
        let mut swept = store.sweep(T0 + 61_000).await.unwrap();
        swept.sort_by(|a, b| a.command_id.cmp(&b.command_id));
        assert_eq!(
            swept,
            vec![
                Swept {
                    command_id: "doomed".into(),
                    agent_id: "a1".into(),
                    status: Status::Dead
                },
                Swept {
                    command_id: "ttl_exec".into(),
                    agent_id: "a1".into(),
                    status: Status::Expired
                },
            ]
        );
        let doomed = store.command("doomed").await.unwrap().unwrap();
        assert_eq!(
            (doomed.status, doomed.completed_at),
            (Status::Dead, Some(T0 + 61_000))
        );
        assert_eq!(status_of(&store, "busy").await, Status::Received);
        assert_eq!(status_of(&store, "waiting").await, Status::Sent);
        assert!(store.sweep(T0 + 61_000).await.unwrap().is_empty());
        assert!(matches!(
            store
                .ack("a1", "doomed", AckKind::Completed, T0 + 62_000)
                .await
                .unwrap(),
            AckOutcome::Unchanged(_)
        ));
        assert_eq!(status_of(&store, "doomed").await, Status::Dead);

        // Retry: dead/expired go back to queued, fresh.
        for id in ["doomed", "ttl"] {
            match store.retry(id, T0 + 70_000).await.unwrap() {
                RetryOutcome::Requeued(row) => {
                    assert_eq!(row.status, Status::Queued);
                    assert_eq!(row.attempts, 0);
                    assert_eq!(row.expires_at, None);
                    assert_eq!(row.sent_at, None);
                    assert_eq!(row.ack_deadline, None);
                    assert_eq!(row.next_attempt_at, None);
                    assert_eq!(row.conn_id, None);
                    assert_eq!(row.completed_at, None);
                    assert_eq!(row.error, None);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            store.retry("ttl_done", T0).await.unwrap(),
            RetryOutcome::NotRetryable(row) if row.status == Status::Completed
        ));
        assert!(matches!(
            store.retry("busy", T0).await.unwrap(),
            RetryOutcome::NotRetryable(row) if row.status == Status::Received
        ));
        assert_eq!(
            store.retry("nope", T0).await.unwrap(),
            RetryOutcome::Unknown
        );
        // The requeued ones are claimable again and no longer expire.
        let got = store
            .claim(
                Claim::AllPending {
                    agent_id: "a1".into(),
                    conn: 3,
                },
                T0 + 80_000,
            )
            .await
            .unwrap();
        assert!(ids(&got).contains(&"doomed") && ids(&got).contains(&"ttl"));
        assert!(store.sweep(T0 + 80_000).await.unwrap().is_empty());

        // Counts kept by triggers match a real GROUP BY.
        let counts = store.status_counts().await.unwrap();
        let conn = Connection::open(dir.path().join("edge.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT status, COUNT(*) FROM commands GROUP BY status")
            .unwrap();
        let mut expected: Vec<(Status, u64)> = stmt
            .query_map([], |r| Ok((status_col(r, 0)?, r.get::<_, i64>(1)? as u64)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        expected.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
        assert_eq!(counts, expected);
        assert!(counts.contains(&(Status::Completed, 1)));
    }

    #[tokio::test]
    async fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let _store = open_with(&dir, policy());
        let conn = Connection::open(dir.path().join("edge.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Unbound parameters are NULL; only the plan matters.
            let mut rows = stmt.raw_query();
            let mut steps = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get::<_, String>(3).unwrap());
            }
            steps.join("; ")
        };
        for (sql, index) in [
            (SQL_COUNT_PENDING, "commands_pending"),
            (SQL_CLAIM_ALL, "commands_pending"),
            (SQL_CLAIM_HTTP, "commands_pending"),
            (SQL_CLAIM_ONE, "sqlite_autoindex_commands"),
            (SQL_CLAIM_REDELIVER, "sqlite_autoindex_commands"),
            (SQL_COMMAND_BY_ID, "sqlite_autoindex_commands"),
            (SQL_EXPIRE, "commands_expiry"),
            (SQL_DEAD, "commands_dead"),
            (
                concat!(agent_select!(), " WHERE a.id = ?1"),
                "commands_pending",
            ),
        ] {
            let plan = plan(sql);
            assert!(plan.contains(index), "{sql}\n=> {plan}");
            assert!(!plan.contains("SCAN commands"), "{sql}\n=> {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n=> {plan}");
        }
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.db");
        let row = {
            let store = SqliteStore::open(&path, policy()).unwrap();
            store.upsert_agent("a1", Some("+1"), T0).await.unwrap();
            store
                .record_connect("a1", 1, "1.2.3.4:5", T0)
                .await
                .unwrap();
            insert(&store, new_cmd("c1", "a1", Priority::High, T0)).await
        };
        // Dropped: thread joined, file closed. Reopening migrates nothing again.
        let store = SqliteStore::open(&path, policy()).unwrap();
        assert_eq!(store.command("c1").await.unwrap(), Some(row));
        let agent = store.agent("a1").await.unwrap().unwrap();
        assert_eq!(agent.user_phone.as_deref(), Some("+1"));
        assert_eq!(agent.pending_commands, 1);
        assert_eq!(store.history("a1", 5).await.unwrap().len(), 1);
        assert!(store.record_connect("a1", 2, "x", T0 + 1).await.unwrap());
        assert_eq!(
            store.status_counts().await.unwrap(),
            vec![(Status::Queued, 1)]
        );
        // A new command keeps counting seq upwards.
        let c2 = insert(&store, new_cmd("c2", "a1", Priority::High, T0)).await;
        assert!(c2.seq > 1);
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inserts_all_land() {
        let (_dir, store) = setup().await;
        let tasks: Vec<_> = (0..2_000)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let agent = if i % 2 == 0 { "a1" } else { "a2" };
                    let push = if i % 3 == 0 { Some(i as ConnId) } else { None };
                    store
                        .insert_command(
                            new_cmd(&format!("c{i}"), agent, Priority::Normal, T0 + i),
                            push,
                        )
                        .await
                })
            })
            .collect();
        let mut seqs = HashSet::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                InsertOutcome::Created(row) => assert!(seqs.insert(row.seq)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs.len(), 2_000);
        let a1 = store.commands("a1", None, 5_000).await.unwrap();
        let a2 = store.commands("a2", None, 5_000).await.unwrap();
        assert_eq!((a1.len(), a2.len()), (1_000, 1_000));
        assert!(a1.windows(2).all(|w| w[0].seq < w[1].seq));
        for i in 0..2_000 {
            assert!(store.command(&format!("c{i}")).await.unwrap().is_some());
        }
        assert_eq!(
            store.agent("a1").await.unwrap().unwrap().pending_commands,
            1_000
        );
        let stats = store.stats();
        assert!(stats.ops >= 2_000 + 2, "{stats:?}");
    }

    /// Blocks the writer thread until `release` fires, so that what is sent
    /// meanwhile lands in one batch.
    async fn block_writer(
        store: &SqliteStore,
    ) -> (
        tokio::task::JoinHandle<StoreResult<()>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = oneshot::channel();
        let s = store.clone();
        let handle = tokio::spawn(async move {
            s.call(move |_, _| {
                let _ = started_tx.send(());
                let _ = wait.recv();
                Ok(())
            })
            .await
        });
        started_rx.await.unwrap();
        (handle, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_batches_and_isolates_failures() {
        let (_dir, store) = setup().await;
        let before = store.stats();
        let (blocker, release) = block_writer(&store).await;

        let mut tasks = Vec::new();
        for i in 0..100 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.insert_command(new_cmd(&format!("b{i}"), "a1", Priority::Normal, T0), None)
                    .await
                    .map(|o| matches!(o, InsertOutcome::Created(_)))
            }));
        }
        // An operation that writes and then fails: only it is rolled back.
        let s = store.clone();
        let failing = tokio::spawn(async move {
            s.call(|c, _| {
                c.execute(
                    "INSERT INTO agents (id, created_at) VALUES ('ghost', 1)",
                    [],
                )?;
                c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await
        });
        let s = store.clone();
        let panicking = tokio::spawn(async move {
            s.call(|c, _| -> rusqlite::Result<()> {
                c.execute(
                    "INSERT INTO agents (id, created_at) VALUES ('ghost2', 1)",
                    [],
                )?;
                panic!("test panic in a store operation")
            })
            .await
        });
        // Let every task enqueue its op while the writer is held.
        tokio::time::sleep(Duration::from_millis(200)).await;
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for t in tasks {
            assert!(t.await.unwrap().unwrap());
        }
        assert!(matches!(
            failing.await.unwrap(),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            panicking.await.unwrap(),
            Err(StoreError::Backend(_))
        ));
        assert!(store.agent("ghost").await.unwrap().is_none());
        assert!(store.agent("ghost2").await.unwrap().is_none());
        assert_eq!(store.commands("a1", None, 1_000).await.unwrap().len(), 100);
        // The store still works after the failures.
        insert(&store, new_cmd("after", "a1", Priority::Normal, T0)).await;

        let after = store.stats();
        let ops = after.ops - before.ops;
        let batches = after.batches - before.batches;
        // blocker + 100 inserts + 2 failing + 3 reads + 1 insert, in far fewer
        // transactions than operations.
        assert!(ops >= 107, "{after:?}");
        assert!(batches <= 10, "{batches} batches for {ops} ops");
    }

    #[tokio::test]
    async fn clones_keep_the_store_open() {
        let (_dir, store) = setup().await;
        let clone = store.clone();
        drop(store);
        // The thread lives while a clone does.
        assert!(clone.agent("a1").await.unwrap().is_some());
    }
}

#[cfg(test)]
mod throughput {
    use super::*;
    use serde_json::json;
    use std::time::Instant;

    /// Rough throughput check (`cargo test --release -- --ignored throughput`):
    /// accept (pushed) then complete, from many concurrent tasks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn accept_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let policy = DeliveryPolicy {
            ack_timeout_ms: 30_000,
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            max_pending: 1_000,
        };
        let store = SqliteStore::open(&dir.path().join("edge.db"), policy).unwrap();
        let agents = 100;
        for a in 0..agents {
            store.upsert_agent(&format!("a{a}"), None, 0).await.unwrap();
        }
        let per_task = 100;
        let start = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let id = format!("t{t}-{i}");
                        let agent = format!("a{}", t % agents);
                        let cmd = NewCommand {
                            id: id.clone(),
                            agent_id: agent.clone(),
                            command_type: "send_message".into(),
                            parameters: json!({"text": "hello"}),
                            priority: Priority::Normal,
                            created_at: 1,
                            expires_at: None,
                        };
                        let out = store.insert_command(cmd, Some(t)).await.unwrap();
                        assert!(matches!(out, InsertOutcome::Created(_)));
                        let out = store.ack(&agent, &id, AckKind::Completed, 2).await.unwrap();
                        assert!(matches!(out, AckOutcome::Updated { .. }));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n = 200 * per_task;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{n} commands in {secs:.2}s = {:.0}/s; {:?}",
            n as f64 / secs,
            store.stats()
        );
    }
}
