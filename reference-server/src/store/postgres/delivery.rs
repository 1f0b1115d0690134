//! Claims (which commands a push takes, one more attempt each) and the
//! sweeper's state changes, for several instances sharing one database.
//!
//! A claim is one statement: a CTE picks the rows with `FOR UPDATE` in push
//! order (so two claims of one agent lock in the same order and never
//! deadlock) and the `UPDATE` marks them pushed. Under READ COMMITTED a row
//! that another instance changed while this claim waited for it is checked
//! again against the claim's conditions, so one attempt of a command is
//! claimed by one connection only: two instances never both push attempt n
//! (WS-DLV-3), and a stale redelivery finds nothing. No in-process state
//! takes part. The sweeper uses `SKIP LOCKED`: a row busy in a claim or an ack
//! is swept next time, and two instances sweeping at once never both report
//! one change.

use tokio_postgres::types::ToSql;

use super::rows::{cmd_cols, command_rows};
use super::schema::pending;
use super::{backend, Db};
use crate::store::{
    Channel, Claim, CommandRow, DeliveryPolicy, Millis, Status, StoreResult, Swept,
};

/// Parameters shared by every claim: `$1` key (agent or command id), `$2`
/// now, `$3` max attempts, `$4` connection (NULL over HTTP), `$5` ack
/// timeout, `$6` backoff base, `$7` backoff cap, `$8` channel; `$9` attempt
/// (redelivery only).
macro_rules! claim_sql {
    ($($where:expr),+) => {
        concat!(
            "WITH c AS (SELECT seq AS claimed FROM commands WHERE ",
            $($where,)+
            // Common to every claim: not expired (WS-DLV-7), attempts left (WS-DLV-3).
            " AND (expires_at IS NULL OR expires_at > $2::BIGINT) AND attempts < $3::BIGINT \
             ORDER BY priority, seq FOR UPDATE) \
             UPDATE commands SET \
             status = CASE status WHEN 'queued' THEN 'sent' ELSE status END, \
             attempts = attempts + 1, sent_at = $2, ack_deadline = $2 + $5::BIGINT, \
             next_attempt_at = $2 + $5::BIGINT \
               + LEAST($6::BIGINT * (1::BIGINT << LEAST(attempts, 30)::INT), $7::BIGINT), \
             delivered_via = $8::TEXT, conn_id = $4::BIGINT \
             FROM c WHERE seq = c.claimed RETURNING ",
            cmd_cols!()
        )
    };
}

/// WS-DLV-4: every pending command of the agent not already on this connection.
pub(super) const SQL_CLAIM_ALL: &str = claim_sql!(
    "agent_id = $1 AND ",
    pending!(),
    " AND conn_id IS DISTINCT FROM $4::BIGINT"
);
/// One command, unless that connection already has it (and it is not `queued`).
pub(super) const SQL_CLAIM_ONE: &str = claim_sql!(
    "id = $1 AND ",
    pending!(),
    " AND (status = 'queued' OR conn_id IS DISTINCT FROM $4::BIGINT)"
);
/// WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
pub(super) const SQL_CLAIM_REDELIVER: &str =
    claim_sql!("id = $1 AND status = 'sent' AND conn_id = $4::BIGINT AND attempts = $9::BIGINT");
/// WS-DLV-5: `queued`, and `sent` ones due again; never `received`/`executing`.
pub(super) const SQL_CLAIM_HTTP: &str = claim_sql!(
    "agent_id = $1 AND ",
    pending!(),
    " AND (status = 'queued' OR (status = 'sent' AND next_attempt_at <= $2::BIGINT))"
);

/// WS-DLV-7: TTL passed in a non-final state.
const SQL_EXPIRE: &str = concat!(
    "WITH c AS (SELECT seq AS claimed FROM commands WHERE expires_at <= $1 \
     AND expires_at IS NOT NULL AND ",
    pending!(),
    " FOR UPDATE SKIP LOCKED) \
     UPDATE commands SET status = 'expired', completed_at = $1 FROM c \
     WHERE seq = c.claimed RETURNING id, agent_id"
);
/// WS-DLV-3: `sent`, no attempts left, last ack timeout passed.
/// `received`/`executing` are never dead (WS-DLV-4).
const SQL_DEAD: &str = "WITH c AS (SELECT seq AS claimed FROM commands WHERE status = 'sent' \
     AND attempts >= $2 AND ack_deadline <= $1 FOR UPDATE SKIP LOCKED) \
     UPDATE commands SET status = 'dead', completed_at = $1 FROM c \
     WHERE seq = c.claimed RETURNING id, agent_id";

/// Marks the claimed commands as pushed now (attempts + 1, `sent_at`,
/// deadlines from the policy) and returns them in push order.
pub(super) async fn claim(
    db: &Db,
    p: &DeliveryPolicy,
    claim: Claim,
    now: Millis,
) -> StoreResult<Vec<CommandRow>> {
    let max = i64::from(p.max_attempts);
    let (sql, key, conn, via, attempt) = match &claim {
        Claim::AllPending { agent_id, conn } => {
            (SQL_CLAIM_ALL, agent_id, Some(*conn), Channel::Ws, None)
        }
        Claim::One { command_id, conn } => {
            (SQL_CLAIM_ONE, command_id, Some(*conn), Channel::Ws, None)
        }
        Claim::Redeliver {
            command_id,
            conn,
            attempt,
        } => (
            SQL_CLAIM_REDELIVER,
            command_id,
            Some(*conn),
            Channel::Ws,
            Some(i64::from(*attempt)),
        ),
        Claim::Http { agent_id } => (SQL_CLAIM_HTTP, agent_id, None, Channel::Http, None),
    };
    let via = via.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        key,
        &now,
        &max,
        &conn,
        &p.ack_timeout_ms,
        &p.backoff_base_ms,
        &p.backoff_cap_ms,
        &via,
    ];
    if let Some(attempt) = &attempt {
        params.push(attempt);
    }
    let client = db.client().await?;
    let stmt = client.prepare_cached(sql).await.map_err(backend)?;
    let rows = client.query(&stmt, &params).await.map_err(backend)?;
    let mut rows = command_rows(&rows)?;
    // `UPDATE … RETURNING` keeps no order: WS-DLV-4 order is restored here.
    rows.sort_by_key(|r| (r.priority, r.seq));
    Ok(rows)
}

async fn swept(
    db: &Db,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    status: Status,
) -> StoreResult<Vec<Swept>> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(sql).await.map_err(backend)?;
    let rows = client.query(&stmt, params).await.map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| Swept {
            command_id: r.get(0),
            agent_id: r.get(1),
            status,
        })
        .collect())
}

/// WS-DLV-7 and WS-DLV-3: TTL passed → `expired`; `sent` with no attempts
/// left and its ack deadline passed → `dead`.
pub(super) async fn sweep(db: &Db, p: &DeliveryPolicy, now: Millis) -> StoreResult<Vec<Swept>> {
    let mut all = swept(db, SQL_EXPIRE, &[&now], Status::Expired).await?;
    let max = i64::from(p.max_attempts);
    all.extend(swept(db, SQL_DEAD, &[&now, &max], Status::Dead).await?);
    Ok(all)
}
