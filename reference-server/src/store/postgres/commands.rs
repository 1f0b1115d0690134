//! Commands as the control API reads them: look up, list, and counts per
//! state. Changes go through the writer (`writer.rs`, `batch.rs`); the
//! sweeper is in `delivery.rs`.

use deadpool_postgres::GenericClient;

use super::rows::{cmd_cols, command_row, status};
use super::{pg_error, Db};
use crate::store::{CommandRow, Status, StoreResult};

pub(super) const SQL_COMMAND_BY_ID: &str =
    concat!("SELECT ", cmd_cols!(), " FROM commands WHERE id = $1");

pub(super) const SQL_COMMANDS_BY_IDS: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE id = ANY($1::TEXT[])"
);

pub(super) async fn by_id<C: GenericClient>(c: &C, id: &str) -> StoreResult<Option<CommandRow>> {
    let stmt = c
        .prepare_cached(SQL_COMMAND_BY_ID)
        .await
        .map_err(pg_error)?;
    c.query_opt(&stmt, &[&id])
        .await
        .map_err(pg_error)?
        .as_ref()
        .map(command_row)
        .transpose()
}

/// The commands of these ids, in one statement.
pub(super) async fn by_ids(db: &Db, ids: &[String]) -> StoreResult<Vec<CommandRow>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached(SQL_COMMANDS_BY_IDS)
        .await
        .map_err(pg_error)?;
    let rows = client.query(&stmt, &[&ids]).await.map_err(pg_error)?;
    rows.iter().map(command_row).collect()
}

/// An agent's commands in insertion order, optionally of one state.
pub(super) const SQL_LIST: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE agent_id = $1 AND ($2::TEXT IS NULL OR status = $2) \
     ORDER BY seq LIMIT $3"
);

/// Runs [`SQL_LIST`].
pub(super) async fn list(
    db: &Db,
    agent_id: &str,
    st: Option<Status>,
    limit: u32,
) -> StoreResult<Vec<CommandRow>> {
    let client = db.client().await?;
    let stmt = client.prepare_cached(SQL_LIST).await.map_err(pg_error)?;
    let rows = client
        .query(
            &stmt,
            &[&agent_id, &st.map(Status::as_str), &(limit as i64)],
        )
        .await
        .map_err(pg_error)?;
    super::rows::command_rows(&rows)
}

/// Count of commands in each state.
pub(super) async fn status_counts(db: &Db) -> StoreResult<Vec<(Status, u64)>> {
    let client = db.client().await?;
    let stmt = client
        .prepare_cached("SELECT status, COUNT(*) FROM commands GROUP BY status")
        .await
        .map_err(pg_error)?;
    let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
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
