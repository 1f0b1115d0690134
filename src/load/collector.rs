//! Workers → channel → one collector (STYLE.md habit 5): agents and the
//! injector send [`Sample`]s; only the collector touches the histograms.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::backend_view::{self, AckedCommand};
use super::plan::Persona;

/// Something a worker saw.
#[derive(Debug)]
pub enum Sample {
    /// A control-API request for command `seq` started (its scheduled time
    /// and the time it actually went out).
    Started {
        seq: u64,
        /// Which of the backends (`--url`) it went to.
        target: usize,
        scheduled: Instant,
        sent: Instant,
    },
    /// Its answer.
    Answered {
        seq: u64,
        status: u16,
        at: Instant,
    },
    /// An agent got command `seq`.
    Received {
        seq: u64,
        persona: Persona,
        at: Instant,
    },
    /// An agent acked command `seq`.
    Acked {
        seq: u64,
        at: Instant,
    },
    Connected {
        persona: Persona,
        took: Duration,
        reconnect: bool,
    },
    ConnectFailed {
        persona: Persona,
        why: String,
    },
    Disconnected {
        persona: Persona,
        reason: String,
    },
    /// The whole fleet was dropped (or the backend restarted) now.
    Storm {
        at: Instant,
    },
    Error {
        kind: String,
    },
}

/// Live numbers for the progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub connected: i64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

pub fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().max(1) as u64);
}

#[derive(Default)]
struct Command {
    scheduled: Option<Instant>,
    sent: Option<Instant>,
    target: usize,
    accepted: bool,
    received: u32,
    acked: bool,
}

/// One second of the run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Second {
    pub t: u64,
    pub sent: u64,
    pub received: u64,
    pub acked: u64,
    pub p99_ms: f64,
    pub connected: i64,
    /// p50 and p99.9 push→ack of the second (reports before they existed read 0).
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p999_ms: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PersonaStats {
    pub connects: u64,
    pub received: u64,
    pub disconnects: BTreeMap<String, u64>,
}

/// Everything the collector gathered; the report is made from it.
pub struct Collected {
    pub push_receive: Histogram<u64>,
    pub push_receive_uncorrected: Histogram<u64>,
    pub push_ack: Histogram<u64>,
    pub push_ack_uncorrected: Histogram<u64>,
    /// Filled after the run from the backend's `acked_at` (backend_view.rs).
    pub push_ack_backend: Histogram<u64>,
    pub push_ack_backend_uncorrected: Histogram<u64>,
    /// A uniform sample of the acked commands, to read back from the backend.
    pub ack_sample: Vec<AckedCommand>,
    pub accept: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub reconnect: Histogram<u64>,
    pub scheduled: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub received: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub connects: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
    pub personas: BTreeMap<String, PersonaStats>,
    /// Time from each storm to each agent being back, for the reconnect curve.
    pub storm_returns: Vec<Duration>,
    pub storm_fleet: u64,
    /// From the storm to the first ack of a command sent after it.
    pub storm_flowing: Option<Duration>,
}

