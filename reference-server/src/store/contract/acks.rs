//! Acks: WS-ACK-2 (progress, completed, failed) and WS-ACK-3 (repeats and
//! acks after a final state change nothing; unknown and foreign commands are
//! unknown).

use super::{ids, insert, insert_pushed, new_cmd, stored, two_agents, T0};
use crate::raw_json::RawJson;
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

/// An ack over the socket that got the push ([`Store::ack_pushed`]) is
/// decided as any ack, whatever the command went through first: of twin
/// commands, one acked that way and one not, each pair of acks leaves both
/// alike. Also when the row is not as pushed: `sent` but acked before it
/// expired and was queued again (WS-API-4), it keeps its first ack's time;
/// `queued`, it is acked from `queued`. Another agent's command and a made-up id are unknown.
pub(super) async fn ws_ack_2_an_ack_over_the_socket_that_got_the_push_is_decided_as_any_ack(
    store: &dyn Store,
) {
    two_agents(store).await;
    let kinds = [
        AckKind::Received,
        AckKind::Executing,
        AckKind::Completed,
        AckKind::Failed {
            error: Some("boom".into()),
        },
    ];
    // The same for both twins: their ids, `seq` and parameters (which name
    // the id) differ.
    let alike = |mut row: CommandRow| {
        (row.id, row.seq) = (String::new(), 0);
        row.parameters = RawJson::empty_object();
        row
    };
    let alike_outcome = |outcome: AckOutcome| match outcome {
        AckOutcome::Updated { before, command } => AckOutcome::Updated {
            before,
            command: alike(command),
        },
        AckOutcome::Unchanged(row) => AckOutcome::Unchanged(alike(row)),
        AckOutcome::Unknown => AckOutcome::Unknown,
    };
    for (n, (first, second)) in kinds
        .iter()
        .flat_map(|first| kinds.iter().map(move |second| (first, second)))
        .enumerate()
    {
        let (pushed, plain) = (format!("p{n}"), format!("q{n}"));
        for id in [&pushed, &plain] {
            insert_pushed(store, new_cmd(id, "a1", Priority::Normal, T0), 1).await;
        }
        for (step, kind) in [first, second].into_iter().enumerate() {
            let now = T0 + 1 + step as i64;
            let as_pushed = store.ack_pushed("a1", &pushed, kind.clone(), now);
            let as_any = store.ack("a1", &plain, kind.clone(), now);
            assert_eq!(
                alike_outcome(as_pushed.await.unwrap()),
                alike_outcome(as_any.await.unwrap()),
                "{first:?} then {second:?}"
            );
        }
        assert_eq!(
            alike(stored(store, &pushed).await),
            alike(stored(store, &plain).await)
        );
    }

    // Received, expired, queued again and pushed: `sent`, acked before.
    let ttl = super::ttl_cmd("again", "a1", T0, T0 + 100);
    insert_pushed(store, ttl, 1).await;
    updated(
        store
            .ack_pushed("a1", "again", AckKind::Received, T0 + 1)
            .await
            .unwrap(),
        Status::Sent,
    );
    assert_eq!(store.sweep(T0 + 100).await.unwrap().len(), 1);
    assert!(matches!(
        store.retry("again", T0 + 200).await.unwrap(),
        crate::store::RetryOutcome::Requeued(_)
    ));
    let pushed = super::claim(store, super::one("again", 2), T0 + 300).await;
    assert_eq!(ids(&pushed), ["again"]);
    let row = updated(
        store
            .ack_pushed("a1", "again", AckKind::Completed, T0 + 400)
            .await
            .unwrap(),
        Status::Sent,
    );
    assert_eq!(
        (row.status, row.acked_at, row.completed_at),
        (Status::Completed, Some(T0 + 1), Some(T0 + 400))
    );
    assert_eq!(stored(store, "again").await, row);

    // Never acked but not `sent`: queued (again, or never pushed).
    insert(store, new_cmd("waiting", "a1", Priority::Normal, T0)).await;
    let row = updated(
        store
            .ack_pushed("a1", "waiting", AckKind::Completed, T0 + 5)
            .await
            .unwrap(),
        Status::Queued,
    );
    assert_eq!(stored(store, "waiting").await, row);

    assert_eq!(
        store
            .ack_pushed("a2", "p0", AckKind::Completed, T0 + 5)
            .await
            .unwrap(),
        AckOutcome::Unknown
    );
    assert_eq!(
        store
            .ack_pushed("a1", "nope", AckKind::Completed, T0 + 5)
            .await
            .unwrap(),
        AckOutcome::Unknown
    );
}
