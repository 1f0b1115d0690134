//! Agents, connection history and sync events.

use serde_json::json;

use super::{insert, new_cmd, setup, T0};
use crate::raw_json::RawJson;
use crate::store::{AckKind, Priority, Store};

#[tokio::test]
async fn agents_upsert_status_history_events() {
    let (_dir, store) = setup().await;
    // Existing agent: not created; phone replaced only when given.
    assert!(!store.upsert_agent("a1", None, T0 + 5).await.unwrap());
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(a1.user_phone.as_deref(), Some("+100"));
    assert_eq!(a1.created_at, T0);
    assert!(!store
        .upsert_agent("a1", Some("+200"), T0 + 6)
        .await
        .unwrap());
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(a1.user_phone.as_deref(), Some("+200"));
    assert_eq!(a1.last_status, None);
    assert!(store.agent("nobody").await.unwrap().is_none());

    // WS-CMD-2: stored as sent.
    let status =
        RawJson::parse(r#"{"uptime_seconds":12,"scheduled_messages":[1,2],"mem_mb":1.50}"#)
            .unwrap();
    store.set_agent_status("a1", &status, T0 + 7).await.unwrap();
    let a1 = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(a1.last_status, Some(status));
    assert_eq!(a1.last_seen, Some(T0 + 7));

    insert(&store, new_cmd("c1", "a1", Priority::Normal, T0)).await;
    insert(&store, new_cmd("c2", "a1", Priority::Normal, T0)).await;
    store
        .ack("a1", "c2", AckKind::Completed, T0 + 1)
        .await
        .unwrap();
    let all = store.agents().await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(all[0].pending_commands, 1);
    assert_eq!(all[1].pending_commands, 0);

    // History: first connect is not "before"; later ones are.
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
    assert_eq!(h[0].conn, 2);
    assert_eq!(h[0].disconnected_at, None);
    assert_eq!(h[0].remote_addr, "10.0.0.2:5");
    assert_eq!(h[1].conn, 1);
    assert_eq!(h[1].connected_at, T0 + 10);
    assert_eq!(h[1].disconnected_at, Some(T0 + 20));
    assert_eq!(h[1].reason.as_deref(), Some("replaced"));
    assert_eq!(store.history("a1", 1).await.unwrap().len(), 1);
    // Only the newest 50 rows are kept.
    for i in 0..60 {
        store
            .record_connect("a1", 100 + i, "x", T0 + 100 + i)
            .await
            .unwrap();
    }
    let h = store.history("a1", 1_000).await.unwrap();
    assert_eq!(h.len(), 50);
    assert_eq!(h[0].conn, 159);
    assert_eq!(h[49].conn, 110);

    // Sync events are stored once per agent.
    let d = json!({"k": 1});
    assert!(store.record_event("a1", "e1", "t", &d, T0).await.unwrap());
    assert!(!store
        .record_event("a1", "e1", "t", &d, T0 + 1)
        .await
        .unwrap());
    assert!(store.record_event("a2", "e1", "t", &d, T0).await.unwrap());
}
