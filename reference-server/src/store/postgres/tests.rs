//! The PostgreSQL store keeps the `Store` contract as the SQLite one does
//! (the same scenarios as `sqlite/tests/`), and keeps it with several
//! instances claiming and acking at once. Each test runs in a fresh schema;
//! without a test database they print why they skip (see `testing.rs`).

use std::collections::HashSet;

use serde_json::json;

use super::testing::schema_for;
use super::PgStore;
use crate::raw_json::RawJson;
use crate::store::{
    AckKind, AckOutcome, Channel, Claim, CommandRow, DeliveryPolicy, InsertOutcome, Millis,
    NewCommand, Priority, RetryOutcome, Status, Store, Swept,
};

const T0: Millis = 1_700_000_000_000;

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        ack_timeout_ms: 30_000,
        max_attempts: 3,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        max_pending: 10_000,
    }
}

/// A store on a fresh schema with agents a1 and a2, or None to skip.
async fn setup(test: &str, policy: DeliveryPolicy) -> Option<(String, PgStore)> {
    let url = schema_for(test).await?;
    let store = PgStore::open(&url, policy).await.expect("open store");
    assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
    assert!(store.upsert_agent("a2", None, T0).await.unwrap());
    Some((url, store))
}

fn new_cmd(id: &str, agent: &str, priority: Priority, at: Millis) -> NewCommand {
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

async fn insert(store: &PgStore, cmd: NewCommand, push_to: Option<i64>) -> CommandRow {
    match store.insert_command(cmd, push_to).await.unwrap() {
        InsertOutcome::Created(row) => row,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn ids(rows: &[CommandRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

async fn status_of(store: &PgStore, id: &str) -> Status {
    store.command(id).await.unwrap().unwrap().status
}

fn all_pending(conn: i64) -> Claim {
    Claim::AllPending {
        agent_id: "a1".into(),
        conn,
    }
}

#[tokio::test]
async fn insert_is_durable_idempotent_and_bounded() {
    let p = DeliveryPolicy {
        max_pending: 2,
        ..policy()
    };
    let Some((url, store)) = setup("insert_is_durable_idempotent_and_bounded", p).await else {
        return;
    };
    assert_eq!(
        store
            .insert_command(new_cmd("x", "ghost", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::UnknownAgent
    );
    let c1 = insert(&store, new_cmd("c1", "a1", Priority::High, T0), None).await;
    assert_eq!(
        (c1.status, c1.attempts, c1.sent_at),
        (Status::Queued, 0, None)
    );
    assert_eq!(
        c1.parameters.as_str(),
        r#"{"to":"+1","text":"c1","n":[1,2.50]}"#
    );
    // WS-DLV-6: what was answered is there for another instance (another pool).
    let other = PgStore::open(&url, p).await.unwrap();
    assert_eq!(other.command("c1").await.unwrap(), Some(c1.clone()));

    // WS-API-2: same id, same agent → the stored one; other agent → conflict.
    let mut again = new_cmd("c1", "a1", Priority::Low, T0 + 99);
    again.parameters = RawJson::parse(r#"{"different":true}"#).unwrap();
    assert_eq!(
        other.insert_command(again, Some(7)).await.unwrap(),
        InsertOutcome::Existing(c1.clone())
    );
    assert_eq!(
        store
            .insert_command(new_cmd("c1", "a2", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Conflict
    );
    // Pushed at once: attempt 1 on that connection.
    let c2 = insert(
        &store,
        new_cmd("c2", "a1", Priority::Normal, T0 + 1),
        Some(42),
    )
    .await;
    assert_eq!(
        (c2.status, c2.attempts, c2.conn_id),
        (Status::Sent, 1, Some(42))
    );
    assert_eq!(c2.ack_deadline, Some(T0 + 1 + 30_000));
    assert_eq!(
        c2.next_attempt_at,
        Some(policy().next_attempt_at(T0 + 1, 1))
    );
    assert_eq!(c2.delivered_via, Some(Channel::Ws));
    assert!(c2.seq > c1.seq);
    // Queue full: refused (from either instance), a repeat still Existing.
    for s in [&store, &other] {
        assert_eq!(
            s.insert_command(new_cmd("c3", "a1", Priority::Normal, T0), None)
                .await
                .unwrap(),
            InsertOutcome::QueueFull
        );
    }
    assert!(matches!(
        store.insert_command(new_cmd("c2", "a1", Priority::Normal, T0), None).await.unwrap(),
        InsertOutcome::Existing(row) if row == c2
    ));
    store
        .ack("a1", "c1", AckKind::Completed, T0 + 2)
        .await
        .unwrap();
    insert(&store, new_cmd("c3", "a1", Priority::Normal, T0), None).await;
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        2
    );
    assert_eq!(
        ids(&store.commands("a1", None, 100).await.unwrap()),
        ["c1", "c2", "c3"]
    );
    assert_eq!(
        ids(&store
            .commands("a1", Some(Status::Completed), 100)
            .await
            .unwrap()),
        ["c1"]
    );
    assert_eq!(store.commands("a1", None, 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_pending_limit_holds_across_instances_at_once() {
    let p = DeliveryPolicy {
        max_pending: 10,
        ..policy()
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

#[tokio::test]
async fn ack_transitions() {
    let Some((_url, store)) = setup("ack_transitions", policy()).await else {
        return;
    };
    insert(&store, new_cmd("c1", "a1", Priority::Normal, T0), Some(1)).await;
    assert_eq!(
        store.ack("a2", "c1", AckKind::Completed, T0).await.unwrap(),
        AckOutcome::Unknown
    );
    assert_eq!(
        store
            .ack("a1", "nope", AckKind::Completed, T0)
            .await
            .unwrap(),
        AckOutcome::Unknown
    );
    match store
        .ack("a1", "c1", AckKind::Received, T0 + 1)
        .await
        .unwrap()
    {
        AckOutcome::Updated { before, command } => {
            assert_eq!((before, command.status), (Status::Sent, Status::Received));
            assert_eq!(command.acked_at, Some(T0 + 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.ack("a1", "c1", AckKind::Received, T0 + 2).await.unwrap(),
        AckOutcome::Unchanged(row) if row.acked_at == Some(T0 + 1)
    ));
    assert!(matches!(
        store
            .ack("a1", "c1", AckKind::Executing, T0 + 3)
            .await
            .unwrap(),
        AckOutcome::Updated {
            before: Status::Received,
            ..
        }
    ));
    assert!(matches!(
        store.ack("a1", "c1", AckKind::Received, T0 + 4).await.unwrap(),
        AckOutcome::Unchanged(row) if row.status == Status::Executing
    ));
    let failed = AckKind::Failed {
        error: Some("boom".into()),
    };
    match store.ack("a1", "c1", failed, T0 + 5).await.unwrap() {
        AckOutcome::Updated { command, .. } => {
            assert_eq!(command.status, Status::Failed);
            assert_eq!(command.error.as_deref(), Some("boom"));
            assert_eq!(command.completed_at, Some(T0 + 5));
        }
        other => panic!("{other:?}"),
    }
    // WS-ACK-3: final never changes.
    for kind in [AckKind::Completed, AckKind::Received] {
        assert!(matches!(
            store.ack("a1", "c1", kind, T0 + 6).await.unwrap(),
            AckOutcome::Unchanged(row) if row.status == Status::Failed && row.completed_at == Some(T0 + 5)
        ));
    }
}

#[tokio::test]
async fn claims_order_redelivery_one_and_http() {
    let Some((_url, store)) = setup("claims_order_redelivery_one_and_http", policy()).await else {
        return;
    };
    for (id, p) in [
        ("low1", Priority::Low),
        ("n1", Priority::Normal),
        ("h1", Priority::High),
        ("n2", Priority::Normal),
        ("h2", Priority::High),
    ] {
        insert(&store, new_cmd(id, "a1", p, T0), None).await;
    }
    insert(&store, new_cmd("other", "a2", Priority::High, T0), None).await;
    let mut exp = new_cmd("expired", "a1", Priority::High, T0);
    exp.expires_at = Some(T0 + 500);
    insert(&store, exp, None).await;
    insert(&store, new_cmd("working", "a1", Priority::Normal, T0), None).await;
    store
        .ack("a1", "working", AckKind::Executing, T0)
        .await
        .unwrap();

    // WS-DLV-4: priority then FIFO; progress kept; expired left out.
    let now = T0 + 1_000;
    let got = store.claim(all_pending(5), now).await.unwrap();
    assert_eq!(ids(&got), ["h1", "h2", "n1", "n2", "working", "low1"]);
    for row in &got {
        assert_eq!(
            (row.attempts, row.sent_at, row.conn_id),
            (1, Some(now), Some(5))
        );
        assert_eq!(row.next_attempt_at, Some(policy().next_attempt_at(now, 1)));
        assert_eq!(store.command(&row.id).await.unwrap().as_ref(), Some(row));
    }
    assert_eq!(got[4].status, Status::Executing);
    assert_eq!(status_of(&store, "expired").await, Status::Queued);
    // The same connection again: nothing (already pushed there).
    assert!(store.claim(all_pending(5), now).await.unwrap().is_empty());
    let got = store.claim(all_pending(6), now + 1).await.unwrap();
    assert!(got.iter().all(|r| r.attempts == 2 && r.conn_id == Some(6)));
    assert_eq!(
        got[0].next_attempt_at,
        Some(policy().next_attempt_at(now + 1, 2))
    );

    // WS-DLV-3: redelivery only at the right attempt on the right connection.
    let redeliver = |conn, attempt| Claim::Redeliver {
        command_id: "h1".into(),
        conn,
        attempt,
    };
    assert!(store
        .claim(redeliver(5, 2), now + 2)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim(redeliver(6, 1), now + 2)
        .await
        .unwrap()
        .is_empty());
    let got = store.claim(redeliver(6, 2), now + 2).await.unwrap();
    assert_eq!((got[0].attempts, got[0].status), (3, Status::Sent));
    // Attempts used up (max 3).
    assert!(store
        .claim(redeliver(6, 3), now + 3)
        .await
        .unwrap()
        .is_empty());
    let one = |id: &str, conn| Claim::One {
        command_id: id.into(),
        conn,
    };
    assert!(store.claim(one("h1", 7), now + 3).await.unwrap().is_empty());
    assert!(store.claim(one("n1", 6), now + 3).await.unwrap().is_empty());
    assert_eq!(
        store.claim(one("n1", 7), now + 3).await.unwrap()[0].attempts,
        3
    );

    // WS-DLV-5: queued ones, and sent ones once due; via http, no connection.
    insert(&store, new_cmd("q", "a2", Priority::Low, T0), None).await;
    let http = || Claim::Http {
        agent_id: "a2".into(),
    };
    let got = store.claim(http(), T0).await.unwrap();
    assert_eq!(ids(&got), ["other", "q"]);
    assert!(got
        .iter()
        .all(|r| r.delivered_via == Some(Channel::Http) && r.conn_id.is_none()));
    let due = policy().next_attempt_at(T0, 1);
    assert!(store.claim(http(), due - 1).await.unwrap().is_empty());
    assert_eq!(store.claim(http(), due).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sweep_expired_and_dead_then_retry() {
    let p = DeliveryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let Some((_url, store)) = setup("sweep_expired_and_dead_then_retry", p).await else {
        return;
    };
    let mut ttl = new_cmd("ttl", "a1", Priority::Normal, T0);
    ttl.expires_at = Some(T0 + 5_000);
    insert(&store, ttl, None).await;
    insert(
        &store,
        new_cmd("doomed", "a1", Priority::Normal, T0),
        Some(1),
    )
    .await;
    let redeliver = Claim::Redeliver {
        command_id: "doomed".into(),
        conn: 1,
        attempt: 1,
    };
    assert_eq!(store.claim(redeliver, T0 + 31_000).await.unwrap().len(), 1);
    insert(&store, new_cmd("busy", "a1", Priority::Normal, T0), Some(1)).await;
    store
        .ack("a1", "busy", AckKind::Received, T0 + 1)
        .await
        .unwrap();

    assert!(store.sweep(T0 + 4_999).await.unwrap().is_empty());
    assert_eq!(
        store.sweep(T0 + 5_000).await.unwrap(),
        vec![Swept {
            command_id: "ttl".into(),
            agent_id: "a1".into(),
            status: Status::Expired
        }]
    );
    assert!(store.sweep(T0 + 60_999).await.unwrap().is_empty());
    let swept = store.sweep(T0 + 61_000).await.unwrap();
    assert_eq!(ids_of(&swept), ["doomed"]);
    assert_eq!(swept[0].status, Status::Dead);
    assert_eq!(status_of(&store, "busy").await, Status::Received);
    assert!(store.sweep(T0 + 61_000).await.unwrap().is_empty());

    for id in ["doomed", "ttl"] {
        match store.retry(id, T0 + 70_000).await.unwrap() {
            RetryOutcome::Requeued(row) => {
                assert_eq!((row.status, row.attempts), (Status::Queued, 0));
                assert_eq!(
                    (row.expires_at, row.conn_id, row.completed_at),
                    (None, None, None)
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        store.retry("busy", T0).await.unwrap(),
        RetryOutcome::NotRetryable(row) if row.status == Status::Received
    ));
    assert_eq!(
        store.retry("nope", T0).await.unwrap(),
        RetryOutcome::Unknown
    );
    assert_eq!(
        store.status_counts().await.unwrap(),
        vec![(Status::Queued, 2), (Status::Received, 1)]
    );
}

fn ids_of(swept: &[Swept]) -> Vec<&str> {
    swept.iter().map(|s| s.command_id.as_str()).collect()
}

#[tokio::test]
async fn agents_history_and_events() {
    let Some((_url, store)) = setup("agents_history_and_events", policy()).await else {
        return;
    };
    assert!(!store.upsert_agent("a1", None, T0 + 5).await.unwrap());
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(
        (a1.user_phone.as_deref(), a1.created_at),
        (Some("+100"), T0)
    );
    store
        .upsert_agent("a1", Some("+200"), T0 + 6)
        .await
        .unwrap();
    assert_eq!(
        store
            .agent("a1")
            .await
            .unwrap()
            .unwrap()
            .user_phone
            .as_deref(),
        Some("+200")
    );
    let status = RawJson::parse(r#"{"uptime_seconds":12,"mem_mb":1.50}"#).unwrap();
    store.set_agent_status("a1", &status, T0 + 7).await.unwrap();
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!((a1.last_status, a1.last_seen), (Some(status), Some(T0 + 7)));
    assert!(store.agent("nobody").await.unwrap().is_none());
    assert_eq!(store.agents().await.unwrap().len(), 2);

    assert!(!store
        .record_connect("a1", 1, "10.0.0.1:5", T0 + 10)
        .await
        .unwrap());
    store
        .record_disconnect("a1", 1, "replaced", T0 + 20)
        .await
        .unwrap();
    assert!(store
        .record_connect("a1", 2, "10.0.0.2:5", T0 + 30)
        .await
        .unwrap());
    let h = store.history("a1", 10).await.unwrap();
    assert_eq!((h[0].conn, h[0].disconnected_at), (2, None));
    assert_eq!((h[1].conn, h[1].disconnected_at), (1, Some(T0 + 20)));
    assert_eq!(h[1].reason.as_deref(), Some("replaced"));
    for i in 0..60 {
        store
            .record_connect("a1", 100 + i, "x", T0 + 100 + i)
            .await
            .unwrap();
    }
    let h = store.history("a1", 1_000).await.unwrap();
    assert_eq!((h.len(), h[0].conn, h[49].conn), (50, 159, 110));

    let d = json!({"k": 1});
    assert!(store.record_event("a1", "e1", "t", &d, T0).await.unwrap());
    assert!(!store
        .record_event("a1", "e1", "t", &d, T0 + 1)
        .await
        .unwrap());
    assert!(store.record_event("a2", "e1", "t", &d, T0).await.unwrap());
}

/// Two instances claiming the same agent's commands at once, over and over:
/// every attempt of every command goes to exactly one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_two_instances_never_share_an_attempt() {
    let p = DeliveryPolicy {
        max_attempts: 1_000,
        ..policy()
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
    let Some((url, a)) = setup(test, policy()).await else {
        return;
    };
    let b = PgStore::open(&url, policy()).await.unwrap();
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

/// Several instances starting at once migrate the schema exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_when_instances_start_at_once() {
    let Some(url) = schema_for("migrations_are_safe_when_instances_start_at_once").await else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url, policy()).await })
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
    PgStore::open(&url, policy()).await.unwrap();
    let again = stores[0]
        .db()
        .query("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(again[0].get::<_, i64>(0), expected.len() as i64);
}
