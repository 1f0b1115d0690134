//! The SQLite store's own tests, by concern: its writer thread (group
//! commit), its schema (indexes, reopening a file) and a throughput check.
//! What every store must do is tested once for all stores in
//! `store/contract/`. Each test opens its own database in a temporary
//! directory.

mod schema;
mod throughput;
mod writer;

use super::SqliteStore;
use crate::store::contract::{new_cmd, POLICY, T0};
use crate::store::{CommandRow, DeliveryPolicy, InsertOutcome, NewCommand, Store};

fn open_with(dir: &tempfile::TempDir, policy: DeliveryPolicy) -> SqliteStore {
    SqliteStore::open(&dir.path().join("edge.db"), policy).expect("open store")
}

async fn setup() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, POLICY);
    assert!(store.upsert_agent("a1", Some("+100"), T0).await.unwrap());
    assert!(store.upsert_agent("a2", None, T0).await.unwrap());
    (dir, store)
}

async fn insert(store: &SqliteStore, cmd: NewCommand) -> CommandRow {
    match store.insert_command(cmd, None).await.unwrap() {
        InsertOutcome::Created(row) => row,
        other => panic!("expected Created, got {other:?}"),
    }
}
