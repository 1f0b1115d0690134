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
