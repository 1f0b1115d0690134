//! Claims: every pending command on (re)connect (WS-DLV-4), one command,
//! a redelivery on the same connection (WS-DLV-3), an HTTP sync (WS-DLV-5);
//! none past `max_attempts` or the TTL (WS-DLV-7).

use super::{
    all_pending, claim, http, ids, insert, insert_pushed, new_cmd, one, redeliver, status_of,
    stored, ttl_cmd, two_agents, DEFAULTS, POLICY, T0,
};
use crate::store::{AckKind, Channel, CommandRow, Millis, Priority, Status, Store};

pub(super) async fn ws_dlv_4_a_reconnect_claims_every_pending_command_by_priority_then_fifo(
    store: &dyn Store,
) {
    two_agents(store).await;
    for (id, p) in [
        ("low1", Priority::Low),
        ("n1", Priority::Normal),
        ("h1", Priority::High),
        ("n2", Priority::Normal),
        ("h2", Priority::High),
        ("low2", Priority::Low),
    ] {
        insert(store, new_cmd(id, "a1", p, T0)).await;
    }
    insert(store, new_cmd("other", "a2", Priority::High, T0)).await;
    insert(store, ttl_cmd("expired", "a1", T0, T0 + 500)).await;
    insert(store, new_cmd("done", "a1", Priority::High, T0)).await;
    store
        .ack("a1", "done", AckKind::Failed { error: None }, T0)
        .await
        .unwrap();
    insert(store, new_cmd("working", "a1", Priority::Normal, T0)).await;
    store
        .ack("a1", "working", AckKind::Executing, T0)
        .await
        .unwrap();

    let now = T0 + 1_000;
    let got = claim(store, all_pending("a1", 5), now).await;
    // Not another agent's, not final, not past its TTL.
    assert_eq!(
        ids(&got),
        ["h1", "h2", "n1", "n2", "working", "low1", "low2"]
    );
    for row in &got {
        assert_eq!(row.attempts, 1);
        assert_eq!(row.sent_at, Some(now));
        assert_eq!(row.ack_deadline, Some(now + 30_000));
        assert_eq!(row.next_attempt_at, Some(POLICY.next_attempt_at(now, 1)));
        assert_eq!(
            (row.delivered_via, row.conn_id),
            (Some(Channel::Ws), Some(5))
        );
        assert_eq!(&stored(store, &row.id).await, row);
    }
    // `queued` became `sent`; a command in progress keeps its state.
    assert_eq!(got[4].status, Status::Executing);
    assert!(got
        .iter()
        .filter(|r| r.id != "working")
        .all(|r| r.status == Status::Sent));
    assert_eq!(status_of(store, "expired").await, Status::Queued);
    assert_eq!(status_of(store, "other").await, Status::Queued);
    assert_eq!(status_of(store, "done").await, Status::Failed);
}

pub(super) async fn ws_dlv_4_a_reconnect_leaves_out_what_this_connection_already_has(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert(store, new_cmd("q", "a1", Priority::Normal, T0)).await;
    // Stored as pushed to connection 5 while its session was starting.
    insert_pushed(store, new_cmd("p", "a1", Priority::High, T0), 5).await;
    let got = claim(store, all_pending("a1", 5), T0 + 1).await;
    assert_eq!(ids(&got), ["q"]);
    assert_eq!(stored(store, "p").await.attempts, 1);
    // The same connection again: it has them all.
    assert!(claim(store, all_pending("a1", 5), T0 + 2).await.is_empty());
    // A new connection gets them all again, one more attempt each.
    let got = claim(store, all_pending("a1", 6), T0 + 3).await;
    assert_eq!(ids(&got), ["p", "q"]);
    assert!(got.iter().all(|r| r.attempts == 2 && r.conn_id == Some(6)));
    assert_eq!(
        got[0].next_attempt_at,
        Some(POLICY.next_attempt_at(T0 + 3, 2))
    );
}

