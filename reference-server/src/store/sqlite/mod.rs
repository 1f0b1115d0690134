//! The embedded [`Store`]: one SQLite file, one writer thread, group commit.
//!
//! Every trait method hands the writer thread an operation and awaits its
//! answer, which comes only after the batch holding it is committed: a caller
//! that got `Ok` knows its change is on disk (WS-DLV-6, WS-API-2), and reads
//! see every write answered before them (WS-API-3).
//!
//! - `writer.rs`: the thread, batching, savepoints, commit, replies.
//! - `schema.rs`: pragmas, tables and indexes, migrations.
//! - `agents.rs`, `commands.rs`, `delivery.rs`: the SQL of each operation;
//!   `rows.rs` reads result rows into the store's types.
//!
//! To add an operation: a function `(&Connection, …) -> rusqlite::Result<T>`
//! in the file of its concern, and a trait method here that passes it to
//! `SqliteStore::call`. If it runs per command or per sweep, name its SQL and
//! add it to the `hot_queries_use_indexes` test.

mod agents;
mod commands;
mod delivery;
mod rows;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::Connection;
use serde_json::Value;

use self::writer::{Call, Counters, OpSender, Worker};
use super::{
    AckKind, AckOutcome, AgentRow, Claim, CommandRow, CommitStats, ConnId, DeliveryPolicy,
    HistoryRow, InsertOutcome, Millis, NewCommand, RetryOutcome, Status, Store, StoreError,
    StoreResult, Swept,
};
use crate::raw_json::RawJson;

/// SQLite-backed [`Store`]. Cheap to clone; the writer thread ends (after
/// finishing the batch in hand) when the last clone is dropped, and the drop
/// waits for it, so the file is closed once the store is gone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<OpSender>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, brings its schema up
    /// to date and starts the writer thread.
    pub fn open(path: &Path, policy: DeliveryPolicy) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path).map_err(backend)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;

        let counters = Arc::new(Counters::default());
        let (tx, thread) = Worker::spawn(conn, policy, counters.clone())
            .map_err(|e| StoreError::Backend(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                counters,
            }),
        })
    }

    /// Group-commit counters (for metrics).
    pub fn stats(&self) -> CommitStats {
        self.inner.counters.stats()
    }

    /// Runs `f` on the writer thread inside the next batch; answers once the
    /// batch is committed.
    async fn call<R, F>(&self, f: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &DeliveryPolicy) -> rusqlite::Result<R> + Send + 'static,
    {
        let (op, rx) = Call::new(f);
        self.inner
            .tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Box::new(op))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

// Each method copies what it borrows (the operation runs on another thread)
// and submits the function that runs it; the rule ids are kept there.
#[async_trait]
impl Store for SqliteStore {
    async fn upsert_agent(
        &self,
        id: &str,
        user_phone: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let id = id.to_owned();
        let phone = user_phone.map(str::to_owned);
        self.call(move |c, _| agents::upsert(c, &id, phone.as_deref(), now))
            .await
    }

    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRow>> {
        let id = id.to_owned();
        self.call(move |c, _| agents::get(c, &id)).await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRow>> {
        self.call(|c, _| agents::list(c)).await
    }

    async fn set_agent_status(&self, id: &str, status: &RawJson, now: Millis) -> StoreResult<()> {
        let id = id.to_owned();
        // WS-CMD-2: the text as the agent sent it.
        let status = status.as_str().to_owned();
        self.call(move |c, _| agents::set_status(c, &id, &status, now))
            .await
    }

    async fn record_connect(
        &self,
        agent_id: &str,
        conn: ConnId,
        remote_addr: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let agent_id = agent_id.to_owned();
        let remote_addr = remote_addr.to_owned();
        self.call(move |c, _| agents::record_connect(c, &agent_id, conn, &remote_addr, now))
            .await
    }

    async fn record_disconnect(
        &self,
        agent_id: &str,
        conn: ConnId,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let agent_id = agent_id.to_owned();
        let reason = reason.to_owned();
        self.call(move |c, _| agents::record_disconnect(c, &agent_id, conn, &reason, now))
            .await
    }

    async fn history(&self, agent_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
        let agent_id = agent_id.to_owned();
        self.call(move |c, _| agents::history(c, &agent_id, limit))
            .await
    }

    async fn insert_command(
        &self,
        command: NewCommand,
        push_to: Option<ConnId>,
    ) -> StoreResult<InsertOutcome> {
        self.call(move |c, p| commands::insert(c, p, &command, push_to))
            .await
    }

    async fn command(&self, id: &str) -> StoreResult<Option<CommandRow>> {
        let id = id.to_owned();
        self.call(move |c, _| commands::by_id(c, &id)).await
    }

    async fn commands(
        &self,
        agent_id: &str,
        status: Option<Status>,
        limit: u32,
    ) -> StoreResult<Vec<CommandRow>> {
        let agent_id = agent_id.to_owned();
        self.call(move |c, _| commands::list(c, &agent_id, status, limit))
            .await
    }

    async fn claim(&self, claim: Claim, now: Millis) -> StoreResult<Vec<CommandRow>> {
        self.call(move |c, p| delivery::claim(c, p, claim, now))
            .await
    }

    async fn ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome> {
        let agent_id = agent_id.to_owned();
        let command_id = command_id.to_owned();
        self.call(move |c, _| commands::ack(c, &agent_id, &command_id, ack, now))
            .await
    }

    async fn retry(&self, command_id: &str, _now: Millis) -> StoreResult<RetryOutcome> {
        let command_id = command_id.to_owned();
        self.call(move |c, _| commands::retry(c, &command_id)).await
    }

    async fn sweep(&self, now: Millis) -> StoreResult<Vec<Swept>> {
        self.call(move |c, p| delivery::sweep(c, p, now)).await
    }

    async fn record_event(
        &self,
        agent_id: &str,
        event_id: &str,
        event_type: &str,
        details: &Value,
        now: Millis,
    ) -> StoreResult<bool> {
        let agent_id = agent_id.to_owned();
        let event_id = event_id.to_owned();
        let event_type = event_type.to_owned();
        let details = details.to_string();
        self.call(move |c, _| {
            agents::record_event(c, &agent_id, &event_id, &event_type, &details, now)
        })
        .await
    }

    async fn status_counts(&self) -> StoreResult<Vec<(Status, u64)>> {
        self.call(|c, _| commands::status_counts(c)).await
    }
}
