//! The Prometheus text exposition format (WS-OBS-1), read strictly enough
//! to tell a real `/metrics` page from JSON or HTML served at that path:
//! `# HELP`/`# TYPE` lines and samples `name{label="value",…} value [ts]`.
//! It also sums the samples that can only go up (counters, histogram
//! buckets and counts) per name and label values, so a check can see them
//! move, and see under which label (`reason="replaced"`) they moved; and,
//! apart, the gauges' samples, so a check can see a level come back down.

use std::collections::{BTreeMap, BTreeSet};

const TYPES: [&str; 9] = [
    "counter",
    "gauge",
    "histogram",
    "summary",
    "untyped",
    // OpenMetrics
    "unknown",
    "info",
    "stateset",
    "gaugehistogram",
];

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_value(text: &str) -> bool {
    matches!(text, "NaN" | "+Inf" | "-Inf" | "Inf" | "+inf" | "-inf")
        || text
            .parse::<f64>()
            .is_ok_and(|_| !text.contains(['i', 'I', 'n', 'N']))
}

/// A sample's name and its label values in the order written
/// (`edge_disconnects_total{reason="replaced"}` → `("edge_disconnects_total",
/// ["replaced"])`): PROTOCOL.md names the reasons to count by, not the
/// labels' names, so a check matches values only.
pub type Series = (String, Vec<String>);

/// What a page says: its names, the totals of its counters, and its gauges.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    /// Every metric family named on the page (by `# TYPE`/`# HELP` or by a
    /// sample).
    pub names: BTreeSet<String>,
    /// Per series, the sum of its samples (a series written twice counts
    /// twice), for the samples that only go up: a `counter` family's, a
    /// histogram's or summary's `_bucket` and `_count`, and, with no
    /// `# TYPE`, names ending in `_total`, `_count` or `_bucket`.
    pub counters: BTreeMap<Series, f64>,
    /// Per series, the sum of its samples, for the levels: a `gauge`
    /// family's, and with no `# TYPE` a name without a counter's or a
    /// histogram's suffix (`_total`, `_count`, `_bucket`, `_sum`,
    /// `_created`).
    pub gauges: BTreeMap<Series, f64>,
}

/// Every metric family named on the page, or the first line that is not
/// the text format.
pub fn families(text: &str) -> Result<BTreeSet<String>, String> {
    read(text).map(|page| page.names)
}

/// Reads a page, or says which line is not the text format.
pub fn read(text: &str) -> Result<Page, String> {
    let mut names = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples: Vec<(Series, f64)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {:?}", index + 1, clip(line));
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some(kind @ ("HELP" | "TYPE")) => {
                    let name = words.next().unwrap_or("");
                    if !is_name(name) {
                        return Err(at(format!("`# {kind}` needs a metric name")));
                    }
                    if kind == "TYPE" {
                        match words.next() {
                            // `untyped`/`unknown` say no more than no
                            // `# TYPE` does: the name's suffix decides.
                            Some("untyped" | "unknown") => {}
                            Some(t) if TYPES.contains(&t) => {
                                types.insert(name.to_string(), t.to_string());
                            }
                            _ => {
                                return Err(at(format!(
                                    "`# TYPE` needs one of {}",
                                    TYPES.join(", ")
                                )))
                            }
                        }
                    }
                    names.insert(name.to_string());
                }
                _ => continue,
            }
            continue;
        }
        let (name, rest) = sample_name(line);
        if !is_name(name) {
            return Err(at("a sample must start with a metric name".into()));
        }
        let (values, rest) = match rest.strip_prefix('{') {
            Some(labels) => read_labels(labels).map_err(at)?,
            None => (Vec::new(), rest),
        };
        let mut words = rest.split_whitespace();
        let value = words
            .next()
            .filter(|v| is_value(v))
            .ok_or_else(|| at("a sample needs a number after its name and labels".into()))?;
        samples.push((
            (name.to_string(), values),
            value.parse().unwrap_or(f64::NAN),
        ));
        if words.next().is_some_and(|ts| ts.parse::<f64>().is_err()) || words.next().is_some() {
            return Err(at("after the value only a timestamp may follow".into()));
        }
        names.insert(name.to_string());
    }
    if names.is_empty() {
        return Err("no metrics at all".into());
    }
    let (mut counters, mut gauges) = (BTreeMap::new(), BTreeMap::new());
    for (series, value) in samples {
        let sums = match (only_goes_up(&series.0, &types), is_level(&series.0, &types)) {
            (true, _) => &mut counters,
            (false, true) => &mut gauges,
            (false, false) => continue,
        };
        if value.is_finite() {
            *sums.entry(series).or_insert(0.0) += value;
        }
    }
    Ok(Page {
        names,
        counters,
        gauges,
    })
}

