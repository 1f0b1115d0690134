//! Agents, their connection history (WS-CONN-6) and the sync events they
//! sent (WS-HTTP-1). Each function runs one store operation on the writer
//! thread's connection.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::rows::opt_json_col;
use super::schema::pending;
use crate::store::{AgentRow, ConnId, HistoryRow, Millis};

/// WS-CONN-6: connection history rows kept per agent.
const HISTORY_KEEP: i64 = 50;

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

/// One agent (a test checks it counts pending commands by index).
pub(super) const SQL_AGENT_BY_ID: &str = concat!(agent_select!(), " WHERE a.id = ?1");
const SQL_AGENTS: &str = concat!(agent_select!(), " ORDER BY a.id");

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

/// Creates the agent if it is new; returns whether it was created. A given
/// phone replaces the stored one.
pub(super) fn upsert(
    c: &Connection,
    id: &str,
    phone: Option<&str>,
    now: Millis,
) -> rusqlite::Result<bool> {
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
}

pub(super) fn get(c: &Connection, id: &str) -> rusqlite::Result<Option<AgentRow>> {
    c.prepare_cached(SQL_AGENT_BY_ID)?
        .query_row([id], agent_row)
        .optional()
}

pub(super) fn list(c: &Connection) -> rusqlite::Result<Vec<AgentRow>> {
    let mut stmt = c.prepare_cached(SQL_AGENTS)?;
    let rows = stmt.query_map([], agent_row)?;
    rows.collect()
}

/// `status` is the JSON text of the agent's `status` data.
pub(super) fn set_status(
    c: &Connection,
    id: &str,
    status: &str,
    now: Millis,
) -> rusqlite::Result<()> {
    // WS-STATUS-1; a status message also means the agent was seen.
    c.prepare_cached("UPDATE agents SET last_status = ?2, last_seen = ?3 WHERE id = ?1")?
        .execute(params![id, status, now])?;
    Ok(())
}

fn touch(c: &Connection, id: &str, now: Millis) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

/// WS-CONN-6: a connection began; returns whether the agent had connected before.
pub(super) fn record_connect(
    c: &Connection,
    agent_id: &str,
    conn: ConnId,
    remote_addr: &str,
    now: Millis,
) -> rusqlite::Result<bool> {
    let before = c
        .prepare_cached("SELECT 1 FROM connection_history WHERE agent_id = ?1 LIMIT 1")?
        .exists([agent_id])?;
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
    touch(c, agent_id, now)?;
    Ok(before)
}

/// WS-CONN-6: a connection ended (also updates the agent's `last_seen`).
pub(super) fn record_disconnect(
    c: &Connection,
    agent_id: &str,
    conn: ConnId,
    reason: &str,
    now: Millis,
) -> rusqlite::Result<()> {
    // WS-CONN-6: the newest row of that connection (ids restart with the
    // process), unless it was already closed.
    c.prepare_cached(
        "UPDATE connection_history SET disconnected_at = ?3, reason = ?4 \
         WHERE id = (SELECT id FROM connection_history WHERE agent_id = ?1 \
                     AND conn_id = ?2 ORDER BY id DESC LIMIT 1) \
         AND disconnected_at IS NULL",
    )?
    .execute(params![agent_id, conn, now, reason])?;
    touch(c, agent_id, now)
}

/// Newest first, at most `limit`.
pub(super) fn history(
    c: &Connection,
    agent_id: &str,
    limit: u32,
) -> rusqlite::Result<Vec<HistoryRow>> {
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
}

/// WS-HTTP-1: stores a sync event once; returns false if it was already
/// there. `details` is JSON text.
pub(super) fn record_event(
    c: &Connection,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    details: &str,
    now: Millis,
) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT INTO sync_events (agent_id, event_id, event_type, details, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![agent_id, event_id, event_type, details, now])?;
    Ok(n == 1)
}