pub(super) async fn ws_dlv_4_reconnects_stop_at_max_attempts_and_work_in_progress_keeps_its_state(
    store: &dyn Store,
) {
    assert_eq!(POLICY.max_attempts, 3);
    two_agents(store).await;
    insert(store, new_cmd("q", "a1", Priority::Normal, T0)).await;
    insert(store, new_cmd("working", "a1", Priority::Normal, T0)).await;
    store
        .ack("a1", "working", AckKind::Executing, T0)
        .await
        .unwrap();
    for (attempt, conn) in [(1, 5), (2, 6), (3, 7)] {
        let now = T0 + attempt as i64;
        let got = claim(store, all_pending("a1", conn), now).await;
        assert_eq!(ids(&got), ["q", "working"]);
        for row in &got {
            assert_eq!((row.attempts, row.conn_id), (attempt, Some(conn)));
            assert_eq!(
                row.next_attempt_at,
                Some(POLICY.next_attempt_at(now, attempt))
            );
        }
    }
    // Every attempt used: nothing is pushed again.
    assert!(claim(store, all_pending("a1", 8), T0 + 4).await.is_empty());
    // The exhausted `executing` one keeps its state (it is not dead); the
    // `sent` one waits for its last ack timeout (`sweep.rs`).
    assert_eq!(status_of(store, "working").await, Status::Executing);
    assert_eq!(status_of(store, "q").await, Status::Sent);
}

pub(super) async fn ws_dlv_3_a_redelivery_is_claimed_only_at_its_attempt_on_its_connection(
    store: &dyn Store,
) {
    two_agents(store).await;
    let c = insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;
    assert_eq!((c.attempts, c.conn_id), (1, Some(1)));
    let later = T0 + 40_000;
    // Wrong attempt or wrong connection: nothing.
    assert!(claim(store, redeliver("c1", 1, 2), later).await.is_empty());
    assert!(claim(store, redeliver("c1", 2, 1), later).await.is_empty());
    assert!(claim(store, redeliver("nope", 1, 1), later)
        .await
        .is_empty());
    assert_eq!(stored(store, "c1").await, c);

    let got = claim(store, redeliver("c1", 1, 1), later).await;
    assert_eq!(ids(&got), ["c1"]);
    let row = &got[0];
    assert_eq!((row.attempts, row.status), (2, Status::Sent));
    assert_eq!(
        (row.sent_at, row.ack_deadline),
        (Some(later), Some(later + 30_000))
    );
    assert_eq!(row.next_attempt_at, Some(POLICY.next_attempt_at(later, 2)));
    assert_eq!(
        (row.delivered_via, row.conn_id),
        (Some(Channel::Ws), Some(1))
    );
    assert_eq!(&stored(store, "c1").await, row);
    // The same redelivery again is stale now.
    assert!(claim(store, redeliver("c1", 1, 1), later).await.is_empty());
}

pub(super) async fn ws_dlv_3_no_claim_goes_past_max_attempts(store: &dyn Store) {
    assert_eq!(POLICY.max_attempts, 3);
    two_agents(store).await;
    insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;
    let later = T0 + 40_000;
    assert_eq!(claim(store, redeliver("c1", 1, 1), later).await.len(), 1);
    // `One` (a reconnect race) on another connection: attempt 3, the last.
    let got = claim(store, one("c1", 2), later + 1).await;
    assert_eq!((got[0].attempts, got[0].conn_id), (3, Some(2)));
    let exhausted = stored(store, "c1").await;
    // No claim of any kind takes it again, however late.
    let much_later = T0 + 10_000_000;
    assert!(claim(store, redeliver("c1", 2, 3), much_later)
        .await
        .is_empty());
    assert!(claim(store, one("c1", 3), much_later).await.is_empty());
    assert!(claim(store, all_pending("a1", 4), much_later)
        .await
        .is_empty());
    assert!(claim(store, http("a1"), much_later).await.is_empty());
    assert_eq!(stored(store, "c1").await, exhausted);
}

