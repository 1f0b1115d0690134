//! What the PostgreSQL store does beyond the `Store` contract (which
//! `store/contract/` tests for every store): several instances on one
//! database see each other's answers, keep one pending limit, never claim one
//! attempt twice, complete a command once, and migrate once. Each test runs
//! in a fresh schema; without a test database they print why they skip (see
//! `testing.rs`).

use std::collections::HashSet;

use super::testing::schema_for;
use super::{Db, PgStore};
use crate::cluster::postgres::STALE;
use crate::raw_json::RawJson;
use crate::store::contract::{new_cmd, POLICY, T0};
use crate::store::{
    AckKind, AckOutcome, Claim, CommandRow, DeliveryPolicy, InsertOutcome, NewCommand, Priority,
    Status, Store,
};
use crate::wire::now_millis;

/// A store on a fresh schema with agents a1 and a2, or None to skip.
async fn setup(test: &str, policy: DeliveryPolicy) -> Option<(String, PgStore)> {
    let url = schema_for(test).await?;
    let store = PgStore::open(&url, policy).await.expect("open store");
    assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
    assert!(store.upsert_agent("a2", None, T0).await.unwrap());
    Some((url, store))
}

async fn insert(store: &PgStore, cmd: NewCommand, push_to: Option<i64>) -> CommandRow {
    match store.insert_command(cmd, push_to).await.unwrap() {
        InsertOutcome::Created(row) => row,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn all_pending(conn: i64) -> Claim {
    Claim::AllPending {
        agent_id: "a1".into(),
        conn,
    }
}

/// WS-DLV-6, WS-API-2 across instances: what one instance answered, another
/// (another pool) sees at once, answers a repeat of, and counts toward the
/// same pending limit.
#[tokio::test]
async fn a_second_instance_sees_answered_commands_and_the_same_pending_limit() {
    let p = DeliveryPolicy {
        max_pending: 2,
        ..POLICY
    };
    let test = "a_second_instance_sees_answered_commands_and_the_same_pending_limit";
    let Some((url, store)) = setup(test, p).await else {
        return;
    };
    let c1 = insert(&store, new_cmd("c1", "a1", Priority::High, T0), None).await;
    let other = PgStore::open(&url, p).await.unwrap();
    assert_eq!(other.command("c1").await.unwrap(), Some(c1.clone()));
    let mut again = new_cmd("c1", "a1", Priority::Low, T0 + 99);
    again.parameters = RawJson::parse(r#"{"different":true}"#).unwrap();
    assert_eq!(
        other.insert_command(again, Some(7)).await.unwrap(),
        InsertOutcome::Existing(c1.clone())
    );
    assert_eq!(
        other
            .insert_command(new_cmd("c1", "a2", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Conflict
    );
    let c2 = insert(
        &other,
        new_cmd("c2", "a1", Priority::Normal, T0 + 1),
        Some(42),
    )
    .await;
    assert!(c2.seq > c1.seq);
    assert_eq!(store.command("c2").await.unwrap(), Some(c2.clone()));
    // Full (two pending, one from each instance): refused by either.
    for s in [&store, &other] {
        assert_eq!(
            s.insert_command(new_cmd("c3", "a1", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::QueueFull
        );
    }
    // A final state reached through one frees a slot for the other.
    store
        .ack("a1", "c1", AckKind::Completed, T0 + 2)
        .await
        .unwrap();
    insert(&other, new_cmd("c3", "a1", Priority::Normal, T0), None).await;
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        2
    );
}

#[tokio::test]
async fn the_pending_limit_holds_across_instances_at_once() {
    let p = DeliveryPolicy {
        max_pending: 10,
        ..POLICY
    };
    let Some((url, a)) = setup("the_pending_limit_holds_across_instances_at_once", p).await else {
        return;
    };
    let b = PgStore::open(&url, p).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.insert_command(new_cmd(&format!("c{i}"), "a1", Priority::Normal, T0), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            InsertOutcome::Created(_) => created += 1,
            InsertOutcome::QueueFull => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(created, 10, "WS-API-2: exactly max_pending accepted");
    assert_eq!(a.agent("a1").await.unwrap().unwrap().pending_commands, 10);
}

/// WS-API-2 across instances, with the agent's lock made visible. A's batch
/// is held after its count: its INSERT waits for another session's
/// uncommitted row with the same id. B's batch for the same agent must then
/// wait for A's (the agent's row lock), not count without A's command:
/// without the lock both count 0 and the agent ends over its limit. (At full
/// speed two batches rarely overlap, so the test above seldom sees it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_another_instances_batch_for_the_same_agent() {
    let p = DeliveryPolicy {
        max_pending: 2,
        ..POLICY
    };
    let test = "a_batch_waits_for_another_instances_batch_for_the_same_agent";
    let Some((url, a)) = setup(test, p).await else {
        return;
    };
    let b = PgStore::open(&url, p).await.unwrap();
    // A's batch counts a1's pending commands (0), then waits at its INSERT.
    let (blocker, a_task, a_pid) = insert_behind_an_uncommitted_twin(&url, &a, "a-0").await;

    // B's batch for a1 meanwhile: it must wait for A's (correct), or it
    // finishes on its own count (no lock).
    let b_tasks: Vec<_> = ["b-0", "b-1"]
        .into_iter()
        .map(|id| {
            let b = b.clone();
            tokio::spawn(async move {
                b.insert_command(new_cmd(id, "a1", Priority::Normal, T0), None)
                    .await
            })
        })
        .collect();
    poll(|| async {
        let b_waits = !blocker
            .query(WAITING_FOR, &[&a_pid])
            .await
            .unwrap()
            .is_empty();
        (b_waits || b_tasks.iter().all(|t| t.is_finished())).then_some(())
    })
    .await;

    blocker.batch_execute("ROLLBACK").await.unwrap();
    let mut created = Vec::new();
    for task in std::iter::once(a_task).chain(b_tasks) {
        if let InsertOutcome::Created(row) = task.await.unwrap().unwrap() {
            created.push(row.id);
        }
    }
    // B's two may reach its writer in either order: one of them is taken.
    assert_eq!(created.len(), 2, "WS-API-2: a limit of 2, got {created:?}");
    assert_eq!(created[0], "a-0", "A's command, held first, is kept");
    assert_eq!(a.agent("a1").await.unwrap().unwrap().pending_commands, 2);
}

/// WS-API-2 across instances: two agents' commands with one id, accepted at
/// once. The batch whose read ran before the other's row committed decides
/// to create, and its insert then finds the id taken (`ON CONFLICT DO
/// NOTHING`): it answers `Conflict`. Answered `Created`, the caller would
/// be told a command was stored that never was.
#[tokio::test]
async fn an_id_another_instance_takes_meanwhile_answers_conflict() {
    let test = "an_id_another_instance_takes_meanwhile_answers_conflict";
    let Some((url, a)) = setup(test, POLICY).await else {
        return;
    };
    // The other instance's insert, not committed yet: A's read cannot see
    // it, and A's insert waits for it.
    let (blocker, a_task, _) = insert_behind_an_uncommitted_twin(&url, &a, "x-0").await;
    blocker.batch_execute("COMMIT").await.unwrap();
    let answer = a_task.await.unwrap().unwrap();
    assert!(matches!(answer, InsertOutcome::Conflict), "{answer:?}");
    let stored = a.command("x-0").await.unwrap().unwrap();
    assert_eq!(stored.agent_id, "a2");
    assert_eq!(a.agent("a1").await.unwrap().unwrap().pending_commands, 0);
}

/// WS-DLV-1 across instances: a socket row left by an instance that stopped
/// beating (kill -9) names no holder. The command waits `queued` for the
/// agent's next connection, not `sent` to a socket nobody holds, where its
/// ack timeout would spend attempts while the agent is away (WS-DLV-3). A
/// live instance's socket is used, so the lookup itself is tested too.
#[tokio::test]
async fn a_socket_of_a_dead_instance_is_not_a_holder() {
    let Some((url, store)) = setup("a_socket_of_a_dead_instance_is_not_a_holder", POLICY).await
    else {
        return;
    };
    let client = session(&url).await;
    // Connection ids carry their instance's tag in the bits above 40.
    let (dead_conn, live_conn) = ((901_i64 << 40) + 1, (902_i64 << 40) + 1);
    let now = now_millis();
    let silent = now - STALE.as_millis() as i64 - 1_000;
    client
        .batch_execute(&format!(
            "INSERT INTO instances (tag, name, started_at, heartbeat_at) \
             VALUES (901, 'dead', 0, {silent}), (902, 'alive', 0, {now}); \
             INSERT INTO agent_sockets (agent_id, instance_tag, conn_id, connected_at, remote_addr) \
             VALUES ('a1', 901, {dead_conn}, 0, '127.0.0.1:1'), \
             ('a2', 902, {live_conn}, 0, '127.0.0.1:2')"
        ))
        .await
        .unwrap();

    let waiting = insert(&store, new_cmd("c1", "a1", Priority::Normal, T0), None).await;
    assert_eq!((waiting.status, waiting.conn_id), (Status::Queued, None));
    let pushed = insert(&store, new_cmd("c2", "a2", Priority::Normal, T0), None).await;
    assert_eq!(
        (pushed.status, pushed.conn_id),
        (Status::Sent, Some(live_conn))
    );
}

/// A session of its own on the test's schema (outside every pool).
async fn session(url: &str) -> tokio_postgres::Client {
    let (client, connection) = Db::new(url).unwrap().connect_raw().await.unwrap();
    tokio::spawn(connection);
    client
}

/// Another instance's batch between its insert of command `id` for a2 and
/// its commit (a session of its own, its transaction left open), and
/// `store`'s insert of the same id for a1, waiting for it at its `INSERT`.
/// Returns that session, the waiting insert, and its backend's pid.
async fn insert_behind_an_uncommitted_twin(
    url: &str,
    store: &PgStore,
    id: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<crate::store::StoreResult<InsertOutcome>>,
    i32,
) {
    let twin = session(url).await;
    twin.batch_execute("BEGIN").await.unwrap();
    twin.execute(
        "INSERT INTO commands (id, agent_id, command_type, parameters, priority, status, \
         created_at) VALUES ($1, 'a2', 'send_message', '{}', 0, 'queued', 0)",
        &[&id],
    )
    .await
    .unwrap();
    let twin_pid: i32 = twin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let insert = tokio::spawn({
        let (store, command) = (store.clone(), new_cmd(id, "a1", Priority::Normal, T0));
        async move { store.insert_command(command, None).await }
    });
    let pid = waiting_for(&twin, twin_pid).await;
    (twin, insert, pid)
}

/// The backends waiting for a lock that backend `$1` holds (`pg_locks` is
/// read live; `pg_stat_activity` would be the snapshot of the asking
/// session's open transaction).
const WAITING_FOR: &str =
    "SELECT l.pid FROM pg_locks l WHERE NOT l.granted AND $1 = ANY(pg_blocking_pids(l.pid))";

/// Waits until a backend waits for a lock `pid` holds; returns its pid.
async fn waiting_for(client: &tokio_postgres::Client, pid: i32) -> i32 {
    poll(|| async {
        let rows = client.query(WAITING_FOR, &[&pid]).await.unwrap();
        rows.first().map(|r| r.get(0))
    })
    .await
}

/// Polls `probe` every 10 ms until it yields a value; fails after 20 s.
async fn poll<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Two instances claiming the same agent's commands at once, over and over:
/// every attempt of every command goes to exactly one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_two_instances_never_share_an_attempt() {
    let p = DeliveryPolicy {
        max_attempts: 1_000,
        ..POLICY
    };
    let test = "concurrent_claims_from_two_instances_never_share_an_attempt";
    let Some((url, a)) = setup(test, p).await else {
        return;
    };
    let b = PgStore::open(&url, p).await.unwrap();
    for i in 0..50 {
        insert(
            &a,
            new_cmd(&format!("c{i:02}"), "a1", Priority::Normal, T0),
            None,
        )
        .await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = if t % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut got = Vec::new();
                for round in 0..5 {
                    let conn = 1_000 + t * 10 + round;
                    for row in s.claim(all_pending(conn), T0 + 1).await.unwrap() {
                        got.push((row.id, row.attempts));
                    }
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        for claimed in t.await.unwrap() {
            assert!(
                seen.insert(claimed.clone()),
                "attempt claimed twice: {claimed:?}"
            );
        }
    }
    // Each command's attempts are 1..=n with no gap, n as stored.
    for i in 0..50 {
        let id = format!("c{i:02}");
        let stored = a.command(&id).await.unwrap().unwrap().attempts;
        assert!(stored >= 1);
        for attempt in 1..=stored {
            assert!(
                seen.contains(&(id.clone(), attempt)),
                "{id} attempt {attempt}"
            );
        }
    }
    assert_eq!(seen.len() as u32, {
        let mut total = 0;
        for i in 0..50 {
            total += a
                .command(&format!("c{i:02}"))
                .await
                .unwrap()
                .unwrap()
                .attempts;
        }
        total
    });

    // A redelivery raced by both instances goes out once.
    let row = insert(&a, new_cmd("r", "a1", Priority::Normal, T0), Some(77)).await;
    let redeliver = || Claim::Redeliver {
        command_id: row.id.clone(),
        conn: 77,
        attempt: 1,
    };
    let (x, y) = tokio::join!(a.claim(redeliver(), T0 + 2), b.claim(redeliver(), T0 + 2));
    assert_eq!(x.unwrap().len() + y.unwrap().len(), 1);
}

/// Completed acks for the same commands through two instances at once: each
/// command completes once; the other ack sees a final state (WS-ACK-3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_from_two_instances_complete_each_command_once() {
    let test = "concurrent_acks_from_two_instances_complete_each_command_once";
    let Some((url, a)) = setup(test, POLICY).await else {
        return;
    };
    let b = PgStore::open(&url, POLICY).await.unwrap();
    for i in 0..100 {
        insert(
            &a,
            new_cmd(&format!("c{i}"), "a1", Priority::Normal, T0),
            Some(1),
        )
        .await;
    }
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                s.ack("a1", &format!("c{}", i / 2), AckKind::Completed, T0 + 1)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut updated, mut unchanged) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            AckOutcome::Updated { before, .. } => {
                assert_eq!(before, Status::Sent);
                updated += 1;
            }
            AckOutcome::Unchanged(row) => {
                assert_eq!(row.status, Status::Completed);
                unchanged += 1;
            }
            AckOutcome::Unknown => panic!("unknown"),
        }
    }
    assert_eq!((updated, unchanged), (100, 100));
}

/// Sends every request before the writer runs (a current-thread runtime runs
/// spawned tasks in order, the writer after them), so they share one batch;
/// returns the answers, and the batches and requests the writer ran.
async fn in_one_batch<T: Send + 'static>(
    store: &PgStore,
    calls: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>>,
) -> (Vec<T>, (u64, u64)) {
    let before = store.stats();
    let tasks: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let after = store.stats();
    (
        answers,
        (after.batches - before.batches, after.ops - before.ops),
    )
}

/// Group commit: one transaction decides each request in arrival order as
/// if it ran alone — a repeat of an id created in the same batch is
/// `Existing`, the pending limit counts the batch's own inserts, an unknown
/// agent is refused, an ack in the batch completes its command.
#[tokio::test]
async fn one_batch_decides_each_request_in_arrival_order() {
    let p = DeliveryPolicy {
        max_pending: 3,
        ..POLICY
    };
    let Some((_, store)) = setup("one_batch_decides_each_request_in_arrival_order", p).await else {
        return;
    };
    let c0 = insert(&store, new_cmd("c0", "a1", Priority::Normal, T0), Some(7)).await;
    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;
    let ins = |id: &str, agent: &str| -> Call {
        let (s, cmd) = (store.clone(), new_cmd(id, agent, Priority::Normal, T0));
        Box::pin(async move { format!("{:?}", s.insert_command(cmd, None).await.unwrap()) })
    };
    let s = store.clone();
    // All keyed by agent a1 (or its commands), so one writer takes them.
    let ack: Call = Box::pin(async move {
        let outcome = s.ack("a1", "c0", AckKind::Completed, T0 + 5).await.unwrap();
        match outcome {
            AckOutcome::Updated { before, command } => format!("{before:?}->{:?}", command.status),
            other => format!("{other:?}"),
        }
    });
    let (answers, ran) = in_one_batch(
        &store,
        vec![
            ins("c1", "a1"),
            ins("c2", "a1"),
            ins("c1", "a1"),
            ack,
            ins("c3", "a1"),
            ins("c4", "a1"),
        ],
    )
    .await;
    assert_eq!(ran, (1, 6), "one batch of six");
    let kind = |a: &String| a.split('(').next().unwrap().to_string();
    assert_eq!(
        answers.iter().map(kind).collect::<Vec<_>>(),
        [
            "Created",
            "Created",
            "Existing",
            "Sent->Completed",
            "Created",
            "QueueFull"
        ],
        "{answers:#?}"
    );
    // The repeat answered the row the batch created, with its seq.
    let c1 = store.command("c1").await.unwrap().unwrap();
    assert!(
        answers[2].contains(&format!("seq: {}", c1.seq)),
        "{}",
        answers[2]
    );
    assert!(c1.seq > c0.seq);
    let stored: Vec<String> = store
        .commands("a1", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}:{}", r.id, r.status.as_str()))
        .collect();
    assert_eq!(
        stored,
        ["c0:completed", "c1:queued", "c2:queued", "c3:queued"]
    );
}

/// Group commit, continued: a retry earlier in the batch counts toward the
/// pending limit of an insert after it (WS-API-4, WS-API-2), and an ack for
/// a command the same batch creates answers as it would have a moment
/// before, when the id was unknown (WS-ACK-3): that command was never
/// pushed.
#[tokio::test]
async fn a_retry_and_an_ack_in_a_batch_count_as_they_would_alone() {
    let test = "a_retry_and_an_ack_in_a_batch_count_as_they_would_alone";
    let p = DeliveryPolicy {
        max_pending: 2,
        ..POLICY
    };
    let Some((_, store)) = setup(test, p).await else {
        return;
    };
    let ttl = NewCommand {
        expires_at: Some(T0 + 1),
        ..new_cmd("c0", "a1", Priority::Normal, T0)
    };
    insert(&store, ttl, None).await;
    assert_eq!(store.sweep(T0 + 2).await.unwrap().len(), 1, "c0 expired");
    insert(&store, new_cmd("c1", "a1", Priority::Normal, T0), None).await;
    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    let retry: Call = Box::pin(async move { format!("{:?}", s1.retry("c0", T0).await.unwrap()) });
    let full: Call = Box::pin(async move {
        let cmd = new_cmd("c2", "a1", Priority::Normal, T0);
        format!("{:?}", s2.insert_command(cmd, None).await.unwrap())
    });
    let other: Call = Box::pin(async move {
        let cmd = new_cmd("c3", "a2", Priority::Normal, T0);
        format!("{:?}", s3.insert_command(cmd, None).await.unwrap())
    });
    let ack: Call = Box::pin(async move {
        format!(
            "{:?}",
            s4.ack("a2", "c3", AckKind::Completed, T0).await.unwrap()
        )
    });
    let (answers, ran) = in_one_batch(&store, vec![retry, full, other, ack]).await;
    assert_eq!(ran, (1, 4), "one batch of four");
    let kind = |a: &String| a.split('(').next().unwrap().to_string();
    assert_eq!(
        answers.iter().map(kind).collect::<Vec<_>>(),
        ["Requeued", "QueueFull", "Created", "Unknown"],
        "{answers:#?}"
    );
    let c3 = store.command("c3").await.unwrap().unwrap();
    assert_eq!(c3.status, Status::Queued);
}

/// A request PostgreSQL refuses (a NUL character in a TEXT column) fails
/// alone: every other request of its batch is stored and answered.
#[tokio::test]
async fn a_failing_request_fails_alone_not_its_batch_mates() {
    let Some((_, store)) = setup("a_failing_request_fails_alone_not_its_batch_mates", POLICY).await
    else {
        return;
    };
    type Call =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<InsertOutcome, String>> + Send>>;
    let calls: Vec<Call> = (0..50)
        .map(|i| {
            let mut cmd = new_cmd(&format!("c{i}"), "a1", Priority::Normal, T0 + i);
            if i == 25 {
                cmd.command_type = "bad\0type".to_string();
            }
            let s = store.clone();
            Box::pin(async move { s.insert_command(cmd, None).await.map_err(|e| e.to_string()) })
                as Call
        })
        .collect();
    let (answers, ran) = in_one_batch(&store, calls).await;
    // The batch of 50, then each of its requests alone.
    assert_eq!(ran, (1 + 50, 50 + 50));
    for (i, answer) in answers.iter().enumerate() {
        match (i, answer) {
            (25, Err(e)) => assert!(e.contains("0x00"), "{e}"),
            (25, other) => panic!("the bad request: {other:?}"),
            (_, Ok(InsertOutcome::Created(row))) => assert_eq!(row.id, format!("c{i}")),
            (_, other) => panic!("c{i}: {other:?}"),
        }
    }
    assert_eq!(store.commands("a1", None, 100).await.unwrap().len(), 49);
}

/// Several instances starting at once migrate the schema exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_when_instances_start_at_once() {
    let Some(url) = schema_for("migrations_are_safe_when_instances_start_at_once").await else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url, POLICY).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every instance starts"));
    }
    let rows = stores[0]
        .db()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let expected: Vec<i64> = (1..=super::schema::MIGRATIONS.len() as i64).collect();
    assert_eq!(versions, expected);
    // And a later start migrates nothing again.
    PgStore::open(&url, POLICY).await.unwrap();
    let again = stores[0]
        .db()
        .query("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(again[0].get::<_, i64>(0), expected.len() as i64);
}

