//! Inserting commands (WS-DLV-1, WS-CMD-2, WS-API-2: idempotency, conflicts,
//! the pending limit) and listing them.

use super::{
    ids, insert, insert_pushed, new_cmd, stored, ttl_cmd, two_agents, POLICY, T0, TWO_PENDING,
};
use crate::raw_json::RawJson;
use crate::store::{AckKind, Channel, InsertOutcome, Priority, Status, Store};

pub(super) async fn a_command_for_an_unknown_agent_is_refused(store: &dyn Store) {
    two_agents(store).await;
    for push_to in [None, Some(1)] {
        assert_eq!(
            store
                .insert_command(new_cmd("x", "ghost", Priority::Normal, T0), push_to)
                .await
                .unwrap(),
            InsertOutcome::UnknownAgent
        );
    }
    assert_eq!(store.command("x").await.unwrap(), None);
}

pub(super) async fn ws_cmd_2_a_new_command_is_stored_queued_with_its_parameters_as_posted(
    store: &dyn Store,
) {
    two_agents(store).await;
    let c1 = insert(store, new_cmd("c1", "a1", Priority::High, T0)).await;
    assert_eq!((c1.id.as_str(), c1.agent_id.as_str()), ("c1", "a1"));
    assert_eq!(c1.command_type, "send_message");
    assert_eq!(
        c1.parameters.as_str(),
        r#"{"to":"+1","text":"c1","n":[1,2.50]}"#
    );
    assert_eq!(c1.priority, Priority::High);
    assert_eq!((c1.status, c1.attempts), (Status::Queued, 0));
    assert_eq!((c1.created_at, c1.expires_at), (T0, None));
    // Nothing sent, acked or ended yet.
    assert_eq!(
        (c1.sent_at, c1.ack_deadline, c1.next_attempt_at),
        (None, None, None)
    );
    assert_eq!(
        (c1.acked_at, c1.completed_at, &c1.error),
        (None, None, &None)
    );
    assert_eq!((c1.delivered_via, c1.conn_id), (None, None));
    assert_eq!(stored(store, "c1").await, c1);

    let c2 = insert(store, ttl_cmd("c2", "a1", T0 + 1, T0 + 5_000)).await;
    assert_eq!((c2.created_at, c2.expires_at), (T0 + 1, Some(T0 + 5_000)));
    assert!(c2.seq > c1.seq, "seq counts insertion order");
    assert_eq!(stored(store, "c2").await, c2);
}

pub(super) async fn ws_api_2_a_repeated_command_id_for_the_same_agent_returns_the_stored_command(
    store: &dyn Store,
) {
    two_agents(store).await;
    let c1 = insert(store, new_cmd("c1", "a1", Priority::High, T0)).await;
    // Same id, same agent: the stored one, unchanged, even with other fields
    // and a connection to push it to.
    let mut again = new_cmd("c1", "a1", Priority::Low, T0 + 99);
    again.parameters = RawJson::parse(r#"{"different":true}"#).unwrap();
    assert_eq!(
        store.insert_command(again.clone(), Some(7)).await.unwrap(),
        InsertOutcome::Existing(c1.clone())
    );
    assert_eq!(stored(store, "c1").await, c1);
    // Still idempotent once the command has ended: answered as it is now.
    store
        .ack("a1", "c1", AckKind::Completed, T0 + 1)
        .await
        .unwrap();
    let done = stored(store, "c1").await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        store.insert_command(again, None).await.unwrap(),
        InsertOutcome::Existing(done)
    );
}

pub(super) async fn ws_api_2_a_command_id_reused_for_another_agent_conflicts(store: &dyn Store) {
    two_agents(store).await;
    let c1 = insert(store, new_cmd("c1", "a1", Priority::Normal, T0)).await;
    for push_to in [None, Some(3)] {
        assert_eq!(
            store
                .insert_command(new_cmd("c1", "a2", Priority::Normal, T0), push_to)
                .await
                .unwrap(),
            InsertOutcome::Conflict
        );
    }
    assert_eq!(stored(store, "c1").await, c1);
    assert!(store.commands("a2", None, 100).await.unwrap().is_empty());
}

pub(super) async fn ws_dlv_1_a_command_stored_for_a_connection_is_stored_as_its_first_push(
    store: &dyn Store,
) {
    two_agents(store).await;
    let c1 = insert(store, new_cmd("c1", "a1", Priority::Normal, T0)).await;
    let c2 = insert_pushed(store, new_cmd("c2", "a1", Priority::Normal, T0 + 1), 42).await;
    assert_eq!((c2.status, c2.attempts), (Status::Sent, 1));
    assert_eq!(c2.sent_at, Some(T0 + 1));
    assert_eq!(c2.ack_deadline, Some(T0 + 1 + 30_000));
    assert_eq!(c2.next_attempt_at, Some(POLICY.next_attempt_at(T0 + 1, 1)));
    assert_eq!(
        (c2.delivered_via, c2.conn_id),
        (Some(Channel::Ws), Some(42))
    );
    assert_eq!((c2.acked_at, c2.completed_at), (None, None));
    assert!(c2.seq > c1.seq);
    assert_eq!(stored(store, "c2").await, c2);
}

