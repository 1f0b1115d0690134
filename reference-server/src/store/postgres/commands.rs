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

/// WS-API-2: idempotent by id, refuses past `max_pending`. With `push_to`,
/// the command is stored as already pushed to that connection.
pub(super) async fn insert(
    db: &Db,
    policy: &DeliveryPolicy,
    cmd: &NewCommand,
    push_to: Option<ConnId>,
) -> StoreResult<InsertOutcome> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    // The agent's row lock orders inserts of one agent across instances.
    let lock = tx
        .prepare_cached("SELECT 1 FROM agents WHERE id = $1 FOR NO KEY UPDATE")
        .await
        .map_err(backend)?;
    if tx
        .query_opt(&lock, &[&cmd.agent_id])
        .await
        .map_err(backend)?
        .is_none()
    {
        return Ok(InsertOutcome::UnknownAgent);
    }
    // WS-API-2: idempotent by id, even when the queue is full.
    if let Some(existing) = by_id(&tx, &cmd.id).await? {
        return Ok(if existing.agent_id == cmd.agent_id {
            InsertOutcome::Existing(existing)
        } else {
            InsertOutcome::Conflict
        });
    }
    let count = tx
        .prepare_cached(concat!(
            "SELECT COUNT(*) FROM commands WHERE agent_id = $1 AND ",
            pending!()
        ))
        .await
        .map_err(backend)?;
    let pending: i64 = tx
        .query_one(&count, &[&cmd.agent_id])
        .await
        .map_err(backend)?
        .get(0);
    // WS-API-2: refuse, never drop.
    if pending.max(0) as u64 >= policy.max_pending {
        return Ok(InsertOutcome::QueueFull);
    }
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
    let parameters = cmd.parameters.to_string();
    let priority = cmd.priority.rank();
    // A concurrent insert of the same id (another agent's, since this
    // agent's are serialized by the lock) makes this one insert nothing.
    let row = one_opt(
        &tx,
        concat!(
            "INSERT INTO commands (id, agent_id, command_type, parameters, priority, \
             status, attempts, created_at, expires_at, sent_at, ack_deadline, \
             next_attempt_at, delivered_via, conn_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (id) DO NOTHING RETURNING ",
            cmd_cols!()
        ),
        &[
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
        ],
    )
    .await?;
    let Some(row) = row else {
        return Ok(InsertOutcome::Conflict);
    };
    // WS-DLV-6, WS-API-2: answered only once committed (synchronous_commit).
    tx.commit().await.map_err(backend)?;
    Ok(InsertOutcome::Created(row))
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

/// Applies an ack from `agent_id` (WS-ACK-2, WS-ACK-3).
pub(super) async fn ack(
    db: &Db,
    agent_id: &str,
    command_id: &str,
    ack: AckKind,
    now: Millis,
) -> StoreResult<AckOutcome> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    // The row lock makes concurrent acks (from two instances) take turns.
    let row = one_opt(
        &tx,
        concat!(
            "SELECT ",
            cmd_cols!(),
            " FROM commands WHERE id = $1 FOR UPDATE"
        ),
        &[&command_id],
    )
    .await?;
    // WS-ACK-3: another agent's command is "unknown" too.
    let row = match row {
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
        Some(error) => {
            one_opt(
                &tx,
                concat!(
                    "UPDATE commands SET status = $2, acked_at = COALESCE(acked_at, $3), \
                 completed_at = $3, error = $4 WHERE seq = $1 RETURNING ",
                    cmd_cols!()
                ),
                &[&row.seq, &to.as_str(), &now, &error],
            )
            .await?
        }
        None => {
            one_opt(
                &tx,
                concat!(
                    "UPDATE commands SET status = $2, acked_at = COALESCE(acked_at, $3) \
                 WHERE seq = $1 RETURNING ",
                    cmd_cols!()
                ),
                &[&row.seq, &to.as_str(), &now],
            )
            .await?
        }
    };
    tx.commit().await.map_err(backend)?;
    let command = command.ok_or_else(|| backend("an acked command vanished"))?;
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
