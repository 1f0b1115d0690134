//! The life of a command, once, in Rust (WS-API-2, WS-ACK-2/3, WS-DLV-3/4/5/7,
//! WS-API-4). Both stores read the rows a change concerns, ask these
//! functions what becomes of them, and write back what they return; SQL only
//! finds rows (by id, or an agent's pending ones) and stores them, so the
//! SQLite and PostgreSQL stores cannot drift apart on a rule.

use super::{
    AckKind, AckOutcome, Channel, Claim, CommandRow, ConnId, DeliveryPolicy, InsertOutcome, Millis,
    NewCommand, Status,
};

/// What an insert does, given what the store holds (WS-API-2). `existing` is
/// the command stored under the same id, whichever agent's it is; `pending`
/// the agent's commands not yet final.
pub enum InsertDecision {
    Refuse(InsertOutcome),
    /// Store this row (its `seq` is assigned by the store).
    Create(CommandRow),
}

pub fn insert(
    cmd: &NewCommand,
    push_to: Option<ConnId>,
    agent_known: bool,
    existing: Option<&CommandRow>,
    pending: u64,
    policy: &DeliveryPolicy,
) -> InsertDecision {
    if !agent_known {
        return InsertDecision::Refuse(InsertOutcome::UnknownAgent);
    }
    if let Some(existing) = existing {
        // WS-API-2: idempotent by id, even when the queue is full.
        return InsertDecision::Refuse(if existing.agent_id == cmd.agent_id {
            InsertOutcome::Existing(existing.clone())
        } else {
            InsertOutcome::Conflict
        });
    }
    // WS-API-2: refuse, never drop.
    if pending >= policy.max_pending {
        return InsertDecision::Refuse(InsertOutcome::QueueFull);
    }
    let mut row = CommandRow {
        seq: 0,
        id: cmd.id.clone(),
        agent_id: cmd.agent_id.clone(),
        command_type: cmd.command_type.clone(),
        parameters: cmd.parameters.clone(),
        priority: cmd.priority,
        status: Status::Queued,
        attempts: 0,
        created_at: cmd.created_at,
        expires_at: cmd.expires_at,
        sent_at: None,
        ack_deadline: None,
        next_attempt_at: None,
        acked_at: None,
        completed_at: None,
        error: None,
        delivered_via: None,
        conn_id: None,
    };
    // WS-DLV-1: stored as attempt 1 on that connection; the caller pushes it.
    if let Some(conn) = push_to {
        mark_pushed(&mut row, policy, cmd.created_at, Some(conn));
    }
    InsertDecision::Create(row)
}

/// Whether `claim` takes `row` now: not final, not expired (WS-DLV-7),
/// attempts left (WS-DLV-3), and the claim's own condition.
pub fn claimable(row: &CommandRow, claim: &Claim, now: Millis, policy: &DeliveryPolicy) -> bool {
    if row.status.is_final()
        || row.expires_at.is_some_and(|t| t <= now)
        || row.attempts >= policy.max_attempts
    {
        return false;
    }
    match claim {
        // WS-DLV-4: every pending command not already on this connection.
        Claim::AllPending { agent_id, conn } => {
            row.agent_id == *agent_id && row.conn_id != Some(*conn)
        }
        // Unless that connection already has it (and it is not `queued`).
        Claim::One { command_id, conn } => {
            row.id == *command_id && (row.status == Status::Queued || row.conn_id != Some(*conn))
        }
        // WS-DLV-3: only if nobody acked or re-pushed it meanwhile.
        Claim::Redeliver {
            command_id,
            conn,
            attempt,
        } => {
            row.id == *command_id
                && row.status == Status::Sent
                && row.conn_id == Some(*conn)
                && row.attempts == *attempt
        }
        // WS-DLV-5: `queued`, and `sent` ones due again; never `received`/`executing`.
        Claim::Http { agent_id } => {
            row.agent_id == *agent_id
                && (row.status == Status::Queued
                    || (row.status == Status::Sent
                        && row.next_attempt_at.is_some_and(|t| t <= now)))
        }
    }
}

