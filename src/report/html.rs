//! One self-contained HTML page per conformance run (`--html FILE`), in the
//! spirit of the Autobahn testsuite's index page: a verdict banner, a summary
//! table grouped by PROTOCOL.md section, and per check a `<details>` with the
//! rule, the requirement, where the check lives, what was expected and seen,
//! and the frames.
//!
//! Nothing is fetched (no scripts, stylesheets, fonts or images) and nothing
//! needs JavaScript. Everything that can come from the backend (observed
//! text, frames) is escaped: a backend may well send `<script>`. Token values
//! are redacted once more here, and the backend URL loses any user info and
//! query string, so the page can be published as a CI artifact.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{CheckResult, RunReport, Status};
use crate::scenario::step::redact;

/// Escapes text for HTML content and attribute values. Control characters
/// other than newline and tab (a backend can send them) become U+FFFD.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The backend URL as it may be published: `user:password@` and query
/// strings (both can carry credentials) are cut out of every URL in `label`.
pub fn public_target(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    let mut rest = label;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ')')
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        out.push_str(
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host),
        );
        match path.find(['?', '#']) {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?…");
            }
            None => out.push_str(path),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// CSS class and label of a status.
fn status_class(status: Status) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::NonStrict => "nonstrict",
        Status::Skipped => "skipped",
        Status::ExpectedFail => "xfail",
        Status::UnexpectedPass => "fixed",
    }
}

/// How bad a status is, to colour a rule by its worst check.
fn severity(status: Status) -> u8 {
    match status {
        Status::Fail => 5,
        Status::NonStrict => 4,
        Status::ExpectedFail => 3,
        Status::UnexpectedPass => 2,
        Status::Pass => 1,
        Status::Skipped => 0,
    }
}

fn seconds(d: Duration) -> String {
    format!("<span class=\"dur\">{:.2} s</span>", d.as_secs_f64())
}

const STYLE: &str = "\
:root{--pass:#1e7b34;--fail:#c0392b;--warn:#b9770e;--skip:#7f8c8d;--fixed:#1f6f99;--line:#d8dde3}\
*{box-sizing:border-box}\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;padding:1.5em 2em;max-width:1200px;color:#1d2329}\
code,pre,.mono{font-family:ui-monospace,'SFMono-Regular',Menlo,Consolas,monospace;font-size:13px}\
header{border-radius:6px;padding:1em 1.4em;color:#fff;margin-bottom:1.2em}\
header.passed{background:var(--pass)}header.failed{background:var(--fail)}\
header h1{margin:0 0 .2em;font-size:1.9em;letter-spacing:.04em}\
header .tool{font-weight:normal;font-size:.55em;opacity:.85;letter-spacing:0}\
.tiles{display:flex;flex-wrap:wrap;gap:.5em;margin:.6em 0}\
.tile{background:rgba(255,255,255,.16);border-radius:4px;padding:.25em .8em;min-width:6.5em}\
.tile b{display:block;font-size:1.5em}.tile.zero{opacity:.55}\
header dl{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:.6em 0 0}\
header dt{opacity:.85}header dd{margin:0;overflow-wrap:anywhere}\
h2{font-size:1.25em;margin:1.4em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}\
.rules{display:flex;flex-wrap:wrap;gap:.35em}\
.rules a{text-decoration:none;border:1px solid currentColor;border-radius:3px;padding:0 .4em}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid var(--line);vertical-align:top}\
thead th{background:#eef1f4;position:sticky;top:0}\
tbody th{background:#f7f8fa;font-size:1.02em;padding-top:.6em}\
tbody th .sub{font-weight:normal;color:#5d6b78;margin-left:.6em}\
td.num{text-align:right;white-space:nowrap}\
td a{color:inherit}\
td .why{display:block;color:#5d6b78;font-size:.88em;overflow-wrap:anywhere}\
.status{display:inline-block;min-width:7.5em;text-align:center;border-radius:3px;padding:0 .4em;color:#fff;font-weight:600;font-size:.9em}\
.status.pass{background:var(--pass)}.status.fail{background:var(--fail)}\
.status.nonstrict,.status.xfail{background:var(--warn)}\
.status.skipped{background:var(--skip)}.status.fixed{background:var(--fixed)}\
.rules a.pass{color:var(--pass)}.rules a.fail{color:var(--fail)}\
.rules a.nonstrict,.rules a.xfail{color:var(--warn)}\
.rules a.skipped{color:var(--skip)}.rules a.fixed{color:var(--fixed)}\
.flaky{color:var(--warn);font-size:.85em;margin-left:.4em}\
details{border:1px solid var(--line);border-left:5px solid var(--skip);border-radius:4px;margin:.4em 0;padding:.3em .8em}\
details.pass{border-left-color:var(--pass)}details.fail{border-left-color:var(--fail)}\
details.nonstrict,details.xfail{border-left-color:var(--warn)}details.fixed{border-left-color:var(--fixed)}\
summary{cursor:pointer;display:flex;gap:.8em;align-items:baseline;list-style:none}\
summary::-webkit-details-marker{display:none}\
summary::before{content:'\\25B8';color:#5d6b78;width:.8em}details[open]>summary::before{content:'\\25BE'}\
summary .name{flex:1}\
details dl{display:grid;grid-template-columns:8em 1fr;gap:.2em 1em;margin:.6em 0}\
details dt{color:#5d6b78}details dd{margin:0;overflow-wrap:anywhere}\
pre{background:#f4f6f8;border:1px solid var(--line);border-radius:4px;padding:.6em .8em;margin:0;white-space:pre-wrap;overflow-wrap:anywhere}\
dd.observed{color:var(--fail)}\
footer{margin-top:2em;color:#5d6b78;font-size:.9em}\
";

