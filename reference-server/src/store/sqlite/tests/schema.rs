//! The schema: hot statements use their indexes; data and pragmas survive a
//! reopen.

use rusqlite::Connection;

use super::{insert, new_cmd, open_with, POLICY, T0};
use crate::store::sqlite::agents::SQL_AGENT_BY_ID;
use crate::store::sqlite::commands::{SQL_COMMAND_BY_ID, SQL_COUNT_PENDING};
use crate::store::sqlite::delivery::{SQL_AGENT_PENDING, SQL_DEAD, SQL_EXPIRE};
use crate::store::sqlite::schema::MIGRATIONS;
use crate::store::sqlite::SqliteStore;
use crate::store::{Priority, Status, Store};

#[tokio::test]
async fn hot_queries_use_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open_with(&dir, POLICY);
    let conn = Connection::open(dir.path().join("edge.db")).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Unbound parameters are NULL; only the plan matters.
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("; ")
    };
    for (sql, index) in [
        (SQL_COUNT_PENDING, "commands_pending"),
        (SQL_AGENT_PENDING, "commands_pending"),
        (SQL_COMMAND_BY_ID, "sqlite_autoindex_commands"),
        (SQL_EXPIRE, "commands_expiry"),
        (SQL_DEAD, "commands_dead"),
        (SQL_AGENT_BY_ID, "commands_pending"),
    ] {
        let plan = plan(sql);
        assert!(plan.contains(index), "{sql}\n=> {plan}");
        assert!(!plan.contains("SCAN commands"), "{sql}\n=> {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{sql}\n=> {plan}");
    }
}

#[tokio::test]
async fn durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let row = {
        let store = SqliteStore::open(&path, POLICY).unwrap();
        store.upsert_agent("a1", Some("+1"), T0).await.unwrap();
        store
            .record_connect("a1", 1, "1.2.3.4:5", T0)
            .await
            .unwrap();
        insert(&store, new_cmd("c1", "a1", Priority::High, T0)).await
    };
    // Dropped: thread joined, file closed. Reopening migrates nothing again.
    let store = SqliteStore::open(&path, POLICY).unwrap();
    assert_eq!(store.command("c1").await.unwrap(), Some(row));
    let agent = store.agent("a1").await.unwrap().unwrap();
    assert_eq!(agent.user_phone.as_deref(), Some("+1"));
    assert_eq!(agent.pending_commands, 1);
    assert_eq!(store.history("a1", 5).await.unwrap().len(), 1);
    assert!(store.record_connect("a1", 2, "x", T0 + 1).await.unwrap());
    assert_eq!(
        store.status_counts().await.unwrap(),
        vec![(Status::Queued, 1)]
    );
    // A new command keeps counting seq upwards.
    let c2 = insert(&store, new_cmd("c2", "a1", Priority::High, T0)).await;
    assert!(c2.seq > 1);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
