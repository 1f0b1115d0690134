//! The open model's sender: one control-API request per scheduled time
//! from the pacer, to a random agent of this shard, whatever happened to
//! the one before (at most `max_in_flight` at once; a wait for a slot
//! counts in the corrected latency). Each request reports `Started` and
//! `Answered` to the collector; agents report receipt and ack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::collector::Sample;
use super::fleet::agent_id;
use super::progress::Progress;
use crate::target::Target;

/// The id of command `seq` of this shard; agents read `seq` back from it.
pub fn command_id(shard: usize, seq: u64) -> String {
    format!("ld{shard}-{seq}")
}

pub struct Injector {
    targets: Arc<Vec<Target>>,
    agents: Vec<usize>,
    samples: mpsc::UnboundedSender<Sample>,
    shard: usize,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    rng: SmallRng,
    sent: u64,
}

impl Injector {
    pub fn new(
        targets: Arc<Vec<Target>>,
        agents: Vec<usize>,
        samples: mpsc::UnboundedSender<Sample>,
        shard: usize,
        max_in_flight: usize,
        seed: u64,
    ) -> Injector {
        let max_in_flight = max_in_flight.max(1);
        Injector {
            targets,
            agents,
            samples,
            shard,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            rng: SmallRng::seed_from_u64(seed),
            sent: 0,
        }
    }

    /// Commands started so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends a command at each time `schedule` gives, until it ends or
    /// `interrupt` fires; refreshes `progress` four times a second.
    pub async fn run(
        &mut self,
        mut schedule: mpsc::UnboundedReceiver<Instant>,
        interrupt: &CancellationToken,
        progress: &mut Progress,
    ) {
        let mut refresh = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                scheduled = schedule.recv() => match scheduled {
                    Some(scheduled) => self.send(scheduled).await,
                    None => break,
                },
                _ = refresh.tick() => {
                    progress.refresh();
                }
                _ = interrupt.cancelled() => break,
            }
        }
    }

    async fn send(&mut self, scheduled: Instant) {
        if self.agents.is_empty() {
            return;
        }
        let k = self.agents[self.rng.random_range(0..self.agents.len())];
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (samples, targets, seq) = (self.samples.clone(), self.targets.clone(), self.sent);
        let id = command_id(self.shard, seq);
        let body = format!(r#"{{"command_type":"send_message","parameters":{{"seq":{seq}}}}}"#);
        tokio::spawn(async move {
            let target = &targets[k % targets.len()];
            let _ = samples.send(Sample::Started {
                seq,
                target: k % targets.len(),
                scheduled,
                sent: Instant::now(),
            });
            let status = match target.inject(&agent_id(k), &id, &body).await {
                Ok(()) => 202,
                Err(e) => {
                    let _ = samples.send(Sample::Error {
                        kind: e.chars().take(80).collect(),
                    });
                    0
                }
            };
            let _ = samples.send(Sample::Answered {
                seq,
                status,
                at: Instant::now(),
            });
            drop(permit);
        });
        self.sent += 1;
    }

    /// Waits up to `within` for every command sent to be acked and every
    /// request answered.
    pub async fn drain(&self, progress: &mut Progress, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            let live = progress.refresh();
            if live.acked >= self.sent && self.in_flight.available_permits() == self.max_in_flight {
                break;
            }
            progress.changed(Duration::from_millis(250)).await;
        }
    }
}