/// The statements run once per command or per sweep find their rows through
/// an index even with the one plan a pooled connection keeps for a statement
/// prepared while the table was small (a generic plan, `SESSION_SETUP`; on
/// an empty table and on 5,000 finished commands not yet analyzed): never a
/// scan of every command ever stored, which grows with the table until the
/// instance falls behind (measured: seconds behind at 1,000 commands/s).
#[tokio::test]
async fn hot_statements_use_their_indexes_whatever_the_table_held_when_planned() {
    use super::{batch, commands, delivery};
    let test = "hot_statements_use_their_indexes_whatever_the_table_held_when_planned";
    let Some((_, store)) = setup(test, POLICY).await else {
        return;
    };
    // (statement, parameters, the indexes its plan must use)
    let statements: [(&str, usize, &[&str]); 10] = [
        (commands::SQL_COMMAND_BY_ID, 1, &["commands_id_key"]),
        (commands::SQL_COMMANDS_BY_IDS, 1, &["commands_id_key"]),
        (commands::SQL_LIST, 3, &["commands_agent"]),
        (batch::SQL_LOCK_AGENTS, 1, &["agents_pkey"]),
        (
            batch::SQL_READ,
            2,
            &["commands_id_key", "commands_pending", "commands_pkey"],
        ),
        (batch::SQL_COUNT_PENDING, 1, &["commands_pending"]),
        (batch::SQL_HOLDERS, 2, &["agent_sockets_pkey"]),
        (batch::SQL_UPDATE, 12, &["commands_pkey"]),
        (
            delivery::SQL_CANDIDATES,
            3,
            &["commands_expiry", "commands_dead"],
        ),
        (
            crate::cluster::postgres::SQL_STRANDED,
            2,
            &["agent_sockets_instance", "commands_pending"],
        ),
    ];
    // A pooled connection, as the store's own statements get one: it plans
    // each statement once, for any parameters (a generic plan). Taken out of
    // the pool: `DEALLOCATE ALL` below would break its statement cache.
    let client = deadpool_postgres::Object::take(store.db().client().await.unwrap());
    let mode = client.query_one("SHOW plan_cache_mode", &[]).await.unwrap();
    assert_eq!(mode.get::<_, String>(0), "force_generic_plan");
    for finished in [0, 5_000] {
        client
            .batch_execute(&format!(
                "INSERT INTO commands (id, agent_id, command_type, parameters, priority, \
                 status, attempts, created_at) SELECT 'old-' || g, 'a1', 't', '{{}}', 1, \
                 'completed', 1, 0 FROM generate_series(1, {finished}) g"
            ))
            .await
            .unwrap();
        for (sql, params, indexes) in statements {
            client
                .batch_execute(&format!("DEALLOCATE ALL; PREPARE hot AS {sql}"))
                .await
                .unwrap();
            let nulls = vec!["NULL"; params].join(", ");
            let plan = explain(&client, &format!("EXECUTE hot({nulls})")).await;
            let at = format!("{sql}\nwith {finished} finished commands");
            assert!(!plan.contains("Seq Scan"), "{at}, scans a table:\n{plan}");
            for index in indexes {
                assert!(plan.contains(index), "{at}, does not use {index}:\n{plan}");
            }
        }
    }
    // A table with no index for the condition is scanned all the same, and
    // its inflated cost must not have it compiled (JIT) on every run.
    let plan = explain(&client, "SELECT tag FROM instances WHERE heartbeat_at < 0").await;
    assert!(!plan.contains("JIT"), "compiled:\n{plan}");
}