/// The whole page; `generated` is when the report was written.
pub fn render(report: &RunReport, generated: SystemTime) -> String {
    let counts = report.counts();
    let passed = report.passed();
    let verdict = if passed { "PASSED" } else { "FAILED" };
    let target = public_target(&report.target);
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{verdict}: edge-harness conform, {}</title><style>{STYLE}</style></head>\n<body>\n",
        esc(&target)
    );

    // The verdict banner.
    let _ = writeln!(
        page,
        "<header class=\"{}\"><h1>{verdict} <span class=\"tool\">edge-harness conform</span></h1>",
        verdict.to_lowercase()
    );
    page.push_str("<div class=\"tiles\">");
    for (n, label) in [
        (counts.pass, "passed"),
        (counts.fail, "failed"),
        (counts.non_strict, "non-strict"),
        (counts.skipped, "skipped"),
        (counts.expected_fail, "expected fail"),
        (counts.unexpected_pass, "fixed"),
        (counts.flaky, "flaky"),
    ] {
        let zero = if n == 0 { " zero" } else { "" };
        let _ = write!(page, "<div class=\"tile{zero}\"><b>{n}</b>{label}</div>");
    }
    page.push_str("</div>\n<dl>");
    let _ = write!(
        page,
        "<dt>backend</dt><dd class=\"mono\">{}</dd>",
        esc(&target)
    );
    let _ = write!(
        page,
        "<dt>checks</dt><dd>{} run{}</dd>",
        report.results.len(),
        if report.strict {
            ", --strict (SHOULD failures fail the run)"
        } else {
            ""
        }
    );
    let _ = write!(
        page,
        "<dt>duration</dt><dd>{}</dd>",
        seconds(report.duration)
    );
    let _ = write!(page, "<dt>seed</dt><dd class=\"mono\">{}</dd>", report.seed);
    let when = humantime::format_rfc3339_seconds(generated).to_string();
    let _ = write!(
        page,
        "<dt>generated</dt><dd><time datetime=\"{when}\">{when}</time></dd>"
    );
    page.push_str("</dl></header>\n");

    // Every rule id of the run, coloured by its worst check.
    let mut rules: Vec<(&str, Status, usize)> = Vec::new();
    for (i, r) in report.results.iter().enumerate() {
        match rules.iter_mut().find(|(rule, ..)| *rule == r.rule) {
            Some(entry) if severity(r.status) > severity(entry.1) => {
                *entry = (&r.rule, r.status, i)
            }
            Some(_) => {}
            None => rules.push((&r.rule, r.status, i)),
        }
    }
    let _ = writeln!(
        page,
        "<h2>Rules ({})</h2>\n<nav class=\"rules\">",
        rules.len()
    );
    for (rule, status, i) in &rules {
        let _ = writeln!(
            page,
            "<a class=\"{}\" href=\"#check-{}\" title=\"{}\">{}</a>",
            status_class(*status),
            i + 1,
            status.label(),
            esc(rule)
        );
    }
    page.push_str("</nav>\n");

    // The summary table, one tbody per group.
    let groups = groups(&report.results);
    page.push_str("<h2>Checks</h2>\n<table class=\"summary\"><thead><tr><th>rule</th><th>level</th><th>check</th><th>status</th><th class=\"num\">duration</th></tr></thead>\n");
    for (group, members) in &groups {
        let failing = members
            .iter()
            .filter(|(_, r)| r.status == Status::Fail)
            .count();
        let _ = writeln!(
            page,
            "<tbody><tr><th colspan=\"5\">{}<span class=\"sub\">{} check{}{}</span></th></tr>",
            esc(group),
            members.len(),
            if members.len() == 1 { "" } else { "s" },
            if failing > 0 {
                format!(", {failing} failed")
            } else {
                String::new()
            }
        );
        for (i, r) in members {
            let _ = writeln!(
                page,
                "<tr><td class=\"mono\"><a href=\"#check-{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                i + 1,
                esc(&r.rule),
                r.level,
                esc(&r.name) + &why(r),
                status_badge(r),
                seconds(r.duration)
            );
        }
        page.push_str("</tbody>\n");
    }
    page.push_str("</table>\n");

    // Per check, the detail.
    page.push_str("<h2>Details</h2>\n");
    for (group, members) in &groups {
        let _ = writeln!(page, "<h3>{}</h3>", esc(group));
        for (i, r) in members {
            detail(&mut page, *i, r);
        }
    }
    page.push_str("<footer>Rule ids refer to PROTOCOL.md. Frames are shortened and token values redacted. Written by edge-harness conform --html.</footer>\n</body></html>\n");
    page
}

