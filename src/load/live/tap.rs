//! Between the workers and the collector: every sample passes through on
//! its way (untouched, in order), and a [`Meter`] keeps this second's
//! numbers and its own small HDR histogram of push→ack; each wall-clock
//! second it is cut into a [`LiveFrame`] for the dashboard. The
//! collector's histograms, which make the report, are not shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};

use super::{LiveFrame, Sink};
use crate::load::collector::{self, Sample};
use crate::load::pacer;
use crate::load::plan::Plan;
use crate::load::report::encode;

/// Tells the tap when injection starts, so it can follow the schedule.
pub struct Started(Option<watch::Sender<Option<Instant>>>);

impl Started {
    pub fn at(&self, run_start: Instant) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Some(run_start));
        }
    }
}

/// Puts the tap between `rx` and the collector when there is a dashboard
/// to feed; without one, `rx` comes back as it was.
pub fn tap(
    rx: mpsc::UnboundedReceiver<Sample>,
    sink: Option<&Sink>,
    plan: Arc<Plan>,
    (shard, shards): (usize, usize),
    target: u64,
) -> (mpsc::UnboundedReceiver<Sample>, Started) {
    let Some(sink) = sink.cloned() else {
        return (rx, Started(None));
    };
    let (tx, out) = mpsc::unbounded_channel();
    let (start_tx, start) = watch::channel(None);
    let meter = Meter::new(format!("{shard}/{shards}"), target);
    tokio::spawn(run(rx, tx, sink, plan, 1.0 / shards as f64, meter, start));
    (out, Started(Some(start_tx)))
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Sample>,
    tx: mpsc::UnboundedSender<Sample>,
    sink: Sink,
    plan: Arc<Plan>,
    share: f64,
    mut meter: Meter,
    start: watch::Receiver<Option<Instant>>,
) {
    // Ticks on wall-clock second boundaries, so every shard's frames of
    // one second carry the same `t`.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let to_boundary =
        Duration::from_secs(1) - Duration::from_nanos(since_epoch.subsec_nanos().into());
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + to_boundary,
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut schedule = None;
    let mut due_total = 0u64;
    let mut due_by = |schedule: &mut Option<_>, now: Instant| {
        let mut due = 0;
        if let Some(schedule) = schedule {
            let schedule: &mut std::iter::Peekable<_> = schedule;
            while schedule.next_if(|at: &Instant| *at <= now).is_some() {
                due += 1;
            }
        }
        due_total += due;
        (due, due_total)
    };
    loop {
        tokio::select! {
            sample = rx.recv() => match sample {
                Some(sample) => {
                    meter.observe(&sample);
                    let _ = tx.send(sample);
                }
                None => break,
            },
            _ = tick.tick() => {
                if schedule.is_none() {
                    if let Some(at) = *start.borrow() {
                        schedule = Some(pacer::schedule(&plan, share, at).peekable());
                    }
                }
                let (due, due_total) = due_by(&mut schedule, Instant::now());
                sink.send(meter.cut(unix_second(), due, due_total));
            }
        }
    }
    drop(tx);
    // The last part-second, so the dashboard ends where the run did.
    let (due, due_total) = due_by(&mut schedule, Instant::now());
    sink.send(meter.cut(unix_second() + 1, due, due_total));
}

/// The nearest Unix second (ticks land just after a boundary).
fn unix_second() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + Duration::from_millis(500)).as_secs()
}

/// This second's numbers, from the samples; no I/O, so tests feed it.
pub struct Meter {
    frame: LiveFrame,
    histogram: Histogram<u64>,
    connected: i64,
    sent_total: u64,
    /// Scheduled times of commands sent and not yet acked.
    unacked: HashMap<u64, Instant>,
}

impl Meter {
    pub fn new(shard: String, target: u64) -> Meter {
        Meter {
            frame: LiveFrame {
                shard,
                target,
                ..LiveFrame::default()
            },
            histogram: collector::histogram(),
            connected: 0,
            sent_total: 0,
            unacked: HashMap::new(),
        }
    }

