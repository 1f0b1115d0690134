//! The `metrics` step (WS-OBS-1): the page parses as the Prometheus text
//! format and carries a family for each thing §9 names. PROTOCOL.md names
//! what must be measured, not the metric names, so each is matched by name
//! patterns (`*connection*active*|*active*connection*`), and a count by
//! reason by a label value in braces (`*disconnect*{replaced}`: only the
//! samples with a label of that value, whatever the label's name). A step
//! may save
//! the page (`snapshot`) and a later one require each family's counters to
//! have grown since (`since`): a page whose counters never move has the
//! families and measures nothing. Or require them not to have moved
//! (`unchanged_since`): a repeated ack is not a second outcome. Or require
//! its gauges to have risen (`gauges_rose_since`: an open socket is
//! counted), fallen (`gauges_fell_since`: a closed socket left the
//! active-connections gauge), or to be no higher than they were
//! (`gauges_back_to`: every socket opened since, a replaced one too, was
//! counted out).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{fail, Ctx, StepResult};
use crate::conform::glob;
use crate::scenario::prometheus::{self, Page, Series};
use crate::scenario::Since;

impl Ctx<'_> {
    pub(super) async fn metrics(
        &mut self,
        path: &str,
        token: &str,
        families: &[(String, String)],
        snapshot: Option<&str>,
        since: Option<&Since>,
    ) -> StepResult {
        // A backend may count an event a moment after it (a metrics task,
        // a periodic collect), so a comparison with a snapshot reads the
        // page again for a while: `since` and the gauge comparisons until
        // they are met, `unchanged_since` for as long, to see a late count.
        // A snapshot's gauges must hold still first: a socket the backend
        // is still counting out would otherwise be in it, and its leaving
        // later could hide a socket a broken backend never counts out.
        let deadline = Instant::now() + SETTLE;
        let mut previous_gauges: Option<Vec<f64>> = None;
        loop {
            let page = self.metrics_page(path, token).await?;
            let missing: Vec<String> = families
                .iter()
                .filter(|(_, patterns)| !page.names.iter().any(|name| names(patterns, name)))
                .map(|(what, patterns)| format!("{what} ({patterns})"))
                .collect();
            if !missing.is_empty() {
                let shown: Vec<&str> = page.names.iter().map(String::as_str).take(40).collect();
                return fail(
                    format!("a metric family for: {}", missing.join("; ")),
                    format!("none; the families are: {}", shown.join(", ")),
                );
            }
            let settled = match since {
                None => true,
                Some(since) => self.compare(since, families, &page, deadline)?,
            };
            if !settled {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            if let Some(name) = snapshot {
                let gauges: Vec<f64> = families
                    .iter()
                    .filter(|(_, patterns)| any(&page.gauges, patterns))
                    .map(|(_, patterns)| total(&page.gauges, patterns))
                    .collect();
                let steady = gauges.is_empty() || previous_gauges.as_ref() == Some(&gauges);
                if !steady && Instant::now() < deadline {
                    previous_gauges = Some(gauges);
                    tokio::time::sleep(STEADY).await;
                    continue;
                }
                self.snapshots.insert(name.to_string(), page);
            }
            return Ok(());
        }
    }

    /// Whether the page meets `since` (fails once it cannot), or must be
    /// read again. `since` waits for counters to grow and the gauge
    /// comparisons for gauges to fall; `unchanged_since` watches counters
    /// stay for as long.
    fn compare(
        &self,
        since: &Since,
        families: &[(String, String)],
        page: &Page,
        deadline: Instant,
    ) -> Result<bool, (String, String)> {
        let name = since.snapshot();
        let Some(before) = self.snapshots.get(name) else {
            return fail(
                format!("a metrics snapshot `{name}`"),
                "no such snapshot in this check (save one with `snapshot = \"NAME\"`)",
            );
        };
        // Gauges or counters; when they are right; what is wanted, what it was.
        let gauges = matches!(
            since,
            Since::GaugesRose(_) | Since::GaugesFell(_) | Since::GaugesBackTo(_)
        );
        let (then, now) = match gauges {
            true => (&before.gauges, &page.gauges),
            false => (&before.counters, &page.counters),
        };
        type Right = fn(f64, f64) -> bool;
        let (right, wanted, found): (Right, _, _) = match since {
            Since::Grown(_) => (|t, n| n > t, "these counters to have grown", "unchanged"),
            Since::Unchanged(_) => (|t, n| n == t, "these counters unchanged", "moved"),
            Since::GaugesRose(_) => (|t, n| n > t, "these gauges to have risen", "not higher"),
            Since::GaugesFell(_) => (|t, n| n < t, "these gauges to have fallen", "not lower"),
            Since::GaugesBackTo(_) => (|t, n| n <= t, "these gauges no higher", "higher"),
        };
        // A family none of whose samples is a gauge (a counter whose name
        // the patterns also match) would compare 0 with 0.
        let no_gauge: Vec<String> = families
            .iter()
            .filter(|(_, patterns)| gauges && !any(then, patterns) && !any(now, patterns))
            .map(|(what, patterns)| format!("{what} ({patterns})"))
            .collect();
        if !no_gauge.is_empty() {
            return fail(
                format!("a gauge sample for: {}", no_gauge.join("; ")),
                "none: the samples these patterns match are not gauges (`# TYPE … gauge`)",
            );
        }
        let wrong: Vec<String> = families
            .iter()
            .filter_map(|(what, patterns)| {
                let (then_sum, now_sum) = (total(then, patterns), total(now, patterns));
                (!right(then_sum, now_sum))
                    .then(|| format!("{what} ({patterns}): {then_sum} → {now_sum}"))
            })
            .collect();
        let time_left = Instant::now() < deadline;
        let watched = matches!(since, Since::Unchanged(_));
        match (watched, wrong.is_empty()) {
            (false, true) => Ok(true),
            (false, false) if time_left => Ok(false),
            (true, true) => Ok(!time_left),
            (false, false) => fail(
                format!("{wanted} since `{name}` (within {SETTLE:?})"),
                format!("{found}: {}", wrong.join("; ")),
            ),
            (true, false) => fail(
                format!("{wanted} since `{name}` (watched for {SETTLE:?})"),
                format!("{found}: {}", wrong.join("; ")),
            ),
        }
    }

    /// `GET path`: 200, Prometheus text, parsed.
    async fn metrics_page(
        &mut self,
        path: &str,
        token: &str,
    ) -> Result<prometheus::Page, (String, String)> {
        let url = format!("{}{path}", self.target.http_base);
        let authorization = self.authorization(token, "a")?;
        let mut request = self.target.http.get(&url);
        if let Some(auth) = &authorization {
            request = request.header("authorization", auth);
        }
        let response = request
            .send()
            .await
            .or_else(|e| fail(format!("GET {path} answers"), e.to_string()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.unwrap_or_default();
        self.note(format!(
            "http GET {path} → {status} {content_type}, {} lines",
            text.lines().count()
        ));
        if status != 200 {
            return fail(format!("GET {path}: HTTP 200"), format!("HTTP {status}"));
        }
        if !(content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"))
        {
            return fail(
                "Content-Type text/plain (Prometheus text format)",
                format!("Content-Type {content_type:?}"),
            );
        }
        prometheus::read(&text).or_else(|e| fail("the Prometheus text exposition format", e))
    }
}

/// How long a snapshot's gauges must read the same to be taken.
const STEADY: Duration = Duration::from_millis(250);

/// How long `since` and the gauge comparisons wait to be met,
/// `unchanged_since` watches counters stay, and a snapshot waits for its
/// gauges to hold still.
const SETTLE: Duration = Duration::from_secs(2);

/// `NAME` or `NAME{VALUE}` (globs): the name, and the label value if any.
fn parts(pattern: &str) -> (&str, Option<&str>) {
    let pattern = pattern.trim();
    match pattern.strip_suffix('}').and_then(|p| p.split_once('{')) {
        Some((name, value)) => (name, Some(value)),
        None => (pattern, None),
    }
}

/// Whether `name` is a family one of `patterns` is about. A family is
/// there even before the label value it is read by has a sample: a page
/// may show a reason's series only once it has counted one.
fn names(patterns: &str, name: &str) -> bool {
    patterns.split('|').any(|p| glob(parts(p).0, name))
}

/// Whether one of `patterns` matches `series`.
fn matches(patterns: &str, (name, values): &Series) -> bool {
    patterns.split('|').map(parts).any(|(family, value)| {
        glob(family, name) && value.is_none_or(|v| values.iter().any(|x| glob(v, x)))
    })
}

/// The sum of the samples (counters or gauges) one of `patterns` matches.
fn total(samples: &BTreeMap<Series, f64>, patterns: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| matches(patterns, series))
        .map(|(_, value)| value)
        .sum()
}

/// Whether one of `patterns` matches any of `samples`.
fn any(samples: &BTreeMap<Series, f64>, patterns: &str) -> bool {
    samples.keys().any(|series| matches(patterns, series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_in_braces_sums_only_its_series() {
        let page = prometheus::read(
            "# TYPE edge_disconnects_total counter\n\
             edge_disconnects_total{instance=\"a\",reason=\"normal\"} 5\n\
             edge_disconnects_total{instance=\"a\",reason=\"replaced\"} 2\n\
             # TYPE edge_commands_total counter\n\
             edge_commands_total{outcome=\"failed\"} 1\n",
        )
        .unwrap();
        let sum = |patterns: &str| total(&page.counters, patterns);
        assert_eq!(sum("*disconnect*"), 7.0);
        assert_eq!(sum("*disconnect*{replaced}"), 2.0);
        assert_eq!(sum("*disconnect*{REPLACED}"), 2.0, "globs ignore case");
        assert_eq!(sum("*disconnect*{ping_timeout}"), 0.0);
        assert_eq!(sum("*disconnect*{a}"), 7.0, "any label's value");
        assert_eq!(sum("*disconnect*{replaced}|*command*{fail*}"), 3.0);
        assert_eq!(sum("*command*{replaced}"), 0.0);
        assert!(names(
            "*disconnect*{ping_timeout}",
            "edge_disconnects_total"
        ));
        assert!(!names("*command*{failed}", "edge_disconnects_total"));
    }
}
