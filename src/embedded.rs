//! The embedded default: edge-server in this process on an ephemeral
//! loopback port, on a SQLite file in a temporary directory, with short
//! timers so the whole suite runs in seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_server::{Config, RunningServer};
use tokio::sync::Mutex;

use crate::target::Restarter;

pub const EDGE_SECRET: &str = "embedded-edge-secret";
pub const ADMIN_TOKEN: &str = "embedded-admin-token";
pub const REGISTRATION_TOKEN: &str = "embedded-registration-token";

pub struct Embedded {
    pub addr: SocketAddr,
    server: Arc<Mutex<Option<RunningServer>>>,
    config: Config,
    _dir: tempfile::TempDir,
}

/// Short timers: pings 500 ms / timeout 1.5 s, acks 1 s, 3 attempts; the
/// spec's rate limits and backoff stay as they are.
pub fn config(database_url: &str) -> Config {
    let mut config = Config::for_secrets(EDGE_SECRET, ADMIN_TOKEN, database_url);
    config.registration_token = Some(REGISTRATION_TOKEN.into());
    config.ping_interval = Duration::from_millis(500);
    config.ping_timeout = Duration::from_millis(1500);
    config.ack_timeout = Duration::from_secs(1);
    config.max_attempts = 3;
    config.shutdown_grace = Duration::from_secs(3);
    config.log_level = "warn".into();
    config
}

impl Embedded {
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Embedded> {
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite://{}", dir.path().join("edge.db").display());
        let mut config = config(&db);
        adjust(&mut config);
        let listener = edge_server::bind(([127, 0, 0, 1], 0).into())?;
        let server = edge_server::start(config.clone(), listener).await?;
        Ok(Embedded {
            addr: server.addr,
            server: Arc::new(Mutex::new(Some(server))),
            config,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop (close 1012), then a new server on the same port and file.
    pub fn restarter(&self) -> Restarter {
        let (server, config, addr) = (self.server.clone(), self.config.clone(), self.addr);
        Arc::new(move || {
            let (server, config) = (server.clone(), config.clone());
            Box::pin(async move {
                let mut slot = server.lock().await;
                if let Some(running) = slot.take() {
                    running.stop().await;
                }
                let listener = bind_again(addr).await?;
                *slot = Some(
                    edge_server::start(config, listener)
                        .await
                        .map_err(|e| e.to_string())?,
                );
                Ok(())
            })
        })
    }

    pub async fn stop(self) {
        if let Some(server) = self.server.lock().await.take() {
            server.stop().await;
        }
    }
}

/// The old listener is closed, but the port may take a moment to free up.
async fn bind_again(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let mut last = String::new();
    for _ in 0..50 {
        match edge_server::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("cannot listen on {addr} again: {last}"))
}