pub async fn collect(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    seed: u64,
    live: watch::Sender<Live>,
) -> Collected {
    let mut c = Collected {
        push_receive: histogram(),
        push_receive_uncorrected: histogram(),
        push_ack: histogram(),
        push_ack_uncorrected: histogram(),
        push_ack_backend: histogram(),
        push_ack_backend_uncorrected: histogram(),
        ack_sample: Vec::new(),
        accept: histogram(),
        connect: histogram(),
        reconnect: histogram(),
        scheduled: 0,
        accepted: 0,
        rejected: BTreeMap::new(),
        received: 0,
        acked: 0,
        duplicates: 0,
        lost: 0,
        connects: 0,
        connect_failures: BTreeMap::new(),
        errors: BTreeMap::new(),
        timeline: Vec::new(),
        personas: BTreeMap::new(),
        storm_returns: Vec::new(),
        storm_fleet: 0,
        storm_flowing: None,
    };
    let mut commands: HashMap<u64, Command> = HashMap::new();
    let mut connected: i64 = 0;
    let mut second = Second::default();
    let mut second_hist = histogram();
    let mut storm: Option<Instant> = None;
    let mut sampler = SmallRng::seed_from_u64(seed ^ 0xACED);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut errors_total = 0u64;
    loop {
        let sample = tokio::select! {
            sample = rx.recv() => match sample {
                Some(sample) => sample,
                None => break,
            },
            _ = tick.tick() => {
                second.p99_ms = second_hist.value_at_quantile(0.99) as f64 / 1000.0;
                second.p50_ms = second_hist.value_at_quantile(0.5) as f64 / 1000.0;
                second.p999_ms = second_hist.value_at_quantile(0.999) as f64 / 1000.0;
                second.connected = connected;
                second.t = c.timeline.len() as u64;
                let _ = live.send(Live { connected, sent: c.scheduled, acked: c.acked, errors: errors_total, p99_ms: c.push_ack.value_at_quantile(0.99) as f64 / 1000.0 });
                c.timeline.push(std::mem::take(&mut second));
                second_hist.reset();
                continue;
            }
        };
        match sample {
            Sample::Started {
                seq,
                target,
                scheduled,
                sent,
            } => {
                c.scheduled += 1;
                second.sent += 1;
                let entry = commands.entry(seq).or_default();
                entry.scheduled = Some(scheduled);
                entry.sent = Some(sent);
                entry.target = target;
            }
            Sample::Answered { seq, status, at } => {
                let entry = commands.entry(seq).or_default();
                if (200..300).contains(&status) {
                    c.accepted += 1;
                    entry.accepted = true;
                } else {
                    let why = if status == 0 {
                        "no answer".to_string()
                    } else {
                        format!("HTTP {status}")
                    };
                    *c.rejected.entry(why).or_default() += 1;
                }
                if let Some(sent) = entry.sent {
                    record(&mut c.accept, at - sent);
                }
            }
            Sample::Received { seq, persona, at } => {
                let entry = commands.entry(seq).or_default();
                entry.received += 1;
                if entry.received > 1 {
                    c.duplicates += 1;
                    continue;
                }
                c.received += 1;
                second.received += 1;
                c.personas
                    .entry(persona.name().into())
                    .or_default()
                    .received += 1;
                if let (Some(scheduled), Some(sent)) = (entry.scheduled, entry.sent) {
                    record(&mut c.push_receive, at.saturating_duration_since(scheduled));
                    record(
                        &mut c.push_receive_uncorrected,
                        at.saturating_duration_since(sent),
                    );
                }
            }
            Sample::Acked { seq, at } => {
                let entry = commands.entry(seq).or_default();
                if entry.acked {
                    continue;
                }
                entry.acked = true;
                c.acked += 1;
                second.acked += 1;
                if let (Some(scheduled), Some(sent)) = (entry.scheduled, entry.sent) {
                    if let Some(storm) = storm.filter(|s| sent >= *s && c.storm_flowing.is_none()) {
                        c.storm_flowing = Some(at.saturating_duration_since(storm));
                    }
                    let corrected = at.saturating_duration_since(scheduled);
                    record(&mut c.push_ack, corrected);
                    record(&mut second_hist, corrected);
                    record(
                        &mut c.push_ack_uncorrected,
                        at.saturating_duration_since(sent),
                    );
                    // Reservoir sampling: every acked command equally likely.
                    let acked = AckedCommand {
                        seq,
                        target: entry.target,
                        scheduled,
                        sent,
                    };
                    if c.ack_sample.len() < backend_view::SAMPLE {
                        c.ack_sample.push(acked);
                    } else {
                        let slot = sampler.random_range(0..c.acked as usize);
                        if let Some(kept) = c.ack_sample.get_mut(slot) {
                            *kept = acked;
                        }
                    }
                }
            }
            Sample::Connected {
                persona,
                took,
                reconnect,
            } => {
                connected += 1;
                c.connects += 1;
                c.personas
                    .entry(persona.name().into())
                    .or_default()
                    .connects += 1;
                if reconnect {
                    record(&mut c.reconnect, took);
                } else {
                    record(&mut c.connect, took);
                }
                if let Some(at) = storm {
                    c.storm_returns.push(at.elapsed());
                }
            }
            Sample::ConnectFailed { persona: _, why } => {
                *c.connect_failures.entry(why).or_default() += 1;
            }
            Sample::Disconnected { persona, reason } => {
                connected -= 1;
                *c.personas
                    .entry(persona.name().into())
                    .or_default()
                    .disconnects
                    .entry(reason)
                    .or_default() += 1;
            }
            Sample::Storm { at } => {
                storm = Some(at);
                c.storm_fleet = connected.max(0) as u64;
                c.storm_returns.clear();
                c.storm_flowing = None;
            }
            Sample::Error { kind } => {
                errors_total += 1;
                *c.errors.entry(kind).or_default() += 1;
            }
        }
    }
    // Accepted (2xx) and never received: lost.
    c.lost = commands
        .values()
        .filter(|e| e.accepted && e.received == 0)
        .count() as u64;
    c
}
