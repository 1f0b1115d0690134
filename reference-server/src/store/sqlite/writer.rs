//! The writer thread and its group commit.
//!
//! A dedicated OS thread (`edge-store`) owns the only [`Connection`]. Every
//! store operation is sent to it as an [`Op`] (a closure plus the oneshot
//! channel its caller awaits). The thread blocks for the first operation,
//! takes up to [`MAX_BATCH`]` - 1` more that are already waiting, and runs
//! them all in one `BEGIN IMMEDIATE` transaction, each inside its own
//! `SAVEPOINT` so a failing operation rolls back only itself. It then
//! `COMMIT`s once (one fsync for the whole batch, `synchronous=FULL`) and only
//! then answers every caller: a caller that got `Ok` knows its change is on
//! disk (WS-DLV-6, WS-API-2). If the commit fails, every operation of the
//! batch gets an error.
//!
//! Reads go through the same thread, so they always see every write that has
//! been answered before them (WS-API-3).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::backend;
use crate::store::CommitStats;
use crate::store::{DeliveryPolicy, StoreError, StoreResult};

/// Most operations committed together in one transaction.
const MAX_BATCH: usize = 513;

/// One queued operation: run it (inside a savepoint), then answer its caller
/// once the batch's fate is known.
pub(super) trait Op: Send {
    /// Runs the operation; returns whether it succeeded.
    fn run(&mut self, conn: &Connection, policy: &DeliveryPolicy) -> bool;
    /// Answers the caller: its own error if it failed, else `batch_error` if
    /// the batch did not commit, else its result.
    fn reply(self: Box<Self>, batch_error: Option<&str>);
}

/// Where operations are sent to the writer thread.
pub(super) type OpSender = mpsc::Sender<Box<dyn Op>>;

/// An [`Op`] made of a closure; its caller awaits the answer on `tx`'s receiver.
pub(super) struct Call<F, R> {
    f: Option<F>,
    result: Option<StoreResult<R>>,
    tx: oneshot::Sender<StoreResult<R>>,
}

impl<F, R> Call<F, R> {
    /// An operation that will run `f`, and where its answer will arrive.
    pub(super) fn new(f: F) -> (Self, oneshot::Receiver<StoreResult<R>>) {
        let (tx, rx) = oneshot::channel();
        let call = Call {
            f: Some(f),
            result: None,
            tx,
        };
        (call, rx)
    }
}

impl<F, R> Op for Call<F, R>
where
    R: Send,
    F: FnOnce(&Connection, &DeliveryPolicy) -> rusqlite::Result<R> + Send,
{
    fn run(&mut self, conn: &Connection, policy: &DeliveryPolicy) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = match catch_unwind(AssertUnwindSafe(|| f(conn, policy))) {
            Ok(r) => r.map_err(backend),
            Err(_) => Err(StoreError::Backend("store operation panicked".into())),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn reply(self: Box<Self>, batch_error: Option<&str>) {
        let answer = match (self.result, batch_error) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(why)) => Err(StoreError::Backend(why.to_owned())),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Backend("store operation did not run".into())),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.tx.send(answer);
    }
}

/// What the writer thread has done so far; read by `SqliteStore::stats`.
#[derive(Default)]
pub(super) struct Counters {
    batches: AtomicU64,
    ops: AtomicU64,
}

impl Counters {
    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            acks_set_as_pushed: 0,
        }
    }
}

pub(super) struct Worker {
    conn: Connection,
    policy: DeliveryPolicy,
    counters: Arc<Counters>,
}

impl Worker {
    /// Starts the `edge-store` thread on `conn`. It runs what is sent on the
    /// returned channel and ends when every sender is gone.
    pub(super) fn spawn(
        conn: Connection,
        policy: DeliveryPolicy,
        counters: Arc<Counters>,
    ) -> std::io::Result<(OpSender, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Box<dyn Op>>();
        let worker = Worker {
            conn,
            policy,
            counters,
        };
        let thread = std::thread::Builder::new()
            .name("edge-store".into())
            .spawn(move || worker.run(rx))?;
        Ok((tx, thread))
    }

    fn run(self, rx: mpsc::Receiver<Box<dyn Op>>) {
        let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
        // Ends when every sender is gone (the last `SqliteStore` was dropped).
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn run_batch(&self, batch: &mut Vec<Box<dyn Op>>) {
        let mut failure = self
            .exec("BEGIN IMMEDIATE")
            .err()
            .map(|e| format!("cannot begin a transaction: {e}"));
        if failure.is_none() {
            for op in batch.iter_mut() {
                if let Err(e) = self.exec("SAVEPOINT op") {
                    failure = Some(format!("cannot open a savepoint: {e}"));
                    break;
                }
                let ok = op.run(&self.conn, &self.policy);
                let end = if ok {
                    self.exec("RELEASE op")
                } else {
                    // Only this operation is undone; the batch goes on.
                    self.exec("ROLLBACK TO op")
                        .and_then(|()| self.exec("RELEASE op"))
                };
                if let Err(e) = end {
                    failure = Some(format!("cannot close a savepoint: {e}"));
                    break;
                }
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (I/O error, full disk…).
                    failure = Some("the transaction was rolled back".into());
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.exec("COMMIT") {
                failure = Some(format!("commit failed: {e}"));
            }
        }
        if failure.is_some() && !self.conn.is_autocommit() {
            let _ = self.exec("ROLLBACK");
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Only now, after the commit, does anybody hear of the outcome.
        for op in batch.drain(..) {
            op.reply(failure.as_deref());
        }
    }
}