/// Opened with [`DEFAULTS`]: the numbers are PROTOCOL.md's, written out.
pub(super) async fn ws_dlv_3_each_attempt_is_due_an_ack_timeout_and_a_doubling_backoff_capped_at_60_s_after_the_last(
    store: &dyn Store,
) {
    assert_eq!(DEFAULTS.max_attempts, 10);
    two_agents(store).await;
    // After attempt n: min(1 s · 2ⁿ⁻¹, 60 s).
    let backoff = [
        1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000, 60_000,
    ];
    let check = |row: &CommandRow, n: u32, sent: Millis| {
        assert_eq!(row.attempts, n, "{}", row.id);
        assert_eq!(row.sent_at, Some(sent), "{} attempt {n}", row.id);
        assert_eq!(
            row.ack_deadline,
            Some(sent + 30_000),
            "{} attempt {n}",
            row.id
        );
        assert_eq!(
            row.next_attempt_at,
            Some(sent + 30_000 + backoff[n as usize - 1]),
            "{} attempt {n}",
            row.id
        );
    };
    // Over a socket: each redelivery claimed when the one before says.
    let mut row = insert_pushed(store, new_cmd("ws", "a1", Priority::Normal, T0), 1).await;
    let mut ws_sent = T0;
    for n in 1..=10 {
        check(&row, n, ws_sent);
        if n < 10 {
            ws_sent = row.next_attempt_at.unwrap();
            row = claim(store, redeliver("ws", 1, n), ws_sent)
                .await
                .pop()
                .expect("redelivered");
        }
    }
    // Over HTTP: a sync takes it once due, and not a millisecond before.
    insert(store, new_cmd("h", "a2", Priority::Normal, T0)).await;
    let mut h_sent = T0;
    for n in 1..=10 {
        let got = claim(store, http("a2"), h_sent).await;
        assert_eq!(ids(&got), ["h"]);
        check(&got[0], n, h_sent);
        let due = got[0].next_attempt_at.unwrap();
        assert!(claim(store, http("a2"), due - 1).await.is_empty());
        h_sent = due;
    }
    // Ten sends: no eleventh, however late.
    let much_later = h_sent + 10_000_000;
    assert!(claim(store, redeliver("ws", 1, 10), much_later)
        .await
        .is_empty());
    assert!(claim(store, http("a2"), much_later).await.is_empty());
    assert_eq!(stored(store, "ws").await.attempts, 10);
    assert_eq!(stored(store, "h").await.attempts, 10);
}

pub(super) async fn ws_ack_2_a_progress_ack_stops_redelivery_but_not_a_push_to_a_new_connection(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert_pushed(store, new_cmd("c2", "a1", Priority::Normal, T0), 1).await;
    store
        .ack("a1", "c2", AckKind::Received, T0 + 1)
        .await
        .unwrap();
    let later = T0 + 40_000;
    assert!(claim(store, redeliver("c2", 1, 1), later).await.is_empty());
    // A reconnect race still re-pushes it on another connection, keeping
    // its progress.
    let got = claim(store, one("c2", 9), later).await;
    assert_eq!(ids(&got), ["c2"]);
    assert_eq!(
        (got[0].status, got[0].attempts, got[0].conn_id),
        (Status::Received, 2, Some(9))
    );
    assert_eq!(got[0].acked_at, Some(T0 + 1));
}

pub(super) async fn claim_one_pushes_a_command_once_per_connection_and_never_a_final_one(
    store: &dyn Store,
) {
    two_agents(store).await;
    insert_pushed(store, new_cmd("c1", "a1", Priority::Normal, T0), 1).await;
    // Not to the connection that already has it.
    assert!(claim(store, one("c1", 1), T0 + 1).await.is_empty());
    let got = claim(store, one("c1", 2), T0 + 1).await;
    assert_eq!((got[0].attempts, got[0].conn_id), (2, Some(2)));
    assert_eq!(got[0].sent_at, Some(T0 + 1));
    assert!(claim(store, one("c1", 2), T0 + 2).await.is_empty());

    // A queued command is claimed by whichever connection asks first.
    insert(store, new_cmd("q", "a1", Priority::Normal, T0)).await;
    let got = claim(store, one("q", 1), T0).await;
    assert_eq!(
        (got[0].status, got[0].attempts, got[0].conn_id),
        (Status::Sent, 1, Some(1))
    );
    // Final or unknown: nothing.
    store.ack("a1", "q", AckKind::Completed, T0).await.unwrap();
    assert!(claim(store, one("q", 2), T0).await.is_empty());
    assert_eq!(status_of(store, "q").await, Status::Completed);
    assert!(claim(store, one("nope", 2), T0).await.is_empty());
}

