//! Group commit on PostgreSQL: the same idea as the SQLite writer.
//!
//! Inserts, acks, claims and retries are sent to [`WRITERS`] writer tasks
//! per instance. A writer waits for the first request, takes every request
//! already waiting (up to [`MAX_BATCH`]) and runs them in one transaction
//! (`batch.rs`): the batching window is however long the previous
//! transaction took, so a quiet instance answers at once and a busy one puts
//! more in each commit. Every caller is answered only after the `COMMIT`
//! (WS-DLV-6, WS-API-2). If the batch fails as a whole (a lost connection, a
//! value PostgreSQL refuses), each request is run again alone, so only the
//! one at fault gets the error.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::warn;

use super::batch::{self, Answer, Request};
use super::Db;
use crate::store::{DeliveryPolicy, StoreError, StoreResult};

/// Most requests committed together.
const MAX_BATCH: usize = 512;
/// Writer tasks per instance: while one waits for its commit's WAL flush,
/// another gathers the next batch.
const WRITERS: usize = 2;

type Job = (Request, oneshot::Sender<StoreResult<Answer>>);

/// Where store calls send their requests. Cheap to clone; the writers end
/// when the last clone is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Writer {
    pub(super) fn start(db: Db, policy: DeliveryPolicy) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(write(db.clone(), policy, rx.clone()));
        }
        Writer { tx }
    }

    /// Runs `request` in the next batch; returns once it is committed.
    pub(super) async fn call(&self, request: Request) -> StoreResult<Answer> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// One writer: batches until every sender is gone.
async fn write(db: Db, policy: DeliveryPolicy, rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
                return;
            }
        }
        let (requests, replies): (Vec<Request>, Vec<_>) = jobs.into_iter().unzip();
        match batch::run(&db, &policy, &requests).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if requests.len() == 1 => {
                let _ = replies.into_iter().next().map(|r| r.send(Err(e)));
            }
            Err(e) => {
                warn!(
                    batch = requests.len(),
                    "a batch failed ({e}); running its requests one by one"
                );
                for (request, reply) in requests.into_iter().zip(replies) {
                    let answer = batch::run(&db, &policy, std::slice::from_ref(&request))
                        .await
                        .and_then(|mut a| a.pop().ok_or_else(batch::mismatch));
                    let _ = reply.send(answer);
                }
            }
        }
    }
}
