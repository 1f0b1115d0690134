//! One self-contained HTML page per run: inline SVG plots, no scripts, no
//! fonts, nothing fetched. A verdict banner, the thresholds and baseline
//! comparison as tables, then the plots: latency by percentile, commands/s
//! and p50/p99/p99.9 per second, connected agents over time, the reconnect
//! curve (each only when the run did what it shows).

use std::fmt::Write as _;

use super::report::LoadReport;
use super::verdict::{Outcome, Verdict};

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A line chart; `log_x` plots x as -log10(1 - x) (percentile axis).
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool) -> String {
    const W: f64 = 640.0;
    const H: f64 = 280.0;
    const L: f64 = 60.0;
    const B: f64 = 40.0;
    let tx = |x: f64| {
        if log_x {
            -(1.0 - x.min(0.999_999)).log10()
        } else {
            x
        }
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, y)| (tx(*x), *y)))
        .collect();
    let mut svg = format!("<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\">", esc(title));
    if all.is_empty() {
        svg.push_str("<text x=\"20\" y=\"40\">no data</text></svg></figure>");
        return svg;
    }
    let (x0, x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let y1 = all.iter().fold(0.0f64, |a, (_, y)| a.max(*y)).max(1e-9) * 1.1;
    let span = (x1 - x0).max(1e-9);
    let px = |x: f64| L + (tx(x) - x0) / span * (W - L - 10.0);
    let py = |y: f64| H - B - y / y1 * (H - B - 10.0);
    let _ = write!(svg, "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{L}\" y1=\"10\" x2=\"{L}\" y2=\"{}\" stroke=\"#888\"/>", H - B, W - 10.0, H - B, H - B);
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            L - 4.0,
            py(y) + 3.0,
            trim(y)
        );
    }
    let ticks: Vec<(f64, String)> = if log_x {
        [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999]
            .iter()
            .filter(|p| tx(**p) <= x1 + 1e-9)
            .map(|p| (*p, format!("p{}", trim(p * 100.0))))
            .collect()
    } else {
        (0..=4)
            .map(|i| x0 + span * i as f64 / 4.0)
            .map(|x| (x, trim(x)))
            .collect()
    };
    for (x, label) in ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            px(x),
            H - B + 14.0,
            esc(&label)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
        (W + L) / 2.0,
        H - 6.0,
        esc(x_label)
    );
    let _ = write!(svg, "<text x=\"12\" y=\"{}\" font-size=\"11\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>", H / 2.0, H / 2.0, esc(y_label));
    for (i, s) in series.iter().filter(|s| !s.points.is_empty()).enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            s.color,
            points.join(" ")
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{}\">{}</text>",
            L + 10.0,
            22.0 + 14.0 * i as f64,
            s.color,
            esc(s.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn trim(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn percentile_points(report: &LoadReport, name: &str) -> Vec<(f64, f64)> {
    let Ok(h) = report.histogram(name) else {
        return Vec::new();
    };
    if h.is_empty() {
        return Vec::new();
    }
    let quantiles = [
        0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999,
    ];
    quantiles
        .iter()
        .map(|q| (*q, h.value_at_quantile(*q) as f64 / 1000.0))
        .collect()
}

/// The page of a report re-rendered on its own (`report html`, `report
/// merge`): nothing to judge it by, so the banner says so (or that the run
/// was interrupted).
pub fn render(report: &LoadReport) -> String {
    render_judged(report, &Verdict::unjudged(report))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:1em}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{padding:2px 8px;text-align:right}th{background:#eee}\
td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:1em}\
.verdict{padding:0.8em 1.2em;font-size:1.3em;font-weight:bold;border-radius:4px}\
.passed{background:#d5f5e3;color:#145a32}.failed{background:#fadbd8;color:#78281f}\
.partial{background:#fcf3cf;color:#7d6608}.unchecked{background:#eaecee;color:#333}\
.ok{color:#1e8449}.bad{color:#c0392b;font-weight:bold}";

/// The page of a run with what it was checked against: a verdict banner,
/// the thresholds and baseline comparison as tables, then the plots. A
/// plot of something the run did not do (no storm: no reconnect curve) is
/// left out rather than drawn empty.
pub fn render_judged(report: &LoadReport, verdict: &Verdict) -> String {
    let mut page = format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>edge-harness load report</title><style>{STYLE}</style></head><body>");
    let _ = write!(
        page,
        "<h1>edge-harness load report</h1><p><code>{}</code></p>",
        esc(&report.command_line)
    );
    page.push_str(&banner(verdict));
    page.push_str(&checks_tables(verdict));
    let _ = write!(page, "<pre>{}</pre>", esc(&report.summary()));
    page.push_str(&chart(
        "Latency by percentile (corrected for coordinated omission, and not)",
        "percentile",
        "ms",
        &[
            Series {
                name: "push→ack",
                color: "#c0392b",
                points: percentile_points(report, "push_ack"),
            },
            Series {
                name: "push→ack uncorrected",
                color: "#e67e22",
                points: percentile_points(report, "push_ack_uncorrected"),
            },
            Series {
                name: "push→ack, backend's acked_at",
                color: "#8e44ad",
                points: percentile_points(report, "push_ack_backend"),
            },
            Series {
                name: "push→receive",
                color: "#2980b9",
                points: percentile_points(report, "push_receive"),
            },
        ],
        true,
    ));
    let t = |f: fn(&super::collector::Second) -> f64| {
        report
            .timeline
            .iter()
            .map(|s| (s.t as f64, f(s)))
            .collect::<Vec<_>>()
    };
    if report.counts.scheduled > 0 {
        page.push_str(&chart(
            "Commands per second",
            "seconds",
            "per second",
            &[
                Series {
                    name: "sent",
                    color: "#2980b9",
                    points: t(|s| s.sent as f64),
                },
                Series {
                    name: "acked",
                    color: "#27ae60",
                    points: t(|s| s.acked as f64),
                },
            ],
            false,
        ));
    }
    if report.counts.acked > 0 {
        // Reports from before p50/p99.9 were kept per second have only p99.
        let kept = |f: fn(&super::collector::Second) -> f64| {
            let points = t(f);
            if points.iter().any(|(_, y)| *y > 0.0) {
                points
            } else {
                Vec::new()
            }
        };
        page.push_str(&chart(
            "push→ack per second: p50, p99, p99.9",
            "seconds",
            "ms",
            &[
                Series {
                    name: "p50",
                    color: "#27ae60",
                    points: kept(|s| s.p50_ms),
                },
                Series {
                    name: "p99",
                    color: "#c0392b",
                    points: t(|s| s.p99_ms),
                },
                Series {
                    name: "p99.9",
                    color: "#7d3c98",
                    points: kept(|s| s.p999_ms),
                },
            ],
            false,
        ));
    }
    page.push_str(&chart(
        "Connected agents",
        "seconds",
        "agents",
        &[Series {
            name: "connected",
            color: "#8e44ad",
            points: t(|s| s.connected as f64),
        }],
        false,
    ));
    if report.reconnect.fleet > 0 {
        let curve: Vec<(f64, f64)> = report
            .reconnect
            .curve
            .iter()
            .map(|(ms, share)| (*ms / 1000.0, share * 100.0))
            .collect();
        page.push_str(&chart(
            "Reconnect curve after the storm",
            "seconds since the storm",
            "% of the fleet back",
            &[Series {
                name: "back",
                color: "#16a085",
                points: curve,
            }],
            false,
        ));
    }
    page.push_str("</body></html>\n");
    page
}

fn banner(verdict: &Verdict) -> String {
    let failures = verdict
        .failures()
        .iter()
        .map(|f| esc(f))
        .collect::<Vec<_>>()
        .join("; ");
    let (class, text) = match verdict.outcome() {
        Outcome::Passed => ("passed", "PASSED: every threshold held".to_string()),
        Outcome::Failed => ("failed", format!("FAILED: {failures}")),
        Outcome::Partial if failures.is_empty() => (
            "partial",
            "PARTIAL: the run was cut short; the numbers cover part of the plan".to_string(),
        ),
        Outcome::Partial => (
            "partial",
            format!("PARTIAL: the run was cut short; the numbers cover part of the plan. Breached so far: {failures}"),
        ),
        Outcome::Unchecked => (
            "unchecked",
            "No thresholds: the run was not checked against --fail-if or --baseline".to_string(),
        ),
    };
    format!("<div class=\"verdict {class}\" id=\"verdict\">{text}</div>")
}

fn checks_tables(verdict: &Verdict) -> String {
    let mut out = String::new();
    if !verdict.thresholds.is_empty() {
        out.push_str(
            "<h2>Thresholds</h2><table><tr><th>--fail-if</th><th>measured</th><th>result</th></tr>",
        );
        for row in &verdict.thresholds {
            let measured = row.measured.map_or("not measured".to_string(), trim);
            let result = if row.breach.is_some() {
                "<td class=\"bad\">breached</td>"
            } else {
                "<td class=\"ok\">holds</td>"
            };
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{measured}</td>{result}</tr>",
                esc(&row.text)
            );
        }
        out.push_str("</table>");
    }
    if let Some((name, rows)) = &verdict.baseline {
        let _ = write!(
            out,
            "<h2>Against the baseline <code>{}</code></h2><table><tr><th>metric</th><th>this run</th><th>baseline</th><th>change</th><th>allowed</th><th>result</th></tr>",
            esc(name)
        );
        for row in rows {
            let result = if row.regressed {
                "<td class=\"bad\">regressed</td>"
            } else {
                "<td class=\"ok\">ok</td>"
            };
            let allowed = if row.unit == "/s" { "−" } else { "+" };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} {unit}</td><td>{} {unit}</td><td>{:+.1} %</td><td>{allowed}{:.0} %</td>{result}</tr>",
                esc(row.metric),
                trim(row.now),
                trim(row.then),
                row.change() * 100.0,
                row.allowed * 100.0,
                unit = row.unit,
            );
        }
        out.push_str("</table>");
    }
    out
}
