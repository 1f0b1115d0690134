//! The writer thread: concurrent callers, group commit with failing
//! operations isolated, and the thread's life with the store's clones.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{insert, new_cmd, setup, T0};
use crate::store::sqlite::SqliteStore;
use crate::store::{ConnId, InsertOutcome, Priority, Store, StoreError, StoreResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_all_land() {
    let (_dir, store) = setup().await;
    let tasks: Vec<_> = (0..2_000)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let agent = if i % 2 == 0 { "a1" } else { "a2" };
                let push = if i % 3 == 0 { Some(i as ConnId) } else { None };
                store
                    .insert_command(
                        new_cmd(&format!("c{i}"), agent, Priority::Normal, T0 + i),
                        push,
                    )
                    .await
            })
        })
        .collect();
    let mut seqs = HashSet::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            InsertOutcome::Created(row) => assert!(seqs.insert(row.seq)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs.len(), 2_000);
    let a1 = store.commands("a1", None, 5_000).await.unwrap();
    let a2 = store.commands("a2", None, 5_000).await.unwrap();
    assert_eq!((a1.len(), a2.len()), (1_000, 1_000));
    assert!(a1.windows(2).all(|w| w[0].seq < w[1].seq));
    for i in 0..2_000 {
        assert!(store.command(&format!("c{i}")).await.unwrap().is_some());
    }
    assert_eq!(
        store.agent("a1").await.unwrap().unwrap().pending_commands,
        1_000
    );
    let stats = store.stats();
    assert!(stats.ops >= 2_000 + 2, "{stats:?}");
}

/// Blocks the writer thread until `release` fires, so that what is sent
/// meanwhile lands in one batch.
async fn block_writer(
    store: &SqliteStore,
) -> (
    tokio::task::JoinHandle<StoreResult<()>>,
    std::sync::mpsc::Sender<()>,
) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = oneshot::channel();
    let s = store.clone();
    let handle = tokio::spawn(async move {
        s.call(move |_, _| {
            let _ = started_tx.send(());
            let _ = wait.recv();
            Ok(())
        })
        .await
    });
    started_rx.await.unwrap();
    (handle, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_and_isolates_failures() {
    let (_dir, store) = setup().await;
    let before = store.stats();
    let (blocker, release) = block_writer(&store).await;

    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.insert_command(new_cmd(&format!("b{i}"), "a1", Priority::Normal, T0), None)
                .await
                .map(|o| matches!(o, InsertOutcome::Created(_)))
        }));
    }
    // An operation that writes and then fails: only it is rolled back.
    let s = store.clone();
    let failing = tokio::spawn(async move {
        s.call(|c, _| {
            c.execute(
                "INSERT INTO agents (id, created_at) VALUES ('ghost', 1)",
                [],
            )?;
            c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        })
        .await
    });
    let s = store.clone();
    let panicking = tokio::spawn(async move {
        s.call(|c, _| -> rusqlite::Result<()> {
            c.execute(
                "INSERT INTO agents (id, created_at) VALUES ('ghost2', 1)",
                [],
            )?;
            panic!("test panic in a store operation")
        })
        .await
    });
    // Let every task enqueue its op while the writer is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert!(matches!(
        failing.await.unwrap(),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        panicking.await.unwrap(),
        Err(StoreError::Backend(_))
    ));
    assert!(store.agent("ghost").await.unwrap().is_none());
    assert!(store.agent("ghost2").await.unwrap().is_none());
    assert_eq!(store.commands("a1", None, 1_000).await.unwrap().len(), 100);
    // The store still works after the failures.
    insert(&store, new_cmd("after", "a1", Priority::Normal, T0)).await;

    let after = store.stats();
    let ops = after.ops - before.ops;
    let batches = after.batches - before.batches;
    // blocker + 100 inserts + 2 failing + 3 reads + 1 insert, in far fewer
    // transactions than operations.
    assert!(ops >= 107, "{after:?}");
    assert!(batches <= 10, "{batches} batches for {ops} ops");
}

#[tokio::test]
async fn clones_keep_the_store_open() {
    let (_dir, store) = setup().await;
    let clone = store.clone();
    drop(store);
    // The thread lives while a clone does.
    assert!(clone.agent("a1").await.unwrap().is_some());
}
