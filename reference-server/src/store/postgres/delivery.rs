//! The sweeper's state changes (TTL → `expired`, attempts → `dead`), for
//! several instances sharing one database. Claims go through the writer
//! (`batch.rs`).
//!
//! One transaction: the candidates are locked with `SKIP LOCKED` (a row busy
//! in a batch is swept next time, and two instances sweeping at once never
//! both report one change), `store/rules.rs` decides which change, and one
//! `UPDATE … FROM unnest(…)` stores them.

use super::batch::{UpdateColumns, SQL_UPDATE};
use super::rows::{cmd_cols, command_rows};
use super::schema::pending;
use super::{pg_error, Db};
use crate::store::{rules, CommandRow, DeliveryPolicy, Millis, StoreResult, Swept};

/// Most commands one sweep changes; the rest wait for the next tick.
const SWEEP_LIMIT: i64 = 5_000;

/// Candidates: TTL passed in a non-final state (WS-DLV-7), or `sent` with
/// no attempts left and the ack deadline passed (WS-DLV-3). Each found by its
/// own partial index (`commands_expiry`, `commands_dead`) and then locked by
/// `seq`, not as one `OR` ordered by `seq`: that plan walks the primary key
/// through every command ever stored, and measured 50-80 ms a sweep on a
/// 15,000-row table. The outer condition repeats the inner ones so a row
/// another instance changed meanwhile is rechecked once locked.
pub(super) const SQL_CANDIDATES: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE seq = ANY(ARRAY(\
       (SELECT seq FROM commands WHERE expires_at <= $1 AND ",
    pending!(),
    " ORDER BY expires_at LIMIT $3) \
       UNION ALL (SELECT seq FROM commands \
         WHERE status = 'sent' AND attempts >= $2 AND ack_deadline <= $1 LIMIT $3))) \
     AND ((expires_at <= $1 AND ",
    pending!(),
    ") OR (status = 'sent' AND attempts >= $2 AND ack_deadline <= $1)) \
     ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED"
);

/// WS-DLV-7 and WS-DLV-3: TTL passed → `expired`; `sent` with no attempts
/// left and its ack deadline passed → `dead`.
pub(super) async fn sweep(db: &Db, p: &DeliveryPolicy, now: Millis) -> StoreResult<Vec<Swept>> {
    let max = i64::from(p.max_attempts);
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let stmt = tx.prepare_cached(SQL_CANDIDATES).await.map_err(pg_error)?;
    let found = tx
        .query(&stmt, &[&now, &max, &SWEEP_LIMIT])
        .await
        .map_err(pg_error)?;
    let mut changed: Vec<CommandRow> = Vec::new();
    let mut swept = Vec::new();
    for mut row in command_rows(&found)? {
        if let Some(status) = rules::swept(&row, now, p) {
            rules::sweep(&mut row, status, now);
            swept.push(Swept {
                command_id: row.id.clone(),
                agent_id: row.agent_id.clone(),
                status,
            });
            changed.push(row);
        }
    }
    if !changed.is_empty() {
        let rows: Vec<&CommandRow> = changed.iter().collect();
        let columns = UpdateColumns::of(&rows);
        let update = tx.prepare_cached(SQL_UPDATE).await.map_err(pg_error)?;
        tx.execute(&update, &columns.params())
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(swept)
}
