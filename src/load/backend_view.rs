//! The backend's own view of each ack (WS-API-3): for a seeded sample of
//! the acked commands, `acked_at` read back through
//! `GET /api/commands/{id}` after the run and timed from the same
//! scheduled send as the agents' view. It is the backend's clock (the
//! harness's own on one host; keep clocks in sync otherwise). Timestamps
//! with a coarse resolution (edge-server's are whole milliseconds) are
//! each spread uniformly over their tick: truncation alone would read
//! half a tick early on average.

use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::collector::{histogram, record, Collected};
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
    /// The coarsest tick every timestamp read sits on (1 ms for edge-server).
    pub resolution: Duration,
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
/// The backend's view into `collected` (its `push_ack_backend`
/// histograms), when every target has a control API and something was
/// acked; the view's unread lookups and resolution are returned for the
/// report.
pub async fn read_into(
    collected: &mut Collected,
    targets: &[Target],
    command_id: impl Fn(u64) -> String,
    clock: ClockPair,
    seed: u64,
    progress: bool,
) -> Option<BackendView> {
    if collected.ack_sample.is_empty() || targets.iter().any(|t| t.admin_token.is_none()) {
        return None;
    }
    if progress {
        eprintln!(
            "reading acked_at of {} acked commands back from the backend",
            collected.ack_sample.len()
        );
    }
    let mut view = look_up(targets, &collected.ack_sample, command_id, clock, seed).await;
    collected.push_ack_backend = std::mem::replace(&mut view.corrected, histogram());
    collected.push_ack_backend_uncorrected = std::mem::replace(&mut view.uncorrected, histogram());
    Some(view)
}

pub async fn look_up(
    targets: &[Target],
    sample: &[AckedCommand],
    command_id: impl Fn(u64) -> String,
    clock: ClockPair,
    seed: u64,
) -> BackendView {
    let mut view = BackendView {
        corrected: histogram(),
        uncorrected: histogram(),
        unread: Default::default(),
        resolution: Duration::ZERO,
    };
    // One probe first: a backend without the endpoint is told once, not 5,000 times.
    let lookup = |command: &AckedCommand| {
        let target = &targets[command.target % targets.len()];
        let id = command_id(command.seq);
        async move { target.acked_at(&id).await }
    };
    let Some((first, rest)) = sample.split_first() else {
        return view;
    };
    let probe = lookup(first).await;
    if let Err(why) = probe {
        view.unread.insert(why, sample.len() as u64);
        return view;
    }
    let mut answers: Vec<_> = stream::iter(rest.iter().map(|command| {
        let answer = lookup(command);
        async move { (command, answer.await) }
    }))
    .buffer_unordered(LOOKUPS_IN_FLIGHT)
    .collect()
    .await;
    answers.push((first, probe));
    let mut read = Vec::with_capacity(answers.len());
    for (command, answer) in answers {
        match answer {
            Ok(Some(acked_at)) => read.push((command, acked_at)),
            Ok(None) => *view.unread.entry("no acked_at".into()).or_default() += 1,
            Err(why) => *view.unread.entry(why).or_default() += 1,
        }
    }
    view.resolution = resolution(read.iter().map(|(_, at)| *at));
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xB4C6);
    for (command, acked_at) in read {
        let acked_at = acked_at + view.resolution.mul_f64(rng.random::<f64>());
        let since = |at: Instant| {
            acked_at
                .duration_since(clock.wall(at))
                .unwrap_or(Duration::ZERO)
        };
        record(&mut view.corrected, since(command.scheduled));
        record(&mut view.uncorrected, since(command.sent));
    }
    view
}

/// The coarsest of 1 s, 1 ms, 1 µs that every timestamp is a whole multiple of.
fn resolution(times: impl Iterator<Item = SystemTime>) -> Duration {
    let mut ticks = [1_000_000_000u32, 1_000_000, 1_000];
    for time in times {
        let nanos = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for tick in ticks.iter_mut() {
            if *tick != 0 && nanos % *tick != 0 {
                *tick = 0;
            }
        }
    }
    ticks
        .into_iter()
        .find(|&t| t > 0)
        .map_or(Duration::ZERO, |t| Duration::from_nanos(u64::from(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolution_is_the_coarsest_common_tick() {
        let at = |ms: u64, us: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_micros(us)
        };
        assert_eq!(
            resolution([at(1_000, 0), at(5_000, 0)].into_iter()),
            Duration::from_secs(1)
        );
        assert_eq!(
            resolution([at(1_000, 0), at(5_001, 0)].into_iter()),
            Duration::from_millis(1)
        );
        assert_eq!(
            resolution([at(1_000, 7), at(5_001, 0)].into_iter()),
            Duration::from_micros(1)
        );
        assert_eq!(
            resolution([SystemTime::UNIX_EPOCH + Duration::from_nanos(3)].into_iter()),
            Duration::ZERO
        );
    }

    /// A backend without `GET /api/commands/{id}` is asked once, and the
    /// report says why nothing was read.
    #[tokio::test]
    async fn a_backend_without_the_endpoint_is_asked_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            seen.fetch_add(1, Ordering::SeqCst);
                            let reply = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let mut target = Target::new(&format!("http://{addr}")).unwrap();
        target.admin_token = Some("admin".into());
        let now = Instant::now();
        let sample: Vec<_> = (0..100)
            .map(|seq| AckedCommand {
                seq,
                target: 0,
                scheduled: now,
                sent: now,
            })
            .collect();
        let view = look_up(
            &[target],
            &sample,
            |seq| format!("c-{seq}"),
            ClockPair::now(),
            1,
        )
        .await;
        assert_eq!(view.corrected.len(), 0);
        assert_eq!(
            view.unread.into_iter().collect::<Vec<_>>(),
            vec![("GET /api/commands: HTTP 404".to_string(), 100)]
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

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
