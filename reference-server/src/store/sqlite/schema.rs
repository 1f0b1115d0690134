//! The database file's shape: connection pragmas, the schema, and its
//! migrations (`PRAGMA user_version` counts the ones applied).
//!
//! To change the schema, append a migration to [`MIGRATIONS`]; never edit one
//! that has shipped, since databases in the field have already run it.

use std::time::Duration;

use rusqlite::Connection;

use super::backend;
use crate::store::{StoreError, StoreResult};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The non-final states (WS-DLV-4), spelled exactly as in the partial indexes'
/// `WHERE` so that SQLite can use them.
macro_rules! pending {
    () => {
        "status IN ('queued','sent','received','executing')"
    };
}
pub(super) use pending;

/// Schema versions; `PRAGMA user_version` says how many have been applied.
pub(super) const MIGRATIONS: &[&str] = &[concat!(
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

/// Sets the pragmas every connection needs: WAL, `synchronous=FULL`.
pub(super) fn configure(conn: &Connection) -> StoreResult<()> {
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

/// Applies the migrations the file has not seen yet, each in its own
/// transaction; refuses a file from a newer server.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
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
