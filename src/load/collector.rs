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
        /// When it connected (storms measure the way back from it).
        at: Instant,
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

impl PersonaStats {
    fn add(&mut self, other: PersonaStats) {
        self.connects += other.connects;
        self.received += other.received;
        add_counts(&mut self.disconnects, other.disconnects);
    }
}

/// Adds counts by name (errors by kind, rejections by status, …).
pub fn add_counts(mine: &mut BTreeMap<String, u64>, theirs: BTreeMap<String, u64>) {
    for (k, n) in theirs {
        *mine.entry(k).or_default() += n;
    }
}

/// Adds per-persona numbers (two collectors, two shards).
pub fn add_personas(
    mine: &mut BTreeMap<String, PersonaStats>,
    theirs: BTreeMap<String, PersonaStats>,
) {
    for (name, stats) in theirs {
        mine.entry(name).or_default().add(stats);
    }
}

/// Adds two timelines second by second (two collectors, two shards); the
/// longer one's tail is kept as it is.
pub fn add_timelines(mine: &mut Vec<Second>, theirs: Vec<Second>) {
    for (i, s) in theirs.into_iter().enumerate() {
        let Some(m) = mine.get_mut(i) else {
            mine.push(s);
            continue;
        };
        m.sent += s.sent;
        m.received += s.received;
        m.acked += s.acked;
        m.connected += s.connected;
        // The p99 of two seconds' p99s is unknown; the larger bounds it
        // (likewise p50 and p99.9).
        m.p50_ms = m.p50_ms.max(s.p50_ms);
        m.p99_ms = m.p99_ms.max(s.p99_ms);
        m.p999_ms = m.p999_ms.max(s.p999_ms);
    }
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
    /// Received, though their post got no 2xx (cut off by a crash: stored,
    /// the answer lost).
    pub unanswered: u64,
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

/// The one owner of the statistics: [`push`](Collector::push) each sample,
/// [`tick`](Collector::tick) once a second (a row of the timeline),
/// [`finish`](Collector::finish) at the end. No clock of its own: every time
/// comes in a sample, so tests drive it with synthetic times.
pub struct Collector {
    c: Collected,
    commands: HashMap<u64, Command>,
    connected: i64,
    second: Second,
    second_hist: Histogram<u64>,
    storm: Option<Instant>,
    sampler: SmallRng,
    errors_total: u64,
}

impl Collector {
    /// `seed` makes the backend-view sample of acked commands reproducible.
    pub fn new(seed: u64) -> Collector {
        Collector {
            c: Collected {
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
                unanswered: 0,
                connects: 0,
                connect_failures: BTreeMap::new(),
                errors: BTreeMap::new(),
                timeline: Vec::new(),
                personas: BTreeMap::new(),
                storm_returns: Vec::new(),
                storm_fleet: 0,
                storm_flowing: None,
            },
            commands: HashMap::new(),
            connected: 0,
            second: Second::default(),
            second_hist: histogram(),
            storm: None,
            sampler: SmallRng::seed_from_u64(seed ^ 0xACED),
            errors_total: 0,
        }
    }

    /// The numbers so far, for the progress line.
    pub fn live(&self) -> Live {
        Live {
            connected: self.connected,
            sent: self.c.scheduled,
            acked: self.c.acked,
            errors: self.errors_total,
            p99_ms: self.c.push_ack.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }

    /// Ends one second of the timeline (its sends, receipts, acks, the
    /// p50/p99/p99.9 of the acks within it, the sockets open at its end).
    pub fn tick(&mut self) -> Live {
        let ms = |q| self.second_hist.value_at_quantile(q) as f64 / 1000.0;
        (self.second.p50_ms, self.second.p99_ms, self.second.p999_ms) =
            (ms(0.5), ms(0.99), ms(0.999));
        self.second.connected = self.connected;
        self.second.t = self.c.timeline.len() as u64;
        self.c.timeline.push(std::mem::take(&mut self.second));
        self.second_hist.reset();
        self.live()
    }

    pub fn push(&mut self, sample: Sample) {
        let c = &mut self.c;
        match sample {
            Sample::Started {
                seq,
                target,
                scheduled,
                sent,
            } => {
                c.scheduled += 1;
                self.second.sent += 1;
                let entry = self.commands.entry(seq).or_default();
                entry.scheduled = Some(scheduled);
                entry.sent = Some(sent);
                entry.target = target;
            }
            Sample::Answered { seq, status, at } => {
                let entry = self.commands.entry(seq).or_default();
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
                let entry = self.commands.entry(seq).or_default();
                entry.received += 1;
                if entry.received > 1 {
                    c.duplicates += 1;
                    return;
                }
                c.received += 1;
                self.second.received += 1;
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
                let entry = self.commands.entry(seq).or_default();
                if entry.acked {
                    return;
                }
                entry.acked = true;
                c.acked += 1;
                self.second.acked += 1;
                if let (Some(scheduled), Some(sent)) = (entry.scheduled, entry.sent) {
                    if let Some(storm) = self
                        .storm
                        .filter(|s| sent >= *s && c.storm_flowing.is_none())
                    {
                        c.storm_flowing = Some(at.saturating_duration_since(storm));
                    }
                    let corrected = at.saturating_duration_since(scheduled);
                    record(&mut c.push_ack, corrected);
                    record(&mut self.second_hist, corrected);
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
                        let slot = self.sampler.random_range(0..c.acked as usize);
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
                at,
            } => {
                self.connected += 1;
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
                if let Some(storm) = self.storm {
                    c.storm_returns.push(at.saturating_duration_since(storm));
                }
            }
            Sample::ConnectFailed { persona: _, why } => {
                *c.connect_failures.entry(why).or_default() += 1;
            }
            Sample::Disconnected { persona, reason } => {
                self.connected -= 1;
                *c.personas
                    .entry(persona.name().into())
                    .or_default()
                    .disconnects
                    .entry(reason)
                    .or_default() += 1;
            }
            Sample::Storm { at } => {
                self.storm = Some(at);
                c.storm_fleet = self.connected.max(0) as u64;
                c.storm_returns.clear();
                c.storm_flowing = None;
            }
            Sample::Error { kind } => {
                self.errors_total += 1;
                *c.errors.entry(kind).or_default() += 1;
            }
        }
    }

    /// Adds what `other` saw (another collector of the same run, fed other
    /// commands and agents, e.g. one per thread): histograms and counts are
    /// added, timelines second by second, and a command seen by both is one
    /// command (its receipts added, accepted or acked if either saw it).
    pub fn merge(&mut self, other: Collector) {
        let (c, o) = (&mut self.c, other.c);
        for (mine, theirs) in [
            (&mut c.push_receive, &o.push_receive),
            (&mut c.push_receive_uncorrected, &o.push_receive_uncorrected),
            (&mut c.push_ack, &o.push_ack),
            (&mut c.push_ack_uncorrected, &o.push_ack_uncorrected),
            (&mut c.push_ack_backend, &o.push_ack_backend),
            (
                &mut c.push_ack_backend_uncorrected,
                &o.push_ack_backend_uncorrected,
            ),
            (&mut c.accept, &o.accept),
            (&mut c.connect, &o.connect),
            (&mut c.reconnect, &o.reconnect),
        ] {
            mine.add(theirs).expect("same bounds");
        }
        self.second_hist
            .add(&other.second_hist)
            .expect("same bounds");
        c.ack_sample.extend(o.ack_sample);
        c.ack_sample.truncate(backend_view::SAMPLE);
        c.scheduled += o.scheduled;
        c.accepted += o.accepted;
        c.received += o.received;
        c.acked += o.acked;
        c.duplicates += o.duplicates;
        c.connects += o.connects;
        add_counts(&mut c.rejected, o.rejected);
        add_counts(&mut c.connect_failures, o.connect_failures);
        add_counts(&mut c.errors, o.errors);
        add_personas(&mut c.personas, o.personas);
        add_timelines(&mut c.timeline, o.timeline);
        for (seq, theirs) in other.commands {
            let mine = self.commands.entry(seq).or_default();
            mine.scheduled = mine.scheduled.or(theirs.scheduled);
            if mine.sent.is_none() {
                mine.sent = theirs.sent;
                mine.target = theirs.target;
            }
            mine.accepted |= theirs.accepted;
            mine.acked |= theirs.acked;
            mine.received += theirs.received;
        }
        self.connected += other.connected;
        self.errors_total += other.errors_total;
        if self.storm.is_none() {
            self.storm = other.storm;
            c.storm_fleet = o.storm_fleet;
            c.storm_flowing = o.storm_flowing;
        }
        c.storm_returns.extend(o.storm_returns);
    }

    /// Everything gathered; a command accepted (2xx) and never received is
    /// lost; one received without a 2xx was stored but not answered.
    pub fn finish(mut self) -> Collected {
        let count =
            |which: fn(&&Command) -> bool| self.commands.values().filter(which).count() as u64;
        self.c.lost = count(|e| e.accepted && e.received == 0);
        self.c.unanswered = count(|e| !e.accepted && e.received > 0);
        self.c
    }
}

/// The collector's task: samples from the channel, a tick each second
/// (its live numbers to `live`), until every sender is gone.
pub async fn collect(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    seed: u64,
    live: watch::Sender<Live>,
) -> Collected {
    let mut collector = Collector::new(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            sample = rx.recv() => match sample {
                Some(sample) => collector.push(sample),
                None => break,
            },
            _ = tick.tick() => {
                let _ = live.send(collector.tick());
            }
        }
    }
    collector.finish()
}

#[cfg(test)]
#[path = "collector_tests.rs"]
mod tests;