/// One more attempt, pushed now to `conn` (over HTTP when `None`): `queued`
/// becomes `sent`, progress states stay (WS-DLV-4), deadlines per WS-DLV-3.
pub fn mark_pushed(
    row: &mut CommandRow,
    policy: &DeliveryPolicy,
    now: Millis,
    conn: Option<ConnId>,
) {
    if row.status == Status::Queued {
        row.status = Status::Sent;
    }
    row.attempts = row.attempts.saturating_add(1);
    row.sent_at = Some(now);
    row.ack_deadline = Some(now + policy.ack_timeout_ms);
    row.next_attempt_at = Some(policy.next_attempt_at(now, row.attempts));
    row.delivered_via = Some(if conn.is_some() {
        Channel::Ws
    } else {
        Channel::Http
    });
    row.conn_id = conn;
}

/// The claim's rows in push order (WS-DLV-4: priority, then FIFO), each
/// marked pushed. `rows` are the candidates the store found.
pub fn claim(
    rows: impl IntoIterator<Item = CommandRow>,
    claim: &Claim,
    now: Millis,
    policy: &DeliveryPolicy,
) -> Vec<CommandRow> {
    let conn = match claim {
        Claim::AllPending { conn, .. }
        | Claim::One { conn, .. }
        | Claim::Redeliver { conn, .. } => Some(*conn),
        Claim::Http { .. } => None,
    };
    let mut taken: Vec<CommandRow> = rows
        .into_iter()
        .filter(|row| claimable(row, claim, now, policy))
        .collect();
    taken.sort_by_key(|r| (r.priority, r.seq));
    for row in &mut taken {
        mark_pushed(row, policy, now, conn);
    }
    taken
}

/// An ack from `agent_id` for `row` (WS-ACK-2, WS-ACK-3): a final state
/// never changes, progress only moves forward, and another agent's command is
/// unknown. `Updated` carries the row as it must be stored.
pub fn ack(row: Option<CommandRow>, agent_id: &str, ack: &AckKind, now: Millis) -> AckOutcome {
    let Some(mut row) = row.filter(|r| r.agent_id == agent_id) else {
        return AckOutcome::Unknown;
    };
    let before = row.status;
    match acked(&AckColumns::of(&row), ack, now) {
        None => AckOutcome::Unchanged(row),
        Some(after) => {
            after.write_to(&mut row);
            AckOutcome::Updated {
                before,
                command: row,
            }
        }
    }
}

/// The columns an ack reads and writes: a store may decide an ack on these
/// alone (PostgreSQL's compare-and-set of an ack over the socket that got
/// the push, `store/postgres/pushed_acks.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct AckColumns {
    pub status: Status,
    /// The first ack of any kind.
    pub acked_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    pub error: Option<String>,
}

impl AckColumns {
    /// A command pushed and never acked since it was last queued.
    pub const PUSHED: AckColumns = AckColumns {
        status: Status::Sent,
        acked_at: None,
        completed_at: None,
        error: None,
    };

    pub fn of(row: &CommandRow) -> AckColumns {
        AckColumns {
            status: row.status,
            acked_at: row.acked_at,
            completed_at: row.completed_at,
            error: row.error.clone(),
        }
    }

    fn write_to(self, row: &mut CommandRow) {
        row.status = self.status;
        row.acked_at = self.acked_at;
        row.completed_at = self.completed_at;
        row.error = self.error;
    }
}

/// What an ack makes of a command whose columns are `before`, or `None` if
/// it changes nothing: a final state never changes, progress only moves
/// forward (WS-ACK-2, WS-ACK-3).
pub fn acked(before: &AckColumns, ack: &AckKind, now: Millis) -> Option<AckColumns> {
    let to = match ack {
        _ if before.status.is_final() => return None,
        AckKind::Completed => Status::Completed,
        AckKind::Failed { .. } => Status::Failed,
        AckKind::Received if matches!(before.status, Status::Queued | Status::Sent) => {
            Status::Received
        }
        AckKind::Executing
            if matches!(
                before.status,
                Status::Queued | Status::Sent | Status::Received
            ) =>
        {
            Status::Executing
        }
        AckKind::Received | AckKind::Executing => return None,
    };
    let mut after = before.clone();
    after.status = to;
    after.acked_at = before.acked_at.or(Some(now));
    if to.is_final() {
        after.completed_at = Some(now);
        after.error = match ack {
            AckKind::Failed { error } => error.clone(),
            _ => None,
        };
    }
    Some(after)
}