pub(super) async fn ws_dlv_7_a_command_past_its_ttl_is_never_claimed(store: &dyn Store) {
    two_agents(store).await;
    // Expires at T0 + 10; the sweeper has not run.
    insert(store, ttl_cmd("e", "a1", T0, T0 + 10)).await;
    insert_pushed(store, ttl_cmd("p", "a1", T0, T0 + 10), 1).await;
    for now in [T0 + 10, T0 + 100_000] {
        assert!(claim(store, all_pending("a1", 2), now).await.is_empty());
        assert!(claim(store, one("e", 2), now).await.is_empty());
        assert!(claim(store, one("p", 2), now).await.is_empty());
        assert!(claim(store, redeliver("p", 1, 1), now).await.is_empty());
        assert!(claim(store, http("a1"), now).await.is_empty());
    }
    // Until then it is.
    assert_eq!(claim(store, one("e", 2), T0 + 9).await.len(), 1);
    assert_eq!(claim(store, redeliver("p", 1, 1), T0 + 9).await.len(), 1);
}

pub(super) async fn ws_dlv_5_http_sync_takes_queued_commands_then_sent_ones_once_due(
    store: &dyn Store,
) {
    two_agents(store).await;
    let cmd = |id: &str, p| new_cmd(id, "a1", p, T0);
    insert(store, cmd("q_low", Priority::Low)).await;
    insert_pushed(store, cmd("sent_due", Priority::Normal), 1).await;
    insert(store, cmd("q_high", Priority::High)).await;
    insert_pushed(store, cmd("received", Priority::High), 1).await;
    store
        .ack("a1", "received", AckKind::Received, T0)
        .await
        .unwrap();
    insert_pushed(store, cmd("executing", Priority::High), 1).await;
    store
        .ack("a1", "executing", AckKind::Executing, T0)
        .await
        .unwrap();
    let mut late = cmd("sent_later", Priority::High);
    late.created_at = T0 + 20_000;
    insert_pushed(store, late, 1).await;
    insert(store, new_cmd("other", "a2", Priority::High, T0)).await;

    let due = POLICY.next_attempt_at(T0, 1);
    // Before anything is due: only the queued ones, in WS-DLV-4 order.
    let got = claim(store, http("a1"), due - 1).await;
    assert_eq!(ids(&got), ["q_high", "q_low"]);
    for row in &got {
        assert_eq!((row.status, row.attempts), (Status::Sent, 1));
        assert_eq!(
            (row.delivered_via, row.conn_id),
            (Some(Channel::Http), None)
        );
        assert_eq!(row.sent_at, Some(due - 1));
        assert_eq!(
            row.next_attempt_at,
            Some(POLICY.next_attempt_at(due - 1, 1))
        );
        assert_eq!(&stored(store, &row.id).await, row);
    }
    // At the due time: the due `sent` one, off its connection; never one in
    // progress, nor the later one.
    let got = claim(store, http("a1"), due).await;
    assert_eq!(ids(&got), ["sent_due"]);
    assert_eq!((got[0].status, got[0].attempts), (Status::Sent, 2));
    assert_eq!(
        (got[0].delivered_via, got[0].conn_id),
        (Some(Channel::Http), None)
    );
    assert_eq!(got[0].next_attempt_at, Some(POLICY.next_attempt_at(due, 2)));
    assert!(claim(store, http("a1"), due).await.is_empty());
    assert_eq!(status_of(store, "received").await, Status::Received);
    assert_eq!(status_of(store, "executing").await, Status::Executing);
    // Another agent's sync takes only its own.
    assert_eq!(ids(&claim(store, http("a2"), due).await), ["other"]);
    assert!(claim(store, http("a2"), due).await.is_empty());
    // The later one comes due after its own backoff.
    let later_due = POLICY.next_attempt_at(T0 + 20_000, 1);
    assert!(claim(store, http("a1"), later_due - 1).await.is_empty());
    assert_eq!(
        ids(&claim(store, http("a1"), later_due).await),
        ["sent_later"]
    );
    // What went out over HTTP comes back at a later sync once due (WS-DLV-3).
    let again = POLICY.next_attempt_at(due - 1, 1);
    assert!(claim(store, http("a1"), again - 1).await.is_empty());
    let got = claim(store, http("a1"), again).await;
    assert_eq!(ids(&got), ["q_high", "q_low"]);
    assert!(got
        .iter()
        .all(|r| r.attempts == 2 && r.sent_at == Some(again)));
}
