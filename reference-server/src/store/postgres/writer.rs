//! Group commit on PostgreSQL: the same idea as the SQLite writer.
//!
//! Each instance has two writer tasks: one for inserts, acks and retries,
//! whose commits wait for the WAL flush, and one for claims, whose commits
//! do not (`batch.rs`), so a claim never waits behind a flush. Only one
//! durable writer: several would each commit small batches, and their
//! commits would queue on the WAL flush (PostgreSQL flushes one at a time),
//! so each waited longer; one writer's batches grow with the flush time
//! instead (measured in `reports/edge-server-postgres.md`).
//!
//! A writer waits for the first request, takes every request already
//! waiting (up to [`MAX_BATCH`]) and runs them in one transaction
//! (`batch.rs`): the batching window is however long the previous
//! transaction took, so a quiet instance answers at once and a busy one puts
//! more in each commit. If all it took are acks over the sockets that got
//! the pushes (the usual case on an instance holding agents), they go first
//! as one compare-and-set (`pushed_acks.rs`), one round trip, and only what
//! that could not write goes in a batch. Every caller is answered only
//! after the `COMMIT` (WS-DLV-6, WS-API-2). If the batch fails as a whole (a value PostgreSQL
//! refuses), each request is run again alone, so only the one at fault gets
//! the error; if it failed because the database cannot be reached, every
//! request gets that answer at once (`503`, and the client retries).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::batch::{self, Answer, Request};
use super::{pushed_acks, Db};
use crate::cluster::postgres::STALE;
use crate::store::{CommitStats, DeliveryPolicy, StoreError, StoreResult};
use crate::wire::now_millis;

/// Most requests committed together.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<StoreResult<Answer>>;
type Job = (Request, Reply);

/// Where store calls send their requests. Cheap to clone; the writers end
/// when the last clone is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    durable: mpsc::UnboundedSender<Job>,
    claims: mpsc::UnboundedSender<Job>,
    counts: Arc<Counts>,
}

/// What [`Writer::stats`] reports.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    requests: AtomicU64,
    acks_set_as_pushed: AtomicU64,
}

impl Writer {
    pub(super) fn start(db: Db, policy: DeliveryPolicy) -> Writer {
        let counts = Arc::new(Counts::default());
        let writer = || {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write(db.clone(), policy, rx, counts.clone()));
            tx
        };
        let (durable, claims) = (writer(), writer());
        Writer {
            durable,
            claims,
            counts,
        }
    }

    /// Batches run so far (retries of a failed batch's requests included).
    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            ops: self.counts.requests.load(Ordering::Relaxed),
            acks_set_as_pushed: self.counts.acks_set_as_pushed.load(Ordering::Relaxed),
        }
    }

    /// Runs `request` in the next batch; returns once it is committed.
    pub(super) async fn call(&self, request: Request) -> StoreResult<Answer> {
        let writer = match request {
            Request::Claim { .. } => &self.claims,
            _ => &self.durable,
        };
        let (reply, answer) = oneshot::channel();
        writer
            .send((request, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// One writer: batches until every sender is gone.
async fn write(
    db: Db,
    policy: DeliveryPolicy,
    mut rx: mpsc::UnboundedReceiver<Job>,
    counts: Arc<Counts>,
) {
    loop {
        let mut jobs = Vec::new();
        if rx.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        // Mixed with other requests, acks go in the batch: two round trips
        // either way.
        let pushed_acks_only = jobs
            .iter()
            .all(|(request, _)| matches!(request, Request::Ack { pushed: true, .. }));
        if pushed_acks_only {
            jobs = set_as_pushed(&db, jobs, &counts).await;
            if jobs.is_empty() {
                continue;
            }
        }
        answer(&db, &policy, jobs, &counts).await;
    }
}

/// Answers the acks one compare-and-set wrote (`pushed_acks.rs`) and
/// returns the jobs left for a batch, in their order: all of them if it
/// failed, unless the database cannot be reached (each gets that answer).
async fn set_as_pushed(db: &Db, jobs: Vec<Job>, counts: &Counts) -> Vec<Job> {
    let requests: Vec<&Request> = jobs.iter().map(|(request, _)| request).collect();
    let outcomes = match pushed_acks::set_as_pushed(db, &requests).await {
        Ok(outcomes) => outcomes,
        Err(StoreError::Unavailable(why)) => {
            unavailable(jobs.into_iter().map(|(_, reply)| reply), &why);
            return Vec::new();
        }
        Err(e) => {
            warn!(
                acks = jobs.len(),
                "acks as pushed failed ({e}); running them in a batch"
            );
            return jobs;
        }
    };
    let mut left = Vec::new();
    for ((request, reply), outcome) in jobs.into_iter().zip(outcomes) {
        match outcome {
            Some(outcome) => {
                counts.acks_set_as_pushed.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Ok(Answer::Ack(outcome)));
            }
            None => left.push((request, reply)),
        }
    }
    left
}

/// Runs `jobs` in one batch and answers each (see the module doc for how a
/// failed batch is answered).
async fn answer(db: &Db, policy: &DeliveryPolicy, jobs: Vec<Job>, counts: &Counts) {
    let (requests, replies): (Vec<Request>, Vec<_>) = jobs.into_iter().unzip();
    match run(db, policy, &requests, counts).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) if requests.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        // No request is at fault when the database cannot be reached,
        // and one by one, each would wait for its own failed connection
        // attempt (up to the connect timeout each) before the next.
        Err(StoreError::Unavailable(why)) => unavailable(replies.into_iter(), &why),
        Err(e) => {
            warn!(
                batch = requests.len(),
                "a batch failed ({e}); running its requests one by one"
            );
            for (request, reply) in requests.into_iter().zip(replies) {
                let answer = run(db, policy, std::slice::from_ref(&request), counts)
                    .await
                    .and_then(|mut a| a.pop().ok_or_else(batch::mismatch));
                let _ = reply.send(answer);
            }
        }
    }
}

/// Answers each caller that the database cannot be reached.
fn unavailable(replies: impl ExactSizeIterator<Item = Reply>, why: &str) {
    warn!(
        requests = replies.len(),
        "the database cannot be reached: {why}"
    );
    for reply in replies {
        let _ = reply.send(Err(StoreError::Unavailable(why.to_string())));
    }
}

/// Runs one batch, counted.
async fn run(
    db: &Db,
    policy: &DeliveryPolicy,
    requests: &[Request],
    counts: &Counts,
) -> StoreResult<Vec<Answer>> {
    counts.batches.fetch_add(1, Ordering::Relaxed);
    counts
        .requests
        .fetch_add(requests.len() as u64, Ordering::Relaxed);
    let alive_since = now_millis() - STALE.as_millis() as i64;
    batch::run(db, policy, requests, alive_since).await
}
