//! The dashboard's state: every shard's frames merged by wall-clock second.
//! Counts add up; sockets and backlog are each shard's latest level, summed;
//! latency percentiles come from the shards' HDR histograms added together,
//! so a second's p99 is the p99 of every command acked in it, whichever
//! shard sent it. Each change goes out to the pages as server-sent events:
//! `point` (one second, replaced by `t` when a late shard adds to it) and
//! `status` (totals, shards, thresholds).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::http::sse_event;
use super::LiveFrame;
use crate::load::collector;
use crate::load::report::{decode, LoadReport, Percentiles};
use crate::load::thresholds::Threshold;

/// Seconds kept (and replayed to a page that opens late).
const KEPT: usize = 900;

/// One second of the whole run, as the page plots it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t: u64,
    /// Shards whose frame of this second has arrived.
    pub shards: usize,
    pub connected: i64,
    pub target: u64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    pub behind: u64,
    pub lag_ms: f64,
    pub reconnects: u64,
    /// Errors, refused commands and failed connects.
    pub errors: u64,
    /// push→ack (corrected) of the commands acked in this second.
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardView {
    pub shard: String,
    pub connected: i64,
    pub target: u64,
    pub behind: u64,
    /// The second of its latest frame.
    pub t: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdState {
    pub text: String,
    /// `holds`, `breached`, `waiting` (nothing measured yet) or `at the end`
    /// (known only from the report: lost, duplicates, backend_*, reconnect_t*…).
    pub state: String,
    pub measured: Option<f64>,
}

/// Everything but the per-second points.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub shards: Vec<ShardView>,
    /// `n` of the shards' `i/n`.
    pub expected_shards: usize,
    pub connected: i64,
    pub target: u64,
    pub scheduled: u64,
    pub sent: u64,
    pub acked: u64,
    pub behind: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub rejected: u64,
    pub connect_failures: u64,
    /// push→ack (corrected) over the run so far.
    pub latency: Option<Percentiles>,
    pub problems: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub thresholds: Vec<ThresholdState>,
    /// The run serving the dashboard has ended.
    pub done: bool,
    /// It ended early (Ctrl-C): its report is partial.
    pub interrupted: bool,
}

struct Second {
    /// Each shard's latest (connected, target, behind) in this second.
    levels: BTreeMap<String, (i64, u64, u64)>,
    point: Point,
    histogram: Histogram<u64>,
}

struct State {
    thresholds: Vec<Threshold>,
    seconds: BTreeMap<u64, Second>,
    total: Histogram<u64>,
    status: Status,
}

pub struct Board {
    state: Mutex<State>,
    events: broadcast::Sender<Message>,
}

/// Events as sent on the wire; `last` after the run has ended.
#[derive(Debug, Clone)]
pub struct Message {
    pub text: Arc<str>,
    pub last: bool,
}

/// Metrics a threshold can be judged on while the run goes.
const LIVE_METRICS: [&str; 8] = [
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "errors",
    "rejected",
    "connect_failures",
];