/// The groups in order of first appearance, each with its checks and their
/// positions in the run.
fn groups(results: &[CheckResult]) -> Vec<(&str, Vec<(usize, &CheckResult)>)> {
    let mut groups: Vec<(&str, Vec<(usize, &CheckResult)>)> = Vec::new();
    for (i, r) in results.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, members)) => members.push((i, r)),
            None => groups.push((&r.group, vec![(i, r)])),
        }
    }
    groups
}

/// One line under a check's name in the table: why it was skipped, or what
/// was observed when it failed (shortened; the detail has all of it).
fn why(r: &CheckResult) -> String {
    let text = match r.status {
        Status::Skipped => r.reason.clone(),
        Status::Fail | Status::NonStrict | Status::ExpectedFail => {
            r.observed.as_deref().map(redact)
        }
        Status::Pass | Status::UnexpectedPass => None,
    };
    let Some(text) = text else {
        return String::new();
    };
    const SHOWN: usize = 140;
    let mut short: String = text.chars().take(SHOWN).collect();
    if text.chars().count() > SHOWN {
        short.push('…');
    }
    format!("<span class=\"why\">{}</span>", esc(&short))
}

fn status_badge(r: &CheckResult) -> String {
    let flaky = if r.flaky {
        format!(
            "<span class=\"flaky\">flaky: passed on attempt {}</span>",
            r.attempts
        )
    } else {
        String::new()
    };
    format!(
        "<span class=\"status {}\">{}</span>{flaky}",
        status_class(r.status),
        r.status.label()
    )
}

