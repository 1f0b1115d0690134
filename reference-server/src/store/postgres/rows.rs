//! Reading result rows into the store's types.

use tokio_postgres::Row;

use crate::raw_json::RawJson;
use crate::store::{Channel, CommandRow, Priority, Status, StoreError, StoreResult};

/// The columns [`command_row`] reads, in its order.
macro_rules! cmd_cols {
    () => {
        "seq, id, agent_id, command_type, parameters, priority, status, attempts, created_at, \
         expires_at, sent_at, ack_deadline, next_attempt_at, acked_at, completed_at, error, \
         delivered_via, conn_id"
    };
}
pub(super) use cmd_cols;

fn bad(what: String) -> StoreError {
    StoreError::Backend(what)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, col: usize) -> StoreResult<T> {
    row.try_get(col)
        .map_err(|e| bad(format!("column {col}: {e}")))
}

/// WS-CMD-2: JSON columns hold the text as it was posted, and are read as that text.
fn json_text(text: String) -> StoreResult<RawJson> {
    RawJson::parse(text).map_err(|e| bad(format!("bad JSON in the database: {e}")))
}

pub(super) fn opt_json(row: &Row, col: usize) -> StoreResult<Option<RawJson>> {
    get::<Option<String>>(row, col)?.map(json_text).transpose()
}

pub(super) fn status(text: &str) -> StoreResult<Status> {
    Status::parse(text).ok_or_else(|| bad(format!("unknown status {text:?}")))
}

fn channel(text: Option<String>) -> StoreResult<Option<Channel>> {
    match text.as_deref() {
        None => Ok(None),
        Some("ws") => Ok(Some(Channel::Ws)),
        Some("http") => Ok(Some(Channel::Http)),
        Some(other) => Err(bad(format!("unknown channel {other:?}"))),
    }
}

/// Reads the columns of [`cmd_cols!`].
pub(super) fn command_row(r: &Row) -> StoreResult<CommandRow> {
    Ok(CommandRow {
        seq: get(r, 0)?,
        id: get(r, 1)?,
        agent_id: get(r, 2)?,
        command_type: get(r, 3)?,
        parameters: json_text(get::<String>(r, 4)?)?,
        priority: Priority::from_rank(get(r, 5)?),
        status: status(&get::<String>(r, 6)?)?,
        attempts: get::<i64>(r, 7)?.clamp(0, u32::MAX as i64) as u32,
        created_at: get(r, 8)?,
        expires_at: get(r, 9)?,
        sent_at: get(r, 10)?,
        ack_deadline: get(r, 11)?,
        next_attempt_at: get(r, 12)?,
        acked_at: get(r, 13)?,
        completed_at: get(r, 14)?,
        error: get(r, 15)?,
        delivered_via: channel(get(r, 16)?)?,
        conn_id: get(r, 17)?,
    })
}

pub(super) fn command_rows(rows: &[Row]) -> StoreResult<Vec<CommandRow>> {
    rows.iter().map(command_row).collect()
}
