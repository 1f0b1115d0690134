//! The sweeper (TTL → `expired`, attempts → `dead`), retry, and the
//! trigger-kept counts.

use rusqlite::Connection;

use super::{ids, insert, new_cmd, open_with, policy, status_of, T0};
use crate::store::sqlite::rows::status_col;
use crate::store::{
    AckKind, AckOutcome, Claim, DeliveryPolicy, Priority, RetryOutcome, Status, Store, Swept,
};

#[tokio::test]
async fn sweep_expired_and_dead_then_retry() {
    let dir = tempfile::tempdir().unwrap();
    let p = DeliveryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let store = open_with(&dir, p);
    store.upsert_agent("a1", None, T0).await.unwrap();

    let mut ttl = new_cmd("ttl", "a1", Priority::Normal, T0);
    ttl.expires_at = Some(T0 + 5_000);
    insert(&store, ttl).await;
    let mut ttl_done = new_cmd("ttl_done", "a1", Priority::Normal, T0);
    ttl_done.expires_at = Some(T0 + 5_000);
    insert(&store, ttl_done).await;
    store
        .ack("a1", "ttl_done", AckKind::Completed, T0)
        .await
        .unwrap();
    let mut ttl_exec = new_cmd("ttl_exec", "a1", Priority::Normal, T0);
    ttl_exec.expires_at = Some(T0 + 6_000);
    insert(&store, ttl_exec).await;
    store
        .ack("a1", "ttl_exec", AckKind::Executing, T0)
        .await
        .unwrap();
    // Pushed twice (max 2), never acked.
    store
        .insert_command(new_cmd("doomed", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap();
    store
        .claim(
            Claim::Redeliver {
                command_id: "doomed".into(),
                conn: 1,
                attempt: 1,
            },
            T0 + 31_000,
        )
        .await
        .unwrap();
    // Pushed twice but received: never dead.
    store
        .insert_command(new_cmd("busy", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap();
    store
        .claim(
            Claim::One {
                command_id: "busy".into(),
                conn: 2,
            },
            T0 + 31_000,
        )
        .await
        .unwrap();
    store
        .ack("a1", "busy", AckKind::Received, T0 + 31_001)
        .await
        .unwrap();
    // Pushed once, not acked: still has an attempt left.
    store
        .insert_command(new_cmd("waiting", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap();

    assert!(store.sweep(T0 + 4_999).await.unwrap().is_empty());
    let swept = store.sweep(T0 + 5_000).await.unwrap();
    assert_eq!(
        swept,
        vec![Swept {
            command_id: "ttl".into(),
            agent_id: "a1".into(),
            status: Status::Expired
        }]
    );
    let row = store.command("ttl").await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.completed_at),
        (Status::Expired, Some(T0 + 5_000))
    );
    assert_eq!(status_of(&store, "ttl_done").await, Status::Completed);

    // doomed's last deadline: T0 + 31_000 + 30_000.
    let mut swept = store.sweep(T0 + 61_000).await.unwrap();
    swept.sort_by(|a, b| a.command_id.cmp(&b.command_id));
    assert_eq!(
        swept,
        vec![
            Swept {
                command_id: "doomed".into(),
                agent_id: "a1".into(),
                status: Status::Dead
            },
            Swept {
                command_id: "ttl_exec".into(),
                agent_id: "a1".into(),
                status: Status::Expired
            },
        ]
    );
    let doomed = store.command("doomed").await.unwrap().unwrap();
    assert_eq!(
        (doomed.status, doomed.completed_at),
        (Status::Dead, Some(T0 + 61_000))
    );
    assert_eq!(status_of(&store, "busy").await, Status::Received);
    assert_eq!(status_of(&store, "waiting").await, Status::Sent);
    assert!(store.sweep(T0 + 61_000).await.unwrap().is_empty());
    assert!(matches!(
        store
            .ack("a1", "doomed", AckKind::Completed, T0 + 62_000)
            .await
            .unwrap(),
        AckOutcome::Unchanged(_)
    ));
    assert_eq!(status_of(&store, "doomed").await, Status::Dead);

    // Retry: dead/expired go back to queued, fresh.
    for id in ["doomed", "ttl"] {
        match store.retry(id, T0 + 70_000).await.unwrap() {
            RetryOutcome::Requeued(row) => {
                assert_eq!(row.status, Status::Queued);
                assert_eq!(row.attempts, 0);
                assert_eq!(row.expires_at, None);
                assert_eq!(row.sent_at, None);
                assert_eq!(row.ack_deadline, None);
                assert_eq!(row.next_attempt_at, None);
                assert_eq!(row.conn_id, None);
                assert_eq!(row.completed_at, None);
                assert_eq!(row.error, None);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        store.retry("ttl_done", T0).await.unwrap(),
        RetryOutcome::NotRetryable(row) if row.status == Status::Completed
    ));
    assert!(matches!(
        store.retry("busy", T0).await.unwrap(),
        RetryOutcome::NotRetryable(row) if row.status == Status::Received
    ));
    assert_eq!(
        store.retry("nope", T0).await.unwrap(),
        RetryOutcome::Unknown
    );
    // The requeued ones are claimable again and no longer expire.
    let got = store
        .claim(
            Claim::AllPending {
                agent_id: "a1".into(),
                conn: 3,
            },
            T0 + 80_000,
        )
        .await
        .unwrap();
    assert!(ids(&got).contains(&"doomed") && ids(&got).contains(&"ttl"));
    assert!(store.sweep(T0 + 80_000).await.unwrap().is_empty());

    // Counts kept by triggers match a real GROUP BY.
    let counts = store.status_counts().await.unwrap();
    let conn = Connection::open(dir.path().join("edge.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT status, COUNT(*) FROM commands GROUP BY status")
        .unwrap();
    let mut expected: Vec<(Status, u64)> = stmt
        .query_map([], |r| Ok((status_col(r, 0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    expected.sort_by_key(|(s, _)| Status::ALL.iter().position(|x| x == s));
    assert_eq!(counts, expected);
    assert!(counts.contains(&(Status::Completed, 1)));
}
