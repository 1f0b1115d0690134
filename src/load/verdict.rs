//! What a run is judged by: each `--fail-if` threshold with what was
//! measured, the `--baseline` comparison row by row, and the verdict they
//! make together (the HTML report's banner and tables, and the exit code's
//! reasons).

use super::report::LoadReport;
use super::thresholds::Threshold;

/// One `--fail-if` threshold against a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    pub text: String,
    /// None when the run did not measure the metric.
    pub measured: Option<f64>,
    /// What `Threshold::breached` says, when it does not hold.
    pub breach: Option<String>,
}

/// One metric of this run against the baseline's.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineRow {
    pub metric: &'static str,
    pub unit: &'static str,
    pub now: f64,
    pub then: f64,
    /// The allowed regression, as a fraction (0.1 = 10 %).
    pub allowed: f64,
    pub regressed: bool,
}

impl BaselineRow {
    /// The change against the baseline as a fraction (+ is larger).
    pub fn change(&self) -> f64 {
        if self.then > 0.0 {
            self.now / self.then - 1.0
        } else {
            0.0
        }
    }

    /// How a regression is reported (`FAIL: regression against …: <this>`).
    pub fn describe(&self) -> String {
        if self.unit == "/s" {
            format!(
                "{} {:.0}/s vs baseline {:.0}/s (−{:.0} %)",
                self.metric,
                self.now,
                self.then,
                -self.change() * 100.0
            )
        } else {
            format!(
                "{} {:.2} ms vs baseline {:.2} ms (+{:.0} %)",
                self.metric,
                self.now,
                self.then,
                self.change() * 100.0
            )
        }
    }
}

/// p50 and p99 push→ack (lower is better) and throughput (higher is
/// better) of `current` against `baseline`; a row regressed when it is
/// worse by more than `max` (a fraction).
pub fn baseline_rows(current: &LoadReport, baseline: &LoadReport, max: f64) -> Vec<BaselineRow> {
    let mut rows = Vec::new();
    for (metric, pick) in [
        (
            "push→ack p50",
            (|p| p.p50_ms) as fn(&super::report::Percentiles) -> f64,
        ),
        ("push→ack p99", |p| p.p99_ms),
    ] {
        let get = |r: &LoadReport| r.percentiles.get("push_ack").map(pick);
        if let (Some(now), Some(then)) = (get(current), get(baseline)) {
            rows.push(BaselineRow {
                metric,
                unit: "ms",
                now,
                then,
                allowed: max,
                regressed: then > 0.0 && now > then * (1.0 + max),
            });
        }
    }
    let (now, then) = (current.throughput(), baseline.throughput());
    rows.push(BaselineRow {
        metric: "throughput",
        unit: "/s",
        now,
        then,
        allowed: max,
        regressed: then > 0.0 && now < then * (1.0 - max),
    });
    rows
}

/// Everything the run was checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub thresholds: Vec<ThresholdRow>,
    /// The baseline file and its rows, with `--baseline`.
    pub baseline: Option<(String, Vec<BaselineRow>)>,
    /// The run was cut short (Ctrl-C, `LoadReport::partial`): its numbers
    /// cover part of the plan.
    pub partial: bool,
    /// Commands were scheduled and the backend accepted none (a wrong
    /// `--admin-token`, a full queue): nothing was measured, so no
    /// threshold may pass on it.
    pub nothing_accepted: Option<String>,
}

/// The banner's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Partial,
    /// Nothing to check against (no `--fail-if`, no `--baseline`).
    Unchecked,
}

impl Verdict {
    pub fn check(
        report: &LoadReport,
        thresholds: &[Threshold],
        baseline: Option<(&str, &LoadReport, f64)>,
    ) -> Verdict {
        Verdict {
            thresholds: thresholds
                .iter()
                .map(|t| ThresholdRow {
                    text: t.text.clone(),
                    measured: t.measure(report).filter(|v| v.is_finite()),
                    breach: t.breached(report),
                })
                .collect(),
            baseline: baseline
                .map(|(name, base, max)| (name.to_string(), baseline_rows(report, base, max))),
            partial: report.partial,
            nothing_accepted: (report.counts.scheduled > 0 && report.counts.accepted == 0).then(
                || {
                    let refused: Vec<String> = report
                        .counts
                        .rejected
                        .iter()
                        .map(|(why, n)| format!("{n} × {why}"))
                        .collect();
                    format!(
                        "no command was accepted ({} scheduled; refused: {}): nothing was measured",
                        report.counts.scheduled,
                        if refused.is_empty() {
                            "none answered".to_string()
                        } else {
                            refused.join(", ")
                        }
                    )
                },
            ),
        }
    }

