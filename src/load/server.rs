//! The embedded backend for load runs: edge-server in a child process (this
//! binary's hidden `serve` command), so its sockets do not count against
//! the harness's own open-file limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::target::{Lifecycle, Restarter};

pub struct ChildServer {
    pub addr: SocketAddr,
    child: Arc<Mutex<Child>>,
    database: PathBuf,
    _dir: tempfile::TempDir,
}

/// Why the embedded edge-server did not start: a setup failure (exit 2,
/// nothing ran).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot start the embedded edge-server: {0}")]
    Spawn(std::io::Error),
    /// It started but did not say `listening on ADDR`.
    #[error("the embedded edge-server said {0:?}")]
    Silent(String),
    #[error("cannot make its temporary directory: {0}")]
    TempDir(std::io::Error),
}

fn spawn(database: &PathBuf, listen: &str) -> Result<(Child, SocketAddr), ServerError> {
    let exe = std::env::current_exe().map_err(ServerError::Spawn)?;
    // Its own process group: a Ctrl-C at the terminal reaches only the
    // harness, which drains against a live backend, then stops it. Its
    // stdin is a pipe from us: however we end, it sees EOF and stops.
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--until-stdin-closes",
            "--listen",
            listen,
            "--database",
        ])
        .arg(database)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(ServerError::Spawn)?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(ServerError::Spawn)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| ServerError::Silent(line.clone()))?;
    Ok((child, addr))
}

/// `TERM`: a graceful stop (close 1012), as a deploy would; `KILL`: a crash.
fn stop(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

impl ChildServer {
    pub fn start() -> Result<ChildServer, ServerError> {
        let dir = tempfile::tempdir().map_err(ServerError::TempDir)?;
        let database = dir.path().join("edge.db");
        let (child, addr) = spawn(&database, "127.0.0.1:0")?;
        Ok(ChildServer {
            addr,
            child: Arc::new(Mutex::new(child)),
            database,
            _dir: dir,
        })
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            restart: self.restarter("TERM"),
            crash: self.restarter("KILL"),
            // It logs to the harness's stderr.
            log: None,
        }
    }

    /// Stops the server with `signal`, then starts it again on the same
    /// address and database.
    fn restarter(&self, signal: &'static str) -> Restarter {
        let (child, database, addr) = (self.child.clone(), self.database.clone(), self.addr);
        Arc::new(move || {
            let (child, database) = (child.clone(), database.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    let mut child = child.lock().expect("child lock");
                    stop(&mut child, signal);
                    let mut last = String::new();
                    for _ in 0..50 {
                        match spawn(&database, &addr.to_string()) {
                            Ok((new, _)) => {
                                *child = new;
                                return Ok(());
                            }
                            Err(e) => last = e.to_string(),
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(last)
                })
                .await
                .map_err(|e| e.to_string())?
            })
        })
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            stop(&mut child, "TERM");
        }
    }
}
