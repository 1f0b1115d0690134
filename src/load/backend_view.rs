//! The backend's own view of each ack (WS-API-3): for a seeded sample of
//! the acked commands, `acked_at` read back through
//! `GET /api/commands/{id}` after the run and timed from the same
//! scheduled send as the agents' view. It is the backend's clock (the
//! harness's own on one host; keep clocks in sync otherwise) at the
//! backend's resolution (1 ms for edge-server).

use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;

use super::collector::{histogram, record};
use crate::target::Target;

/// Acked commands looked up at most: enough for a p99.9, and a second or
/// so of control-API reads after the run.
pub const SAMPLE: usize = 5_000;
const LOOKUPS_IN_FLIGHT: usize = 16;

/// An acked command of the sample, as the harness timed it.
#[derive(Debug, Clone, Copy)]
pub struct AckedCommand {
    pub seq: u64,
    pub target: usize,
    pub scheduled: Instant,
    pub sent: Instant,
}

pub struct BackendView {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    /// Lookups that gave no `acked_at` (or an error), by reason.
    pub unread: std::collections::BTreeMap<String, u64>,
}

/// One instant on both clocks, to turn the harness's monotonic times into
/// wall-clock ones the backend's timestamps can be compared with.
#[derive(Debug, Clone, Copy)]
pub struct ClockPair {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl ClockPair {
    pub fn now() -> ClockPair {
        ClockPair {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.wall + after,
            None => self.wall - self.instant.duration_since(at),
        }
    }
}

/// Reads `acked_at` of every sampled command from the backend it went to;
/// `command_id` names a command by its sequence number.
pub async fn look_up(
    targets: &[Target],
    sample: &[AckedCommand],
    command_id: impl Fn(u64) -> String,
    clock: ClockPair,
) -> BackendView {
    let mut view = BackendView {
        corrected: histogram(),
        uncorrected: histogram(),
        unread: Default::default(),
    };
    let answers: Vec<_> = stream::iter(sample.iter().map(|command| {
        let target = &targets[command.target % targets.len()];
        let id = command_id(command.seq);
        async move { (command, target.acked_at(&id).await) }
    }))
    .buffer_unordered(LOOKUPS_IN_FLIGHT)
    .collect()
    .await;
    for (command, answer) in answers {
        match answer {
            Ok(Some(acked_at)) => {
                let since = |at: Instant| {
                    acked_at
                        .duration_since(clock.wall(at))
                        .unwrap_or(Duration::ZERO)
                };
                record(&mut view.corrected, since(command.scheduled));
                record(&mut view.uncorrected, since(command.sent));
            }
            Ok(None) => *view.unread.entry("no acked_at".into()).or_default() += 1,
            Err(why) => *view.unread.entry(why).or_default() += 1,
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_map_onto_the_wall_clock() {
        let clock = ClockPair::now();
        let later = clock.instant + Duration::from_millis(1500);
        assert_eq!(clock.wall(later), clock.wall + Duration::from_millis(1500));
        if let Some(earlier) = clock.instant.checked_sub(Duration::from_millis(20)) {
            assert_eq!(clock.wall(earlier), clock.wall - Duration::from_millis(20));
        }
    }
}