    /// Nothing to judge a saved report by (`report html`, `report merge`),
    /// but an interrupted run still says so.
    pub fn unjudged(report: &LoadReport) -> Verdict {
        Verdict::check(report, &[], None)
    }

    /// Every reason the run fails, as printed after `FAIL: `.
    pub fn failures(&self) -> Vec<String> {
        let breaches = self.thresholds.iter().filter_map(|t| t.breach.clone());
        let regressions = self.baseline.iter().flat_map(|(name, rows)| {
            rows.iter()
                .filter(|r| r.regressed)
                .map(move |r| format!("regression against {name}: {}", r.describe()))
        });
        let nothing = self.nothing_accepted.iter().cloned();
        nothing.chain(breaches).chain(regressions).collect()
    }

    /// An interrupted run is partial whatever it breached so far (as its
    /// exit code, 130, says); the banner still names the breaches.
    pub fn outcome(&self) -> Outcome {
        if self.partial {
            Outcome::Partial
        } else if !self.failures().is_empty() {
            Outcome::Failed
        } else if self.thresholds.is_empty() && self.baseline.is_none() {
            Outcome::Unchecked
        } else {
            Outcome::Passed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(p50_ms: f64, acked: u64) -> LoadReport {
        let mut r = LoadReport::empty_for_validation();
        r.duration_s = 1.0;
        r.counts.acked = acked;
        let p = r.percentiles.get_mut("push_ack").unwrap();
        p.count = acked;
        p.p50_ms = p50_ms;
        p.p99_ms = p50_ms * 2.0;
        r
    }

    #[test]
    fn outcomes() {
        let r = report(1.0, 100);
        assert_eq!(Verdict::check(&r, &[], None).outcome(), Outcome::Unchecked);
        let holds: Threshold = "p99<5ms".parse().unwrap();
        let breaks: Threshold = "lost>0".parse().unwrap();
        let v = Verdict::check(&r, std::slice::from_ref(&holds), None);
        assert_eq!(v.outcome(), Outcome::Passed);
        assert_eq!(v.thresholds[0].measured, Some(2.0));
        let v = Verdict::check(&r, &[holds.clone(), breaks.clone()], None);
        assert_eq!(v.outcome(), Outcome::Failed);
        assert_eq!(v.failures(), ["lost>0 breached: measured 0.000"]);
        // Nothing accepted: nothing measured, so `lost==0` holding proves
        // nothing, and no threshold at all does not make it a pass either.
        let mut refused = r.clone();
        refused.counts.scheduled = 300;
        refused.counts.rejected.insert("HTTP 401".into(), 300);
        let lost_none: Threshold = "lost==0".parse().unwrap();
        for thresholds in [vec![], vec![lost_none]] {
            let v = Verdict::check(&refused, &thresholds, None);
            assert_eq!(v.outcome(), Outcome::Failed, "{thresholds:?}");
            assert_eq!(
                v.failures()[0],
                "no command was accepted (300 scheduled; refused: 300 × HTTP 401): nothing was measured"
            );
        }
        // An interrupted run is partial, breached or not (its report says so).
        let mut cut = r.clone();
        cut.partial = true;
        assert_eq!(Verdict::unjudged(&cut).outcome(), Outcome::Partial);
        let v = Verdict::check(&cut, &[holds, breaks], None);
        assert_eq!(v.outcome(), Outcome::Partial);
        assert_eq!(v.failures().len(), 1);
        // A metric the run did not measure has no value, and fails.
        let backend: Threshold = "backend_p99<5ms".parse().unwrap();
        let v = Verdict::check(&r, &[backend], None);
        assert_eq!(v.thresholds[0].measured, None);
        assert_eq!(v.outcome(), Outcome::Failed);
    }

    #[test]
    fn baseline_rows_and_regressions() {
        let base = report(1.0, 100);
        let slower = report(2.0, 50);
        let v = Verdict::check(&slower, &[], Some(("base.json", &base, 0.1)));
        let (_, rows) = v.baseline.as_ref().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.regressed));
        assert_eq!(
            v.failures()[0],
            "regression against base.json: push→ack p50 2.00 ms vs baseline 1.00 ms (+100 %)"
        );
        assert_eq!(
            rows[2].describe(),
            "throughput 50/s vs baseline 100/s (−50 %)"
        );
        let same = Verdict::check(&base, &[], Some(("base.json", &base, 0.1)));
        assert_eq!(same.outcome(), Outcome::Passed);
    }
}