impl Board {
    pub fn new(thresholds: Vec<Threshold>) -> Arc<Board> {
        let mut state = State {
            thresholds,
            seconds: BTreeMap::new(),
            total: collector::histogram(),
            status: Status::default(),
        };
        state.status.thresholds = judge(&state);
        Arc::new(Board {
            state: Mutex::new(state),
            events: broadcast::channel(1024).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves numbers, not broken invariants.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a shard's frame; refused (and nothing changed) when its
    /// histogram does not decode.
    pub fn push(&self, frame: LiveFrame) -> Result<(), String> {
        let histogram = if frame.histogram.is_empty() {
            collector::histogram()
        } else {
            decode(&frame.histogram).map_err(|e| e.to_string())?
        };
        let mut state = self.lock();
        let state = &mut *state;
        let second = state.seconds.entry(frame.t).or_insert_with(|| Second {
            levels: BTreeMap::new(),
            point: Point {
                t: frame.t,
                ..Point::default()
            },
            histogram: collector::histogram(),
        });
        second
            .histogram
            .add(&histogram)
            .map_err(|e| format!("histogram: {e:?}"))?;
        state
            .total
            .add(&histogram)
            .map_err(|e| format!("histogram: {e:?}"))?;
        second.levels.insert(
            frame.shard.clone(),
            (frame.connected, frame.target, frame.behind),
        );
        let p = &mut second.point;
        p.shards = second.levels.len();
        p.connected = second.levels.values().map(|l| l.0).sum();
        p.target = second.levels.values().map(|l| l.1).sum();
        p.behind = second.levels.values().map(|l| l.2).sum();
        p.scheduled += frame.scheduled;
        p.sent += frame.sent;
        p.acked += frame.acked;
        p.lag_ms = p.lag_ms.max(frame.lag_ms);
        p.reconnects += frame.reconnects;
        p.errors += frame.errors + frame.rejected + frame.connect_failures;
        let h = &second.histogram;
        p.count = h.len();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (p.p50_ms, p.p99_ms, p.p999_ms) = (ms(0.5), ms(0.99), ms(0.999));
        let point = p.clone();
        while state.seconds.len() > KEPT {
            state.seconds.pop_first();
        }

        let s = &mut state.status;
        let n = frame
            .shard
            .split_once('/')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(1);
        s.expected_shards = s.expected_shards.max(n);
        let view = ShardView {
            shard: frame.shard.clone(),
            connected: frame.connected,
            target: frame.target,
            behind: frame.behind,
            t: frame.t,
        };
        match s.shards.iter_mut().find(|v| v.shard == frame.shard) {
            Some(v) if v.t <= frame.t => *v = view,
            Some(_) => {}
            None => {
                s.shards.push(view);
                s.shards.sort_by(|a, b| a.shard.cmp(&b.shard));
            }
        }
        s.connected = s.shards.iter().map(|v| v.connected).sum();
        s.target = s.shards.iter().map(|v| v.target).sum();
        s.behind = s.shards.iter().map(|v| v.behind).sum();
        s.scheduled += frame.scheduled;
        s.sent += frame.sent;
        s.acked += frame.acked;
        s.reconnects += frame.reconnects;
        s.errors += frame.errors;
        s.rejected += frame.rejected;
        s.connect_failures += frame.connect_failures;
        for (mine, theirs) in [
            (&mut s.problems, frame.problems),
            (&mut s.closes, frame.closes),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        s.latency = (!state.total.is_empty()).then(|| Percentiles::of(&state.total));
        state.status.thresholds = judge(state);
        let status = state.status.clone();
        self.broadcast(&[("point", json(&point)), ("status", json(&status))], false);
        Ok(())
    }

    /// The run is over (`interrupted`: cut short): pages say so.
    pub fn finish(&self, interrupted: bool) {
        let status = {
            let mut state = self.lock();
            state.status.done = true;
            state.status.interrupted = interrupted;
            state.status.clone()
        };
        self.broadcast(&[("status", json(&status))], true);
    }

    fn broadcast(&self, events: &[(&str, String)], last: bool) {
        let text: String = events.iter().map(|(e, d)| sse_event(e, d)).collect();
        // No page open is not an error.
        let _ = self.events.send(Message {
            text: text.into(),
            last,
        });
    }

    pub fn status(&self) -> Status {
        self.lock().status.clone()
    }

    pub fn points(&self) -> Vec<Point> {
        self.lock()
            .seconds
            .values()
            .map(|s| s.point.clone())
            .collect()
    }

    /// What a page that opens now is sent first (every kept second and the
    /// status, as events; `last` when the run has ended), and the stream of
    /// what comes after; taken under one lock, so nothing falls between.
    pub fn subscribe(&self) -> (Message, broadcast::Receiver<Message>) {
        let state = self.lock();
        let mut replay: String = state
            .seconds
            .values()
            .map(|s| sse_event("point", &json(&s.point)))
            .collect();
        replay.push_str(&sse_event("status", &json(&state.status)));
        let replay = Message {
            text: replay.into(),
            last: state.status.done,
        };
        (replay, self.events.subscribe())
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Each threshold's state on the numbers so far.
fn judge(state: &State) -> Vec<ThresholdState> {
    let s = &state.status;
    let mut report = LoadReport::empty_for_validation();
    report.percentiles.insert(
        "push_ack".into(),
        s.latency
            .clone()
            .unwrap_or_else(|| Percentiles::of(&state.total)),
    );
    let c = &mut report.counts;
    c.errors.insert("errors".into(), s.errors);
    c.rejected.insert("rejected".into(), s.rejected);
    c.connect_failures
        .insert("connect_failures".into(), s.connect_failures);
    state
        .thresholds
        .iter()
        .map(|t| {
            let live = LIVE_METRICS.contains(&t.metric());
            let latency = !matches!(t.metric(), "errors" | "rejected" | "connect_failures");
            let (state, measured) = if !live {
                ("at the end", None)
            } else if latency && state.total.is_empty() {
                ("waiting", None)
            } else if t.breached(&report).is_some() {
                ("breached", t.measure(&report))
            } else {
                ("holds", t.measure(&report))
            };
            ThresholdState {
                text: t.text.clone(),
                state: state.into(),
                measured,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::encode;

    fn frame(shard: &str, t: u64, latencies_us: &[u64]) -> LiveFrame {
        let mut h = collector::histogram();
        for v in latencies_us {
            h.record(*v).unwrap();
        }
        LiveFrame {
            shard: shard.into(),
            t,
            connected: 10,
            target: 12,
            sent: latencies_us.len() as u64,
            acked: latencies_us.len() as u64,
            scheduled: latencies_us.len() as u64 + 1,
            behind: 1,
            histogram: encode(&h),
            ..LiveFrame::default()
        }
    }

    #[test]
    fn shards_merge_by_second_with_percentiles_of_the_added_histograms() {
        let board = Board::new(vec![
            "p99<50ms".parse().unwrap(),
            "lost==0".parse().unwrap(),
        ]);
        // Shard 0: 99 fast commands; shard 1: one slow one. Averaging the
        // shards' p99s would say ~50 ms; the merged histogram says 1 ms,
        // and its p99.9 is the slow one.
        board.push(frame("0/2", 100, &[1_000; 99])).unwrap();
        board.push(frame("1/2", 100, &[100_000])).unwrap();
        board.push(frame("0/2", 101, &[2_000])).unwrap();
        let points = board.points();
        assert_eq!(points.len(), 2);
        let p = &points[0];
        assert_eq!((p.t, p.shards, p.count), (100, 2, 100));
        assert_eq!((p.connected, p.target, p.behind), (20, 24, 2));
        assert_eq!((p.scheduled, p.sent, p.acked), (102, 100, 100));
        assert_eq!(p.p50_ms, 1.0);
        assert_eq!(p.p99_ms, 1.0);
        assert!((p.p999_ms - 100.0).abs() < 0.1, "{}", p.p999_ms);
        assert_eq!(points[1].shards, 1, "shard 1's second 101 is not in yet");
        let s = board.status();
        assert_eq!(s.expected_shards, 2);
        assert_eq!(s.shards.len(), 2);
        assert_eq!((s.connected, s.acked), (20, 101));
        assert_eq!(s.latency.as_ref().unwrap().count, 101);
        assert_eq!(s.thresholds[0].state, "holds");
        assert_eq!(s.thresholds[1].state, "at the end");
        // The slow shard grows its tail past the threshold.
        board.push(frame("1/2", 101, &[100_000; 5])).unwrap();
        let s = board.status();
        assert_eq!(s.thresholds[0].state, "breached");
        assert!(s.thresholds[0].measured.unwrap() > 50.0);
        // A frame whose histogram does not decode changes nothing.
        let mut bad = frame("1/2", 102, &[]);
        bad.histogram = "not base64!".into();
        assert!(board.push(bad).is_err());
        assert_eq!(board.points().len(), 2);
    }

    #[test]
    fn a_late_page_gets_the_replay_then_the_stream() {
        let board = Board::new(Vec::new());
        board.push(frame("0/1", 7, &[1_000])).unwrap();
        let (replay, mut rx) = board.subscribe();
        let text = &replay.text;
        assert!(text.starts_with("event: point\ndata: {\"t\":7,"), "{text}");
        assert!(text.contains("event: status\ndata: {") && !replay.last);
        board.push(frame("0/1", 8, &[1_000])).unwrap();
        let next = rx.try_recv().unwrap();
        assert!(next.text.starts_with("event: point\ndata: {\"t\":8,") && !next.last);
        board.finish(true);
        let last = rx.try_recv().unwrap();
        assert!(last.text.contains("\"done\":true") && last.last);
        assert!(last.text.contains("\"interrupted\":true"));
        assert!(
            board.subscribe().0.last,
            "a page opened after the run gets it all at once"
        );
    }
}
