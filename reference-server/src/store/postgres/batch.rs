//! One group-commit transaction: many inserts, acks, claims and retries in
//! two round trips and one `COMMIT` (the writer, `writer.rs`, gathers them).
//!
//! 1. Pipelined: `BEGIN`; lock the agents that get a new command (`FOR NO
//!    KEY UPDATE`, sorted by id); then, as the next statements so their
//!    snapshots are taken once those locks are granted, lock and read every
//!    command the batch names (by id, or an agent's pending ones for a
//!    claim), sorted by `seq`; count the pending commands of the agents
//!    that get one; and read which live instance holds each such agent's
//!    socket (`agent_sockets`).
//! 2. In Rust, each request in arrival order, on the rows read:
//!    `store/rules.rs` decides every outcome (idempotency, pending limit,
//!    ack transitions, claims, backoff).
//! 3. Pipelined: one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING
//!    RETURNING` for the new commands, one `UPDATE … FROM unnest(…)` for the
//!    changed ones, `COMMIT`.
//!
//! Locks are always taken in the same order (agents by id, then commands by
//! `seq`), by every batch of every instance, and nothing else holds one lock
//! while waiting for another (`cluster/postgres.rs`'s `hold` locks one agent
//! row; the sweeper skips locked rows), so batches never deadlock. The agent
//! lock orders an insert against other inserts for that agent (the pending
//! limit holds across instances) and against a socket moving to another
//! instance (`cluster/postgres.rs`): so the holder read under it is the one
//! that will push. A new command for an agent whose socket a live instance
//! holds is stored as attempt 1 on that socket, and that instance pushes it
//! when told (`Cluster::announce`), with no transaction of its own: a
//! command crossing instances costs its insert and its ack, not a claim
//! between them. A command whose id another agent's
//! insert took meanwhile is not inserted (`ON CONFLICT DO NOTHING`) and
//! answers `Conflict`: per-row outcomes, so one command never fails its
//! batch-mates.

use std::collections::{HashMap, HashSet};

use tokio_postgres::types::ToSql;

use super::rows::{cmd_cols, command_rows};
use super::schema::pending;
use super::{pg_error, rollback, Db};
use crate::store::rules::{self, InsertDecision};
use crate::store::{
    AckKind, AckOutcome, Channel, Claim, CommandRow, ConnId, DeliveryPolicy, InsertOutcome, Millis,
    NewCommand, RetryOutcome, StoreError, StoreResult,
};

/// A change the writer can put in a batch.
#[derive(Debug)]
pub(super) enum Request {
    Insert {
        command: NewCommand,
        push_to: Option<ConnId>,
    },
    Ack {
        agent_id: String,
        command_id: String,
        ack: AckKind,
        now: Millis,
        /// Over the socket that got the push, its first ack there
        /// ([`crate::store::Store::ack_pushed`]; `pushed_acks.rs`).
        pushed: bool,
    },
    Claim {
        claim: Claim,
        now: Millis,
    },
    Retry {
        command_id: String,
    },
}

/// What became of a [`Request`], in the same order.
#[derive(Debug)]
pub(super) enum Answer {
    Insert(InsertOutcome),
    Ack(AckOutcome),
    Claim(Vec<CommandRow>),
    Retry(RetryOutcome),
}

/// A reply of the wrong kind: a bug in the writer, never a user's error.
pub(super) fn mismatch() -> StoreError {
    StoreError::Backend("the store's writer answered a different request".into())
}

pub(super) const SQL_LOCK_AGENTS: &str =
    "SELECT id FROM agents WHERE id = ANY($1::TEXT[]) ORDER BY id FOR NO KEY UPDATE";

/// The rows the batch acks or claims, locked in `seq` order (see the module
/// doc). Written as a lookup by `seq` of what two index scans find, not one
/// `OR`, because an `OR` of two indexes needs a bitmap scan (see `BEGIN` in
/// [`run`]); the outer condition repeats the inner ones so a row changed by
/// another instance meanwhile is rechecked against them once locked.
pub(super) const SQL_READ: &str = concat!(
    "SELECT ",
    cmd_cols!(),
    " FROM commands WHERE seq = ANY(ARRAY(\
       SELECT seq FROM commands WHERE id = ANY($1::TEXT[]) \
       UNION ALL SELECT seq FROM commands WHERE agent_id = ANY($2::TEXT[]) AND ",
    pending!(),
    ")) AND (id = ANY($1::TEXT[]) OR (agent_id = ANY($2::TEXT[]) AND ",
    pending!(),
    ")) ORDER BY seq FOR UPDATE"
);