/// Whether a sample named `name` is a level that may go down: a `gauge`
/// family's, or with no `# TYPE` one whose name is not a counter's or a
/// histogram's part.
fn is_level(name: &str, types: &BTreeMap<String, String>) -> bool {
    match types.get(name).map(String::as_str) {
        Some(t) => t == "gauge",
        None => !COUNTER_AND_HISTOGRAM_SUFFIXES
            .iter()
            .any(|suffix| name.ends_with(suffix)),
    }
}

/// The suffixes of a counter's and a histogram's or summary's samples.
const COUNTER_AND_HISTOGRAM_SUFFIXES: [&str; 5] =
    ["_total", "_count", "_bucket", "_sum", "_created"];

/// Whether a sample named `name` is a counter, a histogram's or summary's
/// bucket or count, judged by its family's `# TYPE` (OpenMetrics names a
/// counter `x` and its sample `x_total`), or by its suffix without one.
fn only_goes_up(name: &str, types: &BTreeMap<String, String>) -> bool {
    let family_type = |suffix: &str| {
        name.strip_suffix(suffix)
            .and_then(|family| types.get(family))
            .map(String::as_str)
    };
    match types.get(name).map(String::as_str) {
        Some(t) => t == "counter",
        None => match (
            family_type("_total"),
            family_type("_bucket").or(family_type("_count")),
        ) {
            (Some(t), _) => t == "counter",
            (None, Some(t)) => matches!(t, "histogram" | "summary"),
            (None, None) => ["_total", "_count", "_bucket"]
                .iter()
                .any(|s| name.ends_with(s)),
        },
    }
}

fn sample_name(line: &str) -> (&str, &str) {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    line.split_at(end)
}

