//! Which commands go out now and which have run out of time: claims (a push
//! on connect, a redelivery, an HTTP sync) and the sweeper's TTL and
//! dead-letter updates.

use rusqlite::{params, Connection};

use super::rows::{cmd_cols, command_row};
use super::schema::pending;
use crate::store::{Channel, Claim, CommandRow, ConnId, DeliveryPolicy, Millis, Status, Swept};

// The statements that run per command or every sweep, named so that a test
// can check they use the indexes meant for them. `INDEXED BY` pins the
// partial index: without statistics SQLite would rather walk all of an
// agent's commands through `commands_agent`.
//
// Claims share: not final, not expired (WS-DLV-7), attempts left (WS-DLV-3).

/// WS-DLV-4: every pending command of the agent, priority then FIFO.
pub(super) const SQL_CLAIM_ALL: &str = concat!(
    "SELECT seq, attempts FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!(),
    " AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND conn_id IS NOT ?4 ORDER BY priority, seq"
);
/// One command, unless that connection already has it (and it is not `queued`).
pub(super) const SQL_CLAIM_ONE: &str = concat!(
    "SELECT seq, attempts FROM commands WHERE id = ?1 AND ",
    pending!(),
    " AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND (status = 'queued' OR conn_id IS NOT ?4)"
);
/// WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
pub(super) const SQL_CLAIM_REDELIVER: &str = "SELECT seq, attempts FROM commands WHERE id = ?1 \
     AND status = 'sent' AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 \
     AND conn_id = ?4 AND attempts = ?5";
/// WS-DLV-5: `queued`, and `sent` ones due again; never `received`/`executing`.
pub(super) const SQL_CLAIM_HTTP: &str = concat!(
    "SELECT seq, attempts FROM commands INDEXED BY commands_pending WHERE agent_id = ?1 AND ",
    pending!(),
    " AND (status = 'queued' OR (status = 'sent' AND next_attempt_at <= ?2)) \
     AND (expires_at IS NULL OR expires_at > ?2) AND attempts < ?3 ORDER BY priority, seq"
);
/// WS-DLV-7: TTL passed in a non-final state (index `commands_expiry`).
pub(super) const SQL_EXPIRE: &str = concat!(
    "UPDATE commands SET status = 'expired', completed_at = ?1 \
     WHERE expires_at <= ?1 AND expires_at IS NOT NULL AND ",
    pending!(),
    " RETURNING id, agent_id"
);
/// WS-DLV-3: `sent`, no attempts left, last ack timeout passed (index
/// `commands_dead`). `received`/`executing` are never dead (WS-DLV-4).
pub(super) const SQL_DEAD: &str = "UPDATE commands SET status = 'dead', completed_at = ?1 \
     WHERE status = 'sent' AND attempts >= ?2 AND ack_deadline <= ?1 RETURNING id, agent_id";

/// `(seq, attempts)` of the commands a claim statement selects, in its order.
fn candidates(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(i64, u32)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Marks the given commands (`(seq, attempts)`, in the order to return them)
/// as pushed now over `via`, one more attempt each (WS-DLV-3, WS-DLV-4).
fn mark_pushed(
    conn: &Connection,
    policy: &DeliveryPolicy,
    candidates: Vec<(i64, u32)>,
    now: Millis,
    via: Channel,
    to: Option<ConnId>,
) -> rusqlite::Result<Vec<CommandRow>> {
    let mut stmt = conn.prepare_cached(concat!(
        // `queued` becomes `sent`; `sent` stays; `received`/`executing` keep
        // their progress (WS-DLV-4).
        "UPDATE commands SET status = CASE status WHEN 'queued' THEN 'sent' ELSE status END, \
         attempts = attempts + 1, sent_at = ?2, ack_deadline = ?3, next_attempt_at = ?4, \
         delivered_via = ?5, conn_id = ?6 WHERE seq = ?1 RETURNING ",
        cmd_cols!()
    ))?;
    candidates
        .into_iter()
        .map(|(seq, attempts)| {
            let attempt = attempts.saturating_add(1);
            stmt.query_row(
                params![
                    seq,
                    now,
                    now + policy.ack_timeout_ms,
                    policy.next_attempt_at(now, attempt),
                    via.as_str(),
                    to,
                ],
                command_row,
            )
        })
        .collect()
}

/// Marks the claimed commands as pushed now (attempts + 1, `sent_at`,
/// deadlines from the policy) and returns them as stored after that.
pub(super) fn claim(
    c: &Connection,
    p: &DeliveryPolicy,
    claim: Claim,
    now: Millis,
) -> rusqlite::Result<Vec<CommandRow>> {
    let max = p.max_attempts;
    // Common to every claim: not final, not expired (WS-DLV-7), attempts
    // left (WS-DLV-3).
    let (found, via, to) = match claim {
        // WS-DLV-4: everything pending, priority then FIFO.
        Claim::AllPending { agent_id, conn } => (
            candidates(c, SQL_CLAIM_ALL, params![agent_id, now, max, conn])?,
            Channel::Ws,
            Some(conn),
        ),
        Claim::One { command_id, conn } => (
            candidates(c, SQL_CLAIM_ONE, params![command_id, now, max, conn])?,
            Channel::Ws,
            Some(conn),
        ),
        // WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
        Claim::Redeliver {
            command_id,
            conn,
            attempt,
        } => (
            candidates(
                c,
                SQL_CLAIM_REDELIVER,
                params![command_id, now, max, conn, attempt],
            )?,
            Channel::Ws,
            Some(conn),
        ),
        // WS-DLV-5: `queued`, and `sent` ones due again; never
        // `received`/`executing`.
        Claim::Http { agent_id } => (
            candidates(c, SQL_CLAIM_HTTP, params![agent_id, now, max])?,
            Channel::Http,
            None,
        ),
    };
    mark_pushed(c, p, found, now, via, to)
}

/// Runs a sweep statement that returns `id, agent_id` of what it moved to `status`.
fn swept(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    status: Status,
) -> rusqlite::Result<Vec<Swept>> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        Ok(Swept {
            command_id: r.get(0)?,
            agent_id: r.get(1)?,
            status,
        })
    })?;
    rows.collect()
}

/// WS-DLV-7 and WS-DLV-3: TTL passed → `expired`; `sent` with no attempts
/// left and its ack deadline passed → `dead`.
pub(super) fn sweep(
    c: &Connection,
    p: &DeliveryPolicy,
    now: Millis,
) -> rusqlite::Result<Vec<Swept>> {
    // WS-DLV-7 (index commands_expiry).
    let mut all = swept(c, SQL_EXPIRE, [now], Status::Expired)?;
    // WS-DLV-3: the last attempt's ack timeout passed (index commands_dead).
    // `received`/`executing` are never dead (WS-DLV-4).
    all.extend(swept(
        c,
        SQL_DEAD,
        params![now, p.max_attempts],
        Status::Dead,
    )?);
    Ok(all)
}
