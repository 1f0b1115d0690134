//! The load report: JSON with the serialized HDR histograms (so shards merge
//! losslessly), the terminal summary table, and baseline comparison.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::collector::{add_counts, add_personas, add_timelines, Collected, PersonaStats, Second};

pub const SCHEMA: &str = "edge-harness/load/v1";

/// The latency histograms, by name, in microseconds.
pub const HISTOGRAMS: [&str; 9] = [
    "push_receive",
    "push_receive_uncorrected",
    "push_ack",
    "push_ack_uncorrected",
    "push_ack_backend",
    "push_ack_backend_uncorrected",
    "accept",
    "connect",
    "reconnect",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub agents: u64,
    pub connected_at_start: u64,
    pub scheduled: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub received: u64,
    pub acked: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Commands received whose post got no 2xx: stored, the answer lost
    /// (a crash cut the request off); a client retrying with the same
    /// `command_id` gets them once.
    #[serde(default)]
    pub unanswered: u64,
    pub connects: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Sampled acked commands whose `acked_at` could not be read back, by reason.
    #[serde(default)]
    pub backend_unread: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reconnect {
    /// Agents connected when the storm hit.
    pub fleet: u64,
    pub back: u64,
    pub t50_ms: Option<f64>,
    pub t99_ms: Option<f64>,
    pub t100_ms: Option<f64>,
    /// (ms since the storm, share of the fleet back), for the curve.
    pub curve: Vec<(f64, f64)>,
    /// From the storm to the first ack of a command sent after it.
    #[serde(default)]
    pub flowing_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub schema: String,
    pub command_line: String,
    /// The run was interrupted (Ctrl-C, SIGTERM) before its planned end:
    /// the numbers cover only what was measured until then.
    #[serde(default)]
    pub partial: bool,
    pub seed: u64,
    pub shards: Vec<String>,
    pub targets: Vec<String>,
    pub plan: serde_json::Value,
    pub duration_s: f64,
    /// Time for every agent of the fleet to connect at the start.
    pub connect_all_s: f64,
    pub counts: Counts,
    pub percentiles: BTreeMap<String, Percentiles>,
    /// Base64 of the V2-deflate serialization of each histogram.
    pub histograms: BTreeMap<String, String>,
    pub timeline: Vec<Second>,
    pub reconnect: Reconnect,
    pub personas: BTreeMap<String, PersonaStats>,
    /// Extra numbers a run wants to keep (RSS, CPU, …).
    #[serde(default)]
    pub notes: BTreeMap<String, f64>,
}

pub(crate) fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("a histogram serializes");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Why a saved report cannot be read or merged: a bad file (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("not a load report: {0}")]
    NotAReport(String),
    #[error("schema `{0}` is not {SCHEMA}")]
    Schema(String),
    #[error("no histogram `{0}`")]
    NoHistogram(String),
    /// Its base64 or its HDR serialization is broken.
    #[error("histogram: {0}")]
    Histogram(String),
    /// Two reports whose histograms cannot be added.
    #[error("merging {name}: {why}")]
    Merge { name: String, why: String },
    #[error("nothing to merge")]
    Nothing,
}

pub(crate) fn decode(text: &str) -> Result<Histogram<u64>, ReportError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ReportError::Histogram(e.to_string()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| ReportError::Histogram(format!("{e:?}")))
}

fn reconnect_curve(
    fleet: u64,
    mut returns: Vec<std::time::Duration>,
    flowing: Option<std::time::Duration>,
) -> Reconnect {
    returns.sort();
    let back = returns.len() as u64;
    let at_share = |share: f64| {
        let need = ((fleet as f64) * share).ceil() as usize;
        (need > 0 && need <= returns.len()).then(|| returns[need - 1].as_secs_f64() * 1000.0)
    };
    let step = (returns.len() / 200).max(1);
    let curve = returns
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == returns.len())
        .map(|(i, d)| {
            (
                d.as_secs_f64() * 1000.0,
                (i + 1) as f64 / fleet.max(1) as f64,
            )
        })
        .collect();
    Reconnect {
        fleet,
        back,
        t50_ms: at_share(0.5),
        t99_ms: at_share(0.99),
        t100_ms: at_share(1.0),
        curve,
        flowing_ms: flowing.map(|d| d.as_secs_f64() * 1000.0),
    }
}

