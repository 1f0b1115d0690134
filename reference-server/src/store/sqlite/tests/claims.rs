//! Claims: all pending on connect, one, redelivery, HTTP sync.

use super::{ids, insert, new_cmd, policy, setup, status_of, T0};
use crate::store::{AckKind, Channel, Claim, InsertOutcome, Priority, Status, Store};

#[tokio::test]
async fn claim_all_pending_order_and_skips() {
    let (_dir, store) = setup().await;
    insert(&store, new_cmd("low1", "a1", Priority::Low, T0)).await;
    insert(&store, new_cmd("n1", "a1", Priority::Normal, T0)).await;
    insert(&store, new_cmd("h1", "a1", Priority::High, T0)).await;
    insert(&store, new_cmd("n2", "a1", Priority::Normal, T0)).await;
    insert(&store, new_cmd("h2", "a1", Priority::High, T0)).await;
    insert(&store, new_cmd("low2", "a1", Priority::Low, T0)).await;
    insert(&store, new_cmd("other", "a2", Priority::High, T0)).await;
    let mut exp = new_cmd("expired", "a1", Priority::High, T0);
    exp.expires_at = Some(T0 + 500);
    insert(&store, exp).await;
    insert(&store, new_cmd("done", "a1", Priority::High, T0)).await;
    store
        .ack("a1", "done", AckKind::Failed { error: None }, T0)
        .await
        .unwrap();
    insert(&store, new_cmd("working", "a1", Priority::Normal, T0)).await;
    store
        .ack("a1", "working", AckKind::Executing, T0)
        .await
        .unwrap();

    let now = T0 + 1_000;
    let got = store
        .claim(
            Claim::AllPending {
                agent_id: "a1".into(),
                conn: 5,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&got),
        ["h1", "h2", "n1", "n2", "working", "low1", "low2"]
    );
    for row in &got {
        assert_eq!(row.attempts, 1);
        assert_eq!(row.sent_at, Some(now));
        assert_eq!(row.ack_deadline, Some(now + 30_000));
        assert_eq!(row.next_attempt_at, Some(policy().next_attempt_at(now, 1)));
        assert_eq!(row.delivered_via, Some(Channel::Ws));
        assert_eq!(row.conn_id, Some(5));
        assert_eq!(store.command(&row.id).await.unwrap().as_ref(), Some(row));
    }
    // Progress is kept; queued became sent.
    assert_eq!(got[4].status, Status::Executing);
    assert!(got
        .iter()
        .filter(|r| r.id != "working")
        .all(|r| r.status == Status::Sent));
    assert_eq!(status_of(&store, "expired").await, Status::Queued);

    // Two more reconnects use up max_attempts (3); then nothing is claimed.
    let got = store
        .claim(
            Claim::AllPending {
                agent_id: "a1".into(),
                conn: 6,
            },
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(|r| r.attempts == 2 && r.conn_id == Some(6)));
    assert_eq!(
        got[0].next_attempt_at,
        Some(policy().next_attempt_at(now + 1, 2))
    );
    let got = store
        .claim(
            Claim::AllPending {
                agent_id: "a1".into(),
                conn: 7,
            },
            now + 2,
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 7);
    assert!(got.iter().all(|r| r.attempts == 3));
    let got = store
        .claim(
            Claim::AllPending {
                agent_id: "a1".into(),
                conn: 8,
            },
            now + 3,
        )
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "exhausted commands claimed: {:?}",
        ids(&got)
    );
    // The exhausted `executing` one keeps its state (WS-DLV-4).
    assert_eq!(status_of(&store, "working").await, Status::Executing);
}

