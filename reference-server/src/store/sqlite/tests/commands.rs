//! Inserting commands (idempotency, conflicts, the pending limit) and acks.

use super::{ids, insert, new_cmd, open_with, policy, setup, status_of, T0};
use crate::raw_json::RawJson;
use crate::store::{
    AckKind, AckOutcome, Channel, DeliveryPolicy, InsertOutcome, Priority, Status, Store,
};

#[tokio::test]
async fn insert_idempotency_conflict_queue_full_unknown_agent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(
        &dir,
        DeliveryPolicy {
            max_pending: 2,
            ..policy()
        },
    );
    store.upsert_agent("a1", None, T0).await.unwrap();
    store.upsert_agent("a2", None, T0).await.unwrap();

    assert_eq!(
        store
            .insert_command(new_cmd("x", "ghost", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::UnknownAgent
    );
    let c1 = insert(&store, new_cmd("c1", "a1", Priority::High, T0)).await;
    assert_eq!(c1.status, Status::Queued);
    assert_eq!(c1.attempts, 0);
    assert_eq!(c1.priority, Priority::High);
    assert_eq!(
        c1.parameters.as_str(),
        r#"{"to":"+1","text":"c1","n":[1,2.50]}"#
    );
    assert_eq!(c1.sent_at, None);
    assert_eq!(c1.delivered_via, None);
    assert_eq!(store.command("c1").await.unwrap(), Some(c1.clone()));

    // Same id, same agent: the stored one, unchanged (even with other fields).
    let mut again = new_cmd("c1", "a1", Priority::Low, T0 + 99);
    again.parameters = RawJson::parse(r#"{"different":true}"#).unwrap();
    assert_eq!(
        store.insert_command(again, Some(7)).await.unwrap(),
        InsertOutcome::Existing(c1.clone())
    );
    // Same id, other agent.
    assert_eq!(
        store
            .insert_command(new_cmd("c1", "a2", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Conflict
    );

    // Pushed at once: stored as attempt 1 on that connection.
    let c2 = match store
        .insert_command(new_cmd("c2", "a1", Priority::Normal, T0 + 1), Some(42))
        .await
        .unwrap()
    {
        InsertOutcome::Created(row) => row,
        other => panic!("{other:?}"),
    };
    assert_eq!(c2.status, Status::Sent);
    assert_eq!(c2.attempts, 1);
    assert_eq!(c2.sent_at, Some(T0 + 1));
    assert_eq!(c2.ack_deadline, Some(T0 + 1 + 30_000));
    assert_eq!(
        c2.next_attempt_at,
        Some(policy().next_attempt_at(T0 + 1, 1))
    );
    assert_eq!(c2.delivered_via, Some(Channel::Ws));
    assert_eq!(c2.conn_id, Some(42));
    assert!(c2.seq > c1.seq);

    // Queue full (2 pending): refused, but a repeat is still Existing.
    assert_eq!(
        store
            .insert_command(new_cmd("c3", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::QueueFull
    );
    assert!(store.command("c3").await.unwrap().is_none());
    assert!(matches!(
        store
            .insert_command(new_cmd("c2", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Existing(row) if row == c2
    ));
    // Another agent's queue is separate.
    insert(&store, new_cmd("d1", "a2", Priority::Normal, T0)).await;
    // A final command frees a slot.
    store
        .ack("a1", "c1", AckKind::Completed, T0 + 2)
        .await
        .unwrap();
    insert(&store, new_cmd("c3", "a1", Priority::Normal, T0)).await;
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        2
    );

    let listed = store.commands("a1", None, 100).await.unwrap();
    assert_eq!(ids(&listed), ["c1", "c2", "c3"]);
    let listed = store
        .commands("a1", Some(Status::Completed), 100)
        .await
        .unwrap();
    assert_eq!(ids(&listed), ["c1"]);
    assert_eq!(store.commands("a1", None, 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn ack_transitions() {
    let (_dir, store) = setup().await;
    store
        .insert_command(new_cmd("c1", "a1", Priority::Normal, T0), Some(1))
        .await
        .unwrap();

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
    assert_eq!(status_of(&store, "c1").await, Status::Sent);

    match store
        .ack("a1", "c1", AckKind::Received, T0 + 1)
        .await
        .unwrap()
    {
        AckOutcome::Updated { before, command } => {
            assert_eq!(before, Status::Sent);
            assert_eq!(command.status, Status::Received);
            assert_eq!(command.acked_at, Some(T0 + 1));
            assert_eq!(command.completed_at, None);
        }
        other => panic!("{other:?}"),
    }
    // Repeats change nothing.
    assert!(matches!(
        store.ack("a1", "c1", AckKind::Received, T0 + 2).await.unwrap(),
        AckOutcome::Unchanged(row) if row.status == Status::Received && row.acked_at == Some(T0 + 1)
    ));
    match store
        .ack("a1", "c1", AckKind::Executing, T0 + 3)
        .await
        .unwrap()
    {
        AckOutcome::Updated { before, command } => {
            assert_eq!(before, Status::Received);
            assert_eq!(command.status, Status::Executing);
            assert_eq!(command.acked_at, Some(T0 + 1));
        }
        other => panic!("{other:?}"),
    }
    // Never backwards.
    assert!(matches!(
        store.ack("a1", "c1", AckKind::Received, T0 + 4).await.unwrap(),
        AckOutcome::Unchanged(row) if row.status == Status::Executing
    ));
    assert!(matches!(
        store
            .ack("a1", "c1", AckKind::Executing, T0 + 4)
            .await
            .unwrap(),
        AckOutcome::Unchanged(_)
    ));
    match store
        .ack(
            "a1",
            "c1",
            AckKind::Failed {
                error: Some("boom".into()),
            },
            T0 + 5,
        )
        .await
        .unwrap()
    {
        AckOutcome::Updated { before, command } => {
            assert_eq!(before, Status::Executing);
            assert_eq!(command.status, Status::Failed);
            assert_eq!(command.error.as_deref(), Some("boom"));
            assert_eq!(command.completed_at, Some(T0 + 5));
        }
        other => panic!("{other:?}"),
    }
    // Final never changes (WS-ACK-3).
    for kind in [
        AckKind::Completed,
        AckKind::Received,
        AckKind::Failed { error: None },
    ] {
        assert!(matches!(
            store.ack("a1", "c1", kind, T0 + 6).await.unwrap(),
            AckOutcome::Unchanged(row) if row.status == Status::Failed
                && row.completed_at == Some(T0 + 5)
                && row.error.as_deref() == Some("boom")
        ));
    }

    // Straight from queued to completed; first ack sets acked_at.
    insert(&store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
    match store
        .ack("a1", "c2", AckKind::Completed, T0 + 7)
        .await
        .unwrap()
    {
        AckOutcome::Updated { before, command } => {
            assert_eq!(before, Status::Queued);
            assert_eq!(command.status, Status::Completed);
            assert_eq!(command.acked_at, Some(T0 + 7));
            assert_eq!(command.completed_at, Some(T0 + 7));
            assert_eq!(command.error, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.ack("a1", "c2", AckKind::Completed, T0 + 8).await.unwrap(),
        AckOutcome::Unchanged(row) if row.completed_at == Some(T0 + 7)
    ));
}
