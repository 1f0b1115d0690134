//! The three report formats for a fixed run: one check of every status.

use std::time::Duration;

use edge_harness::report::{self, CheckResult, RunReport, Status};
use edge_harness::scenario::Level;

fn result(rule: &str, name: &str, level: Level, status: Status) -> CheckResult {
    let failed = matches!(
        status,
        Status::Fail | Status::NonStrict | Status::ExpectedFail
    );
    CheckResult {
        rule: rule.into(),
        name: name.into(),
        group: if rule.starts_with("WS-CONN") {
            "§4 Connections".into()
        } else {
            "§3 Messages".into()
        },
        level,
        requirement: format!("The requirement of {rule} <quoted & escaped>."),
        status,
        location: "scenarios/conformance/x.toml:12".into(),
        expected: failed.then(|| "close [4008] within 1.5*ping_timeout + 500ms".into()),
        observed: failed.then(|| "the socket is still open".into()),
        reason: (status == Status::Skipped)
            .then(|| "needs a way to restart the backend: pass --restart-cmd".into()),
        transcript: if failed {
            vec![
                "a: upgraded as h1-0-1-a".into(),
                "a ← {\"type\":\"connected\"}".into(),
            ]
        } else {
            vec![]
        },
        duration: Duration::from_millis(150),
        attempts: if status == Status::Pass { 2 } else { 1 },
        flaky: status == Status::Pass,
    }
}

fn fixed_run() -> RunReport {
    RunReport {
        target: "http://127.0.0.1:8080".into(),
        seed: 42,
        strict: false,
        results: vec![
            result("WS-PING-1", "ping-gets-pong", Level::Must, Status::Pass),
            result(
                "WS-ERR-1",
                "not-json-is-invalid_json",
                Level::Should,
                Status::NonStrict,
            ),
            result(
                "WS-CONN-3",
                "silent-agent-is-closed",
                Level::Must,
                Status::Fail,
            ),
            result(
                "WS-CONN-5",
                "restart-closes-1012",
                Level::Should,
                Status::Skipped,
            ),
            result(
                "WS-CONN-2",
                "duplicate-replaces-old-and-redelivers",
                Level::Must,
                Status::ExpectedFail,
            ),
            result(
                "WS-CONN-4",
                "normal-close-removes-at-once",
                Level::Must,
                Status::UnexpectedPass,
            ),
        ],
        duration: Duration::from_millis(1234),
    }
}

#[test]
fn terminal_summary() {
    let style = report::terminal::Style {
        color: false,
        verbose: true,
    };
    insta::assert_snapshot!(report::terminal::render(&fixed_run(), &style));
}

#[test]
fn junit_xml() {
    insta::assert_snapshot!(report::junit::render(&fixed_run()));
}

#[test]
fn json_report() {
    insta::assert_snapshot!(report::json::render(&fixed_run()));
}

/// Replaces every text between `open` and the next `close` with `with`.
fn redact_between(text: &str, open: &str, close: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        out.push_str(&rest[..at + open.len()]);
        rest = &rest[at + open.len()..];
        let end = rest.find(close).unwrap_or(rest.len());
        out.push_str(with);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn html_page() {
    let html = report::html::render(&fixed_run(), std::time::SystemTime::now());
    // Durations, the time of writing and the port vary from run to run; the
    // stylesheet is one long line that says nothing about the structure.
    let html = redact_between(&html, "<style>", "</style>", "[css]");
    let html = redact_between(&html, "<span class=\"dur\">", "</span>", "[duration]");
    let html = redact_between(
        &html,
        "<time datetime=\"",
        "</time>",
        "[timestamp]\">[timestamp]",
    );
    let html = redact_between(&html, "127.0.0.1:", "<", "[port]");
    // One line per tag boundary keeps the snapshot's diffs readable.
    insta::assert_snapshot!(html.replace("><", ">\n<"));
}
