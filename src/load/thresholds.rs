//! `--fail-if 'p99<20ms'`: thresholds on the report, for CI. A threshold
//! names what must hold; the run fails (exit 1) when it does not.

use super::report::LoadReport;

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    metric: String,
    op: Op,
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

pub const METRICS: &str = "p50, p90, p99, p999, max (push→ack, corrected), receive_p50 … receive_max (push→receive), \
uncorrected_p99, backend_p99 (push→ack by the backend's acked_at), accept_p99, connect_p99, reconnect_p99, lost, errors, duplicates, connect_failures, rejected, \
reconnect_t50, reconnect_t99, reconnect_t100, reconnect_flowing (storm to the first ack of a command sent after it), throughput";

impl std::str::FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, sym, op) = ops
            .iter()
            .filter_map(|(sym, op)| text.find(sym).map(|at| (at, *sym, *op)))
            .min_by_key(|(at, sym, _)| (*at, usize::MAX - sym.len()))
            .ok_or_else(|| {
                format!("--fail-if `{text}`: write METRIC<VALUE, e.g. `p99<20ms` or `lost==0`")
            })?;
        let metric = text[..at].trim().to_lowercase();
        let raw = text[at + sym.len()..].trim();
        let value = if let Ok(n) = raw.parse::<f64>() {
            n
        } else {
            humantime::parse_duration(raw)
                .map(|d| d.as_secs_f64() * 1000.0)
                .map_err(|_| {
                    format!("--fail-if `{text}`: `{raw}` is not a number or a duration like `20ms`")
                })?
        };
        let threshold = Threshold {
            text: text.to_string(),
            metric,
            op,
            value,
        };
        threshold
            .measure(&LoadReport::empty_for_validation())
            .map(|_| threshold.clone())
            .ok_or_else(|| format!("--fail-if `{text}`: unknown metric; use one of: {METRICS}"))
    }
}

impl Threshold {
    /// The metric's name, lower-cased (`p99`, `lost`, …).
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// The metric's value in the report (milliseconds for times; infinite
    /// when the run did not measure it).
    pub fn measure(&self, report: &LoadReport) -> Option<f64> {
        let p = |hist: &str, q: &str| {
            let p = report.percentiles.get(hist)?;
            Some(match q {
                "p50" => p.p50_ms,
                "p90" => p.p90_ms,
                "p99" => p.p99_ms,
                "p999" => p.p999_ms,
                "max" => p.max_ms,
                _ => return None,
            })
        };
        let c = &report.counts;
        let m = self.metric.as_str();
        match m {
            "lost" => Some(c.lost as f64),
            "errors" => Some(c.errors.values().sum::<u64>() as f64),
            "duplicates" => Some(c.duplicates as f64),
            "connect_failures" => Some(c.connect_failures.values().sum::<u64>() as f64),
            "rejected" => Some(c.rejected.values().sum::<u64>() as f64),
            "throughput" => Some(report.throughput()),
            "reconnect_t50" => Some(report.reconnect.t50_ms.unwrap_or(f64::INFINITY)),
            "reconnect_t99" => Some(report.reconnect.t99_ms.unwrap_or(f64::INFINITY)),
            "reconnect_t100" => Some(report.reconnect.t100_ms.unwrap_or(f64::INFINITY)),
            "reconnect_flowing" => Some(report.reconnect.flowing_ms.unwrap_or(f64::INFINITY)),
            _ => {
                let (hist, q) = match m.split_once('_') {
                    Some(("receive", q)) => ("push_receive", q),
                    Some(("uncorrected", q)) => ("push_ack_uncorrected", q),
                    Some(("backend", q)) => {
                        // Not measured (no control API) must not pass as 0 ms.
                        if report.percentiles.get("push_ack_backend")?.count == 0 {
                            return Some(f64::INFINITY);
                        }
                        ("push_ack_backend", q)
                    }
                    Some(("accept", q)) => ("accept", q),
                    Some(("connect", q)) => ("connect", q),
                    Some(("reconnect", q)) => ("reconnect", q),
                    None => ("push_ack", m),
                    _ => return None,
                };
                p(hist, q)
            }
        }
    }

    /// None when it holds; else what was measured.
    pub fn breached(&self, report: &LoadReport) -> Option<String> {
        let v = self.measure(report)?;
        let holds = match self.op {
            Op::Lt => v < self.value,
            Op::Le => v <= self.value,
            Op::Gt => v > self.value,
            Op::Ge => v >= self.value,
            Op::Eq => (v - self.value).abs() < f64::EPSILON,
        };
        (!holds).then(|| {
            if v.is_infinite() {
                format!("{} breached: not measured in this run", self.text)
            } else {
                format!("{} breached: measured {v:.3}", self.text)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let t: Threshold = "p99<20ms".parse().unwrap();
        assert_eq!((t.metric.as_str(), t.op, t.value), ("p99", Op::Lt, 20.0));
        let t: Threshold = "lost==0".parse().unwrap();
        assert_eq!((t.op, t.value), (Op::Eq, 0.0));
        let t: Threshold = "reconnect_t99 <= 5s".parse().unwrap();
        assert_eq!((t.op, t.value), (Op::Le, 5000.0));
        // A threshold on what a run did not measure fails and says so.
        let t: Threshold = "backend_p99<5ms".parse().unwrap();
        assert_eq!(
            t.breached(&LoadReport::empty_for_validation()).as_deref(),
            Some("backend_p99<5ms breached: not measured in this run")
        );
        assert!("p98<1ms"
            .parse::<Threshold>()
            .unwrap_err()
            .contains("unknown metric"));
        assert!("p99 20ms"
            .parse::<Threshold>()
            .unwrap_err()
            .contains("write METRIC<VALUE"));
        assert!("p99<soon"
            .parse::<Threshold>()
            .unwrap_err()
            .contains("not a number"));
    }
}
