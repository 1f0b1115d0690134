//! The terminal summary: checks grouped by rule section, colours on a TTY,
//! and for each failure what was expected and what was seen.

use std::fmt::Write as _;

use super::{RunReport, Status};

pub struct Style {
    pub color: bool,
    pub verbose: bool,
}

fn paint(style: &Style, code: &str, text: &str) -> String {
    if style.color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub fn render(report: &RunReport, style: &Style) -> String {
    let mut out = String::new();
    let mut group = "";
    for r in &report.results {
        if r.group != group {
            group = &r.group;
            let _ = writeln!(out, "\n{}", paint(style, "1", group));
        }
        let (color, mark) = match r.status {
            Status::Pass => ("32", "✓"),
            Status::Fail => ("31", "✗"),
            Status::NonStrict => ("33", "!"),
            Status::Skipped => ("2", "-"),
            Status::ExpectedFail => ("33", "x"),
            Status::UnexpectedPass => ("36", "✓"),
        };
        let flaky = if r.flaky {
            format!(" (flaky: passed on attempt {})", r.attempts)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {} {:<11} {:<6} {:<46} {}{flaky}",
            paint(style, color, mark),
            r.rule,
            r.level.to_string(),
            r.name,
            paint(style, color, &format!("{:>13}", r.status.label()))
        );
        match r.status {
            Status::Skipped => {
                let _ = writeln!(
                    out,
                    "      {}",
                    paint(style, "2", r.reason.as_deref().unwrap_or(""))
                );
            }
            Status::Fail | Status::NonStrict | Status::ExpectedFail => {
                let _ = writeln!(out, "      {}", r.requirement);
                let _ = writeln!(out, "      at {}", r.location);
                if let Some(e) = &r.expected {
                    let _ = writeln!(out, "      expected: {e}");
                }
                if let Some(o) = &r.observed {
                    let _ = writeln!(out, "      observed: {}", paint(style, color, o));
                }
                if style.verbose {
                    for line in &r.transcript {
                        let _ = writeln!(out, "        {line}");
                    }
                }
            }
            Status::UnexpectedPass => {
                let _ = writeln!(
                    out,
                    "      listed in --expect-fail but passes now: remove it from the list"
                );
            }
            Status::Pass => {}
        }
    }
    let c = report.counts();
    let verdict = if report.passed() {
        paint(style, "1;32", "PASSED")
    } else {
        paint(style, "1;31", "FAILED")
    };
    let _ = writeln!(
        out,
        "\n{verdict}: {} passed, {} failed, {} non-strict, {} skipped, {} expected failures, {} fixed, {} flaky ({:.1}s)",
        c.pass,
        c.fail,
        c.non_strict,
        c.skipped,
        c.expected_fail,
        c.unexpected_pass,
        c.flaky,
        report.duration.as_secs_f64()
    );
    if report.nothing_checked() {
        let _ = writeln!(
            out,
            "nothing was checked: every check was skipped (each says why above); pass what they need, or choose others with --only"
        );
    }
    out
}