    pub fn observe(&mut self, sample: &Sample) {
        let f = &mut self.frame;
        match sample {
            Sample::Started {
                seq,
                scheduled,
                sent,
                ..
            } => {
                f.sent += 1;
                self.sent_total += 1;
                let lag = sent.saturating_duration_since(*scheduled).as_secs_f64() * 1000.0;
                f.lag_ms = f.lag_ms.max(lag);
                self.unacked.insert(*seq, *scheduled);
            }
            Sample::Answered { status, .. } if !(200..300).contains(status) => {
                f.rejected += 1;
                let why = match status {
                    0 => "command refused (no answer)".to_string(),
                    s => format!("command refused (HTTP {s})"),
                };
                *f.problems.entry(why).or_default() += 1;
            }
            Sample::Acked { seq, at } => {
                // The first ack of a command counts; duplicates find nothing.
                if let Some(scheduled) = self.unacked.remove(seq) {
                    f.acked += 1;
                    collector::record(&mut self.histogram, at.saturating_duration_since(scheduled));
                }
            }
            Sample::Connected { reconnect, .. } => {
                self.connected += 1;
                if *reconnect {
                    f.reconnects += 1;
                }
            }
            Sample::ConnectFailed { why, .. } => {
                f.connect_failures += 1;
                *f.problems.entry(format!("connect {why}")).or_default() += 1;
            }
            Sample::Disconnected { reason, .. } => {
                self.connected -= 1;
                *f.closes.entry(reason.clone()).or_default() += 1;
            }
            Sample::Error { kind } => {
                f.errors += 1;
                *f.problems.entry(kind.clone()).or_default() += 1;
            }
            Sample::Answered { .. } | Sample::Received { .. } | Sample::Storm { .. } => {}
        }
    }

    /// The frame of the second ending at Unix second `t`, in which `due`
    /// commands were scheduled (`due_total` since the start); the next
    /// second starts empty.
    pub fn cut(&mut self, t: u64, due: u64, due_total: u64) -> LiveFrame {
        let next = LiveFrame {
            shard: self.frame.shard.clone(),
            target: self.frame.target,
            ..LiveFrame::default()
        };
        let mut frame = std::mem::replace(&mut self.frame, next);
        frame.t = t;
        frame.connected = self.connected;
        frame.scheduled = due;
        frame.behind = due_total.saturating_sub(self.sent_total);
        frame.histogram = encode(&self.histogram);
        self.histogram.reset();
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::Persona;
    use crate::load::report::decode;

    #[test]
    fn a_second_of_samples_makes_a_frame() {
        let mut m = Meter::new("1/2".into(), 10);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let persona = Persona::WellBehaved;
        for (i, reconnect) in [false, false, true].into_iter().enumerate() {
            m.observe(&Sample::Connected {
                persona,
                took: ms(i as u64),
                reconnect,
                at: t0,
            });
        }
        m.observe(&Sample::Disconnected {
            persona,
            reason: "close 1008".into(),
        });
        for seq in 0..4 {
            m.observe(&Sample::Started {
                seq,
                target: 0,
                scheduled: t0,
                sent: t0 + ms(seq * 10),
            });
        }
        m.observe(&Sample::Answered {
            seq: 3,
            status: 503,
            at: t0,
        });
        for seq in [0, 1, 1, 2] {
            m.observe(&Sample::Acked {
                seq,
                at: t0 + ms(100 * (seq + 1)),
            });
        }
        m.observe(&Sample::Error {
            kind: "boom".into(),
        });
        let f = m.cut(1_700_000_000, 6, 6);
        assert_eq!(
            (f.shard.as_str(), f.t, f.target),
            ("1/2", 1_700_000_000, 10)
        );
        assert_eq!((f.connected, f.reconnects), (2, 1));
        assert_eq!((f.scheduled, f.sent, f.acked, f.behind), (6, 4, 3, 2));
        assert_eq!(f.lag_ms, 30.0);
        assert_eq!((f.errors, f.rejected), (1, 1));
        assert_eq!(f.problems["command refused (HTTP 503)"], 1);
        assert_eq!(f.closes["close 1008"], 1);
        let h = decode(&f.histogram).unwrap();
        assert_eq!(h.len(), 3, "the duplicate ack is not counted");
        assert_eq!(h.max(), h.highest_equivalent(300_000));
        // The next second starts empty but keeps the sockets.
        let g = m.cut(1_700_000_001, 0, 6);
        assert_eq!((g.connected, g.sent, g.acked, g.behind), (2, 0, 0, 2));
        assert!(g.closes.is_empty());
        assert_eq!(decode(&g.histogram).unwrap().len(), 0);
    }
}
