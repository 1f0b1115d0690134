//! Commands as the control API and the agents' acks see them: insert (with
//! idempotency and the pending limit), look up, list, ack, retry, and counts
//! per state. Claims and sweeps are in `delivery.rs`.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{cmd_cols, command_row, status_col};
use super::schema::pending;
use crate::store::rules::{self, InsertDecision};
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
    let existing = if known { by_id(c, &cmd.id)? } else { None };
    let pending: i64 = if known && existing.is_none() {
        c.prepare_cached(SQL_COUNT_PENDING)?
            .query_row([&cmd.agent_id], |r| r.get(0))?
    } else {
        0
    };
    let row = match rules::insert(
        cmd,
        push_to,
        known,
        existing.as_ref(),
        pending.max(0) as u64,
        policy,
    ) {
        InsertDecision::Refuse(outcome) => return Ok(outcome),
        InsertDecision::Create(row) => row,
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
                row.id,
                row.agent_id,
                row.command_type,
                row.parameters.as_str(),
                row.priority.rank(),
                row.status.as_str(),
                row.attempts,
                row.created_at,
                row.expires_at,
                row.sent_at,
                row.ack_deadline,
                row.next_attempt_at,
                row.delivered_via.map(Channel::as_str),
                row.conn_id,
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
    let outcome = rules::ack(by_id(c, command_id)?, agent_id, &ack, now);
    if let AckOutcome::Updated { command, .. } = &outcome {
        store_row(c, command)?;
    }
    Ok(outcome)
}

/// WS-API-4: `dead`/`expired` → `queued`, attempts 0, TTL cleared.
pub(super) fn retry(c: &Connection, command_id: &str) -> rusqlite::Result<RetryOutcome> {
    let Some(row) = by_id(c, command_id)? else {
        return Ok(RetryOutcome::Unknown);
    };
    let Some(requeued) = rules::retry(&row) else {
        return Ok(RetryOutcome::NotRetryable(row));
    };
    store_row(c, &requeued)?;
    Ok(RetryOutcome::Requeued(requeued))
}

/// Writes back the columns a state change may touch (`store/rules.rs`).
pub(super) fn store_row(c: &Connection, row: &CommandRow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE commands SET status = ?2, attempts = ?3, expires_at = ?4, sent_at = ?5, \
         ack_deadline = ?6, next_attempt_at = ?7, acked_at = ?8, completed_at = ?9, \
         error = ?10, delivered_via = ?11, conn_id = ?12 WHERE seq = ?1",
    )?
    .execute(params![
        row.seq,
        row.status.as_str(),
        row.attempts,
        row.expires_at,
        row.sent_at,
        row.ack_deadline,
        row.next_attempt_at,
        row.acked_at,
        row.completed_at,
        row.error,
        row.delivered_via.map(Channel::as_str),
        row.conn_id,
    ])?;
    Ok(())
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
