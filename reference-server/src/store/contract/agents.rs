//! Agents, their last status (WS-STATUS-1), connection history (WS-CONN-6)
//! and sync events (WS-HTTP-1).

use serde_json::json;

use super::{insert, new_cmd, two_agents, T0};
use crate::raw_json::RawJson;
use crate::store::{AckKind, Priority, Store};

pub(super) async fn upsert_agent_creates_once_and_replaces_the_phone_only_when_given(
    store: &dyn Store,
) {
    assert!(store.agent("a1").await.unwrap().is_none());
    assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(a1.id, "a1");
    assert_eq!(
        (a1.user_phone.as_deref(), a1.created_at),
        (Some("+100"), T0)
    );
    assert_eq!((a1.last_seen, a1.last_status.as_ref()), (None, None));
    assert_eq!(a1.pending_commands, 0);

    // Existing: not created again; no phone given keeps the stored one.
    assert!(!store.upsert_agent("a1", None, T0 + 5).await.unwrap());
    assert_eq!(store.agent("a1").await.unwrap().unwrap(), a1);
    // A given phone replaces it; nothing else changes.
    assert!(!store
        .upsert_agent("a1", Some("+200"), T0 + 6)
        .await
        .unwrap());
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(
        (a1.user_phone.as_deref(), a1.created_at),
        (Some("+200"), T0)
    );
    assert!(store.agent("nobody").await.unwrap().is_none());
}

pub(super) async fn ws_status_1_the_last_status_is_stored_as_sent_and_counts_as_seen(
    store: &dyn Store,
) {
    two_agents(store).await;
    // WS-CMD-2: stored as sent (keys not in order, 1.50 not 1.5).
    let first = RawJson::parse(r#"{"uptime_seconds":12,"scheduled_messages":[1,2],"mem_mb":1.50}"#)
        .unwrap();
    store.set_agent_status("a1", &first, T0 + 7).await.unwrap();
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(
        a1.last_status.as_ref().map(RawJson::as_str),
        Some(first.as_str())
    );
    assert_eq!(a1.last_seen, Some(T0 + 7));
    // A second status replaces the first.
    let second = RawJson::parse(r#"{"uptime_seconds":99}"#).unwrap();
    store.set_agent_status("a1", &second, T0 + 8).await.unwrap();
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!((a1.last_status, a1.last_seen), (Some(second), Some(T0 + 8)));
    // Only that agent's.
    let a2 = store.agent("a2").await.unwrap().unwrap();
    assert_eq!((a2.last_status, a2.last_seen), (None, None));
}

pub(super) async fn agents_are_listed_by_id_with_their_pending_commands(store: &dyn Store) {
    assert!(store.agents().await.unwrap().is_empty());
    assert!(store.upsert_agent("b", None, T0).await.unwrap());
    two_agents(store).await;
    insert(store, new_cmd("c1", "a1", Priority::Normal, T0)).await;
    insert(store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
    insert(store, new_cmd("c3", "a1", Priority::Normal, T0)).await;
    store
        .ack("a1", "c2", AckKind::Completed, T0 + 1)
        .await
        .unwrap();
    store
        .ack("a1", "c3", AckKind::Executing, T0 + 1)
        .await
        .unwrap();
    let all = store.agents().await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a1", "a2", "b"]
    );
    // Pending: not final (`executing` counts).
    assert_eq!(
        all.iter().map(|a| a.pending_commands).collect::<Vec<_>>(),
        [2, 0, 0]
    );
    for agent in &all {
        assert_eq!(store.agent(&agent.id).await.unwrap().as_ref(), Some(agent));
    }
}

pub(super) async fn ws_conn_6_history_is_newest_first_with_connect_and_disconnect_times(
    store: &dyn Store,
) {
    two_agents(store).await;
    assert!(store.history("a1", 10).await.unwrap().is_empty());
    // The first connect is not "connected before"; later ones are.
    assert!(!store
        .record_connect("a1", 1, "10.0.0.1:5", T0 + 10)
        .await
        .unwrap());
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().last_seen,
        Some(T0 + 10)
    );
    store
        .record_disconnect("a1", 1, "replaced", T0 + 20)
        .await
        .unwrap();
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().last_seen,
        Some(T0 + 20)
    );
    assert!(store
        .record_connect("a1", 2, "10.0.0.2:5", T0 + 30)
        .await
        .unwrap());

    let h = store.history("a1", 10).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!((h[0].conn, h[0].connected_at), (2, T0 + 30));
    assert_eq!((h[0].disconnected_at, h[0].reason.as_deref()), (None, None));
    assert_eq!(h[0].remote_addr, "10.0.0.2:5");
    assert_eq!((h[1].conn, h[1].connected_at), (1, T0 + 10));
    assert_eq!(
        (h[1].disconnected_at, h[1].reason.as_deref()),
        (Some(T0 + 20), Some("replaced"))
    );
    assert_eq!(h[1].remote_addr, "10.0.0.1:5");
    assert_eq!(store.history("a1", 1).await.unwrap(), h[..1]);
    // Only that agent's.
    assert!(store.history("a2", 10).await.unwrap().is_empty());

    // A connection that already ended keeps its end.
    store
        .record_disconnect("a1", 1, "late", T0 + 40)
        .await
        .unwrap();
    assert_eq!(store.history("a1", 10).await.unwrap()[1], h[1]);
    // A connection id used again (ids restart with the process): the end
    // goes to its newest connection.
    store
        .record_connect("a1", 1, "10.0.0.3:5", T0 + 50)
        .await
        .unwrap();
    store
        .record_disconnect("a1", 1, "ping_timeout", T0 + 60)
        .await
        .unwrap();
    let h2 = store.history("a1", 10).await.unwrap();
    assert_eq!(h2.len(), 3);
    assert_eq!((h2[0].conn, h2[0].remote_addr.as_str()), (1, "10.0.0.3:5"));
    assert_eq!(
        (h2[0].disconnected_at, h2[0].reason.as_deref()),
        (Some(T0 + 60), Some("ping_timeout"))
    );
    assert_eq!(h2[1..], h[..]);
}

pub(super) async fn ws_conn_6_history_keeps_the_newest_50_connections(store: &dyn Store) {
    two_agents(store).await;
    store.record_connect("a2", 1, "y", T0).await.unwrap();
    for i in 0..60 {
        store
            .record_connect("a1", 100 + i, "x", T0 + 100 + i)
            .await
            .unwrap();
    }
    let h = store.history("a1", 1_000).await.unwrap();
    assert_eq!(h.len(), 50);
    assert_eq!((h[0].conn, h[49].conn), (159, 110));
    // Another agent's history is its own.
    assert_eq!(store.history("a2", 1_000).await.unwrap().len(), 1);
}

pub(super) async fn ws_http_1_a_sync_event_is_stored_once_per_agent(store: &dyn Store) {
    two_agents(store).await;
    let d = json!({"k": 1});
    assert!(store.record_event("a1", "e1", "t", &d, T0).await.unwrap());
    assert!(!store
        .record_event("a1", "e1", "t", &d, T0 + 1)
        .await
        .unwrap());
    // Even with other contents: the id is what counts.
    assert!(!store
        .record_event("a1", "e1", "other", &json!({}), T0 + 2)
        .await
        .unwrap());
    assert!(store.record_event("a1", "e2", "t", &d, T0).await.unwrap());
    assert!(store.record_event("a2", "e1", "t", &d, T0).await.unwrap());
}