impl LoadReport {
    pub fn build(c: Collected, meta: Meta) -> LoadReport {
        let hist: [(&str, &Histogram<u64>); 9] = [
            ("push_receive", &c.push_receive),
            ("push_receive_uncorrected", &c.push_receive_uncorrected),
            ("push_ack", &c.push_ack),
            ("push_ack_uncorrected", &c.push_ack_uncorrected),
            ("push_ack_backend", &c.push_ack_backend),
            (
                "push_ack_backend_uncorrected",
                &c.push_ack_backend_uncorrected,
            ),
            ("accept", &c.accept),
            ("connect", &c.connect),
            ("reconnect", &c.reconnect),
        ];
        LoadReport {
            schema: SCHEMA.into(),
            command_line: meta.command_line,
            partial: false,
            seed: meta.seed,
            shards: vec![meta.shard],
            targets: meta.targets,
            plan: meta.plan,
            duration_s: meta.duration_s,
            connect_all_s: meta.connect_all_s,
            counts: Counts {
                agents: meta.agents,
                connected_at_start: meta.connected_at_start,
                scheduled: c.scheduled,
                accepted: c.accepted,
                rejected: c.rejected,
                received: c.received,
                acked: c.acked,
                lost: c.lost,
                duplicates: c.duplicates,
                unanswered: c.unanswered,
                connects: c.connects,
                connect_failures: c.connect_failures,
                errors: c.errors,
                backend_unread: BTreeMap::new(),
            },
            percentiles: hist
                .iter()
                .map(|(n, h)| (n.to_string(), Percentiles::of(h)))
                .collect(),
            histograms: hist
                .iter()
                .map(|(n, h)| (n.to_string(), encode(h)))
                .collect(),
            timeline: c.timeline,
            reconnect: reconnect_curve(c.storm_fleet, c.storm_returns, c.storm_flowing),
            personas: c.personas,
            notes: BTreeMap::new(),
        }
    }

