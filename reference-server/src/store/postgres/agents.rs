//! Agents, their connection history (WS-CONN-6) and the sync events they
//! sent (WS-HTTP-1).

use tokio_postgres::Row;

use super::rows::opt_json;
use super::schema::pending;
use super::{pg_error, Db};
use crate::store::{AgentRow, ConnId, HistoryRow, Millis, StoreResult};

/// WS-CONN-6: connection history rows kept per agent.
const HISTORY_KEEP: i64 = 50;

macro_rules! agent_select {
    () => {
        concat!(
            "SELECT a.id, a.user_phone, a.created_at, a.last_seen, a.last_status, \
             (SELECT COUNT(*) FROM commands WHERE agent_id = a.id AND ",
            pending!(),
            ") FROM agents a"
        )
    };
}

fn agent_row(r: &Row) -> StoreResult<AgentRow> {
    Ok(AgentRow {
        id: r.get(0),
        user_phone: r.get(1),
        created_at: r.get(2),
        last_seen: r.get(3),
        last_status: opt_json(r, 4)?,
        pending_commands: r.get::<_, i64>(5).max(0) as u64,
    })
}

/// Creates the agent if it is new; returns whether it was created. A given
/// phone replaces the stored one.
pub(super) async fn upsert(
    db: &Db,
    id: &str,
    phone: Option<&str>,
    now: Millis,
) -> StoreResult<bool> {
    let client = db.client().await?;
    // `xmax = 0` only on a row this statement inserted.
    let stmt = client
        .prepare_cached(
            "INSERT INTO agents (id, user_phone, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET user_phone = COALESCE($2, agents.user_phone) \
             RETURNING xmax = 0",
        )
        .await
        .map_err(pg_error)?;
    let row = client
        .query_one(&stmt, &[&id, &phone, &now])
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

pub(super) async fn get(db: &Db, id: &str) -> StoreResult<Option<AgentRow>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(agent_select!(), " WHERE a.id = $1"))
        .await
        .map_err(pg_error)?;
    let row = client.query_opt(&stmt, &[&id]).await.map_err(pg_error)?;
    row.as_ref().map(agent_row).transpose()
}

pub(super) async fn list(db: &Db) -> StoreResult<Vec<AgentRow>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(agent_select!(), " ORDER BY a.id"))
        .await
        .map_err(pg_error)?;
    let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
    rows.iter().map(agent_row).collect()
}

/// WS-STATUS-1; a status message also means the agent was seen.
pub(super) async fn set_status(db: &Db, id: &str, status: &str, now: Millis) -> StoreResult<()> {
    db.execute(
        "UPDATE agents SET last_status = $2, last_seen = $3 WHERE id = $1",
        &[&id, &status, &now],
    )
    .await
    .map(|_| ())
}

/// WS-CONN-6: a connection began; returns whether the agent had connected before.
pub(super) async fn record_connect(
    db: &Db,
    agent_id: &str,
    conn: ConnId,
    remote_addr: &str,
    now: Millis,
) -> StoreResult<bool> {
    let rows = db
        .transaction(&[
            (
                "SELECT 1 FROM connection_history WHERE agent_id = $1 LIMIT 1",
                &[&agent_id],
            ),
            (
                "INSERT INTO connection_history (agent_id, conn_id, connected_at, remote_addr) \
                 VALUES ($1, $2, $3, $4)",
                &[&agent_id, &conn, &now, &remote_addr],
            ),
            // Keep only the newest HISTORY_KEEP rows of this agent.
            (
                "DELETE FROM connection_history WHERE agent_id = $1 AND id <= \
                 (SELECT id FROM connection_history WHERE agent_id = $1 \
                  ORDER BY id DESC LIMIT 1 OFFSET $2)",
                &[&agent_id, &HISTORY_KEEP],
            ),
            (
                "UPDATE agents SET last_seen = $2 WHERE id = $1",
                &[&agent_id, &now],
            ),
        ])
        .await?;
    Ok(!rows[0].is_empty())
}

/// WS-CONN-6: a connection ended (also updates the agent's `last_seen`).
pub(super) async fn record_disconnect(
    db: &Db,
    agent_id: &str,
    conn: ConnId,
    reason: &str,
    now: Millis,
) -> StoreResult<()> {
    db.transaction(&[
        (
            "UPDATE connection_history SET disconnected_at = $3, reason = $4 \
             WHERE id = (SELECT id FROM connection_history WHERE agent_id = $1 \
                         AND conn_id = $2 ORDER BY id DESC LIMIT 1) \
             AND disconnected_at IS NULL",
            &[&agent_id, &conn, &now, &reason],
        ),
        (
            "UPDATE agents SET last_seen = $2 WHERE id = $1",
            &[&agent_id, &now],
        ),
    ])
    .await
    .map(|_| ())
}

/// Newest first, at most `limit`.
pub(super) async fn history(db: &Db, agent_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT conn_id, connected_at, disconnected_at, reason, remote_addr \
             FROM connection_history WHERE agent_id = $1 ORDER BY id DESC LIMIT $2",
            &[&agent_id, &i64::from(limit)],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            conn: r.get(0),
            connected_at: r.get(1),
            disconnected_at: r.get(2),
            reason: r.get(3),
            remote_addr: r.get(4),
        })
        .collect())
}

/// WS-HTTP-1: stores a sync event once; returns false if it was already there.
pub(super) async fn record_event(
    db: &Db,
    agent_id: &str,
    event_id: &str,
    event_type: &str,
    details: &str,
    now: Millis,
) -> StoreResult<bool> {
    let n = db
        .execute(
            "INSERT INTO sync_events (agent_id, event_id, event_type, details, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&agent_id, &event_id, &event_type, &details, &now],
        )
        .await?;
    Ok(n == 1)
}