/// WS-API-4: `dead`/`expired` → `queued`, attempts 0, TTL cleared; `None`
/// for any other state.
pub fn retry(row: &CommandRow) -> Option<CommandRow> {
    if !matches!(row.status, Status::Dead | Status::Expired) {
        return None;
    }
    Some(CommandRow {
        status: Status::Queued,
        attempts: 0,
        expires_at: None,
        sent_at: None,
        ack_deadline: None,
        next_attempt_at: None,
        conn_id: None,
        completed_at: None,
        error: None,
        ..row.clone()
    })
}

/// What the sweeper makes of `row` now: `expired` once its TTL passed in a
/// non-final state (WS-DLV-7); `dead` when it is `sent` with no attempts
/// left and its last ack timeout passed (WS-DLV-3; `received`/`executing`
/// are never dead, WS-DLV-4).
pub fn swept(row: &CommandRow, now: Millis, policy: &DeliveryPolicy) -> Option<Status> {
    if row.status.is_final() {
        None
    } else if row.expires_at.is_some_and(|t| t <= now) {
        Some(Status::Expired)
    } else if row.status == Status::Sent
        && row.attempts >= policy.max_attempts
        && row.ack_deadline.is_some_and(|t| t <= now)
    {
        Some(Status::Dead)
    } else {
        None
    }
}

