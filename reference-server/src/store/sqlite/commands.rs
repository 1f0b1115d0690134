//! Commands as the control API and the agents' acks see them: insert (with
//! idempotency and the pending limit), look up, list, ack, retry, and counts
//! per state. Claims and sweeps are in `delivery.rs`.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{cmd_cols, command_row, status_col};
use super::schema::pending;
use crate::store::{
    AckKind, AckOutcome, Channel, CommandRow, ConnId, DeliveryPolicy, InsertOutcome, Millis,
    NewCommand, RetryOutcome, Status,
};

// Named so that a test can check they use the indexes meant for them (see
// `delivery.rs` for why `INDEXED BY`).

/// WS-API-2: an agent's commands not yet final.
pub(super) const SQL_COUNT_PENDING: &str = concat!(
    "SELECT COUNT(*) FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!()
);
pub(super) const SQL_COMMAND_BY_ID: &str =
    concat!("SELECT ", cmd_cols!(), " FROM commands WHERE id = ?1");

pub(super) fn by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<CommandRow>> {
    conn.prepare_cached(SQL_COMMAND_BY_ID)?
        .query_row([id], command_row)
        .optional()
}

/// WS-API-2: idempotent by id, refuses past `max_pending`. With `push_to`,
/// the command is stored as already pushed to that connection.
pub(super) fn insert(
    c: &Connection,
    policy: &DeliveryPolicy,
    cmd: &NewCommand,
    push_to: Option<ConnId>,
) -> rusqlite::Result<InsertOutcome> {
    let known = c
        .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
        .exists([&cmd.agent_id])?;
    if !known {
        return Ok(InsertOutcome::UnknownAgent);
    }
    // WS-API-2: idempotent by id, even when the queue is full.
    if let Some(existing) = by_id(c, &cmd.id)? {
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
                // WS-CMD-2: the text as posted.
                cmd.parameters.as_str(),
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
}

/// An agent's commands in insertion order, optionally of one state.
pub(super) fn list(
    c: &Connection,
    agent_id: &str,
    status: Option<Status>,
    limit: u32,
) -> rusqlite::Result<Vec<CommandRow>> {
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
}

/// Applies an ack from `agent_id` (WS-ACK-2, WS-ACK-3).
pub(super) fn ack(
    c: &Connection,
    agent_id: &str,
    command_id: &str,
    ack: AckKind,
    now: Millis,
) -> rusqlite::Result<AckOutcome> {
    // WS-ACK-3: another agent's command is "unknown" too.
    let row = match by_id(c, command_id)? {
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
}

/// WS-API-4: `dead`/`expired` → `queued`, attempts 0, TTL cleared.
pub(super) fn retry(c: &Connection, command_id: &str) -> rusqlite::Result<RetryOutcome> {
    let Some(row) = by_id(c, command_id)? else {
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
}

/// Count of commands in each state, from the trigger-kept `command_counts`.
pub(super) fn status_counts(c: &Connection) -> rusqlite::Result<Vec<(Status, u64)>> {
    let mut stmt = c.prepare_cached("SELECT status, n FROM command_counts WHERE n > 0")?;
    let rows = stmt.query_map([], |r| Ok((status_col(r, 0)?, r.get::<_, i64>(1)?)))?;
    let mut counts = rows
        .map(|row| row.map(|(s, n)| (s, n.max(0) as u64)))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    counts.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
    Ok(counts)
}