    /// A report with every metric present and zero, to validate thresholds against.
    pub fn empty_for_validation() -> LoadReport {
        let zero = Percentiles {
            count: 0,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
        };
        LoadReport {
            schema: SCHEMA.into(),
            command_line: String::new(),
            partial: false,
            seed: 0,
            shards: Vec::new(),
            targets: Vec::new(),
            plan: serde_json::Value::Null,
            duration_s: 0.0,
            connect_all_s: 0.0,
            counts: Counts::default(),
            percentiles: HISTOGRAMS
                .iter()
                .map(|n| (n.to_string(), zero.clone()))
                .collect(),
            histograms: BTreeMap::new(),
            timeline: Vec::new(),
            reconnect: Reconnect::default(),
            personas: BTreeMap::new(),
            notes: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub fn from_json(text: &str) -> Result<LoadReport, ReportError> {
        let report: LoadReport =
            serde_json::from_str(text).map_err(|e| ReportError::NotAReport(e.to_string()))?;
        if report.schema != SCHEMA {
            return Err(ReportError::Schema(report.schema));
        }
        Ok(report)
    }

    pub fn histogram(&self, name: &str) -> Result<Histogram<u64>, ReportError> {
        decode(
            self.histograms
                .get(name)
                .ok_or_else(|| ReportError::NoHistogram(name.into()))?,
        )
    }

    /// Merges shards: histograms added exactly, counts summed, the timeline
    /// summed per second (its per-second p50/p99/p99.9 are the largest of the
    /// shards').
    pub fn merge(reports: Vec<LoadReport>) -> Result<LoadReport, ReportError> {
        let mut iter = reports.into_iter();
        let mut merged = iter.next().ok_or(ReportError::Nothing)?;
        for other in iter {
            for name in HISTOGRAMS {
                // Reports from before a histogram existed merge as if it were empty.
                let (mut h, theirs) = match (merged.histogram(name), other.histogram(name)) {
                    (Ok(mine), Ok(theirs)) => (mine, theirs),
                    (Ok(only), Err(_)) | (Err(_), Ok(only)) => {
                        (only, crate::load::collector::histogram())
                    }
                    (Err(_), Err(_)) => continue,
                };
                h.add(theirs).map_err(|e| ReportError::Merge {
                    name: name.into(),
                    why: format!("{e:?}"),
                })?;
                merged.percentiles.insert(name.into(), Percentiles::of(&h));
                merged.histograms.insert(name.into(), encode(&h));
            }
            merged.partial |= other.partial;
            let (a, b) = (&mut merged.counts, other.counts);
            a.agents += b.agents;
            a.connected_at_start += b.connected_at_start;
            a.scheduled += b.scheduled;
            a.accepted += b.accepted;
            a.received += b.received;
            a.acked += b.acked;
            a.lost += b.lost;
            a.duplicates += b.duplicates;
            a.unanswered += b.unanswered;
            a.connects += b.connects;
            add_counts(&mut a.rejected, b.rejected);
            add_counts(&mut a.connect_failures, b.connect_failures);
            add_counts(&mut a.errors, b.errors);
            add_counts(&mut a.backend_unread, b.backend_unread);
            add_timelines(&mut merged.timeline, other.timeline);
            add_personas(&mut merged.personas, other.personas);
            merged.shards.extend(other.shards);
            merged.targets.extend(other.targets);
            merged.duration_s = merged.duration_s.max(other.duration_s);
            merged.connect_all_s = merged.connect_all_s.max(other.connect_all_s);
            merged.reconnect.fleet += other.reconnect.fleet;
            merged.reconnect.back += other.reconnect.back;
            merged.reconnect.t50_ms = max_opt(merged.reconnect.t50_ms, other.reconnect.t50_ms);
            merged.reconnect.t99_ms = max_opt(merged.reconnect.t99_ms, other.reconnect.t99_ms);
            merged.reconnect.t100_ms = max_opt(merged.reconnect.t100_ms, other.reconnect.t100_ms);
            merged.reconnect.flowing_ms =
                max_opt(merged.reconnect.flowing_ms, other.reconnect.flowing_ms);
        }
        merged.targets.sort();
        merged.targets.dedup();
        Ok(merged)
    }

    /// Acked commands per second over the run.
    pub fn throughput(&self) -> f64 {
        self.counts.acked as f64 / self.duration_s.max(0.001)
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        if self.partial {
            let _ = writeln!(
                out,
                "PARTIAL      interrupted after {:.1}s of injection: the numbers cover only that",
                self.duration_s
            );
        }
        let _ = writeln!(out, "targets      {}", self.targets.join(", "));
        let _ = writeln!(
            out,
            "shards       {}   seed {}",
            self.shards.join(", "),
            self.seed
        );
        let _ = writeln!(
            out,
            "agents       {}: {} sockets up at the start, in {:.2}s ({} connects in all)",
            c.agents, c.connected_at_start, self.connect_all_s, c.connects
        );
        let _ = writeln!(
            out,
            "commands     {} scheduled, {} accepted, {} received, {} acked, {} lost, {} duplicates ({:.0} acked/s)",
            c.scheduled,
            c.accepted,
            c.received,
            c.acked,
            c.lost,
            c.duplicates,
            self.throughput()
        );
        if c.unanswered > 0 {
            let _ = writeln!(
                out,
                "             {} received without a 2xx: stored, the answer cut off (retry with the same command_id)",
                c.unanswered
            );
        }
        let _ = writeln!(out, "\nlatency (ms)                    count       p50       p90       p99     p99.9       max");
        let rows = [
            ("push→receive", "push_receive"),
            ("  uncorrected", "push_receive_uncorrected"),
            ("push→ack", "push_ack"),
            ("  uncorrected", "push_ack_uncorrected"),
            ("push→ack, backend's clock", "push_ack_backend"),
            ("  uncorrected", "push_ack_backend_uncorrected"),
            ("accept (control API)", "accept"),
            ("connect", "connect"),
            ("reconnect", "reconnect"),
        ];
        for (label, name) in rows {
            let unmeasured = name.starts_with("push_ack_backend");
            if let Some(p) = self
                .percentiles
                .get(name)
                .filter(|p| p.count > 0 || !unmeasured)
            {
                let _ = writeln!(
                    out,
                    "{label:<28} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
                );
            }
        }
        if let Some(backend) = self
            .percentiles
            .get("push_ack_backend")
            .filter(|_| c.acked > 0)
        {
            let _ = if backend.count > 0 {
                let tick = match self.notes.get("backend_ack_timestamp_resolution_ms") {
                    Some(ms) if *ms >= 0.001 => {
                        format!("; each timestamp spread over its {ms} ms tick")
                    }
                    _ => String::new(),
                };
                writeln!(out, "  (backend's clock: acked_at of {} sampled acked commands, read back through GET /api/commands/{{id}}{tick})", backend.count)
            } else {
                writeln!(
                    out,
                    "  (backend's clock: not measured; it needs the control API and --admin-token)"
                )
            };
        }
        if !c.backend_unread.is_empty() {
            let why: Vec<String> = c
                .backend_unread
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "  acked_at not read back: {}", why.join(", "));
        }
        if self.reconnect.fleet > 0 {
            let r = &self.reconnect;
            let show =
                |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{:.2}s", ms / 1000.0));
            let _ = writeln!(
                out,
                "\nreconnect    {} of {} back; 50 % in {}, 99 % in {}, 100 % in {}; commands flowing again in {}",
                r.back,
                r.fleet,
                show(r.t50_ms),
                show(r.t99_ms),
                show(r.t100_ms),
                show(r.flowing_ms)
            );
        }
        let _ = writeln!(out, "\npersonas");
        for (name, p) in &self.personas {
            let closes: Vec<String> = p
                .disconnects
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(
                out,
                "  {name:<17} {} connects, {} commands received; disconnects: {}",
                p.connects,
                p.received,
                if closes.is_empty() {
                    "none".into()
                } else {
                    closes.join(", ")
                }
            );
        }
        let problems: Vec<String> = c
            .rejected
            .iter()
            .map(|(k, v)| format!("command refused ({k}) ×{v}"))
            .chain(
                c.connect_failures
                    .iter()
                    .map(|(k, v)| format!("connect {k} ×{v}")),
            )
            .chain(c.errors.iter().map(|(k, v)| format!("{k} ×{v}")))
            .collect();
        let _ = writeln!(
            out,
            "\nerrors       {}",
            if problems.is_empty() {
                "none".into()
            } else {
                problems.join(", ")
            }
        );
        for (k, v) in &self.notes {
            let _ = writeln!(out, "note         {k} = {v:.2}");
        }
        out
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// What the run knows that the collector does not.
pub struct Meta {
    pub command_line: String,
    pub seed: u64,
    pub shard: String,
    pub targets: Vec<String>,
    pub plan: serde_json::Value,
    pub duration_s: f64,
    pub connect_all_s: f64,
    pub agents: u64,
    pub connected_at_start: u64,
}

/// `--baseline FILE --max-regression X%`: what got worse by more than X
/// (the rows of `verdict::baseline_rows` that regressed).
pub fn regressions(current: &LoadReport, baseline: &LoadReport, max: f64) -> Vec<String> {
    super::verdict::baseline_rows(current, baseline, max)
        .into_iter()
        .filter(|row| row.regressed)
        .map(|row| row.describe())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_with(values_us: &[u64], shard: &str) -> LoadReport {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values_us {
            h.record(*v).unwrap();
        }
        let empty = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut histograms = BTreeMap::new();
        let mut percentiles = BTreeMap::new();
        for name in HISTOGRAMS {
            let which = if name == "push_ack" { &h } else { &empty };
            histograms.insert(name.to_string(), encode(which));
            percentiles.insert(name.to_string(), Percentiles::of(which));
        }
        LoadReport {
            schema: SCHEMA.into(),
            command_line: "edge-harness load".into(),
            partial: false,
            seed: 1,
            shards: vec![shard.into()],
            targets: vec!["http://127.0.0.1:1".into()],
            plan: serde_json::json!({}),
            duration_s: 10.0,
            connect_all_s: 1.0,
            counts: Counts {
                agents: 10,
                acked: values_us.len() as u64,
                ..Counts::default()
            },
            percentiles,
            histograms,
            timeline: vec![Second {
                t: 0,
                acked: values_us.len() as u64,
                ..Second::default()
            }],
            reconnect: Reconnect::default(),
            personas: BTreeMap::new(),
            notes: BTreeMap::new(),
        }
    }

    #[test]
    fn merging_shards_is_lossless() {
        let a = report_with(&[1_000; 99], "0/2");
        let b = report_with(&[100_000], "1/2");
        let merged = LoadReport::merge(vec![a, b]).unwrap();
        let h = merged.histogram("push_ack").unwrap();
        assert_eq!(h.len(), 100);
        assert_eq!(h.max(), h.highest_equivalent(100_000));
        assert_eq!(merged.counts.agents, 20);
        assert_eq!(merged.shards, ["0/2", "1/2"]);
        assert_eq!(merged.timeline[0].acked, 100);
        // Round-trips through JSON.
        let again = LoadReport::from_json(&merged.to_json()).unwrap();
        assert_eq!(again, merged);
    }

    #[test]
    fn regressions_against_a_baseline() {
        let base = report_with(&[1_000; 100], "0/1");
        let slower = report_with(&[2_000; 100], "0/1");
        assert!(regressions(&base, &base, 0.1).is_empty());
        let found = regressions(&slower, &base, 0.1);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("push→ack p50 2.00 ms vs baseline 1.00 ms"));
    }

    #[test]
    fn reconnect_curve_percentiles() {
        let returns: Vec<_> = (1..=100).map(std::time::Duration::from_millis).collect();
        let r = reconnect_curve(100, returns, None);
        assert_eq!(
            (r.t50_ms, r.t99_ms, r.t100_ms),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        let partial = reconnect_curve(
            200,
            (1..=100).map(std::time::Duration::from_millis).collect(),
            None,
        );
        assert_eq!((partial.t50_ms, partial.t100_ms), (Some(100.0), None));
    }
}