/// Reads `label="value",…}`: the values (as written, escapes kept) and
/// what follows the `}`.
fn read_labels(mut rest: &str) -> Result<(Vec<String>, &str), String> {
    let mut values = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((values, after));
        }
        let eq = rest.find('=').ok_or("a label needs `name=\"value\"`")?;
        if !is_name(rest[..eq].trim()) {
            return Err("a label name must be [a-zA-Z_][a-zA-Z0-9_]*".into());
        }
        let value = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut escaped = false;
        let close = value
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .ok_or("a label value is not closed")?;
        values.push(value[..close].to_string());
        rest = value[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn clip(line: &str) -> String {
    line.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_real_page() {
        let page = "# HELP edge_connections_active Open sockets.\n# TYPE edge_connections_active gauge\nedge_connections_active 3\n# TYPE edge_latency_seconds histogram\nedge_latency_seconds_bucket{le=\"0.005\",kind=\"a\\\"b\"} 1 1700000000000\nedge_latency_seconds_bucket{le=\"+Inf\"} 2\nedge_latency_seconds_sum 0.01\nedge_latency_seconds_count 2\n";
        let names = families(page).unwrap();
        assert!(names.contains("edge_connections_active"));
        assert!(names.contains("edge_latency_seconds"));
        assert!(names.contains("edge_latency_seconds_bucket"));
        let counters = read(page).unwrap().counters;
        let bucket = |values: &[&str]| {
            let values = values.iter().map(|v| v.to_string()).collect();
            counters[&("edge_latency_seconds_bucket".to_string(), values)]
        };
        assert_eq!(bucket(&["0.005", "a\\\"b"]), 1.0);
        assert_eq!(bucket(&["+Inf"]), 2.0);
    }

    #[test]
    fn sums_counters_and_gauges_apart() {
        let page = "# TYPE open gauge\nopen 3\n\
            # TYPE acks_total counter\nacks_total{result=\"completed\"} 2\nacks_total{result=\"failed\"} 1\n\
            # TYPE pushes counter\npushes_total 4\npushes_created 1.7e9\n\
            # TYPE latency histogram\nlatency_bucket{le=\"1\"} 1\nlatency_bucket{le=\"+Inf\"} 2\nlatency_sum 0.5\nlatency_count 2\n\
            # TYPE temperature_count gauge\ntemperature_count 9\n\
            untyped_total 5\nuntyped_level 6\nnan_total NaN\n";
        let Page {
            counters, gauges, ..
        } = read(page).unwrap();
        let expected: BTreeMap<Series, f64> = [
            ("acks_total", &["completed"][..], 2.0),
            ("acks_total", &["failed"], 1.0),
            ("pushes_total", &[], 4.0),
            ("latency_bucket", &["1"], 1.0),
            ("latency_bucket", &["+Inf"], 2.0),
            ("latency_count", &[], 2.0),
            ("untyped_total", &[], 5.0),
        ]
        .into_iter()
        .map(|(name, values, sum)| {
            let values = values.iter().map(|v| v.to_string()).collect();
            ((name.to_string(), values), sum)
        })
        .collect();
        assert_eq!(counters, expected);
        let levels: Vec<(&str, f64)> = gauges.iter().map(|((n, _), v)| (n.as_str(), *v)).collect();
        assert_eq!(
            levels,
            [
                ("open", 3.0),
                ("temperature_count", 9.0),
                ("untyped_level", 6.0)
            ],
            "gauges, typed or not, and no counter, histogram part or `_created`"
        );
        // `untyped` and `unknown` say what no `# TYPE` says: the suffix decides.
        let page = "# TYPE odd_total untyped\nodd_total 2\n# TYPE level unknown\nlevel 4\n";
        let Page {
            counters, gauges, ..
        } = read(page).unwrap();
        let names =
            |m: &BTreeMap<Series, f64>| m.keys().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&counters), ["odd_total"]);
        assert_eq!(names(&gauges), ["level"]);
    }

    #[test]
    fn json_and_html_are_not_prometheus_text() {
        for page in [
            "{\"connections\": 3}",
            "<html><body>metrics</body></html>",
            "edge_up",
            "edge_up{x=1} 1",
            "# TYPE edge_up thing\nedge_up 1",
            "",
        ] {
            assert!(families(page).is_err(), "{page:?}");
        }
    }

    proptest! {
        /// Any page made of valid lines reads, and names each family.
        #[test]
        fn valid_pages_read(samples in prop::collection::vec(("[a-z_][a-z0-9_]{0,12}", "[a-z]{1,5}", "[ -~]{0,10}", -1e9f64..1e9), 1..20)) {
            let mut page = String::new();
            for (name, label, value, number) in &samples {
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
                page.push_str(&format!("# TYPE {name} gauge\n{name}{{{label}=\"{escaped}\"}} {number}\n"));
            }
            let names = families(&page).unwrap();
            for (name, ..) in &samples {
                prop_assert!(names.contains(name));
            }
        }

        /// Fed by the network: any text reads or is refused, never panics.
        #[test]
        fn any_text_reads_or_is_refused(text in "[ -~\n{}\"=#]{0,200}") {
            let _ = families(&text);
        }
    }
}
