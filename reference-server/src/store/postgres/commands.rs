//! Commands as the control API and the agents' acks see them: insert (with
//! idempotency and the pending limit), look up, list, ack, retry, and counts
//! per state. Claims and sweeps are in `delivery.rs`.
//!
//! Concurrency: every instance runs these at once. An insert locks its
//! agent's row (`FOR NO KEY UPDATE`), so the pending limit holds across
//! instances and an insert is ordered against a socket changing instance
//! (`cluster/postgres.rs` takes the same lock). An ack locks the command's
//! row, so one final state wins and a later ack sees it (WS-ACK-3).

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::rows::{cmd_cols, command_row, status};
use super::schema::pending;
use super::{backend, Db};
use crate::store::{
    AckKind, AckOutcome, Channel, CommandRow, ConnId, DeliveryPolicy, InsertOutcome, Millis,
    NewCommand, RetryOutcome, Status, StoreResult,
};

/// The non-final states, as in [`pending!`].
const PENDING_STATES: [&str; 4] = ["queued", "sent", "received", "executing"];

const SQL_COMMAND_BY_ID: &str = concat!("SELECT ", cmd_cols!(), " FROM commands WHERE id = $1");

async fn one_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<CommandRow>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&stmt, params)
        .await
        .map_err(backend)?
        .as_ref()
        .map(command_row)
        .transpose()
}

pub(super) async fn by_id<C: GenericClient>(c: &C, id: &str) -> StoreResult<Option<CommandRow>> {
    one_opt(c, SQL_COMMAND_BY_ID, &[&id]).await
}

/// Statement 1 of an insert: locks the agent's row (it orders inserts of one
/// agent across instances, and against `cluster/postgres.rs`'s `hold`) and,
/// once locked, notes for statement 2 of the same transaction that it did
/// (`set_config(…, true)` lasts until the transaction ends). No row: no such
/// agent (agents are never deleted).
const SQL_LOCK_AGENT: &str = "SELECT set_config('edge.locked_agent', 'a:' || id, true) \
     FROM (SELECT id FROM agents WHERE id = $1 FOR NO KEY UPDATE) a";

/// Statement 2 of an insert, under the agent's lock taken by statement 1, so
/// its snapshot (taken after the lock was granted) sees every command of the
/// agent that committed before: the idempotency check, the pending count and
/// the insert in one statement. Returns the command's columns and `kind`
/// (column 18): `created`, `existing` (the id is taken, by whichever agent),
/// or `full`; no row when a concurrent insert of another agent took the id.
/// Inserts nothing unless statement 1 found (and locked) the agent.
const SQL_INSERT: &str = concat!(
    "WITH e AS (SELECT ",
    cmd_cols!(),
    " FROM commands WHERE id = $1::TEXT), \
     n AS (SELECT COUNT(*) AS pending FROM commands WHERE agent_id = $2::TEXT AND ",
    pending!(),
    "), ins AS (INSERT INTO commands (id, agent_id, command_type, parameters, priority, \
     status, attempts, created_at, expires_at, sent_at, ack_deadline, \
     next_attempt_at, delivered_via, conn_id) \
     SELECT $1::TEXT, $2::TEXT, $3::TEXT, $4::TEXT, $5::BIGINT, $6::TEXT, $7::BIGINT, \
     $8::BIGINT, $9::BIGINT, $10::BIGINT, $11::BIGINT, $12::BIGINT, $13::TEXT, $14::BIGINT \
     FROM n WHERE current_setting('edge.locked_agent', true) = 'a:' || $2::TEXT \
     AND NOT EXISTS (SELECT 1 FROM e) AND n.pending < $15::BIGINT \
     ON CONFLICT (id) DO NOTHING RETURNING ",
    cmd_cols!(),
    ") SELECT ",
    cmd_cols!(),
    ", 'created' FROM ins UNION ALL SELECT ",
    cmd_cols!(),
    ", 'existing' FROM e UNION ALL SELECT ",
    cmd_cols!(),
    ", 'full' FROM n LEFT JOIN e ON true WHERE n.pending >= $15::BIGINT \
     AND NOT EXISTS (SELECT 1 FROM e)"
);

