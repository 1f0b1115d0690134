//! The open model's clock: a thread of its own sleeps to each command's
//! scheduled time and hands it to the injector. The runtime's timer wheel
//! ticks in whole milliseconds, which alone put ~1 ms between a command's
//! schedule and its send; a thread's sleep is good to tens of microseconds,
//! so the corrected latency shows the backend, not the harness's clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::plan::Plan;

/// Sends the scheduled time of every command of the run (this process's
/// `share` of the plan's rate), each at that time, from `start`; hangs up
/// at the end of the plan's duration (an idle run lasts it too), or early
/// when the receiver goes away.
pub fn start(
    plan: Arc<Plan>,
    share: f64,
    start: Instant,
) -> (
    mpsc::UnboundedReceiver<Instant>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("edge-harness-pacer".into())
        .spawn(move || {
            for scheduled in schedule(&plan, share, start) {
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if tx.send(scheduled).is_err() {
                    return;
                }
            }
            if let Some(rest) = (start + plan.duration).checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
        })
        .expect("a thread starts");
    (rx, thread)
}

/// Every scheduled time of the run, in order: at each point the next one
/// is 1/rate later; where the rate is zero, the next is where it may rise.
pub fn schedule(plan: &Plan, share: f64, start: Instant) -> impl Iterator<Item = Instant> + '_ {
    let mut at = Duration::ZERO;
    std::iter::from_fn(move || {
        while at < plan.duration {
            let rate = plan.rate_at(at) * share;
            if rate <= 0.0 {
                at = plan.rate_may_rise_at(at);
                continue;
            }
            let scheduled = start + at;
            at += Duration::from_secs_f64(1.0 / rate);
            return Some(scheduled);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::Spike;

    #[test]
    fn the_schedule_follows_the_rate() {
        let start = Instant::now();
        let steady = Plan {
            rate: 100.0,
            duration: Duration::from_secs(2),
            ..Plan::default()
        };
        let times: Vec<_> = schedule(&steady, 1.0, start).collect();
        assert_eq!(times.len(), 200);
        assert_eq!(times[1] - times[0], Duration::from_millis(10));
        let half: Vec<_> = schedule(&steady, 0.5, start).collect();
        assert_eq!(half.len(), 100);

        let idle_then_spike = Plan {
            rate: 0.0,
            duration: Duration::from_secs(10),
            spike: Some(Spike {
                rate: 50.0,
                at: Duration::from_secs(4),
                lasting: Duration::from_secs(2),
            }),
            ..Plan::default()
        };
        let times: Vec<_> = schedule(&idle_then_spike, 1.0, start).collect();
        assert_eq!(times.len(), 100);
        assert_eq!(times[0], start + Duration::from_secs(4));
        assert!(*times.last().unwrap() < start + Duration::from_secs(6));
    }

    #[test]
    fn the_pacer_hands_over_each_time_when_it_comes() {
        let plan = Arc::new(Plan {
            rate: 200.0,
            duration: Duration::from_millis(100),
            ..Plan::default()
        });
        let start = Instant::now();
        let (mut rx, thread) = super::start(plan.clone(), 1.0, start);
        let mut n = 0;
        while let Some(scheduled) = rx.blocking_recv() {
            assert!(Instant::now() >= scheduled, "handed over before its time");
            n += 1;
        }
        assert!(start.elapsed() >= plan.duration);
        thread.join().unwrap();
        assert_eq!(n, 20);
    }

    #[test]
    fn an_idle_run_lasts_its_duration() {
        let plan = Arc::new(Plan {
            rate: 0.0,
            duration: Duration::from_millis(200),
            ..Plan::default()
        });
        let start = Instant::now();
        let (mut rx, thread) = super::start(plan, 1.0, start);
        assert_eq!(rx.blocking_recv(), None);
        assert!(start.elapsed() >= Duration::from_millis(200));
        thread.join().unwrap();
    }
}
