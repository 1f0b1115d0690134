//! Acks: WS-ACK-2 (progress, completed, failed) and WS-ACK-3 (repeats and
//! acks after a final state change nothing; unknown and foreign commands are
//! unknown).

use super::{insert, insert_pushed, new_cmd, stored, two_agents, T0};
use crate::store::{AckKind, AckOutcome, CommandRow, Priority, Status, Store};

/// The command after an ack that must change it from `before`.
fn updated(outcome: AckOutcome, before: Status) -> CommandRow {
    match outcome {
        AckOutcome::Updated {
            before: was,
            command,
        } => {
            assert_eq!(was, before, "state before the ack");
            command
        }
        other => panic!("expected Updated from {before:?}, got {other:?}"),
    }
}

/// The command after an ack that must change nothing.
fn unchanged(outcome: AckOutcome) -> CommandRow {
    match outcome {
        AckOutcome::Unchanged(row) => row,
        other => panic!("expected Unchanged, got {other:?}"),
    }
}

pub(super) async fn ws_ack_3_an_ack_for_an_unknown_or_another_agents_command_is_unknown(
    store: &dyn Store,
) {
    two_agents(store).await;
    let c1 = insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;
    for kind in [
        AckKind::Received,
        AckKind::Executing,
        AckKind::Completed,
        AckKind::Failed { error: None },
    ] {
        // Another agent's command is unknown to it, as is a made-up id.
        assert_eq!(
            store.ack("a2", "c1", kind.clone(), T0 + 1).await.unwrap(),
            AckOutcome::Unknown
        );
        assert_eq!(
            store.ack("a1", "nope", kind, T0 + 1).await.unwrap(),
            AckOutcome::Unknown
        );
    }
    assert_eq!(stored(store, "c1").await, c1);
}

pub(super) async fn ws_ack_2_progress_acks_only_move_forward(store: &dyn Store) {
    two_agents(store).await;
    insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;

    let row = updated(
        store
            .ack("a1", "c1", AckKind::Received, T0 + 1)
            .await
            .unwrap(),
        Status::Sent,
    );
    assert_eq!(row.status, Status::Received);
    // The first ack of any kind sets acked_at; progress does not end it.
    assert_eq!((row.acked_at, row.completed_at), (Some(T0 + 1), None));
    assert_eq!(stored(store, "c1").await, row);
    // A repeat changes nothing, not even acked_at.
    let row = unchanged(
        store
            .ack("a1", "c1", AckKind::Received, T0 + 2)
            .await
            .unwrap(),
    );
    assert_eq!((row.status, row.acked_at), (Status::Received, Some(T0 + 1)));

    let row = updated(
        store
            .ack("a1", "c1", AckKind::Executing, T0 + 3)
            .await
            .unwrap(),
        Status::Received,
    );
    assert_eq!(row.status, Status::Executing);
    assert_eq!((row.acked_at, row.completed_at), (Some(T0 + 1), None));
    // Never backwards; a repeat changes nothing.
    for kind in [AckKind::Received, AckKind::Executing] {
        let row = unchanged(store.ack("a1", "c1", kind, T0 + 4).await.unwrap());
        assert_eq!(row.status, Status::Executing);
    }
    assert_eq!(
        status_and_acked(store, "c1").await,
        (Status::Executing, Some(T0 + 1))
    );

    // `executing` may come without `received` first, from `queued` or `sent`.
    insert(store, new_cmd("q", "a1", Priority::Normal, T0)).await;
    let row = updated(
        store
            .ack("a1", "q", AckKind::Executing, T0 + 5)
            .await
            .unwrap(),
        Status::Queued,
    );
    assert_eq!(
        (row.status, row.acked_at),
        (Status::Executing, Some(T0 + 5))
    );
    insert_pushed(store, new_cmd("s", "a1", Priority::Normal, T0), 1).await;
    updated(
        store
            .ack("a1", "s", AckKind::Executing, T0 + 6)
            .await
            .unwrap(),
        Status::Sent,
    );
}

async fn status_and_acked(store: &dyn Store, id: &str) -> (Status, Option<i64>) {
    let row = stored(store, id).await;
    (row.status, row.acked_at)
}

pub(super) async fn ws_ack_2_a_failed_ack_ends_the_command_with_its_error(store: &dyn Store) {
    two_agents(store).await;
    insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;
    store
        .ack("a1", "c1", AckKind::Executing, T0 + 3)
        .await
        .unwrap();
    let failed = AckKind::Failed {
        error: Some("boom".into()),
    };
    let row = updated(
        store.ack("a1", "c1", failed, T0 + 5).await.unwrap(),
        Status::Executing,
    );
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.error.as_deref(), Some("boom"));
    assert_eq!(
        (row.acked_at, row.completed_at),
        (Some(T0 + 3), Some(T0 + 5))
    );
    assert_eq!(stored(store, "c1").await, row);

    // Failed without a reason, straight from `sent`.
    insert_pushed(store, new_cmd("c2", "a1", Priority::Normal, T0), 1).await;
    let row = updated(
        store
            .ack("a1", "c2", AckKind::Failed { error: None }, T0 + 6)
            .await
            .unwrap(),
        Status::Sent,
    );
    assert_eq!((row.status, row.error), (Status::Failed, None));
    assert_eq!(
        (row.acked_at, row.completed_at),
        (Some(T0 + 6), Some(T0 + 6))
    );
}

pub(super) async fn ws_ack_2_a_queued_command_completes_on_its_first_ack(store: &dyn Store) {
    two_agents(store).await;
    insert(store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
    let row = updated(
        store
            .ack("a1", "c2", AckKind::Completed, T0 + 7)
            .await
            .unwrap(),
        Status::Queued,
    );
    assert_eq!(row.status, Status::Completed);
    assert_eq!(
        (row.acked_at, row.completed_at),
        (Some(T0 + 7), Some(T0 + 7))
    );
    assert_eq!(row.error, None);
    assert_eq!(stored(store, "c2").await, row);
}

pub(super) async fn ws_ack_3_final_state_is_never_changed_by_a_later_ack(store: &dyn Store) {
    two_agents(store).await;
    insert_pushed(store, new_cmd("failed", "a1", Priority::Normal, T0), 1).await;
    store
        .ack(
            "a1",
            "failed",
            AckKind::Failed {
                error: Some("boom".into()),
            },
            T0 + 5,
        )
        .await
        .unwrap();
    insert_pushed(store, new_cmd("done", "a1", Priority::Normal, T0), 1).await;
    store
        .ack("a1", "done", AckKind::Completed, T0 + 5)
        .await
        .unwrap();
    let ended = [stored(store, "failed").await, stored(store, "done").await];
    assert_eq!(
        (ended[0].status, ended[1].status),
        (Status::Failed, Status::Completed)
    );

    for row in &ended {
        for kind in [
            AckKind::Completed,
            AckKind::Failed {
                error: Some("later".into()),
            },
            AckKind::Failed { error: None },
            AckKind::Received,
            AckKind::Executing,
        ] {
            let now = unchanged(store.ack("a1", &row.id, kind, T0 + 6).await.unwrap());
            assert_eq!(&now, row, "a later ack changed {}", row.id);
        }
        assert_eq!(&stored(store, &row.id).await, row);
    }
    // (`expired` and `dead` are final too: `sweep.rs`.)
}
