//! What happens to the fleet when, as the plan says: its events (a fleet-wide
//! drop, a backend restart) at their times, and churn (one agent leaving
//! and joining again, `churn_per_s` times a second, the agent drawn from
//! the plan's seed). [`Timeline`] is plain data over time since the start
//! of the injection, so tests read it at given times; [`run`] plays it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::agent::Signal;
use super::collector::Sample;
use super::plan::{Event, Plan};
use crate::target::Restarter;

/// One thing due at a moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A plan event (a storm: the collector measures the way back).
    Event(Event),
    /// Churn: agent `index` leaves and joins again.
    Leave(usize),
}

pub struct Timeline {
    /// Sorted by time; popped as they fall due.
    events: VecDeque<Event>,
    /// Churn's period, the next churn's time, whom it may pick, how.
    churn: Option<(Duration, Duration)>,
    agents: Vec<usize>,
    rng: SmallRng,
}

impl Timeline {
    /// The plan's events and churn for this process's `agents` (indices).
    pub fn new(plan: &Plan, agents: Vec<usize>) -> Timeline {
        let mut events: Vec<Event> = plan.events.clone();
        events.sort_by_key(Event::at);
        // Churn starts with the injection, one agent at once, then one per period.
        let churn = (plan.churn_per_s > 0.0 && !agents.is_empty()).then(|| {
            (
                Duration::from_secs_f64(1.0 / plan.churn_per_s),
                Duration::ZERO,
            )
        });
        Timeline {
            events: events.into(),
            churn,
            agents,
            rng: SmallRng::seed_from_u64(plan.seed ^ 0xC4u64),
        }
    }

    /// When the next action falls due (since the start), if any ever will.
    pub fn next_at(&self) -> Option<Duration> {
        let event = self.events.front().map(Event::at);
        let churn = self.churn.map(|(_, next)| next);
        match (event, churn) {
            (Some(e), Some(c)) => Some(e.min(c)),
            (e, c) => e.or(c),
        }
    }

    /// Every action due at or before `now` (since the start), in time order.
    pub fn due(&mut self, now: Duration) -> Vec<Action> {
        let mut due = Vec::new();
        while let Some(at) = self.next_at().filter(|at| *at <= now) {
            match self.events.front() {
                Some(event) if event.at() == at => {
                    due.push(Action::Event(self.events.pop_front().expect("front")))
                }
                _ => {
                    let (every, next) = self.churn.as_mut().expect("churn is due");
                    *next += *every;
                    let k = self.agents[self.rng.random_range(0..self.agents.len())];
                    due.push(Action::Leave(k));
                }
            }
        }
        due
    }
}

/// How the run may restart the backend (`--restart-cmd`, `--crash-cmd`,
/// or the embedded server's own).
pub struct Bounce {
    pub restart: Option<Restarter>,
    pub crash: Option<Restarter>,
}

/// Plays `timeline` from `start` until `stop`: storms are sent to the
/// collector as they happen, drops and churn to the agents, restarts and
/// crashes to `bounce` (each in its own task: a restart waits for /health,
/// and the churn does not wait for it).
pub async fn run(
    mut timeline: Timeline,
    start: Instant,
    signals: broadcast::Sender<Signal>,
    samples: mpsc::UnboundedSender<Sample>,
    bounce: Bounce,
    stop: CancellationToken,
) {
    while let Some(at) = timeline.next_at() {
        tokio::select! {
            _ = tokio::time::sleep_until((start + at).into()) => {}
            _ = stop.cancelled() => return,
        }
        for action in timeline.due(start.elapsed()) {
            match action {
                Action::Leave(k) => {
                    let _ = signals.send(Signal::Leave(k));
                }
                Action::Event(event) => {
                    let _ = samples.send(Sample::Storm { at: Instant::now() });
                    match event {
                        Event::DropAll { .. } => {
                            let _ = signals.send(Signal::DropAll);
                        }
                        Event::Restart { .. } => {
                            let (how, samples) = (bounce.restart.clone(), samples.clone());
                            tokio::spawn(restart(how, "restart", "--restart-cmd", samples));
                        }
                        Event::Crash { .. } => {
                            let (how, samples) = (bounce.crash.clone(), samples.clone());
                            tokio::spawn(restart(how, "crash", "--crash-cmd", samples));
                        }
                    }
                }
            }
        }
    }
}

/// Runs a restart or a crash (`what`); a failure, or an event with no way
/// to run it (`flag` not given), is an error of the run.
async fn restart(
    restarter: Option<Restarter>,
    what: &str,
    flag: &str,
    samples: mpsc::UnboundedSender<Sample>,
) {
    let kind = match restarter {
        Some(restart) => match restart().await {
            Ok(()) => return,
            Err(e) => format!("{what} failed: {e}"),
        },
        None => format!("{what} event without {flag}"),
    };
    let _ = samples.send(Sample::Error { kind });
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn plan(events: Vec<Event>, churn_per_s: f64) -> Plan {
        Plan {
            events,
            churn_per_s,
            seed: 7,
            ..Plan::default()
        }
    }

    #[test]
    fn events_fall_due_at_their_times_in_order() {
        let mut t = Timeline::new(
            &plan(
                vec![Event::Restart { at: 5 * S }, Event::DropAll { at: 2 * S }],
                0.0,
            ),
            vec![0, 1, 2],
        );
        assert_eq!(t.next_at(), Some(2 * S));
        assert!(t.due(S).is_empty());
        assert_eq!(t.due(2 * S), [Action::Event(Event::DropAll { at: 2 * S })]);
        assert_eq!(t.next_at(), Some(5 * S));
        assert!(t.due(4 * S).is_empty());
        assert_eq!(t.due(9 * S), [Action::Event(Event::Restart { at: 5 * S })]);
        assert_eq!(t.next_at(), None, "nothing more ever");
    }

    #[test]
    fn churn_picks_one_agent_each_period_from_the_start() {
        let mut t = Timeline::new(&plan(vec![], 4.0), vec![10, 20, 30]);
        let at_start = t.due(Duration::ZERO);
        assert_eq!(at_start.len(), 1, "one at once");
        // 4/s: at 0, 0.25, 0.5, 0.75 and 1.0 s.
        let first_second = t.due(S);
        assert_eq!(first_second.len(), 4);
        assert_eq!(t.next_at(), Some(Duration::from_millis(1250)));
        for action in at_start.iter().chain(&first_second) {
            let Action::Leave(k) = action else {
                panic!("{action:?}")
            };
            assert!([10, 20, 30].contains(k));
        }
        // The same seed picks the same agents.
        let mut again = Timeline::new(&plan(vec![], 4.0), vec![10, 20, 30]);
        let mut replay = again.due(Duration::ZERO);
        replay.extend(again.due(S));
        assert_eq!(replay, [at_start, first_second].concat());
    }

    #[test]
    fn churn_and_events_interleave_by_time() {
        let mut t = Timeline::new(
            &plan(
                vec![Event::DropAll {
                    at: 1500 * Duration::from_millis(1),
                }],
                1.0,
            ),
            vec![0],
        );
        let due = t.due(2 * S);
        assert_eq!(
            due,
            [
                Action::Leave(0),
                Action::Leave(0),
                Action::Event(Event::DropAll {
                    at: Duration::from_millis(1500)
                }),
                Action::Leave(0),
            ]
        );
    }

    #[test]
    fn no_churn_without_agents_or_rate() {
        assert_eq!(Timeline::new(&plan(vec![], 0.0), vec![1]).next_at(), None);
        assert_eq!(Timeline::new(&plan(vec![], 5.0), vec![]).next_at(), None);
    }
}