fn detail(page: &mut String, i: usize, r: &CheckResult) {
    let class = status_class(r.status);
    let open = if r.status == Status::Fail {
        " open"
    } else {
        ""
    };
    let _ = writeln!(
        page,
        "<details id=\"check-{}\" class=\"{class}\"{open}><summary><span class=\"mono\">{}</span><span class=\"name\">{} <small>({})</small></span>{}{}</summary>",
        i + 1,
        esc(&r.rule),
        esc(&r.name),
        r.level,
        status_badge(r),
        seconds(r.duration)
    );
    page.push_str("<dl>");
    let mut row = |term: &str, class: &str, value: String| {
        let _ = write!(page, "<dt>{term}</dt><dd{class}>{value}</dd>");
    };
    row("rule", " class=\"mono\"", esc(&r.rule));
    row("level", "", r.level.to_string());
    row("requirement", "", esc(&r.requirement));
    row("where", " class=\"mono\"", esc(&r.location));
    if r.attempts > 1 {
        row("attempts", "", r.attempts.to_string());
    }
    if let Some(reason) = &r.reason {
        row("skipped", "", esc(reason));
    }
    if r.status == Status::UnexpectedPass {
        row(
            "note",
            "",
            "listed in --expect-fail but passes now: remove it from the list".into(),
        );
    }
    if let Some(expected) = &r.expected {
        row(
            "expected",
            "",
            format!("<pre>{}</pre>", esc(&redact(expected))),
        );
    }
    if let Some(observed) = &r.observed {
        row(
            "observed",
            " class=\"observed\"",
            format!("<pre>{}</pre>", esc(&redact(observed))),
        );
    }
    if !r.transcript.is_empty() {
        let frames: Vec<String> = r.transcript.iter().map(|l| esc(&redact(l))).collect();
        row("frames", "", format!("<pre>{}</pre>", frames.join("\n")));
    }
    page.push_str("</dl></details>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Level;

    fn check(status: Status, observed: &str, transcript: &[&str]) -> CheckResult {
        CheckResult {
            rule: "WS-ERR-1".into(),
            name: "not-json-is-invalid_json".into(),
            group: "§3 Messages".into(),
            level: Level::Should,
            requirement: "Bad input gets an error message.".into(),
            status,
            location: "scenarios/conformance/bad_input.toml:7".into(),
            expected: Some("an `error` message".into()),
            observed: Some(observed.into()),
            reason: None,
            transcript: transcript.iter().map(|s| s.to_string()).collect(),
            duration: Duration::from_millis(5),
            attempts: 1,
            flaky: false,
        }
    }

    fn page(results: Vec<CheckResult>, target: &str) -> String {
        render(
            &RunReport {
                target: target.into(),
                seed: 1,
                strict: false,
                results,
                duration: Duration::from_secs(1),
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn what_the_backend_sends_is_escaped() {
        let html = page(
            vec![check(
                Status::Fail,
                "a text frame <script>alert('x')</script> & \"more\"\u{0}",
                &[
                    "a ← <img src=x onerror=alert(1)>",
                    "a ← </pre></details><b>",
                ],
            )],
            "http://127.0.0.1:8080",
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("</pre></details><b>"), "{html}");
        assert!(!html.contains('\u{0}'));
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;")
        );
        assert!(html.contains("a ← &lt;img src=x onerror=alert(1)&gt;"));
    }

    #[test]
    fn secrets_stay_off_the_page() {
        let html = page(
            vec![check(
                Status::Fail,
                r#"{"edge_agent_id":"a","auth_token":"c2VjcmV0"}"#,
                &[r#"POST /edge/register → 200 {"auth_token":"c2VjcmV0"}"#],
            )],
            "https://user:hunter2@edge.example.com:8443/base?token=abc",
        );
        assert!(!html.contains("c2VjcmV0"), "{html}");
        assert!(!html.contains("hunter2"), "{html}");
        assert!(!html.contains("abc"), "{html}");
        assert!(html.contains("https://edge.example.com:8443/base?…"));
    }

    #[test]
    fn public_target_keeps_what_is_not_secret() {
        assert_eq!(
            public_target("embedded edge-server (http://127.0.0.1:4000)"),
            "embedded edge-server (http://127.0.0.1:4000)"
        );
        assert_eq!(public_target("wss://a:b@h/x#f"), "wss://h/x?…");
        assert_eq!(public_target("not a url"), "not a url");
    }

    #[test]
    fn nothing_is_fetched() {
        let html = page(vec![check(Status::Pass, "", &[])], "http://h");
        for outside in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(outside), "{outside} in {html}");
        }
    }
}
