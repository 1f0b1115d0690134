//! Reading typed values out of result rows: JSON and enum columns, and the
//! command row that most statements return.

use crate::raw_json::RawJson;
use crate::store::{Channel, CommandRow, Priority, Status};
use rusqlite::types::{Type, ValueRef};
use rusqlite::Row;

/// The columns [`command_row`] reads, in its order.
macro_rules! cmd_cols {
    () => {
        "seq, id, agent_id, command_type, parameters, priority, status, attempts, created_at, \
         expires_at, sent_at, ack_deadline, next_attempt_at, acked_at, completed_at, error, \
         delivered_via, conn_id"
    };
}
pub(super) use cmd_cols;

fn conversion_error(col: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, what.into())
}

/// WS-CMD-2: JSON columns hold the text as it was posted, and are read as that text.
fn json_col(row: &Row<'_>, col: usize) -> rusqlite::Result<RawJson> {
    let text: String = row.get(col)?;
    RawJson::parse(text).map_err(|e| conversion_error(col, format!("bad JSON: {e}")))
}

pub(super) fn opt_json_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<RawJson>> {
    match row.get_ref(col)? {
        ValueRef::Null => Ok(None),
        _ => json_col(row, col).map(Some),
    }
}

pub(super) fn status_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Status> {
    let text: String = row.get(col)?;
    Status::parse(&text).ok_or_else(|| conversion_error(col, format!("unknown status {text:?}")))
}

fn channel_col(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Channel>> {
    let text: Option<String> = row.get(col)?;
    match text.as_deref() {
        None => Ok(None),
        Some("ws") => Ok(Some(Channel::Ws)),
        Some("http") => Ok(Some(Channel::Http)),
        Some(other) => Err(conversion_error(col, format!("unknown channel {other:?}"))),
    }
}

/// Reads the columns of [`cmd_cols!`].
pub(super) fn command_row(r: &Row<'_>) -> rusqlite::Result<CommandRow> {
    Ok(CommandRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        agent_id: r.get(2)?,
        command_type: r.get(3)?,
        parameters: json_col(r, 4)?,
        priority: Priority::from_rank(r.get(5)?),
        status: status_col(r, 6)?,
        attempts: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        sent_at: r.get(10)?,
        ack_deadline: r.get(11)?,
        next_attempt_at: r.get(12)?,
        acked_at: r.get(13)?,
        completed_at: r.get(14)?,
        error: r.get(15)?,
        delivered_via: channel_col(r, 16)?,
        conn_id: r.get(17)?,
    })
}