/// Opened with [`TWO_PENDING`].
pub(super) async fn ws_api_2_a_full_queue_refuses_new_commands_but_answers_repeated_ids(
    store: &dyn Store,
) {
    assert_eq!(TWO_PENDING.max_pending, 2);
    two_agents(store).await;
    let c1 = insert(store, new_cmd("c1", "a1", Priority::High, T0)).await;
    let c2 = insert_pushed(store, new_cmd("c2", "a1", Priority::Normal, T0), 1).await;

    // Full: refused (never dropped), pushed or not; nothing stored.
    for push_to in [None, Some(1)] {
        assert_eq!(
            store
                .insert_command(new_cmd("c3", "a1", Priority::Normal, T0), push_to)
                .await
                .unwrap(),
            InsertOutcome::QueueFull
        );
    }
    assert_eq!(store.command("c3").await.unwrap(), None);
    // A repeated id is answered even when the queue is full.
    assert_eq!(
        store
            .insert_command(new_cmd("c1", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Existing(c1)
    );
    assert_eq!(
        store
            .insert_command(new_cmd("c2", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Existing(c2)
    );
    // Another agent's queue is its own.
    insert(store, new_cmd("d1", "a2", Priority::Normal, T0)).await;
    // Another agent's id is a conflict whether or not the queue is full.
    assert_eq!(
        store
            .insert_command(new_cmd("d1", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::Conflict
    );

    // A command in progress is still pending; only a final one frees a slot.
    store
        .ack("a1", "c2", AckKind::Executing, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store
            .insert_command(new_cmd("c3", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::QueueFull
    );
    store
        .ack("a1", "c1", AckKind::Completed, T0 + 2)
        .await
        .unwrap();
    insert(store, new_cmd("c3", "a1", Priority::Normal, T0 + 3)).await;
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        2
    );
    assert_eq!(
        store
            .insert_command(new_cmd("c4", "a1", Priority::Normal, T0), None)
            .await
            .unwrap(),
        InsertOutcome::QueueFull
    );
}

pub(super) async fn commands_are_listed_in_insertion_order_filtered_by_state_and_limited(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert(store, new_cmd("c1", "a1", Priority::Low, T0)).await;
    insert(store, new_cmd("c2", "a1", Priority::High, T0)).await;
    insert(store, new_cmd("c3", "a1", Priority::Normal, T0)).await;
    insert(store, new_cmd("d1", "a2", Priority::Normal, T0)).await;
    store
        .ack("a1", "c2", AckKind::Completed, T0 + 1)
        .await
        .unwrap();

    // Insertion order, not priority order.
    let all = store.commands("a1", None, 100).await.unwrap();
    assert_eq!(ids(&all), ["c1", "c2", "c3"]);
    assert_eq!(all[1], stored(store, "c2").await);
    let completed = store
        .commands("a1", Some(Status::Completed), 100)
        .await
        .unwrap();
    assert_eq!(ids(&completed), ["c2"]);
    let queued = store
        .commands("a1", Some(Status::Queued), 100)
        .await
        .unwrap();
    assert_eq!(ids(&queued), ["c1", "c3"]);
    assert!(store
        .commands("a1", Some(Status::Dead), 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(&store.commands("a1", None, 2).await.unwrap()),
        ["c1", "c2"]
    );
    assert_eq!(ids(&store.commands("a2", None, 100).await.unwrap()), ["d1"]);
    assert!(store
        .commands("nobody", None, 100)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn ws_cmd_2_parameters_keep_escapes_big_numbers_unicode_and_spacing(
    store: &dyn Store,
) {
    two_agents(store).await;
    let posted = concat!(
        r#"{"z":1, "a" : {"y":[true,null,-0.0,1E+2]},"#,
        r#""big":123456789012345678901234567890,"esc":"\u00e9\n\"\u0000","#,
        r#""text":"héllo ✓ 🚀","dup":1,"dup":2}"#
    );
    let mut cmd = new_cmd("c1", "a1", Priority::Normal, T0);
    cmd.parameters = RawJson::parse(posted).unwrap();
    let kept = cmd.parameters.as_str().to_owned();
    assert_eq!(kept, posted, "RawJson keeps the text as posted");
    let row = insert(store, cmd).await;
    assert_eq!(row.parameters.as_str(), kept);
    assert_eq!(stored(store, "c1").await.parameters.as_str(), kept);
    assert_eq!(
        store.commands("a1", None, 10).await.unwrap()[0]
            .parameters
            .as_str(),
        kept
    );
    // And an agent's status the same way (WS-STATUS-1).
    store
        .set_agent_status("a1", &RawJson::parse(posted).unwrap(), T0)
        .await
        .unwrap();
    let status = store.agent("a1").await.unwrap().unwrap().last_status;
    assert_eq!(status.as_ref().map(RawJson::as_str), Some(kept.as_str()));
}
