//! The sweeper (WS-DLV-7: TTL → `expired`; WS-DLV-3: attempts used and the
//! last ack timeout passed → `dead`), retry (WS-API-4), and the counts per
//! state.

use std::collections::BTreeMap;

use super::{
    all_pending, claim, http, ids, insert, insert_pushed, new_cmd, one, redeliver, status_of,
    stored, ttl_cmd, two_agents, T0, TWO_ATTEMPTS,
};
use crate::store::{AckKind, AckOutcome, Priority, RetryOutcome, Status, Store, Swept};

fn swept(id: &str, status: Status) -> Swept {
    Swept {
        command_id: id.into(),
        agent_id: "a1".into(),
        status,
    }
}

/// A sweep's changes in a stable order (a store may report them in any).
async fn sweep(store: &dyn Store, now: i64) -> Vec<Swept> {
    let mut all = store.sweep(now).await.unwrap();
    all.sort_by(|a, b| a.command_id.cmp(&b.command_id));
    all
}

pub(super) async fn ws_dlv_7_ttl_expires_a_command_in_any_non_final_state(store: &dyn Store) {
    two_agents(store).await;
    insert(store, ttl_cmd("ttl", "a1", T0, T0 + 5_000)).await;
    insert_pushed(store, ttl_cmd("ttl_sent", "a1", T0, T0 + 5_000), 1).await;
    insert(store, ttl_cmd("ttl_exec", "a1", T0, T0 + 6_000)).await;
    store
        .ack("a1", "ttl_exec", AckKind::Executing, T0)
        .await
        .unwrap();
    insert(store, ttl_cmd("ttl_done", "a1", T0, T0 + 5_000)).await;
    store
        .ack("a1", "ttl_done", AckKind::Completed, T0)
        .await
        .unwrap();
    insert(store, new_cmd("no_ttl", "a1", Priority::Normal, T0)).await;

    assert!(sweep(store, T0 + 4_999).await.is_empty());
    assert_eq!(
        sweep(store, T0 + 5_000).await,
        [
            swept("ttl", Status::Expired),
            swept("ttl_sent", Status::Expired)
        ]
    );
    let row = stored(store, "ttl").await;
    assert_eq!(
        (row.status, row.completed_at),
        (Status::Expired, Some(T0 + 5_000))
    );
    // A final state is not expired again.
    let done = stored(store, "ttl_done").await;
    assert_eq!(
        (done.status, done.completed_at),
        (Status::Completed, Some(T0))
    );
    // Work in progress expires too.
    assert_eq!(
        sweep(store, T0 + 6_000).await,
        [swept("ttl_exec", Status::Expired)]
    );
    assert!(sweep(store, T0 + 1_000_000).await.is_empty());
    assert_eq!(status_of(store, "no_ttl").await, Status::Queued);
    // Expired is no longer pending (WS-API-2 counts only what is).
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        1
    );

    // WS-ACK-3: `expired` is final.
    let expired = stored(store, "ttl_exec").await;
    assert_eq!(
        store
            .ack("a1", "ttl_exec", AckKind::Completed, T0 + 7_000)
            .await
            .unwrap(),
        AckOutcome::Unchanged(expired.clone())
    );
    assert_eq!(stored(store, "ttl_exec").await, expired);
    // Never sent again.
    let got = claim(store, all_pending("a1", 2), T0 + 7_000).await;
    assert_eq!(ids(&got), ["no_ttl"]);
    assert!(claim(store, one("ttl", 3), T0 + 7_000).await.is_empty());
    assert!(claim(store, http("a1"), T0 + 7_000).await.is_empty());
}