/// The socket a live instance holds for each agent (see the module doc).
pub(super) const SQL_HOLDERS: &str = "SELECT s.agent_id, s.conn_id FROM agent_sockets s \
     JOIN instances i ON i.tag = s.instance_tag \
     WHERE s.agent_id = ANY($1::TEXT[]) AND i.heartbeat_at > $2";

pub(super) const SQL_COUNT_PENDING: &str = concat!(
    "SELECT agent_id, COUNT(*) FROM commands WHERE agent_id = ANY($1::TEXT[]) AND ",
    pending!(),
    " GROUP BY agent_id"
);

/// New commands, in arrival order (`seq` keeps FIFO, WS-DLV-4).
const SQL_INSERT: &str =
    "INSERT INTO commands (id, agent_id, command_type, parameters, priority, status, attempts, \
     created_at, expires_at, sent_at, ack_deadline, next_attempt_at, delivered_via, conn_id) \
     SELECT id, agent_id, command_type, parameters, priority, status, attempts, created_at, \
     expires_at, sent_at, ack_deadline, next_attempt_at, delivered_via, conn_id \
     FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], \
     $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], \
     $13::TEXT[], $14::BIGINT[]) WITH ORDINALITY AS n(id, agent_id, command_type, parameters, \
     priority, status, attempts, created_at, expires_at, sent_at, ack_deadline, \
     next_attempt_at, delivered_via, conn_id, ord) ORDER BY ord \
     ON CONFLICT (id) DO NOTHING RETURNING seq, id";

/// Writes back the columns a state change may touch (`store/rules.rs`).
pub(super) const SQL_UPDATE: &str =
    "UPDATE commands c SET status = u.status, attempts = u.attempts, \
     expires_at = u.expires_at, sent_at = u.sent_at, ack_deadline = u.ack_deadline, \
     next_attempt_at = u.next_attempt_at, acked_at = u.acked_at, completed_at = u.completed_at, \
     error = u.error, delivered_via = u.delivered_via, conn_id = u.conn_id \
     FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], \
     $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[], \
     $12::BIGINT[]) AS u(seq, status, attempts, expires_at, sent_at, ack_deadline, \
     next_attempt_at, acked_at, completed_at, error, delivered_via, conn_id) \
     WHERE c.seq = u.seq";

/// What a batch reads before it decides: the rows it may change.
#[derive(Default)]
struct Keys {
    /// Agents that get a new command: locked, and their pending counted.
    insert_agents: Vec<String>,
    /// Those of them whose command no local session pushes: their holder
    /// is looked up.
    unheld_agents: Vec<String>,
    /// Commands named by id (inserts' idempotency, acks, claims, retries).
    ids: Vec<String>,
    /// Agents whose pending commands a claim takes.
    claim_agents: Vec<String>,
}

impl Keys {
    fn of(requests: &[Request]) -> Keys {
        let mut keys = Keys::default();
        for request in requests {
            match request {
                Request::Insert { command, push_to } => {
                    keys.insert_agents.push(command.agent_id.clone());
                    if push_to.is_none() {
                        keys.unheld_agents.push(command.agent_id.clone());
                    }
                    keys.ids.push(command.id.clone());
                }
                Request::Ack { command_id, .. } | Request::Retry { command_id } => {
                    keys.ids.push(command_id.clone())
                }
                Request::Claim { claim, .. } => match claim {
                    Claim::AllPending { agent_id, .. } | Claim::Http { agent_id } => {
                        keys.claim_agents.push(agent_id.clone())
                    }
                    Claim::One { command_id, .. } | Claim::Redeliver { command_id, .. } => {
                        keys.ids.push(command_id.clone())
                    }
                },
            }
        }
        // Sorted: every batch locks agents in the same order.
        for list in [
            &mut keys.insert_agents,
            &mut keys.unheld_agents,
            &mut keys.ids,
            &mut keys.claim_agents,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        keys
    }
}

/// The rows of one batch as its requests change them, in arrival order.
struct Working<'a> {
    policy: &'a DeliveryPolicy,
    known_agents: HashSet<String>,
    /// Every command read, by id, as the requests so far left it.
    rows: HashMap<String, CommandRow>,
    /// The ids of the commands read, by agent (a claim of an agent's
    /// pending commands looks there, not through every row).
    by_agent: HashMap<String, Vec<String>>,
    /// Pending commands per agent that gets a new one.
    pending: HashMap<String, u64>,
    /// The socket another instance (or a session not yet in this one's
    /// registry) holds, per agent that gets a command nobody here pushes.
    holders: HashMap<String, ConnId>,
    /// Ids of commands this batch creates (they have no `seq` yet).
    created: Vec<String>,
    /// Ids of existing commands this batch changed.
    changed: HashSet<String>,
}

