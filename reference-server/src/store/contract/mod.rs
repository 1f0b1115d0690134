//! The [`Store`] contract: one set of tests that every store passes, run
//! against SQLite (a temporary file) and PostgreSQL (a fresh schema per
//! test), so the two cannot drift. A store-specific test (SQLite's writer
//! thread and schema, PostgreSQL's instances racing on one database) stays
//! with its store.
//!
//! Each contract test is an `async fn rule_name(store: &dyn Store)` that gets
//! a freshly opened, empty store, named after the rule it keeps; time is
//! simulated (`now` is a parameter of the store), so nothing sleeps.
//!
//! - `commands.rs`: insert (idempotency, conflicts, the pending limit), lists.
//! - `acks.rs`: WS-ACK-2 progress and final acks, WS-ACK-3.
//! - `delivery.rs`: claims (WS-DLV-3, -4, -5, -7).
//! - `sweep.rs`: TTL expiry, dead after `max_attempts`, retry, counts.
//! - `agents.rs`: agents, status, connection history, sync events.
//!
//! To add a contract test: write it in the file of its concern and list it
//! in [`contract_tests!`] with the policy its store is opened with; it then
//! runs for every store (`cargo nextest run -p edge-server store::contract::`).
//! To add a store: a module below with an `open` like theirs and one line
//! `contract_tests!(open);`.
//!
//! PostgreSQL tests need `EDGE_TEST_DATABASE_URL`; without it they print why
//! they skip and pass, and under CI they fail (`postgres/testing.rs`).

mod acks;
mod agents;
mod commands;
mod delivery;
mod sweep;

use crate::raw_json::RawJson;
use crate::store::{
    Claim, CommandRow, ConnId, DeliveryPolicy, InsertOutcome, Millis, NewCommand, Priority, Status,
    Store,
};

/// The tests' time zero (every store test counts from it).
pub(in crate::store) const T0: Millis = 1_700_000_000_000;

/// The policy most store tests run with: small `max_attempts` so that
/// running out of attempts takes few steps.
pub(in crate::store) const POLICY: DeliveryPolicy = DeliveryPolicy {
    ack_timeout_ms: 30_000,
    max_attempts: 3,
    backoff_base_ms: 1_000,
    backoff_cap_ms: 60_000,
    max_pending: 10_000,
};

/// PROTOCOL.md's defaults, for tests of the numbers.
const DEFAULTS: DeliveryPolicy = DeliveryPolicy::PROTOCOL_DEFAULTS;

/// For the pending limit (WS-API-2).
const TWO_PENDING: DeliveryPolicy = DeliveryPolicy {
    max_pending: 2,
    ..POLICY
};

/// For dead after `max_attempts` (WS-DLV-3).
const TWO_ATTEMPTS: DeliveryPolicy = DeliveryPolicy {
    max_attempts: 2,
    ..POLICY
};

/// Every contract test, with the policy its store is opened with. Expands,
/// in the module it is called from, to one `#[tokio::test]` per entry that
/// opens a store with `$open(test_name, policy)` (`None`: skip) and runs it.
macro_rules! contract_tests {
    ($open:path) => {
        contract_tests!(@each $open;
            commands::a_command_for_an_unknown_agent_is_refused(POLICY);
            commands::ws_cmd_2_a_new_command_is_stored_queued_with_its_parameters_as_posted(POLICY);
            commands::ws_cmd_2_parameters_keep_escapes_big_numbers_unicode_and_spacing(POLICY);
            commands::ws_api_2_a_repeated_command_id_for_the_same_agent_returns_the_stored_command(POLICY);
            commands::ws_api_2_a_command_id_reused_for_another_agent_conflicts(POLICY);
            commands::ws_dlv_1_a_command_stored_for_a_connection_is_stored_as_its_first_push(POLICY);
            commands::ws_api_2_a_full_queue_refuses_new_commands_but_answers_repeated_ids(TWO_PENDING);
            commands::commands_are_listed_in_insertion_order_filtered_by_state_and_limited(POLICY);

            acks::ws_ack_3_an_ack_for_an_unknown_or_another_agents_command_is_unknown(POLICY);
            acks::ws_ack_2_progress_acks_only_move_forward(POLICY);
            acks::ws_ack_2_a_failed_ack_ends_the_command_with_its_error(POLICY);
            acks::ws_ack_2_a_queued_command_completes_on_its_first_ack(POLICY);
            acks::ws_ack_3_final_state_is_never_changed_by_a_later_ack(POLICY);
            acks::ws_ack_2_an_ack_over_the_socket_that_got_the_push_is_decided_as_any_ack(POLICY);

            delivery::ws_dlv_4_a_reconnect_claims_every_pending_command_by_priority_then_fifo(POLICY);
            delivery::ws_dlv_4_a_reconnect_leaves_out_what_this_connection_already_has(POLICY);
            delivery::ws_dlv_4_reconnects_stop_at_max_attempts_and_work_in_progress_keeps_its_state(POLICY);
            delivery::ws_dlv_3_a_redelivery_is_claimed_only_at_its_attempt_on_its_connection(POLICY);
            delivery::ws_dlv_3_no_claim_goes_past_max_attempts(POLICY);
            delivery::ws_dlv_3_each_attempt_is_due_an_ack_timeout_and_a_doubling_backoff_capped_at_60_s_after_the_last(DEFAULTS);
            delivery::ws_ack_2_a_progress_ack_stops_redelivery_but_not_a_push_to_a_new_connection(POLICY);
            delivery::claim_one_pushes_a_command_once_per_connection_and_never_a_final_one(POLICY);
            delivery::ws_dlv_7_a_command_past_its_ttl_is_never_claimed(POLICY);
            delivery::ws_dlv_5_http_sync_takes_queued_commands_then_sent_ones_once_due(POLICY);

            sweep::ws_dlv_7_ttl_expires_a_command_in_any_non_final_state(POLICY);
            sweep::ws_dlv_3_dead_when_the_ack_timeout_of_the_last_attempt_passes(TWO_ATTEMPTS);
            sweep::ws_api_4_retry_requeues_dead_and_expired_commands_from_scratch(TWO_ATTEMPTS);
            sweep::ws_api_4_retry_refuses_commands_that_are_not_dead_or_expired(POLICY);
            sweep::status_counts_match_the_commands_in_each_state(TWO_ATTEMPTS);

            agents::upsert_agent_creates_once_and_replaces_the_phone_only_when_given(POLICY);
            agents::ws_status_1_the_last_status_is_stored_as_sent_and_counts_as_seen(POLICY);
            agents::agents_are_listed_by_id_with_their_pending_commands(POLICY);
            agents::ws_conn_6_history_is_newest_first_with_connect_and_disconnect_times(POLICY);
            agents::ws_conn_6_history_keeps_the_newest_50_connections(POLICY);
            agents::ws_http_1_a_sync_event_is_stored_once_per_agent(POLICY);
        );
    };
    (@each $open:path; $($module:ident :: $name:ident ($policy:ident);)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let Some(fresh) = $open(stringify!($name), super::$policy).await else {
                    return;
                };
                super::$module::$name(&*fresh.store).await;
            }
        )*
    };
}