/// `EXPLAIN sql`, as text.
async fn explain(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter()
        .map(|row| row.get::<_, String>(0) + "\n")
        .collect()
}

/// `Db::transaction` sends its statements together: one that fails undoes
/// the ones before it and stops the ones after, and the connection goes
/// back to the pool usable (its transaction ended).
#[tokio::test]
async fn a_pipelined_transaction_stores_all_or_nothing() {
    let test = "a_pipelined_transaction_stores_all_or_nothing";
    let Some((_, store)) = setup(test, POLICY).await else {
        return;
    };
    let db = store.db();
    let agent = "INSERT INTO agents (id, created_at) VALUES ($1, 0)";
    let failed = db
        .transaction(&[
            (agent, &[&"before"]),
            ("SELECT 1 / $1::INT", &[&0i32]),
            (agent, &[&"after"]),
        ])
        .await;
    assert!(failed.is_err(), "division by zero must fail: {failed:?}");
    let stored = db
        .transaction(&[
            (agent, &[&"next"]),
            (
                "SELECT id FROM agents WHERE id IN ('before', 'after', 'next') ORDER BY id",
                &[],
            ),
        ])
        .await
        .expect("the pool's connection is usable again");
    let ids: Vec<String> = stored[1].iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["next"]);
}

/// `ack_pushed` writes the ack of a row as pushed in one compare-and-set,
/// and leaves to a batch what that cannot decide: a row another instance
/// acked meanwhile, and the second of two acks of one command sent
/// together, which is decided on what the first left. (Whether the writer
/// gathers the three acks sent together in one go or not, the outcomes and
/// the count are the same.)
#[tokio::test]
async fn an_ack_of_a_row_as_pushed_is_one_compare_and_set_and_the_others_a_batch() {
    let test = "an_ack_of_a_row_as_pushed_is_one_compare_and_set_and_the_others_a_batch";
    let Some((url, store)) = setup(test, POLICY).await else {
        return;
    };
    for id in ["c1", "c2", "c3", "c4"] {
        insert(&store, new_cmd(id, "a1", Priority::Normal, T0), Some(1)).await;
    }
    let other = PgStore::open(&url, POLICY).await.unwrap();
    other
        .ack("a1", "c2", AckKind::Received, T0 + 1)
        .await
        .unwrap();
    let set = |store: &PgStore| store.stats().acks_set_as_pushed;
    let before = |outcome: AckOutcome| match outcome {
        AckOutcome::Updated { before, command } => (before, command.status),
        other => panic!("expected Updated, got {other:?}"),
    };

    let c1 = store.ack_pushed("a1", "c1", AckKind::Completed, T0 + 2);
    assert_eq!(before(c1.await.unwrap()), (Status::Sent, Status::Completed));
    assert_eq!(set(&store), 1);
    let c2 = store.ack_pushed("a1", "c2", AckKind::Completed, T0 + 2);
    assert_eq!(
        before(c2.await.unwrap()),
        (Status::Received, Status::Completed)
    );
    assert_eq!(set(&store), 1, "c2 was acked on the other instance");
    assert_eq!(
        store.command("c2").await.unwrap().unwrap().acked_at,
        Some(T0 + 1)
    );

    let (received, completed, c4) = tokio::join!(
        store.ack_pushed("a1", "c3", AckKind::Received, T0 + 3),
        store.ack_pushed("a1", "c3", AckKind::Completed, T0 + 4),
        store.ack_pushed("a1", "c4", AckKind::Completed, T0 + 3),
    );
    assert_eq!(before(received.unwrap()), (Status::Sent, Status::Received));
    assert_eq!(
        before(completed.unwrap()),
        (Status::Received, Status::Completed)
    );
    assert_eq!(before(c4.unwrap()), (Status::Sent, Status::Completed));
    assert_eq!(set(&store), 3);
    assert_eq!(set(&other), 0);
}