impl Working<'_> {
    fn existing(&self, id: &str) -> Option<&CommandRow> {
        self.rows.get(id).filter(|r| r.seq != 0)
    }

    fn apply(&mut self, request: &Request) -> Answer {
        match request {
            Request::Insert { command, push_to } => {
                let pending = self.pending.get(&command.agent_id).copied().unwrap_or(0);
                let push_to = push_to.or_else(|| self.holders.get(&command.agent_id).copied());
                let decision = rules::insert(
                    command,
                    push_to,
                    self.known_agents.contains(&command.agent_id),
                    self.rows.get(&command.id),
                    pending,
                    self.policy,
                );
                match decision {
                    InsertDecision::Refuse(outcome) => Answer::Insert(outcome),
                    InsertDecision::Create(row) => {
                        *self.pending.entry(command.agent_id.clone()).or_default() += 1;
                        self.created.push(row.id.clone());
                        let outcome = InsertOutcome::Created(row.clone());
                        self.rows.insert(row.id.clone(), row);
                        Answer::Insert(outcome)
                    }
                }
            }
            Request::Ack {
                agent_id,
                command_id,
                ack,
                now,
                ..
            } => {
                // A command this batch creates was never pushed: the ack
                // is for an unknown id, as it would be a moment earlier.
                let row = self.existing(command_id).cloned();
                let outcome = rules::ack(row, agent_id, ack, *now);
                if let AckOutcome::Updated { before, command } = &outcome {
                    if !before.is_final() && command.status.is_final() {
                        if let Some(n) = self.pending.get_mut(&command.agent_id) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    self.store(command.clone());
                }
                Answer::Ack(outcome)
            }
            Request::Claim { claim, now } => {
                let candidates: Vec<CommandRow> = match claim {
                    Claim::One { command_id, .. } | Claim::Redeliver { command_id, .. } => {
                        self.existing(command_id).cloned().into_iter().collect()
                    }
                    Claim::AllPending { agent_id, .. } | Claim::Http { agent_id } => self
                        .by_agent
                        .get(agent_id)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| self.existing(id).cloned())
                        .collect(),
                };
                let claimed = rules::claim(candidates, claim, *now, self.policy);
                for row in &claimed {
                    self.store(row.clone());
                }
                Answer::Claim(claimed)
            }
            Request::Retry { command_id } => Answer::Retry(match self.existing(command_id) {
                None => RetryOutcome::Unknown,
                Some(row) => match rules::retry(row) {
                    None => RetryOutcome::NotRetryable(row.clone()),
                    Some(requeued) => {
                        if let Some(n) = self.pending.get_mut(&requeued.agent_id) {
                            *n += 1;
                        }
                        self.store(requeued.clone());
                        RetryOutcome::Requeued(requeued)
                    }
                },
            }),
        }
    }

    fn store(&mut self, row: CommandRow) {
        self.changed.insert(row.id.clone());
        self.rows.insert(row.id.clone(), row);
    }
}