/// Opened with [`TWO_ATTEMPTS`].
pub(super) async fn ws_dlv_3_dead_when_the_ack_timeout_of_the_last_attempt_passes(
    store: &dyn Store,
) {
    assert_eq!(TWO_ATTEMPTS.max_attempts, 2);
    two_agents(store).await;
    // Pushed twice (the last at T0 + 31 s), never acked.
    insert_pushed(store, new_cmd("doomed", "a1", Priority::Normal, T0), 1).await;
    assert_eq!(
        claim(store, redeliver("doomed", 1, 1), T0 + 31_000)
            .await
            .len(),
        1
    );
    // Pushed twice but received: doing work, never dead.
    insert_pushed(store, new_cmd("busy", "a1", Priority::Normal, T0), 1).await;
    assert_eq!(claim(store, one("busy", 2), T0 + 31_000).await.len(), 1);
    store
        .ack("a1", "busy", AckKind::Received, T0 + 31_001)
        .await
        .unwrap();
    // Pushed once, never acked: it has an attempt left.
    insert_pushed(store, new_cmd("waiting", "a1", Priority::Normal, T0), 1).await;

    // doomed's last ack deadline: T0 + 31 s + 30 s.
    assert!(sweep(store, T0 + 60_999).await.is_empty());
    assert_eq!(
        sweep(store, T0 + 61_000).await,
        [swept("doomed", Status::Dead)]
    );
    let dead = stored(store, "doomed").await;
    assert_eq!(
        (dead.status, dead.completed_at, dead.attempts),
        (Status::Dead, Some(T0 + 61_000), 2)
    );
    assert_eq!(status_of(store, "busy").await, Status::Received);
    assert_eq!(status_of(store, "waiting").await, Status::Sent);
    assert!(sweep(store, T0 + 61_000).await.is_empty());
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        2
    );

    // WS-ACK-3: `dead` is final; a late ack changes nothing.
    assert_eq!(
        store
            .ack("a1", "doomed", AckKind::Completed, T0 + 62_000)
            .await
            .unwrap(),
        AckOutcome::Unchanged(dead.clone())
    );
    assert_eq!(stored(store, "doomed").await, dead);
    assert!(claim(store, all_pending("a1", 3), T0 + 62_000)
        .await
        .iter()
        .all(|r| r.id != "doomed"));
}

/// Opened with [`TWO_ATTEMPTS`].
pub(super) async fn ws_api_4_retry_requeues_dead_and_expired_commands_from_scratch(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert_pushed(store, ttl_cmd("ttl", "a1", T0, T0 + 5_000), 1).await;
    insert_pushed(store, new_cmd("doomed", "a1", Priority::Normal, T0), 1).await;
    claim(store, redeliver("doomed", 1, 1), T0 + 1_000).await;
    assert_eq!(
        sweep(store, T0 + 31_000).await,
        [swept("doomed", Status::Dead), swept("ttl", Status::Expired)]
    );
    assert_eq!(
        store.commands("a1", Some(Status::Dead), 10).await.unwrap()[0].id,
        "doomed"
    );

    for id in ["doomed", "ttl"] {
        let before = stored(store, id).await;
        let row = match store.retry(id, T0 + 70_000).await.unwrap() {
            RetryOutcome::Requeued(row) => row,
            other => panic!("{id}: expected Requeued, got {other:?}"),
        };
        assert_eq!((row.status, row.attempts), (Status::Queued, 0), "{id}");
        assert_eq!(row.expires_at, None, "{id}: TTL cleared");
        assert_eq!(
            (row.sent_at, row.ack_deadline, row.next_attempt_at),
            (None, None, None),
            "{id}"
        );
        assert_eq!(
            (row.conn_id, row.completed_at, &row.error),
            (None, None, &None)
        );
        // What it is stays.
        assert_eq!(
            (&row.id, &row.agent_id, row.seq, row.created_at),
            (&before.id, &before.agent_id, before.seq, before.created_at)
        );
        assert_eq!(
            (&row.parameters, row.priority),
            (&before.parameters, before.priority)
        );
        assert_eq!(stored(store, id).await, row);
    }
    // Claimable again, with a full set of attempts, and no longer expiring.
    let got = claim(store, all_pending("a1", 3), T0 + 80_000).await;
    assert_eq!(ids(&got), ["ttl", "doomed"]);
    assert!(got
        .iter()
        .all(|r| r.attempts == 1 && r.status == Status::Sent));
    assert_eq!(
        claim(store, all_pending("a1", 4), T0 + 80_001).await.len(),
        2
    );
    assert!(sweep(store, T0 + 80_001).await.is_empty());
}