/// WS-API-2: idempotent by id, refuses past `max_pending`. With `push_to`,
/// the command is stored as already pushed to that connection.
///
/// One round trip: `BEGIN`, [`SQL_LOCK_AGENT`], [`SQL_INSERT`] and `COMMIT`
/// are pipelined. PostgreSQL runs them in order, so statement 2 starts after
/// the lock is granted; if one fails, the rest fail and `COMMIT` rolls back.
pub(super) async fn insert(
    db: &Db,
    policy: &DeliveryPolicy,
    cmd: &NewCommand,
    push_to: Option<ConnId>,
) -> StoreResult<InsertOutcome> {
    let t = cmd.created_at;
    let (st, attempts, sent_at, ack_deadline, next_attempt_at, via) = match push_to {
        // WS-DLV-1: stored as attempt 1 on that connection; the caller pushes it.
        Some(_) => (
            Status::Sent,
            1i64,
            Some(t),
            Some(t + policy.ack_timeout_ms),
            Some(policy.next_attempt_at(t, 1)),
            Some(Channel::Ws.as_str()),
        ),
        None => (Status::Queued, 0, None, None, None, None),
    };
    // WS-CMD-2: the text as posted.
    let parameters = cmd.parameters.as_str();
    let priority = cmd.priority.rank();
    let max_pending = i64::try_from(policy.max_pending).unwrap_or(i64::MAX);
    let client = db.client().await?;
    let lock = client
        .prepare_cached(SQL_LOCK_AGENT)
        .await
        .map_err(backend)?;
    let insert = client.prepare_cached(SQL_INSERT).await.map_err(backend)?;
    let params: [&(dyn ToSql + Sync); 15] = [
        &cmd.id,
        &cmd.agent_id,
        &cmd.command_type,
        &parameters,
        &priority,
        &st.as_str(),
        &attempts,
        &t,
        &cmd.expires_at,
        &sent_at,
        &ack_deadline,
        &next_attempt_at,
        &via,
        &push_to,
        &max_pending,
    ];
    let lock_params: [&(dyn ToSql + Sync); 1] = [&cmd.agent_id];
    // Polled in this order, so sent in this order (tokio-postgres pipelining).
    let (_, locked, rows, _) = futures_util::try_join!(
        client.batch_execute("BEGIN"),
        client.query_opt(&lock, &lock_params),
        client.query(&insert, &params),
        // WS-DLV-6, WS-API-2: answered only once committed (synchronous_commit).
        client.batch_execute("COMMIT"),
    )
    .map_err(backend)?;
    if locked.is_none() {
        return Ok(InsertOutcome::UnknownAgent);
    }
    let Some(row) = rows.first() else {
        // A concurrent insert of the same id (another agent's, since this
        // agent's are serialized by the lock) made this one insert nothing.
        return Ok(InsertOutcome::Conflict);
    };
    let kind: &str = row.try_get(18).map_err(backend)?;
    Ok(match kind {
        "created" => InsertOutcome::Created(command_row(row)?),
        // WS-API-2: idempotent by id, even when the queue is full.
        "existing" => {
            let existing = command_row(row)?;
            if existing.agent_id == cmd.agent_id {
                InsertOutcome::Existing(existing)
            } else {
                InsertOutcome::Conflict
            }
        }
        // WS-API-2: refuse, never drop.
        _ => InsertOutcome::QueueFull,
    })
}

/// An agent's commands in insertion order, optionally of one state.
pub(super) async fn list(
    db: &Db,
    agent_id: &str,
    st: Option<Status>,
    limit: u32,
) -> StoreResult<Vec<CommandRow>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(concat!(
            "SELECT ",
            cmd_cols!(),
            " FROM commands WHERE agent_id = $1 AND ($2::TEXT IS NULL OR status = $2) \
             ORDER BY seq LIMIT $3"
        ))
        .await
        .map_err(backend)?;
    let rows = client
        .query(
            &stmt,
            &[&agent_id, &st.map(Status::as_str), &(limit as i64)],
        )
        .await
        .map_err(backend)?;
    super::rows::command_rows(&rows)
}