#[tokio::test]
async fn claim_redeliver_and_one() {
    let (_dir, store) = setup().await;
    let c = match store
        .insert_command(new_cmd("c1", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap()
    {
        InsertOutcome::Created(row) => row,
        other => panic!("{other:?}"),
    };
    assert_eq!((c.attempts, c.conn_id), (1, Some(1)));
    let later = T0 + 40_000;
    let redeliver = |conn, attempt| Claim::Redeliver {
        command_id: "c1".into(),
        conn,
        attempt,
    };
    // Wrong attempt or wrong connection: nothing.
    assert!(store
        .claim(redeliver(1, 2), later)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim(redeliver(2, 1), later)
        .await
        .unwrap()
        .is_empty());
    let got = store.claim(redeliver(1, 1), later).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].attempts, got[0].status), (2, Status::Sent));
    assert_eq!(got[0].sent_at, Some(later));
    assert_eq!(
        got[0].next_attempt_at,
        Some(policy().next_attempt_at(later, 2))
    );
    // The same redelivery again is stale now.
    assert!(store
        .claim(redeliver(1, 1), later)
        .await
        .unwrap()
        .is_empty());

    // One: not to the connection that already has it.
    let one = |conn| Claim::One {
        command_id: "c1".into(),
        conn,
    };
    assert!(store.claim(one(1), later).await.unwrap().is_empty());
    let got = store.claim(one(2), later + 1).await.unwrap();
    assert_eq!((got[0].attempts, got[0].conn_id), (3, Some(2)));
    // Attempts are used up (max 3): neither One nor Redeliver claims it.
    assert!(store.claim(one(3), later + 2).await.unwrap().is_empty());
    assert!(store
        .claim(redeliver(2, 3), later + 2)
        .await
        .unwrap()
        .is_empty());

    // Redeliver only while `sent`: a progress ack stops it.
    store
        .insert_command(new_cmd("c2", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap();
    store
        .ack("a1", "c2", AckKind::Received, T0 + 1)
        .await
        .unwrap();
    assert!(store
        .claim(
            Claim::Redeliver {
                command_id: "c2".into(),
                conn: 1,
                attempt: 1
            },
            later
        )
        .await
        .unwrap()
        .is_empty());
    // ... but One (a reconnect race) still re-pushes it on another connection,
    // keeping its progress.
    let got = store
        .claim(
            Claim::One {
                command_id: "c2".into(),
                conn: 9,
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!((got[0].status, got[0].attempts), (Status::Received, 2));

    // One claims a queued command whatever the connection; skips final,
    // expired and unknown ones.
    insert(&store, new_cmd("q", "a1", Priority::Normal, T0)).await;
    let got = store
        .claim(
            Claim::One {
                command_id: "q".into(),
                conn: 1,
            },
            T0,
        )
        .await
        .unwrap();
    assert_eq!((got[0].status, got[0].attempts), (Status::Sent, 1));
    store.ack("a1", "q", AckKind::Completed, T0).await.unwrap();
    assert!(store
        .claim(
            Claim::One {
                command_id: "q".into(),
                conn: 2
            },
            T0
        )
        .await
        .unwrap()
        .is_empty());
    let mut e = new_cmd("e", "a1", Priority::Normal, T0);
    e.expires_at = Some(T0 + 10);
    insert(&store, e).await;
    assert!(store
        .claim(
            Claim::One {
                command_id: "e".into(),
                conn: 2
            },
            T0 + 10
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .claim(
                Claim::One {
                    command_id: "e".into(),
                    conn: 2
                },
                T0 + 9
            )
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .claim(
            Claim::One {
                command_id: "nope".into(),
                conn: 2
            },
            T0
        )
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn claim_http() {
    let (_dir, store) = setup().await;
    let push = |id: &str, p| new_cmd(id, "a1", p, T0);
    insert(&store, push("q_low", Priority::Low)).await;
    store
        .insert_command(push("sent_due", Priority::Normal), Some(1))
        .await
        .unwrap();
    insert(&store, push("q_high", Priority::High)).await;
    store
        .insert_command(push("received", Priority::High), Some(1))
        .await
        .unwrap();
    store
        .ack("a1", "received", AckKind::Received, T0)
        .await
        .unwrap();
    let mut late = push("sent_later", Priority::High);
    late.created_at = T0 + 20_000;
    store.insert_command(late, Some(1)).await.unwrap();

    let due = policy().next_attempt_at(T0, 1);
    // Before anything is due: only the queued ones.
    let got = store
        .claim(
            Claim::Http {
                agent_id: "a1".into(),
            },
            due - 1,
        )
        .await
        .unwrap();
    assert_eq!(ids(&got), ["q_high", "q_low"]);
    for row in &got {
        assert_eq!(row.status, Status::Sent);
        assert_eq!(row.delivered_via, Some(Channel::Http));
        assert_eq!(row.conn_id, None);
        assert_eq!(row.attempts, 1);
    }
    // At the due time: the due `sent` one (not `received`, not the later one).
    let got = store
        .claim(
            Claim::Http {
                agent_id: "a1".into(),
            },
            due,
        )
        .await
        .unwrap();
    assert_eq!(ids(&got), ["sent_due"]);
    assert_eq!(got[0].attempts, 2);
    assert_eq!(got[0].conn_id, None);
    assert_eq!(got[0].delivered_via, Some(Channel::Http));
    assert_eq!(
        got[0].next_attempt_at,
        Some(policy().next_attempt_at(due, 2))
    );
    assert!(store
        .claim(
            Claim::Http {
                agent_id: "a1".into()
            },
            due
        )
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim(
            Claim::Http {
                agent_id: "a2".into()
            },
            due
        )
        .await
        .unwrap()
        .is_empty());
}
