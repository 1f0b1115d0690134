//! Which commands go out now and which have run out of time: claims (a push
//! on connect, a redelivery, an HTTP sync) and the sweeper's TTL and
//! dead-letter changes. The statements here only find candidate rows;
//! `store/rules.rs` decides which of them change and how.

use rusqlite::{params, Connection};

use super::commands::{by_id, store_row};
use super::rows::{cmd_cols, command_row};
use super::schema::pending;
use crate::store::{rules, Claim, CommandRow, DeliveryPolicy, Millis, Swept};

// The statements that run per command or every sweep, named so that a test
// can check they use the indexes meant for them. `INDEXED BY` pins the
// partial index: without statistics SQLite would rather walk all of an
// agent's commands through `commands_agent`.

/// WS-DLV-4, WS-DLV-5: every pending command of the agent.
pub(super) const SQL_AGENT_PENDING: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!(),
    " ORDER BY priority, seq"
);
/// Sweeper candidates: TTL passed in a non-final state (index `commands_expiry`).
pub(super) const SQL_EXPIRE: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE expires_at <= ?1 AND expires_at IS NOT NULL AND ",
    pending!()
);
/// Sweeper candidates: `sent`, no attempts left, last ack timeout passed
/// (index `commands_dead`).
pub(super) const SQL_DEAD: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE status = 'sent' AND attempts >= ?2 AND ack_deadline <= ?1"
);

fn rows(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<CommandRow>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(args, command_row)?;
    rows.collect()
}

/// Marks the claimed commands as pushed now and returns them in push order.
pub(super) fn claim(
    c: &Connection,
    p: &DeliveryPolicy,
    claim: Claim,
    now: Millis,
) -> rusqlite::Result<Vec<CommandRow>> {
    let found = match &claim {
        Claim::AllPending { agent_id, .. } | Claim::Http { agent_id } => {
            rows(c, SQL_AGENT_PENDING, [agent_id])?
        }
        Claim::One { command_id, .. } | Claim::Redeliver { command_id, .. } => {
            by_id(c, command_id)?.into_iter().collect()
        }
    };
    let claimed = rules::claim(found, &claim, now, p);
    for row in &claimed {
        store_row(c, row)?;
    }
    Ok(claimed)
}

/// WS-DLV-7 and WS-DLV-3: TTL passed → `expired`; `sent` with no attempts
/// left and its ack deadline passed → `dead`.
pub(super) fn sweep(
    c: &Connection,
    p: &DeliveryPolicy,
    now: Millis,
) -> rusqlite::Result<Vec<Swept>> {
    // One after the other: a row that expired is no longer `sent`.
    let mut swept = change(c, rows(c, SQL_EXPIRE, [now])?, p, now)?;
    let dead = rows(c, SQL_DEAD, params![now, p.max_attempts])?;
    swept.extend(change(c, dead, p, now)?);
    Ok(swept)
}

/// Applies the sweeper's rule to each candidate and stores those that change.
fn change(
    c: &Connection,
    candidates: Vec<CommandRow>,
    p: &DeliveryPolicy,
    now: Millis,
) -> rusqlite::Result<Vec<Swept>> {
    let mut swept = Vec::new();
    for mut row in candidates {
        let Some(status) = rules::swept(&row, now, p) else {
            continue;
        };
        rules::sweep(&mut row, status, now);
        store_row(c, &row)?;
        swept.push(Swept {
            command_id: row.id,
            agent_id: row.agent_id,
            status,
        });
    }
    Ok(swept)
}
