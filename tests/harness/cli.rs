//! The binary as users run it: exit codes, reports on disk, errors that say
//! what is wrong.

use crate::{assert_exit, harness, text};

/// The whole suite against the embedded edge-server: every check passes,
/// exit 0, and the JUnit and JSON reports say so.
#[test]
fn conform_passes_against_edge_server_and_writes_reports() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("conform.xml");
    let json = dir.path().join("conform.json");
    let html = dir.path().join("conform.html");
    let out = harness(&[
        "conform",
        "--seed",
        "42",
        "--retries",
        "2",
        "--color",
        "never",
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("PASSED"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["counts"]["fail"], 0);
    assert_eq!(
        report["counts"]["non_strict"], 0,
        "edge-server keeps every SHOULD too: {stdout}"
    );
    // The embedded default has every capability but two: it registers
    // (so `registration-disabled-is-403` needs --no-registration) and
    // serves plain ws:// (WS-AUTH-6 needs https://); and the check that
    // waits out the connection limit's minute needs --slow. Each says why.
    let skipped: Vec<(&str, &str)> = report["report"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "skipped")
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        skipped.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        [
            "tls-chain-and-wss",
            "registration-disabled-is-403",
            "connection-limit-window-passes"
        ],
        "{skipped:?}"
    );
    assert!(skipped.iter().all(|(_, reason)| reason.contains("pass --")
        || reason.contains("https://")
        || reason.contains("--slow")));
    assert_eq!(report["report"]["seed"], 42);
    let results = report["report"]["results"].as_array().unwrap();
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), results.len());
    assert!(!xml.contains("<failure"), "{xml}");
    // The page shows every rule id of the run, and each check's detail.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<h1>PASSED"));
    assert_eq!(page.matches("<details ").count(), results.len());
    for result in results {
        let rule = result["rule"].as_str().unwrap();
        assert!(
            page.contains(&format!(">{rule}</a>")),
            "{rule} not on the page"
        );
    }
    // Every rule id of PROTOCOL.md has a check, in both reports.
    for rule in protocol_rule_ids() {
        assert!(
            results.iter().any(|r| r["rule"] == rule.as_str()),
            "no check for {rule} in the JSON report"
        );
        assert!(
            xml.contains(&format!("{rule} ")),
            "{rule} not in the JUnit report"
        );
    }
}

/// Every rule id PROTOCOL.md defines (`- **WS-…**` or `| **WS-…**`).
fn protocol_rule_ids() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/PROTOCOL.md");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (the contract sits beside the repository)"));
    let mut ids: Vec<String> = text
        .split("**")
        .filter(|word| {
            let parts: Vec<&str> = word.split('-').collect();
            parts.len() == 3
                && parts[0] == "WS"
                && parts[1].chars().all(|c| c.is_ascii_uppercase())
                && parts[2].chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    assert!(
        ids.len() >= 40,
        "PROTOCOL.md names {} rules: {ids:?}",
        ids.len()
    );
    ids
}

/// A `--only` that selects nothing (a typo, a renamed check) is a usage
/// error before any backend is reached, never a vacuous pass; the fuzz
/// group counts as a check while it runs.
#[test]
fn an_only_that_matches_no_check_is_a_usage_error() {
    let out = harness(&[
        "conform",
        "--url",
        "http://127.0.0.1:1",
        "--only",
        "WS-PING-1",
        "--only",
        "duplicate-closes-old-with-400",
    ]);
    assert_exit(&out, 2);
    assert_eq!(
        text(&out.stderr).trim(),
        "edge-harness: --only `duplicate-closes-old-with-400` matches no check: give a rule id \
         (`WS-CONN-2`, `WS-CONN-*`) or a check name (`edge-harness conform --list` lists the suite's)"
    );
    let fuzz_only = ["conform", "--only", "fuzz-bad-input", "--fuzz-cases", "2"];
    assert_exit(&harness(&fuzz_only), 0);
    let no_fuzz = ["conform", "--only", "fuzz-bad-input", "--fuzz-cases", "0"];
    assert_exit(&harness(&no_fuzz), 2);
}

/// A run whose every check was skipped (here: no `--admin-token`, so no way
/// to provision agents) checked nothing: FAILED and exit 1, saying why,
/// never a PASSED for a CI job whose secrets went missing.
#[test]
fn a_run_that_skips_every_check_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::serve_child(dir.path());
    let url = server.url.clone();
    let out = harness(&[
        "conform",
        "--url",
        &url,
        "--edge-secret",
        edge_harness::embedded::EDGE_SECRET,
        "--only",
        "WS-API-1",
        "--fuzz-cases",
        "0",
        "--color",
        "never",
    ]);
    assert_exit(&out, 1);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\nFAILED: 0 passed, 0 failed"), "{stdout}");
    assert!(
        stdout.contains("nothing was checked: every check was skipped"),
        "{stdout}"
    );
}

