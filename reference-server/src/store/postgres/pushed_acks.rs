//! Acks over the socket that got the push, in one round trip
//! ([`crate::store::Store::ack_pushed`]).
//!
//! An agent acks what it was pushed, and the row it acks is then most
//! likely as pushed: `sent`, never acked ([`AckColumns::PUSHED`]). Such
//! acks are decided on that row, in Rust (`store/rules.rs`), and written in
//! one autocommit `UPDATE` that changes only rows still exactly so: a
//! compare-and-set on every column an ack reads or writes. A row that
//! changed meanwhile (acked over HTTP or on another socket, swept, retried)
//! is not written, and its ack runs in a batch (`batch.rs`) like any other.
//! So the outcome is always the one a batch would have given, in one round
//! trip instead of a batch's two (read and lock; write and commit).

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;

use super::batch::Request;
use super::rows::{cmd_cols, command_rows};
use super::{pg_error, Db};
use crate::store::rules::{self, AckColumns};
use crate::store::{AckOutcome, CommandRow, StoreResult};

/// `$1..$6`: each ack's command, agent and the columns it writes; `$7..$10`:
/// the columns as pushed.
///
/// The rows are locked first, in `seq` order, as every batch locks them
/// (`batch.rs`), so the two never deadlock; a row changed meanwhile is read
/// as it is once locked. Each lookup has one index it can use, whatever the
/// statistics were when the statement was planned (a plan made while the
/// table was empty once walked every `sent` row per ack): ids to `seq`, and
/// the rows by `seq`; the comparison reads the locked rows, not the table,
/// and each ack's values are picked by the position of its id.
const SQL_SET_AS_PUSHED: &str = concat!(
    "WITH locked AS MATERIALIZED (SELECT seq, id, agent_id, status, acked_at, completed_at, \
     error FROM commands \
     WHERE seq = ANY(ARRAY(SELECT seq FROM commands WHERE id = ANY($1::TEXT[]))) \
     ORDER BY seq FOR UPDATE) \
     UPDATE commands SET status = ($3::TEXT[])[array_position($1::TEXT[], id)], \
     acked_at = ($4::BIGINT[])[array_position($1::TEXT[], id)], \
     completed_at = ($5::BIGINT[])[array_position($1::TEXT[], id)], \
     error = ($6::TEXT[])[array_position($1::TEXT[], id)] \
     WHERE seq = ANY(ARRAY(SELECT seq FROM locked \
     WHERE agent_id = ($2::TEXT[])[array_position($1::TEXT[], id)] AND status = $7::TEXT \
     AND acked_at IS NOT DISTINCT FROM $8::BIGINT \
     AND completed_at IS NOT DISTINCT FROM $9::BIGINT \
     AND error IS NOT DISTINCT FROM $10::TEXT)) RETURNING ",
    cmd_cols!()
);

/// Writes the acks among `requests` that came over the socket that got the
/// push, where the row is still as pushed. Returns each request's outcome,
/// in order, or `None` for those left to a batch (in their order). Only the
/// first ack of a command is tried: a later one is decided on what the
/// first left (one `UPDATE` would write only one of them, either one).
pub(super) async fn set_as_pushed(
    db: &Db,
    requests: &[&Request],
) -> StoreResult<Vec<Option<AckOutcome>>> {
    let before = AckColumns::PUSHED;
    let mut tried = HashSet::new();
    let mut chosen = vec![false; requests.len()];
    let mut columns = Columns::default();
    for (i, request) in requests.iter().enumerate() {
        let Request::Ack {
            agent_id,
            command_id,
            ack,
            now,
            pushed: true,
        } = request
        else {
            continue;
        };
        if !tried.insert(command_id.as_str()) {
            continue;
        }
        if let Some(after) = rules::acked(&before, ack, *now) {
            chosen[i] = true;
            columns.push(command_id, agent_id, after);
        }
    }
    if columns.of_id.is_empty() {
        return Ok(vec![None; requests.len()]);
    }
    let client = db.client().await?;
    let statement = client
        .prepare_cached(SQL_SET_AS_PUSHED)
        .await
        .map_err(pg_error)?;
    let status = before.status.as_str();
    let params: [&(dyn ToSql + Sync); 10] = [
        &columns.of_id,
        &columns.of_agent,
        &columns.to_status,
        &columns.to_acked_at,
        &columns.to_completed_at,
        &columns.to_error,
        &status,
        &before.acked_at,
        &before.completed_at,
        &before.error,
    ];
    let rows = client.query(&statement, &params).await.map_err(pg_error)?;
    // Committed now. Rows that cannot be read here could not be read by the
    // batch these acks then go to either: its error is their answer.
    let mut written: HashMap<String, CommandRow> = command_rows(&rows)?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    Ok(requests
        .iter()
        .zip(chosen)
        .map(|(request, chosen)| match request {
            Request::Ack { command_id, .. } if chosen => {
                written
                    .remove(command_id)
                    .map(|command| AckOutcome::Updated {
                        before: before.status,
                        command,
                    })
            }
            _ => None,
        })
        .collect())
}

/// The acks to write, one array per column of [`SQL_SET_AS_PUSHED`].
#[derive(Default)]
struct Columns<'a> {
    of_id: Vec<&'a str>,
    of_agent: Vec<&'a str>,
    to_status: Vec<&'static str>,
    to_acked_at: Vec<Option<i64>>,
    to_completed_at: Vec<Option<i64>>,
    to_error: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, command_id: &'a str, agent_id: &'a str, after: AckColumns) {
        self.of_id.push(command_id);
        self.of_agent.push(agent_id);
        self.to_status.push(after.status.as_str());
        self.to_acked_at.push(after.acked_at);
        self.to_completed_at.push(after.completed_at);
        self.to_error.push(after.error);
    }
}
