//! A throughput check, ignored by default.

use std::time::Instant;

use crate::raw_json::RawJson;
use crate::store::sqlite::SqliteStore;
use crate::store::{
    AckKind, AckOutcome, DeliveryPolicy, InsertOutcome, NewCommand, Priority, Store,
};

/// Rough throughput check (`cargo test --release -- --ignored throughput`):
/// accept (pushed) then complete, from many concurrent tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn accept_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let policy = DeliveryPolicy::PROTOCOL_DEFAULTS;
    let store = SqliteStore::open(&dir.path().join("edge.db"), policy).unwrap();
    let agents = 100;
    for a in 0..agents {
        store.upsert_agent(&format!("a{a}"), None, 0).await.unwrap();
    }
    let per_task = 100;
    let start = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let id = format!("t{t}-{i}");
                    let agent = format!("a{}", t % agents);
                    let cmd = NewCommand {
                        id: id.clone(),
                        agent_id: agent.clone(),
                        command_type: "send_message".into(),
                        parameters: RawJson::parse(r#"{"text":"hello"}"#).unwrap(),
                        priority: Priority::Normal,
                        created_at: 1,
                        expires_at: None,
                    };
                    let out = store.insert_command(cmd, Some(t)).await.unwrap();
                    assert!(matches!(out, InsertOutcome::Created(_)));
                    let out = store.ack(&agent, &id, AckKind::Completed, 2).await.unwrap();
                    assert!(matches!(out, AckOutcome::Updated { .. }));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = 200 * per_task;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{n} commands in {secs:.2}s = {:.0}/s; {:?}",
        n as f64 / secs,
        store.stats()
    );
}
