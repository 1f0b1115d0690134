//! The embedded default: edge-server in this process on an ephemeral
//! loopback port, on a SQLite file in a temporary directory, with short
//! timers so the whole suite runs in seconds.
//!
//! Each start of the server gets its own tokio runtime, so the harness can
//! crash it as `kill -9` would (WS-DLV-6): dropping the runtime drops every
//! task at its next await, with no close frame, no graceful drain and no
//! flush. What was committed is in the SQLite file; nothing else survives.
//! Its threads log (at `config.log_level`, `info` in process) to a file
//! the log checks read (WS-AUTH-5, WS-OBS-1), and nowhere else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_server::{Config, RunningServer};
use tokio::sync::Mutex;

use crate::target::{Lifecycle, Restarter, Target};

pub const EDGE_SECRET: &str = "embedded-edge-secret";
pub const ADMIN_TOKEN: &str = "embedded-admin-token";
pub const REGISTRATION_TOKEN: &str = "embedded-registration-token";

pub struct Embedded {
    pub addr: SocketAddr,
    server: Arc<Mutex<Option<Incarnation>>>,
    config: Config,
    /// Where the server logs.
    log: PathBuf,
    /// The SQLite file's and the log's directory.
    _dir: tempfile::TempDir,
}

/// Short timers: pings 500 ms / timeout 1.5 s, acks 1 s, 3 attempts; the
/// spec's rate limits and backoff stay as they are; `info` logs.
pub fn config(database_url: &str) -> Config {
    let mut config = Config::for_secrets(EDGE_SECRET, ADMIN_TOKEN, database_url);
    config.registration_token = Some(REGISTRATION_TOKEN.into());
    config.ping_interval = Duration::from_millis(500);
    config.ping_timeout = Duration::from_millis(1500);
    config.ack_timeout = Duration::from_secs(1);
    config.max_attempts = 3;
    config.shutdown_grace = Duration::from_secs(3);
    // In process it logs to its own file, for the log checks (the spec's
    // lines are `info`).
    config.log_level = "info".into();
    config
}

impl Embedded {
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Embedded> {
        let dir = tempfile::tempdir()?;
        let db = format!("sqlite://{}", dir.path().join("edge.db").display());
        let mut config = config(&db);
        adjust(&mut config);
        Embedded::start_in(config, dir).await
    }

    /// On the caller's configuration (e.g. a PostgreSQL database shared
    /// with other instances), on an ephemeral loopback port.
    pub async fn start_with(config: Config) -> anyhow::Result<Embedded> {
        Embedded::start_in(config, tempfile::tempdir()?).await
    }

    async fn start_in(config: Config, dir: tempfile::TempDir) -> anyhow::Result<Embedded> {
        let log = dir.path().join("edge-server.log");
        let server = Incarnation::start(config.clone(), ([127, 0, 0, 1], 0).into(), &log)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Embedded {
            addr: server.addr(),
            server: Arc::new(Mutex::new(Some(server))),
            config,
            log,
            _dir: dir,
        })
    }

    /// A target for this server, with its credentials and lifecycle.
    pub fn target(&self) -> Target {
        let mut target = Target::new(&self.url()).expect("an http:// URL");
        target.edge_secret = Some(self.config.edge_secret.clone());
        target.admin_token = Some(self.config.admin_token.clone());
        target.registration_token = self.config.registration_token.clone();
        target.adopt(self.lifecycle());
        target
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A graceful restart (close 1012) and a crash, each followed by a new
    /// server on the same port and file.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            restart: self.restarter(false),
            crash: self.restarter(true),
            log: Some(self.log.clone()),
        }
    }

    fn restarter(&self, crash: bool) -> Restarter {
        let (server, config, addr) = (self.server.clone(), self.config.clone(), self.addr);
        let log = self.log.clone();
        Arc::new(move || {
            let (server, config, log) = (server.clone(), config.clone(), log.clone());
            Box::pin(async move {
                let mut slot = server.lock().await;
                if let Some(running) = slot.take() {
                    if crash {
                        drop(running);
                    } else {
                        running.stop().await;
                    }
                }
                *slot = Some(Incarnation::start(config, addr, &log).await?);
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

/// One run of the server, on a runtime of its own. Dropping it without
/// [`stop`](Incarnation::stop) is the crash.
struct Incarnation {
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<RunningServer>,
}

impl Incarnation {
    async fn start(config: Config, addr: SocketAddr, log: &Path) -> Result<Incarnation, String> {
        let logger = logger(&config.log_level, log)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("edge-server")
            // The server's threads only: the harness's own stay silent.
            .on_thread_start(move || {
                std::mem::forget(tracing::dispatcher::set_default(&logger));
            })
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for edge-server: {e}"))?;
        // Bound inside the server's runtime: the listener belongs to its reactor.
        let server = runtime
            .spawn(async move {
                let listener = bind_again(addr).await?;
                edge_server::start(config, listener)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
        Ok(Incarnation {
            runtime: Some(runtime),
            server: Some(server),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("a started server").addr
    }

    /// Graceful: every socket closed with 1012, pending work drained.
    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }
}

impl Drop for Incarnation {
    fn drop(&mut self) {
        // Not a plain drop: that blocks, and panics inside an async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Plain-text log lines at `level`, appended to `path`.
fn logger(level: &str, path: &Path) -> Result<tracing::Dispatch, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            format!(
                "cannot open the embedded server's log {}: {e}",
                path.display()
            )
        })?;
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Arc::new(file))
        .finish();
    Ok(tracing::Dispatch::new(subscriber))
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