/// An ack in one statement: `old` locks the command's row (so concurrent
/// acks, from two instances, take turns) and reads its newest version; the
/// `UPDATE` applies only from the states in `$7`, for the agent `$2`. Returns
/// the command's columns, `updated` (column 18) and the state before
/// (column 19); no row for an unknown id. `$3` new state, `$4` now, `$5`
/// whether the new state is final (then `completed_at` and `error` = `$6`).
const SQL_ACK: &str = concat!(
    "WITH old AS (SELECT ",
    cmd_cols!(),
    " FROM commands WHERE id = $1::TEXT FOR UPDATE), \
     upd AS (UPDATE commands SET status = $3::TEXT, acked_at = COALESCE(acked_at, $4::BIGINT), \
     completed_at = CASE WHEN $5::BOOLEAN THEN $4::BIGINT ELSE completed_at END, \
     error = CASE WHEN $5::BOOLEAN THEN $6::TEXT ELSE error END \
     WHERE seq = (SELECT seq FROM old WHERE agent_id = $2::TEXT AND status = ANY($7::TEXT[])) \
     RETURNING ",
    cmd_cols!(),
    ") SELECT ",
    cmd_cols!(),
    ", true, (SELECT status FROM old) FROM upd UNION ALL SELECT ",
    cmd_cols!(),
    ", false, status FROM old WHERE NOT EXISTS (SELECT 1 FROM upd)"
);

/// Applies an ack from `agent_id` (WS-ACK-2, WS-ACK-3), in one statement.
pub(super) async fn ack(
    db: &Db,
    agent_id: &str,
    command_id: &str,
    ack: AckKind,
    now: Millis,
) -> StoreResult<AckOutcome> {
    // WS-ACK-2: the new state, and the states it may come from. WS-ACK-3: a
    // final state never changes; progress only moves forward.
    let (to, from, error): (Status, &[&str], Option<String>) = match ack {
        AckKind::Completed => (Status::Completed, &PENDING_STATES, None),
        AckKind::Failed { error } => (Status::Failed, &PENDING_STATES, error),
        AckKind::Received => (Status::Received, &["queued", "sent"], None),
        AckKind::Executing => (Status::Executing, &["queued", "sent", "received"], None),
    };
    let client = db.client().await?;
    let stmt = client.prepare_cached(SQL_ACK).await.map_err(backend)?;
    let row = client
        .query_opt(
            &stmt,
            &[
                &command_id,
                &agent_id,
                &to.as_str(),
                &now,
                &to.is_final(),
                &error,
                &from,
            ],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok(AckOutcome::Unknown);
    };
    let command = command_row(&row)?;
    // WS-ACK-3: another agent's command is "unknown" too.
    if command.agent_id != agent_id {
        return Ok(AckOutcome::Unknown);
    }
    if !row.try_get::<_, bool>(18).map_err(backend)? {
        return Ok(AckOutcome::Unchanged(command));
    }
    let before = status(row.try_get(19).map_err(backend)?)?;
    Ok(AckOutcome::Updated { before, command })
}

/// WS-API-4: `dead`/`expired` → `queued`, attempts 0, TTL cleared.
pub(super) async fn retry(db: &Db, command_id: &str) -> StoreResult<RetryOutcome> {
    let client = db.client().await?;
    // One statement: only a dead or expired row changes, atomically.
    let requeued = one_opt(
        &client,
        concat!(
            "UPDATE commands SET status = 'queued', attempts = 0, expires_at = NULL, \
             sent_at = NULL, ack_deadline = NULL, next_attempt_at = NULL, \
             conn_id = NULL, completed_at = NULL, error = NULL \
             WHERE id = $1 AND status IN ('dead','expired') RETURNING ",
            cmd_cols!()
        ),
        &[&command_id],
    )
    .await?;
    if let Some(row) = requeued {
        return Ok(RetryOutcome::Requeued(row));
    }
    Ok(match by_id(&client, command_id).await? {
        Some(row) => RetryOutcome::NotRetryable(row),
        None => RetryOutcome::Unknown,
    })
}

/// Count of commands in each state.
pub(super) async fn status_counts(db: &Db) -> StoreResult<Vec<(Status, u64)>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached("SELECT status, COUNT(*) FROM commands GROUP BY status")
        .await
        .map_err(backend)?;
    let rows = client.query(&stmt, &[]).await.map_err(backend)?;
    let mut counts = rows
        .iter()
        .map(|r| {
            Ok((
                status(r.get::<_, &str>(0))?,
                r.get::<_, i64>(1).max(0) as u64,
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    counts.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
    Ok(counts)
}