/// Runs `requests` in one transaction; answers come back in their order,
/// only once the transaction committed. An error means nothing of the
/// batch was stored. `alive_since`: an instance whose heartbeat is older is
/// dead, and its sockets are not used.
pub(super) async fn run(
    db: &Db,
    policy: &DeliveryPolicy,
    requests: &[Request],
    alive_since: Millis,
) -> StoreResult<Vec<Answer>> {
    let keys = Keys::of(requests);
    let client = db.client().await?;
    let lock = client
        .prepare_cached(SQL_LOCK_AGENTS)
        .await
        .map_err(pg_error)?;
    let read = client.prepare_cached(SQL_READ).await.map_err(pg_error)?;
    let count = client
        .prepare_cached(SQL_COUNT_PENDING)
        .await
        .map_err(pg_error)?;
    let holders = client.prepare_cached(SQL_HOLDERS).await.map_err(pg_error)?;
    let insert = client.prepare_cached(SQL_INSERT).await.map_err(pg_error)?;
    let update = client.prepare_cached(SQL_UPDATE).await.map_err(pg_error)?;

    // A batch of claims only records which attempt went out: committed
    // without waiting for the WAL flush (the push follows at once). Lost
    // only if PostgreSQL itself crashes within its WAL writer delay; then
    // the commands are pushed again, and the edge dedups by `command_id`
    // (WS-DLV-3). Everything promised to someone (an accepted command, an
    // ack's new state) waits for the flush.
    // (Sequential scans are off on every pooled connection: `SESSION_SETUP`
    // in `mod.rs`.)
    //
    // `enable_bitmapscan = off`: only a plain index scan marks the index
    // entries of dead rows as dead (a bitmap scan never does). Every
    // completed command leaves a dead entry in `commands_pending` until
    // VACUUM, so a bitmap count of an agent's pending commands walked the
    // agent's whole recent history: 36,000 entries for 450 live ones, 6 ms
    // instead of 1 ms, growing with the rate between two autovacuums.
    let begin = if requests.iter().all(|r| matches!(r, Request::Claim { .. })) {
        "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL synchronous_commit = off"
    } else {
        "BEGIN; SET LOCAL enable_bitmapscan = off"
    };
    // Round trip 1 (statements are sent in the order first polled).
    let lock_params: [&(dyn ToSql + Sync); 1] = [&keys.insert_agents];
    let read_params: [&(dyn ToSql + Sync); 2] = [&keys.ids, &keys.claim_agents];
    let holder_params: [&(dyn ToSql + Sync); 2] = [&keys.unheld_agents, &alive_since];
    let inserting = !keys.insert_agents.is_empty();
    let begun = futures_util::try_join!(
        client.batch_execute(begin),
        query_if(inserting, &client, &lock, &lock_params),
        query_if(
            !keys.ids.is_empty() || !keys.claim_agents.is_empty(),
            &client,
            &read,
            &read_params
        ),
        query_if(inserting, &client, &count, &lock_params),
        query_if(
            !keys.unheld_agents.is_empty(),
            &client,
            &holders,
            &holder_params
        ),
    );
    let (_, locked, read, counted, held) = match begun {
        Ok(results) => results,
        Err(e) => return Err(rollback(&client, e).await),
    };
    let mut working = Working {
        policy,
        known_agents: locked.iter().map(|r| r.get(0)).collect(),
        rows: HashMap::new(),
        by_agent: HashMap::new(),
        pending: counted
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect(),
        holders: held.iter().map(|r| (r.get(0), r.get(1))).collect(),
        created: Vec::new(),
        changed: HashSet::new(),
    };
    match command_rows(&read) {
        Ok(rows) => {
            for row in rows {
                let ids = working.by_agent.entry(row.agent_id.clone()).or_default();
                ids.push(row.id.clone());
                working.rows.insert(row.id.clone(), row);
            }
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    let mut answers: Vec<Answer> = requests.iter().map(|r| working.apply(r)).collect();

    // Round trip 2.
    let new_rows: Vec<&CommandRow> = working.created.iter().map(|id| &working.rows[id]).collect();
    let changed: Vec<&CommandRow> = working
        .changed
        .iter()
        .map(|id| &working.rows[id])
        .filter(|row| row.seq != 0)
        .collect();
    let inserts = InsertColumns::of(&new_rows);
    let updates = UpdateColumns::of(&changed);
    let (insert_params, update_params) = (inserts.params(), updates.params());
    let written = futures_util::try_join!(
        query_if(!new_rows.is_empty(), &client, &insert, &insert_params),
        query_if(!changed.is_empty(), &client, &update, &update_params),
        // WS-DLV-6, WS-API-2: answered only once committed (and flushed,
        // but for claims: see `begin`).
        client.batch_execute("COMMIT"),
    );
    let inserted = match written {
        Ok((inserted, _, _)) => inserted,
        Err(e) => return Err(rollback(&client, e).await),
    };
    let seqs: HashMap<String, i64> = inserted.iter().map(|r| (r.get(1), r.get(0))).collect();
    for answer in &mut answers {
        // A command created by this batch (`seq` 0 until now), answered as
        // created or, to a repeat in the same batch, as existing.
        let Answer::Insert(outcome) = answer else {
            continue;
        };
        let row = match outcome {
            InsertOutcome::Created(row) | InsertOutcome::Existing(row) if row.seq == 0 => row,
            _ => continue,
        };
        match seqs.get(&row.id) {
            Some(seq) => row.seq = *seq,
            // Another agent's command took the id meanwhile.
            None => *outcome = InsertOutcome::Conflict,
        }
    }
    Ok(answers)
}

/// Runs the statement only if it has something to do (an empty batch of
/// acks needs no insert, and so on); statements are still sent in the
/// order first polled, so a pipeline keeps its order.
async fn query_if(
    needed: bool,
    client: &deadpool_postgres::Object,
    statement: &tokio_postgres::Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    if needed {
        client.query(statement, params).await
    } else {
        Ok(Vec::new())
    }
}

/// The new commands as one array per column, for [`SQL_INSERT`].
struct InsertColumns<'a> {
    id: Vec<&'a str>,
    agent_id: Vec<&'a str>,
    command_type: Vec<&'a str>,
    parameters: Vec<&'a str>,
    priority: Vec<i64>,
    status: Vec<&'static str>,
    attempts: Vec<i64>,
    created_at: Vec<i64>,
    expires_at: Vec<Option<i64>>,
    sent_at: Vec<Option<i64>>,
    ack_deadline: Vec<Option<i64>>,
    next_attempt_at: Vec<Option<i64>>,
    delivered_via: Vec<Option<&'static str>>,
    conn_id: Vec<Option<i64>>,
}

impl<'a> InsertColumns<'a> {
    fn of(rows: &[&'a CommandRow]) -> InsertColumns<'a> {
        InsertColumns {
            id: rows.iter().map(|r| r.id.as_str()).collect(),
            agent_id: rows.iter().map(|r| r.agent_id.as_str()).collect(),
            command_type: rows.iter().map(|r| r.command_type.as_str()).collect(),
            // WS-CMD-2: the text as posted.
            parameters: rows.iter().map(|r| r.parameters.as_str()).collect(),
            priority: rows.iter().map(|r| r.priority.rank()).collect(),
            status: rows.iter().map(|r| r.status.as_str()).collect(),
            attempts: rows.iter().map(|r| i64::from(r.attempts)).collect(),
            created_at: rows.iter().map(|r| r.created_at).collect(),
            expires_at: rows.iter().map(|r| r.expires_at).collect(),
            sent_at: rows.iter().map(|r| r.sent_at).collect(),
            ack_deadline: rows.iter().map(|r| r.ack_deadline).collect(),
            next_attempt_at: rows.iter().map(|r| r.next_attempt_at).collect(),
            delivered_via: rows
                .iter()
                .map(|r| r.delivered_via.map(Channel::as_str))
                .collect(),
            conn_id: rows.iter().map(|r| r.conn_id).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.id,
            &self.agent_id,
            &self.command_type,
            &self.parameters,
            &self.priority,
            &self.status,
            &self.attempts,
            &self.created_at,
            &self.expires_at,
            &self.sent_at,
            &self.ack_deadline,
            &self.next_attempt_at,
            &self.delivered_via,
            &self.conn_id,
        ]
    }
}

/// The changed commands as one array per column, for [`SQL_UPDATE`].
pub(super) struct UpdateColumns<'a> {
    seq: Vec<i64>,
    status: Vec<&'static str>,
    attempts: Vec<i64>,
    expires_at: Vec<Option<i64>>,
    sent_at: Vec<Option<i64>>,
    ack_deadline: Vec<Option<i64>>,
    next_attempt_at: Vec<Option<i64>>,
    acked_at: Vec<Option<i64>>,
    completed_at: Vec<Option<i64>>,
    error: Vec<Option<&'a str>>,
    delivered_via: Vec<Option<&'static str>>,
    conn_id: Vec<Option<i64>>,
}

impl<'a> UpdateColumns<'a> {
    pub(super) fn of(rows: &[&'a CommandRow]) -> UpdateColumns<'a> {
        UpdateColumns {
            seq: rows.iter().map(|r| r.seq).collect(),
            status: rows.iter().map(|r| r.status.as_str()).collect(),
            attempts: rows.iter().map(|r| i64::from(r.attempts)).collect(),
            expires_at: rows.iter().map(|r| r.expires_at).collect(),
            sent_at: rows.iter().map(|r| r.sent_at).collect(),
            ack_deadline: rows.iter().map(|r| r.ack_deadline).collect(),
            next_attempt_at: rows.iter().map(|r| r.next_attempt_at).collect(),
            acked_at: rows.iter().map(|r| r.acked_at).collect(),
            completed_at: rows.iter().map(|r| r.completed_at).collect(),
            error: rows.iter().map(|r| r.error.as_deref()).collect(),
            delivered_via: rows
                .iter()
                .map(|r| r.delivered_via.map(Channel::as_str))
                .collect(),
            conn_id: rows.iter().map(|r| r.conn_id).collect(),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.seq,
            &self.status,
            &self.attempts,
            &self.expires_at,
            &self.sent_at,
            &self.ack_deadline,
            &self.next_attempt_at,
            &self.acked_at,
            &self.completed_at,
            &self.error,
            &self.delivered_via,
            &self.conn_id,
        ]
    }
}
