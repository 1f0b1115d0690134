//! The state every handler and session shares.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::Registry;
use crate::store::{ConnId, Store};

const MINUTE: Duration = Duration::from_secs(60);

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Other instances sharing the store (none on SQLite).
    pub cluster: Arc<dyn Cluster>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub auth: Authenticator,
    /// WS-RATE-1: connection attempts per agent, counted after auth.
    pub connect_limiter: RateLimiter<String>,
    /// WS-RATE-1: rejected upgrades per remote address.
    pub reject_limiter: RateLimiter<IpAddr>,
    /// WS-RATE-2: messages per agent.
    pub message_limiter: RateLimiter<String>,
    /// WS-RATE-3: one answered ping per interval per agent, so a
    /// reconnect does not earn another.
    pub ping_limiter: RateLimiter<String>,
    /// Cancelled when the server starts shutting down (WS-CONN-5).
    pub shutdown: CancellationToken,
    /// Session tasks, so shutdown can wait for their 1012 closes.
    pub sessions: TaskTracker,
    next_conn: AtomicI64,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        cluster: Arc<dyn Cluster>,
        shutdown: CancellationToken,
    ) -> Self {
        // Connection ids are unique across restarts and instances, so a
        // stored `conn_id` never matches another connection.
        let first_conn = cluster.first_conn_id();
        AppState {
            auth: Authenticator::new(config.edge_secret.clone(), config.token_kinds),
            connect_limiter: RateLimiter::new(config.rate_connects_per_min, MINUTE),
            reject_limiter: RateLimiter::new(config.rate_rejects_per_min, MINUTE),
            message_limiter: RateLimiter::new(config.rate_messages_per_min, MINUTE),
            ping_limiter: RateLimiter::new(1, config.rate_ping_interval),
            registry: Registry::default(),
            metrics: Metrics::default(),
            sessions: TaskTracker::new(),
            next_conn: AtomicI64::new(first_conn),
            config,
            store,
            cluster,
            shutdown,
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