/// `--html FILE`: one page with the verdict and every rule id of the run;
/// a path that cannot be written is a usage error (exit 2), as for `--json`.
#[test]
fn html_report_has_the_verdict_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("out.html");
    let out = harness(&[
        "conform",
        "--only",
        "WS-PING-1",
        "--fuzz-cases",
        "0",
        "--color",
        "never",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_exit(&out, 0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("<h1>PASSED"), "{page}");
    assert!(page.contains("WS-PING-1"), "{page}");
    assert!(!page.contains("<script"), "{page}");

    let unwritable = dir.path().join("no-such-dir").join("out.html");
    let out = harness(&[
        "conform",
        "--only",
        "WS-PING-1",
        "--fuzz-cases",
        "0",
        "--html",
        unwritable.to_str().unwrap(),
    ]);
    assert_exit(&out, 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot write {}", unwritable.display())),
        "{stderr}"
    );
}

#[test]
fn list_shows_every_check_without_a_backend() {
    let out = harness(&["conform", "--list"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(text(&out.stdout));
}

/// `--help` is where users learn the flags: every change to it is reviewed.
#[test]
fn load_help_snapshot() {
    let out = harness(&["load", "--help"]);
    assert_exit(&out, 0);
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn a_malformed_scenario_names_file_line_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(&file, "group = \"Mine\"\n[[check]]\nname = \"x\"\nrule = \"WS-PING-1\"\nlevel = \"MUST\"\nrequirement = \"r\"\nsteps = [\n  { send = \"a\" },\n]\n").unwrap();
    let out = harness(&["run", file.to_str().unwrap(), "--edge-secret", "s"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .contains("broken.toml:8: send needs exactly one of json, text, binary (hex) or frame"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_backend_is_exit_2() {
    let out = harness(&[
        "conform",
        "--url",
        "http://127.0.0.1:9",
        "--edge-secret",
        "s",
        "--admin-token",
        "t",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is the backend running"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_are_exit_2_and_say_how_to_fix_them() {
    let out = harness(&["conform", "--url", "ftp://x", "--edge-secret", "s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("must start with http://"),
        "{}",
        text(&out.stderr)
    );
    let out = harness(&["conform", "--url", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("pass --edge-secret"),
        "{}",
        text(&out.stderr)
    );
    let out = harness(&["conform", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn users_run_their_own_scenarios() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/examples/hello.toml");
    let out = harness(&["run", example, "--color", "never"]);
    assert_exit(&out, 0);
}

#[test]
fn expect_fail_reports_a_listed_check_that_passes() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("expect-fail.txt");
    std::fs::write(&list, "# known failures of this backend\nWS-PING-1\n").unwrap();
    let out = harness(&[
        "conform",
        "--only",
        "WS-PING-1",
        "--fuzz-cases",
        "0",
        "--color",
        "never",
        "--expect-fail",
        list.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("listed in --expect-fail but passes now"),
        "{stdout}"
    );
    assert!(stdout.contains("1 fixed"), "{stdout}");
}

/// A backend without our control API: commands go in through a user-given
/// request template (`--inject`); here it points at edge-server's own API
/// to prove the template path end to end.
#[test]
fn commands_can_enter_through_an_inject_template() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::serve_child(dir.path());
    let url = server.url.clone();
    let inject = format!("POST {url}/api/agents/{{agent}}/commands");
    let header = format!(
        "Authorization: Bearer {}",
        edge_harness::embedded::ADMIN_TOKEN
    );
    let out = harness(&[
        "conform",
        "--url",
        &url,
        "--edge-secret",
        edge_harness::embedded::EDGE_SECRET,
        "--registration-token",
        edge_harness::embedded::REGISTRATION_TOKEN,
        "--inject",
        &inject,
        "--inject-header",
        &header,
        "--only",
        "WS-CMD-1",
        "--only",
        "WS-DLV-1",
        "--only",
        "WS-DLV-4",
        "--fuzz-cases",
        "0",
        "--color",
        "never",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("command-is-pushed-with-its-fields")
            && stdout.contains("payload-copies-parameters")
            && stdout.contains("10 passed, 0 failed, 0 non-strict, 5 skipped"),
        "{stdout}"
    );
}
