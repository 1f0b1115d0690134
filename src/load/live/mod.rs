//! The live view of a run: `load --dashboard ADDR` serves a page (plain
//! HTML, inline script, server-sent events; nothing fetched from elsewhere)
//! with connected vs target sockets, scheduled vs achieved rate, per-second
//! push→ack p50/p99/p99.9, errors and close codes, reconnects and each
//! `--fail-if` threshold's live state.
//!
//! - `tap.rs` watches the samples on their way to the collector and cuts a
//!   [`LiveFrame`] each second (the collector is left as it is);
//! - a frame goes to a [`Sink`]: this process's board, or another
//!   process's dashboard (`load --dashboard-report URL`, `POST /shard`);
//! - `board.rs` merges the frames of every shard by wall-clock second,
//!   adding their HDR histograms (so p99 is the p99 of all shards, not an
//!   average of theirs), and keeps the thresholds' live state;
//! - `http.rs` parses requests and formats events without sockets;
//!   `server.rs` is the accept loop; `page.html` is the page.

pub mod board;
pub mod http;
pub mod server;
pub mod tap;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::board::Board;
pub use self::tap::{tap, Started};

/// One shard's second of the run, as it travels to the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFrame {
    /// `i/n`, as `--shard` says.
    pub shard: String,
    /// The wall-clock (Unix) second this frame ends in: shards' frames of
    /// the same second merge.
    pub t: u64,
    /// Sockets open at the end of the second, and how many the shard runs.
    pub connected: i64,
    pub target: u64,
    /// Commands the plan scheduled in this second, and those that went out.
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    /// Commands due by the end of the second but not sent yet: how far
    /// behind its schedule the generator is.
    pub behind: u64,
    /// The longest wait between a command's scheduled and actual send.
    pub lag_ms: f64,
    pub reconnects: u64,
    /// `Sample::Error`s (the `errors` threshold), refused commands
    /// (`rejected`) and failed connects (`connect_failures`).
    pub errors: u64,
    pub rejected: u64,
    pub connect_failures: u64,
    /// All of those by what happened.
    pub problems: BTreeMap<String, u64>,
    /// Sockets closed in this second, by reason (`close 1008`, `dropped`, …).
    pub closes: BTreeMap<String, u64>,
    /// push→ack (corrected) of the commands acked in this second: base64 of
    /// the V2-deflate HDR histogram in microseconds, as in the report.
    pub histogram: String,
}

/// Where a run's frames go.
#[derive(Clone)]
pub enum Sink {
    /// This process serves the dashboard (`--dashboard`).
    Board(Arc<Board>),
    /// Another process does (`--dashboard-report URL`).
    Remote {
        url: String,
        http: reqwest::Client,
        /// Whether a failed send was already said (said once).
        warned: Arc<AtomicBool>,
    },
}

impl Sink {
    /// `base` is the dashboard's URL (`http://` is assumed without a scheme).
    pub fn remote(base: &str) -> Sink {
        let base = base.trim_end_matches('/');
        let url = if base.contains("://") {
            format!("{base}/shard")
        } else {
            format!("http://{base}/shard")
        };
        Sink::Remote {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hands a frame over; a dashboard that cannot be reached never holds
    /// up or fails the run (it is said once on stderr).
    pub fn send(&self, frame: LiveFrame) {
        match self {
            Sink::Board(board) => {
                let _ = board.push(frame);
            }
            Sink::Remote { url, http, warned } => {
                let request = http.post(url.as_str()).json(&frame).send();
                let (url, warned) = (url.clone(), warned.clone());
                tokio::spawn(async move {
                    let failed = match request.await {
                        Ok(r) if r.status().is_success() => None,
                        Ok(r) => Some(format!("HTTP {}", r.status())),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(why) = failed {
                        if !warned.swap(true, Ordering::Relaxed) {
                            eprintln!("dashboard: cannot report to {url}: {why} (the run goes on)");
                        }
                    }
                });
            }
        }
    }
}

/// `load --dashboard ADDR`: the board and its server, for the run's length.
pub struct Dashboard {
    pub addr: std::net::SocketAddr,
    board: Arc<Board>,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// Binds `addr` and serves; says where on stderr (`dashboard: http://…/`).
    pub async fn start(
        addr: &str,
        thresholds: Vec<crate::load::thresholds::Threshold>,
    ) -> Result<Dashboard, String> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--dashboard {addr}: cannot listen: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("--dashboard: {e}"))?;
        let board = Board::new(thresholds);
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(server::serve(
            listener,
            board.clone(),
            stop.clone().cancelled_owned(),
        ));
        eprintln!("dashboard: http://{addr}/");
        Ok(Dashboard {
            addr,
            board,
            stop,
            server,
        })
    }

    pub fn sink(&self) -> Sink {
        Sink::Board(self.board.clone())
    }

    /// Tells open pages the run is over (`interrupted`: cut short by
    /// Ctrl-C), then stops serving.
    pub async fn finish(self, interrupted: bool) {
        self.board.finish(interrupted);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop.cancel();
        let _ = self.server.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_dashboard_is_posted_to_at_shard() {
        for (given, url) in [
            ("http://10.0.0.5:8089/", "http://10.0.0.5:8089/shard"),
            ("10.0.0.5:8089", "http://10.0.0.5:8089/shard"),
            ("https://dash.example/x", "https://dash.example/x/shard"),
        ] {
            match Sink::remote(given) {
                Sink::Remote { url: got, .. } => assert_eq!(got, url),
                Sink::Board(_) => unreachable!(),
            }
        }
    }
}