/// `row` moved to the final state `status` by the sweeper at `now`.
pub fn sweep(row: &mut CommandRow, status: Status, now: Millis) {
    row.status = status;
    row.completed_at = Some(now);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::raw_json::RawJson;
    use crate::store::Priority;

    const POLICY: DeliveryPolicy = DeliveryPolicy {
        ack_timeout_ms: 30_000,
        max_attempts: 3,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        max_pending: 5,
    };

    fn row(
        status: Status,
        attempts: u32,
        conn: Option<ConnId>,
        expires_at: Option<Millis>,
    ) -> CommandRow {
        CommandRow {
            seq: 1,
            id: "c1".into(),
            agent_id: "a1".into(),
            command_type: "t".into(),
            parameters: RawJson::parse("{}".to_string()).unwrap(),
            priority: Priority::Normal,
            status,
            attempts,
            created_at: 0,
            expires_at,
            sent_at: None,
            ack_deadline: None,
            next_attempt_at: Some(50_000),
            acked_at: None,
            completed_at: None,
            error: None,
            delivered_via: None,
            conn_id: conn,
        }
    }

    fn any_row() -> impl Strategy<Value = CommandRow> {
        (
            proptest::sample::select(Status::ALL.to_vec()),
            0u32..5,
            proptest::option::of(1i64..3),
            proptest::option::of(0i64..100_000),
        )
            .prop_map(|(s, a, c, e)| row(s, a, c, e))
    }

    fn any_ack() -> impl Strategy<Value = AckKind> {
        prop_oneof![
            Just(AckKind::Received),
            Just(AckKind::Executing),
            Just(AckKind::Completed),
            Just(AckKind::Failed {
                error: Some("e".into())
            }),
        ]
    }

    fn any_claim() -> impl Strategy<Value = Claim> {
        prop_oneof![
            (1i64..3).prop_map(|conn| Claim::AllPending {
                agent_id: "a1".into(),
                conn
            }),
            (1i64..3).prop_map(|conn| Claim::One {
                command_id: "c1".into(),
                conn
            }),
            (1i64..3, 0u32..5).prop_map(|(conn, attempt)| Claim::Redeliver {
                command_id: "c1".into(),
                conn,
                attempt
            }),
            Just(Claim::Http {
                agent_id: "a1".into()
            }),
        ]
    }

    /// The order of the states an ack may move through (WS-ACK-2).
    fn rank(s: Status) -> u8 {
        match s {
            Status::Queued | Status::Sent => 0,
            Status::Received => 1,
            Status::Executing => 2,
            _ => 3,
        }
    }

    proptest! {
        /// WS-ACK-3: a final state never changes; progress only moves
        /// forward; another agent's command is unknown.
        #[test]
        fn acks_never_undo(r in any_row(), ack in any_ack(), now in 0i64..100_000) {
            match rules_ack(&r, "a2", &ack, now) {
                AckOutcome::Unknown => {}
                other => prop_assert!(false, "another agent's ack: {other:?}"),
            }
            match rules_ack(&r, "a1", &ack, now) {
                AckOutcome::Updated { before, command } => {
                    prop_assert!(!before.is_final());
                    prop_assert!(rank(command.status) > rank(before));
                    prop_assert_eq!(command.completed_at.is_some(), command.status.is_final());
                    prop_assert_eq!(command.attempts, r.attempts);
                }
                AckOutcome::Unchanged(same) => prop_assert_eq!(same, r),
                AckOutcome::Unknown => prop_assert!(false, "own command unknown"),
            }
        }

        /// WS-DLV-3/4/7: a claim takes only live commands with attempts
        /// left, counts one more attempt, never moves progress back, and
        /// times the next attempt by the backoff.
        #[test]
        fn claims_count_attempts(r in any_row(), claim in any_claim(), now in 0i64..100_000) {
            let taken = super::claim([r.clone()], &claim, now, &POLICY);
            prop_assert!(taken.len() <= 1);
            if let Some(t) = taken.first() {
                prop_assert!(!r.status.is_final());
                prop_assert!(r.expires_at.is_none_or(|e| e > now));
                prop_assert!(r.attempts < POLICY.max_attempts);
                prop_assert_eq!(t.attempts, r.attempts + 1);
                prop_assert_eq!(t.status, if r.status == Status::Queued { Status::Sent } else { r.status });
                prop_assert_eq!(t.next_attempt_at, Some(POLICY.next_attempt_at(now, t.attempts)));
                prop_assert_eq!(t.ack_deadline, Some(now + POLICY.ack_timeout_ms));
                if matches!(claim, Claim::Http { .. }) {
                    prop_assert_eq!((t.conn_id, t.delivered_via), (None, Some(Channel::Http)));
                    prop_assert!(matches!(r.status, Status::Queued | Status::Sent));
                }
            }
        }

        /// WS-DLV-7, WS-DLV-3: the sweeper only ends live commands: expired
        /// past their TTL, dead only from `sent` with no attempts left.
        #[test]
        fn the_sweeper_ends_only_live_commands(r in any_row(), now in 0i64..100_000) {
            let mut r = r;
            r.ack_deadline = Some(40_000);
            match swept(&r, now, &POLICY) {
                None => {}
                Some(Status::Expired) => prop_assert!(!r.status.is_final() && r.expires_at.is_some_and(|e| e <= now)),
                Some(Status::Dead) => prop_assert!(r.status == Status::Sent && r.attempts >= POLICY.max_attempts && now >= 40_000),
                Some(other) => prop_assert!(false, "swept to {other:?}"),
            }
        }
    }

    fn rules_ack(r: &CommandRow, agent: &str, ack: &AckKind, now: Millis) -> AckOutcome {
        super::ack(Some(r.clone()), agent, ack, now)
    }

    #[test]
    fn inserts_refuse_in_the_order_the_contract_gives() {
        let cmd = NewCommand {
            id: "c1".into(),
            agent_id: "a1".into(),
            command_type: "t".into(),
            parameters: RawJson::parse("{}".to_string()).unwrap(),
            priority: Priority::High,
            created_at: 7,
            expires_at: None,
        };
        let outcome = |known, existing: Option<&CommandRow>, pending| match insert(
            &cmd,
            Some(9),
            known,
            existing,
            pending,
            &POLICY,
        ) {
            InsertDecision::Refuse(o) => format!("{o:?}").split('(').next().unwrap().to_string(),
            InsertDecision::Create(r) => {
                format!("Create {:?} {} {:?}", r.status, r.attempts, r.conn_id)
            }
        };
        let mine = row(Status::Completed, 1, None, None);
        let mut theirs = mine.clone();
        theirs.agent_id = "a2".into();
        assert_eq!(outcome(false, None, 0), "UnknownAgent");
        // WS-API-2: a repeat is answered even when the queue is full.
        assert_eq!(outcome(true, Some(&mine), 99), "Existing");
        assert_eq!(outcome(true, Some(&theirs), 0), "Conflict");
        assert_eq!(outcome(true, None, 5), "QueueFull");
        assert_eq!(outcome(true, None, 4), "Create Sent 1 Some(9)");
    }
}
