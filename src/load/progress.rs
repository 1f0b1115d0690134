//! What a run says while it runs: a spinner line on a terminal (sockets,
//! sent, acked, p99, errors from the collector's live numbers), and the
//! milestones as lines (on stderr when there is no terminal, so a CI log
//! and a test can wait for them).

use std::time::Duration;

use tokio::sync::watch;

use super::collector::Live;

pub struct Progress {
    bar: indicatif::ProgressBar,
    live: watch::Receiver<Live>,
    sockets: usize,
}

impl Progress {
    pub fn new(enabled: bool, live: watch::Receiver<Live>, sockets: usize) -> Progress {
        let bar = if enabled {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress { bar, live, sockets }
    }

    /// A milestone ("connected 40 of 40 sockets in 0.12s").
    pub fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// The latest live numbers, shown on the spinner line.
    pub fn refresh(&mut self) -> Live {
        let live = *self.live.borrow_and_update();
        self.bar.set_message(format!(
            "connected {}/{} | sent {} | acked {} | p99 {:.2} ms | errors {}",
            live.connected, self.sockets, live.sent, live.acked, live.p99_ms, live.errors
        ));
        live
    }

    /// Waits for new live numbers, at most `within`.
    pub async fn changed(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, self.live.changed()).await;
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