pub(super) async fn ws_api_4_retry_refuses_commands_that_are_not_dead_or_expired(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert(store, new_cmd("queued", "a1", Priority::Normal, T0)).await;
    insert_pushed(store, new_cmd("sent", "a1", Priority::Normal, T0), 1).await;
    for (id, ack) in [
        ("received", AckKind::Received),
        ("executing", AckKind::Executing),
        ("completed", AckKind::Completed),
        (
            "failed",
            AckKind::Failed {
                error: Some("boom".into()),
            },
        ),
    ] {
        insert_pushed(store, new_cmd(id, "a1", Priority::Normal, T0), 1).await;
        store.ack("a1", id, ack, T0 + 1).await.unwrap();
    }
    for id in [
        "queued",
        "sent",
        "received",
        "executing",
        "completed",
        "failed",
    ] {
        let before = stored(store, id).await;
        assert_eq!(before.status.as_str(), id);
        assert_eq!(
            store.retry(id, T0 + 2).await.unwrap(),
            RetryOutcome::NotRetryable(before.clone())
        );
        assert_eq!(stored(store, id).await, before);
    }
    assert_eq!(
        store.retry("nope", T0).await.unwrap(),
        RetryOutcome::Unknown
    );
}

/// Opened with [`TWO_ATTEMPTS`].
pub(super) async fn status_counts_match_the_commands_in_each_state(store: &dyn Store) {
    assert!(store.status_counts().await.unwrap().is_empty());
    two_agents(store).await;
    // One or more commands in every state, through every way of getting there.
    insert(store, new_cmd("q1", "a1", Priority::Normal, T0)).await;
    insert(store, new_cmd("q2", "a2", Priority::Normal, T0)).await;
    insert_pushed(store, new_cmd("s", "a1", Priority::Normal, T0), 1).await;
    for (id, ack) in [
        ("r", AckKind::Received),
        ("x", AckKind::Executing),
        ("c1", AckKind::Completed),
        ("c2", AckKind::Completed),
        ("f", AckKind::Failed { error: None }),
    ] {
        insert_pushed(store, new_cmd(id, "a1", Priority::Normal, T0), 1).await;
        store.ack("a1", id, ack, T0 + 1).await.unwrap();
    }
    insert(store, ttl_cmd("e", "a2", T0, T0 + 10)).await;
    insert_pushed(store, new_cmd("d", "a1", Priority::Normal, T0), 1).await;
    claim(store, redeliver("d", 1, 1), T0 + 1).await;
    insert_pushed(store, new_cmd("retried", "a1", Priority::Normal, T0), 1).await;
    claim(store, redeliver("retried", 1, 1), T0 + 1).await;
    // `d` and `retried` die, `e` expires; `s` is at attempt 1 of 2: not dead.
    assert_eq!(sweep(store, T0 + 31_001).await.len(), 3);
    // Queued again (q1, q2 and this one).
    store.retry("retried", T0 + 40_000).await.unwrap();

    let counts = store.status_counts().await.unwrap();
    assert_eq!(
        counts,
        [
            (Status::Queued, 3),
            (Status::Sent, 1),
            (Status::Received, 1),
            (Status::Executing, 1),
            (Status::Completed, 2),
            (Status::Failed, 1),
            (Status::Expired, 1),
            (Status::Dead, 1),
        ]
    );
    // The same as counting what is listed, in `Status::ALL` order.
    let mut listed = BTreeMap::new();
    for agent in ["a1", "a2"] {
        for row in store.commands(agent, None, 1_000).await.unwrap() {
            let rank = Status::ALL.iter().position(|s| *s == row.status).unwrap();
            *listed.entry(rank).or_insert(0u64) += 1;
        }
    }
    let listed: Vec<(Status, u64)> = listed
        .into_iter()
        .map(|(rank, n)| (Status::ALL[rank], n))
        .collect();
    assert_eq!(counts, listed);

    // A state with no command left is not listed.
    store
        .ack("a1", "x", AckKind::Completed, T0 + 50_000)
        .await
        .unwrap();
    let counts = store.status_counts().await.unwrap();
    assert!(counts.iter().all(|(s, _)| *s != Status::Executing));
    assert!(counts.contains(&(Status::Completed, 3)));
}
