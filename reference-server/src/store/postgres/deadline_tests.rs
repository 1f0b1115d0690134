//! Connection deadlines: a database that never answers costs a request at
//! most its connect timeout, never a hung caller (`DEFAULT_CONNECT_TIMEOUT`
//! and its neighbours in `mod.rs`). No PostgreSQL is needed: the server here
//! is a real loopback socket that accepts and then says nothing, as a proxy
//! in front of a dead database or a half-failed-over host does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::batch::Request;
use super::writer::Writer;
use super::{Db, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVES_IDLE, DEFAULT_TCP_USER_TIMEOUT};
use crate::store::contract::POLICY;
use crate::store::{StoreError, StoreResult};

/// What the tests wait at most, far above the 1 s deadlines they set: a
/// caller still waiting then hangs (the bug), it is not slow.
const HUNG: Duration = Duration::from_secs(20);

/// A TCP server on loopback that accepts every connection, keeps it open
/// and never sends a byte. Returns its port and how many it accepted.
async fn silent_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    (port, accepted)
}

/// A database URL to the silent server, with a password that must never
/// appear in an error.
fn silent_url(port: u16, connect_timeout_s: u64) -> String {
    format!(
        "postgres://edge:hunter2-secret@127.0.0.1:{port}/edge?connect_timeout={connect_timeout_s}"
    )
}

/// Asserts `result` is the connect deadline's `Unavailable` error (an API
/// `503`), naming the limit and how to change it, and no secret.
fn assert_timed_out<T: std::fmt::Debug>(result: StoreResult<T>) {
    match result {
        Err(StoreError::Unavailable(why)) => {
            assert!(why.contains("within 1s"), "{why}");
            assert!(why.contains("connect_timeout"), "{why}");
            assert!(!why.contains("hunter2"), "the password leaked: {why}");
        }
        other => panic!("expected the connect deadline's Unavailable, got {other:?}"),
    }
}

/// tokio-postgres bounds only the TCP connect, which the silent server
/// completes at once; the startup message then waits for an answer forever.
#[tokio::test]
async fn a_dedicated_connection_to_a_silent_server_gives_up_at_connect_timeout() {
    let (port, accepted) = silent_server().await;
    let db = Db::new(&silent_url(port, 1)).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(HUNG, db.connect_raw())
        .await
        .expect("the connection attempt hung past its connect timeout");
    assert_timed_out(result.map(|_| ()));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_to_a_silent_server_gives_up_at_connect_timeout() {
    let (port, accepted) = silent_server().await;
    let db = Db::new(&silent_url(port, 1)).unwrap();
    let result = tokio::time::timeout(HUNG, db.client())
        .await
        .expect("the pool hung past the connect timeout");
    assert_timed_out(result.map(|_| ()));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A batch that fails because the database cannot be reached answers every
/// request at once: run again one by one, each would wait for its own
/// connection attempt, and the last caller would wait the timeout times the
/// batch's size.
#[tokio::test]
async fn a_batch_that_cannot_reach_the_database_fails_together_not_one_by_one() {
    let (port, accepted) = silent_server().await;
    let db = Db::new(&silent_url(port, 1)).unwrap();
    let writer = Writer::start(db, POLICY);
    let retry = |id: &str| {
        writer.call(Request::Retry {
            command_id: id.to_string(),
        })
    };
    // Each call queues its request before this task first yields (on the
    // test's one thread), so the writer takes all four as one batch.
    let answers = tokio::time::timeout(
        HUNG,
        futures_util::future::join_all([retry("c1"), retry("c2"), retry("c3"), retry("c4")]),
    )
    .await
    .expect("the batch's callers hung");
    for answer in answers {
        assert_timed_out(answer.map(|_| ()));
    }
    assert_eq!(writer.stats().batches, 1, "the batch was run again");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// Where the URL sets no timeouts, ours apply; where it sets them, its own.
#[test]
fn the_urls_timeouts_win_over_the_defaults() {
    let defaults = Db::new("postgres://edge@127.0.0.1:5432/edge").unwrap();
    assert_eq!(defaults.connect_deadline, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(
        defaults.config.get_connect_timeout(),
        Some(&DEFAULT_CONNECT_TIMEOUT)
    );
    assert_eq!(
        defaults.config.get_tcp_user_timeout(),
        Some(&DEFAULT_TCP_USER_TIMEOUT)
    );
    assert_eq!(
        defaults.config.get_keepalives_idle(),
        DEFAULT_KEEPALIVES_IDLE
    );

    let own = Db::new(
        "postgres://edge@127.0.0.1:5432/edge?connect_timeout=3&tcp_user_timeout=5&keepalives_idle=60",
    )
    .unwrap();
    assert_eq!(own.connect_deadline, Duration::from_secs(3));
    assert_eq!(
        own.config.get_tcp_user_timeout(),
        Some(&Duration::from_secs(5))
    );
    assert_eq!(own.config.get_keepalives_idle(), Duration::from_secs(60));
}