/// A store opened for one test, with whatever must outlive it.
struct Fresh {
    // Dropped first: the SQLite store closes its file before the directory goes.
    store: Box<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

mod sqlite {
    use super::Fresh;
    use crate::store::sqlite::SqliteStore;
    use crate::store::DeliveryPolicy;

    async fn open(_test: &str, policy: DeliveryPolicy) -> Option<Fresh> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("edge.db"), policy).expect("open store");
        Some(Fresh {
            store: Box::new(store),
            _dir: Some(dir),
        })
    }

    contract_tests!(open);
}

mod postgres {
    use super::Fresh;
    use crate::store::postgres::testing::schema_for;
    use crate::store::postgres::PgStore;
    use crate::store::DeliveryPolicy;

    /// A fresh schema, or `None` (printed why) without a test database.
    async fn open(test: &str, policy: DeliveryPolicy) -> Option<Fresh> {
        let url = schema_for(&format!("store::contract::postgres::{test}")).await?;
        let store = PgStore::open(&url, policy).await.expect("open store");
        Some(Fresh {
            store: Box::new(store),
            _dir: None,
        })
    }

    contract_tests!(open);
}

// Fixtures shared by the contract's files.

/// Agents `a1` (phone `+100`) and `a2`, created at `T0`.
async fn two_agents(store: &dyn Store) {
    assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
    assert!(store.upsert_agent("a2", None, T0).await.unwrap());
}

/// A command as the control API would store it (shared by the per-store tests).
pub(in crate::store) fn new_cmd(
    id: &str,
    agent: &str,
    priority: Priority,
    at: Millis,
) -> NewCommand {
    NewCommand {
        id: id.into(),
        agent_id: agent.into(),
        command_type: "send_message".into(),
        // WS-CMD-2: kept as posted (keys not in order, 2.50 not 2.5).
        parameters: RawJson::parse(format!(r#"{{"to":"+1","text":"{id}","n":[1,2.50]}}"#)).unwrap(),
        priority,
        created_at: at,
        expires_at: None,
    }
}

/// `new_cmd` with a TTL ending at `expires_at`.
fn ttl_cmd(id: &str, agent: &str, at: Millis, expires_at: Millis) -> NewCommand {
    NewCommand {
        expires_at: Some(expires_at),
        ..new_cmd(id, agent, Priority::Normal, at)
    }
}

/// Inserts a command that waits (`queued`).
async fn insert(store: &dyn Store, cmd: NewCommand) -> CommandRow {
    match store.insert_command(cmd, None).await.unwrap() {
        InsertOutcome::Created(row) => row,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Inserts a command stored as pushed to `conn` (attempt 1).
async fn insert_pushed(store: &dyn Store, cmd: NewCommand, conn: ConnId) -> CommandRow {
    match store.insert_command(cmd, Some(conn)).await.unwrap() {
        InsertOutcome::Created(row) => row,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn claim(store: &dyn Store, claim: Claim, now: Millis) -> Vec<CommandRow> {
    store.claim(claim, now).await.unwrap()
}

fn all_pending(agent: &str, conn: ConnId) -> Claim {
    Claim::AllPending {
        agent_id: agent.into(),
        conn,
    }
}

fn one(command: &str, conn: ConnId) -> Claim {
    Claim::One {
        command_id: command.into(),
        conn,
    }
}

fn redeliver(command: &str, conn: ConnId, attempt: u32) -> Claim {
    Claim::Redeliver {
        command_id: command.into(),
        conn,
        attempt,
    }
}

fn http(agent: &str) -> Claim {
    Claim::Http {
        agent_id: agent.into(),
    }
}

fn ids(rows: &[CommandRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

async fn stored(store: &dyn Store, id: &str) -> CommandRow {
    store
        .command(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("command {id} is not stored"))
}

async fn status_of(store: &dyn Store, id: &str) -> Status {
    stored(store, id).await.status
}
