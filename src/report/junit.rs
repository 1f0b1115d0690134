//! JUnit XML, one testcase per check with the rule id in its name, as
//! GitHub and GitLab render it.

use std::fmt::Write as _;

use super::{RunReport, Status};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

pub fn render(report: &RunReport) -> String {
    let counts = report.counts();
    let failures = counts.fail + counts.non_strict * usize::from(report.strict);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites name=\"edge-harness conform\" tests=\"{}\" failures=\"{failures}\" skipped=\"{}\" time=\"{:.3}\">",
        report.results.len(),
        counts.skipped + counts.expected_fail,
        report.duration.as_secs_f64()
    );
    let mut groups: Vec<&str> = report.results.iter().map(|r| r.group.as_str()).collect();
    groups.dedup();
    for group in groups {
        let cases: Vec<_> = report.results.iter().filter(|r| r.group == group).collect();
        let fails = cases.iter().filter(|r| r.status == Status::Fail).count();
        let skips = cases
            .iter()
            .filter(|r| matches!(r.status, Status::Skipped | Status::ExpectedFail))
            .count();
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{fails}\" skipped=\"{skips}\">",
            escape(group),
            cases.len()
        );
        for r in cases {
            let (file, line) = r.location.rsplit_once(':').unwrap_or((&r.location, "0"));
            let _ = write!(
                xml,
                "    <testcase classname=\"{}\" name=\"{} {} [{}]\" file=\"{}\" line=\"{}\" time=\"{:.3}\"",
                escape(group),
                escape(&r.rule),
                escape(&r.name),
                r.level,
                escape(file),
                line,
                r.duration.as_secs_f64()
            );
            let detail = || {
                let mut d = format!("{}\nrequirement: {}\n", r.location, r.requirement);
                if let Some(e) = &r.expected {
                    let _ = writeln!(d, "expected: {e}");
                }
                if let Some(o) = &r.observed {
                    let _ = writeln!(d, "observed: {o}");
                }
                for line in &r.transcript {
                    let _ = writeln!(d, "  {line}");
                }
                escape(&d)
            };
            let message = || {
                escape(&format!(
                    "{}: {}",
                    r.rule,
                    r.observed.as_deref().unwrap_or("")
                ))
            };
            match r.status {
                Status::Pass | Status::UnexpectedPass => xml.push_str(" />\n"),
                Status::Skipped => {
                    let _ = write!(
                        xml,
                        ">\n      <skipped message=\"{}\" />\n    </testcase>\n",
                        escape(r.reason.as_deref().unwrap_or(""))
                    );
                }
                Status::ExpectedFail => {
                    let _ = write!(xml, ">\n      <skipped message=\"expected to fail (--expect-fail): {}\" />\n    </testcase>\n", message());
                }
                Status::NonStrict if !report.strict => {
                    let _ = write!(xml, ">\n      <system-out>non-strict (SHOULD) failure\n{}</system-out>\n    </testcase>\n", detail());
                }
                Status::Fail | Status::NonStrict => {
                    let _ = write!(xml, ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>\n", message(), r.level, detail());
                }
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}
