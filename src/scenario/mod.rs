//! Scenario files: TOML data describing checks as steps (DESIGN.md:
//! "scenarios are data"). This module reads and validates them; `step.rs`
//! runs them.
//!
//! A file is one rule group:
//!
//! ```toml
//! group = "Messages"
//! [[check]]
//! name = "ping-gets-pong"
//! rule = "WS-PING-1"
//! level = "MUST"
//! requirement = "Every accepted ping is answered with a pong."
//! steps = [
//!   { provision = "a" },
//!   { connect = "a" },
//!   { send = "a", json = { type = "ping" } },
//!   { expect = "a", type = "pong" },
//! ]
//! ```
//!
//! To add a step kind: add its key to [`StepSpec`], a variant to
//! [`StepKind`], a match arm in `StepSpec::into_kind` (`spec.rs`), and its execution in
//! `step.rs`. The step reference is in `scenarios/README.md`.

pub mod matcher;
pub mod prometheus;
pub mod raw;
pub mod retry_after;
mod spec;
pub mod step;
pub mod timestamp;

pub use spec::{toml_to_json, StepSpec};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// MUST rules fail a run; SHOULD rules are what PROTOCOL.md marks
/// **[decided]** beyond the spec, and fail a run only with `--strict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum Level {
    #[serde(rename = "MUST")]
    Must,
    #[serde(rename = "SHOULD")]
    Should,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        })
    }
}

/// What a check needs from the backend or the harness's flags; a check whose
/// needs are not met is skipped with the reason, never failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// The control API of PROTOCOL.md §8 (`--admin-token`).
    ControlApi,
    /// Minting per-agent HMAC tokens (`--edge-secret` or `--hmac-secret`).
    Hmac,
    /// The shared secret itself (`--edge-secret`).
    SharedSecret,
    /// `POST /edge/register` (`--registration-token`).
    Registration,
    /// Restarting the backend (`--restart-cmd`).
    Restart,
    /// Killing the backend without warning and starting it again (`--crash-cmd`).
    Crash,
    /// Reading the backend's log (`--server-log`).
    ServerLog,
    /// A backend with no registration configured (`--no-registration`).
    RegistrationDisabled,
    /// An `https://` target (WS-AUTH-6).
    Tls,
}

impl Capability {
    pub fn how_to_enable(self) -> &'static str {
        match self {
            Capability::ControlApi => "needs the control API: pass --admin-token",
            Capability::Hmac => "needs HMAC tokens: pass --edge-secret or --hmac-secret",
            Capability::SharedSecret => "needs the shared secret: pass --edge-secret",
            Capability::Registration => "needs registration: pass --registration-token",
            Capability::Restart => "needs a way to restart the backend: pass --restart-cmd",
            Capability::Crash => {
                "needs a way to crash the backend: pass --crash-cmd (kill -9 it, then start it again)"
            }
            Capability::ServerLog => {
                "needs the backend's log: pass --server-log FILE (where its output goes)"
            }
            Capability::RegistrationDisabled => {
                "needs a backend without REGISTRATION_TOKEN: pass --no-registration if yours has none"
            }
            Capability::Tls => {
                "needs an https:// target: with http:// there is no certificate chain or wss:// to check"
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    group: String,
    #[serde(default)]
    check: Vec<Spanned<CheckSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckSpec {
    name: String,
    rule: String,
    level: Level,
    requirement: String,
    #[serde(default)]
    needs: Vec<Capability>,
    /// Timing-sensitive checks are the ones `--retries` retries.
    #[serde(default)]
    timing: bool,
    /// Runs only with `--slow` (it waits out a window of the backend's).
    #[serde(default)]
    slow: bool,
    steps: Vec<Spanned<StepSpec>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConnectOutcome {
    /// Upgraded; a `connected` message, if sent, is read.
    Accepted,
    /// WS-AUTH-2: one of these HTTP statuses, or accepted and closed at once
    /// with one of these codes before any application message.
    Refused { statuses: Vec<u16>, codes: Vec<u16> },
    /// Refused with exactly these statuses (no close-code alternative).
    Status(Vec<u16>),
    /// WS-RATE-1: keep connecting (up to `repeat` times) until answered 429.
    RateLimited { attempts: u32, retry_after: bool },
}

/// What `send` puts on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    Text(String),
    Binary(Vec<u8>),
    /// A hand-made frame: `ping` (a WebSocket Ping), `invalid_utf8`,
    /// `reserved_opcode`, `oversized`, `largest` (60 KiB, to be taken),
    /// `at_limit` (64 KiB exactly, to be taken), `over_limit` (one byte more).
    Frame(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Measured from this mark instead of the step's start.
    pub after: Option<String>,
    pub within: String,
    pub not_before: Option<String>,
    /// Widen both ends by WS-DLV-8's tolerance.
    pub tolerance: bool,
}

/// A request body: a table sent as JSON, or JSON text sent as written
/// (member order kept, for WS-CMD-2).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text(String),
}

impl Body {
    /// The JSON text to send, placeholders replaced.
    pub fn text(&self, vars: &std::collections::HashMap<String, String>) -> String {
        match self {
            Body::Json(value) => matcher::substitute(value, vars).to_string(),
            Body::Text(text) => matcher::substitute_str(text, vars),
        }
    }
}

/// What a `metrics` step requires of the counters or gauges since a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// `since = "NAME"`: every family's counters grew (something was counted).
    Grown(String),
    /// `unchanged_since = "NAME"`: no family's counters moved (what must
    /// not count, such as a repeated ack, was not counted).
    Unchanged(String),
    /// `gauges_rose_since = "NAME"`: every family's gauges are above the
    /// snapshot's (an opened socket is counted).
    GaugesRose(String),
    /// `gauges_fell_since = "NAME"`: every family's gauges are below the
    /// snapshot's (a closed socket left the active-connections gauge).
    GaugesFell(String),
    /// `gauges_back_to = "NAME"`: no family's gauges are above the
    /// snapshot's (every socket opened since, replaced ones too, was
    /// counted out). "Not above", not "equal": a socket of an earlier check
    /// that the backend counts out late may only lower the level.
    GaugesBackTo(String),
}

impl Since {
    /// The snapshot compared with.
    pub fn snapshot(&self) -> &str {
        match self {
            Since::Grown(name)
            | Since::Unchanged(name)
            | Since::GaugesRose(name)
            | Since::GaugesFell(name)
            | Since::GaugesBackTo(name) => name,
        }
    }
}

/// How `expect_attempts` gets the next delivery of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptsBy {
    /// Waits for WS-DLV-3's redelivery: ack_timeout + backoff(n) after attempt n.
    Timer,
    /// Closes and reconnects before each attempt (WS-DLV-4).
    Reconnect,
    /// Polls `POST /edge/sync` as the agent (WS-DLV-5): attempt n+1 is
    /// returned by the first sync after ack_timeout + backoff(n), not before.
    Sync,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: String,
    pub path: String,
    pub token: String,
    pub agent: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Body>,
    pub statuses: Vec<u16>,
    pub fields: Vec<(String, Value)>,
    /// Members compared as written (path, JSON text).
    pub raw: Vec<(String, String)>,
    pub save: BTreeMap<String, String>,
    pub eventually: Option<String>,
    pub retry_after: bool,
    /// Bytes of `"x"` in a `padding` member added to the body (a table);
    /// sent by [`crate::early_answer`], which reads an answer that comes
    /// before the body is all written.
    pub pad: Option<usize>,
    /// The answer must hold no stack trace and no secret (WS-HTTP-4).
    pub no_trace: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Provision {
        agent: String,
    },
    /// `welcome`: fields the first message, a `connected`, must have (WS-MSG-1).
    Connect {
        conn: String,
        agent: String,
        token: String,
        id: Option<String>,
        header_id: Option<String>,
        outcome: ConnectOutcome,
        source: Option<String>,
        welcome: Option<Vec<(String, Value)>>,
    },
    Send {
        conn: String,
        payload: Payload,
        repeat: u32,
    },
    Expect {
        conn: String,
        msg_type: String,
        fields: Vec<(String, Value)>,
        /// Members compared as written (path, JSON text), WS-CMD-2.
        raw: Vec<(String, String)>,
        save: BTreeMap<String, String>,
        mark: Option<String>,
        window: Window,
    },
    ExpectClose {
        conn: String,
        codes: Vec<u16>,
        /// The close frame's reason, exactly (`replaced`, `ping timeout`).
        reason: Option<String>,
        window: Window,
    },
    ExpectOpen {
        conn: String,
    },
    /// A WebSocket-level Ping with a payload of its own; the Pong must echo it.
    WsPing {
        conn: String,
        within: String,
    },
    ExpectSilence {
        conn: String,
        msg_type: Option<String>,
        during: String,
    },
    Close {
        conn: String,
    },
    Command {
        agent: String,
        body: Body,
        save_as: Option<String>,
    },
    /// Posts commands until the backend answers one of `statuses` (WS-API-2);
    /// the accepted ids are saved as a list.
    Fill {
        agent: String,
        body: Body,
        statuses: Vec<u16>,
        fields: Vec<(String, Value)>,
        max: u32,
        save_as: Option<String>,
    },
    /// Every command of a saved list arrives, first deliveries in list order.
    ExpectCommands {
        conn: String,
        ids: String,
        within: String,
    },
    /// Deliveries `from`..=max_attempts of one command, each on time (WS-DLV-3),
    /// on a reconnect (WS-DLV-4) or by sync (WS-DLV-5).
    ExpectAttempts {
        conn: String,
        command_id: String,
        by: AttemptsBy,
        from: u32,
    },
    /// `GET path` parses as Prometheus text and has these families (WS-OBS-1):
    /// (what, name patterns); with `since`, each one's counters have
    /// grown (or not moved at all), or its gauges fallen (or come back),
    /// since the page saved as a `snapshot`.
    Metrics {
        path: String,
        token: String,
        families: Vec<(String, String)>,
        snapshot: Option<String>,
        since: Option<Since>,
    },
    Http(HttpCall),
    Api(HttpCall),
    Wait {
        during: String,
    },
    Restart,
    /// The backend is killed with no chance to flush anything, then started
    /// again (WS-DLV-6: "not on a crash").
    Crash,
    /// The backend's log, from where this check started, comes to hold
    /// `text` (WS-OBS-1's log lines) within `within`.
    Log {
        text: String,
        within: String,
    },
    /// No secret this check used (the flags' secrets, every token it sent,
    /// every token it was given) is in the backend's log since the check
    /// started (WS-AUTH-5).
    LogHasNoSecrets,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub line: usize,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub rule: String,
    pub level: Level,
    pub requirement: String,
    pub needs: Vec<Capability>,
    pub timing: bool,
    /// Runs only with `--slow`, however short the backend's timers.
    pub slow: bool,
    pub group: String,
    pub file: PathBuf,
    pub line: usize,
    pub steps: Vec<Step>,
}

/// A scenario file that cannot be used, with where and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Reads one scenario file.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Check>, ScenarioError> {
    let shown = file.display().to_string();
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        ScenarioError {
            file: shown.clone(),
            line,
            message: e.message().to_string(),
        }
    })?;
    let mut checks = Vec::new();
    for check in spec.check {
        let line = line_of(text, check.span().start);
        let check = check.into_inner();
        let mut steps = Vec::new();
        for step in check.steps {
            let step_line = line_of(text, step.span().start);
            let kind = step
                .into_inner()
                .into_kind()
                .map_err(|message| ScenarioError {
                    file: shown.clone(),
                    line: step_line,
                    message,
                })?;
            steps.push(Step {
                line: step_line,
                kind,
            });
        }
        if !check.rule.starts_with("WS-") {
            return Err(ScenarioError {
                file: shown,
                line,
                message: format!("rule `{}` is not a PROTOCOL.md rule id (WS-…)", check.rule),
            });
        }
        checks.push(Check {
            name: check.name,
            rule: check.rule,
            level: check.level,
            requirement: check.requirement.trim().to_string(),
            needs: check.needs,
            timing: check.timing,
            slow: check.slow,
            group: spec.group.clone(),
            file: file.to_path_buf(),
            line,
            steps,
        });
    }
    Ok(checks)
}

/// Reads scenario files and directories (their `*.toml`, sorted).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Check>, ScenarioError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| io_error(path, e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(error_at(
                    path,
                    0,
                    "no scenario files (`*.toml`) in this directory",
                ));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut checks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
        let found = parse(&file, &text)?;
        // Run, a file without checks would pass with nothing checked.
        if found.is_empty() {
            return Err(error_at(
                &file,
                1,
                "no `[[check]]` in this file (scenarios/README.md shows one)",
            ));
        }
        checks.extend(found);
    }
    Ok(checks)
}

fn io_error(path: &Path, e: std::io::Error) -> ScenarioError {
    error_at(path, 0, format!("cannot read: {e}"))
}

/// An error about a whole file or directory (line 0) or a line of it.
fn error_at(path: &Path, line: usize, message: impl Into<String>) -> ScenarioError {
    ScenarioError {
        file: path.display().to_string(),
        line,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Check>, ScenarioError> {
        parse(Path::new("x.toml"), text)
    }

    /// Nothing to run is an error, never a pass with nothing checked.
    #[test]
    fn a_file_or_directory_without_checks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert_eq!(
            error.message,
            "no scenario files (`*.toml`) in this directory"
        );
        let file = dir.path().join("empty.toml");
        std::fs::write(&file, "group = \"G\"\n").unwrap();
        for path in [file.clone(), dir.path().to_path_buf()] {
            let error = load(&[path]).unwrap_err();
            assert_eq!(
                (error.file.as_str(), error.line, error.message.as_str()),
                (
                    file.to_str().unwrap(),
                    1,
                    "no `[[check]]` in this file (scenarios/README.md shows one)"
                )
            );
        }
    }

    const HEAD: &str = "group = \"G\"\n[[check]]\nname = \"n\"\nrule = \"WS-PING-1\"\nlevel = \"MUST\"\nrequirement = \"r\"\n";

    #[test]
    fn reads_steps_with_their_lines() {
        let text = format!("{HEAD}steps = [\n  {{ provision = \"a\" }},\n  {{ connect = \"a\" }},\n  {{ send = \"a\", json = {{ type = \"ping\" }} }},\n  {{ expect = \"a\", type = \"pong\" }},\n]\n");
        let checks = parse_str(&text).unwrap();
        assert_eq!(checks.len(), 1);
        let steps = &checks[0].steps;
        assert_eq!(
            steps.iter().map(|s| s.line).collect::<Vec<_>>(),
            [8, 9, 10, 11]
        );
        assert_eq!(
            steps[2].kind,
            StepKind::Send {
                conn: "a".into(),
                payload: Payload::Json(serde_json::json!({"type": "ping"})),
                repeat: 1
            }
        );
    }

    #[test]
    fn a_step_with_two_kinds_names_its_line() {
        let text = format!("{HEAD}steps = [\n  {{ connect = \"a\", send = \"a\" }},\n]\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(
            (err.line, err.message.as_str()),
            (
                8,
                "a step has exactly one kind, this one has connect and send"
            )
        );
    }

    #[test]
    fn unknown_keys_and_misplaced_options_are_errors() {
        let text = format!("{HEAD}steps = [\n  {{ connect = \"a\", colour = \"red\" }},\n]\n");
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.line, 8);
        assert!(
            err.message.contains("unknown field `colour`"),
            "{}",
            err.message
        );
        let text = format!("{HEAD}steps = [\n  {{ close = \"a\", codes = [1000] }},\n]\n");
        assert_eq!(
            parse_str(&text).unwrap_err().message,
            "`codes` is not an option of the `close` step"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = parse_str("group = \"G\"\n\n[[check]\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.file, "x.toml");
    }

    #[test]
    fn new_step_kinds_and_their_errors() {
        let step = |body: &str| parse_str(&format!("{HEAD}steps = [\n  {body},\n]\n"));
        let checks =
            step("{ fill = \"a\", body = { command_type = \"x\" }, ids = \"l\" }").unwrap();
        assert_eq!(
            checks[0].steps[0].kind,
            StepKind::Fill {
                agent: "a".into(),
                body: Body::Json(serde_json::json!({"command_type": "x"})),
                statuses: vec![429],
                fields: vec![],
                max: 2000,
                save_as: Some("l".into()),
            }
        );
        let checks = step(
            "{ expect_attempts = \"a\", command_id = \"{c1}\", by = \"reconnect\", from = 2 }",
        )
        .unwrap();
        assert_eq!(
            checks[0].steps[0].kind,
            StepKind::ExpectAttempts {
                conn: "a".into(),
                command_id: "{c1}".into(),
                by: AttemptsBy::Reconnect,
                from: 2,
            }
        );
        let checks =
            step("{ expect_attempts = \"a\", command_id = \"{c1}\", by = \"sync\" }").unwrap();
        assert_eq!(
            checks[0].steps[0].kind,
            StepKind::ExpectAttempts {
                conn: "a".into(),
                command_id: "{c1}".into(),
                by: AttemptsBy::Sync,
                from: 1,
            }
        );
        let checks = step(
            "{ metrics = \"/m\", unchanged_since = \"s\", snapshot = \"t\", families = { x = \"*x*\" } }",
        )
        .unwrap();
        assert_eq!(
            checks[0].steps[0].kind,
            StepKind::Metrics {
                path: "/m".into(),
                token: "none".into(),
                families: vec![("x".into(), "*x*".into())],
                snapshot: Some("t".into()),
                since: Some(Since::Unchanged("s".into())),
            }
        );
        for (option, since) in [
            ("gauges_rose_since", Since::GaugesRose("s".into())),
            ("gauges_fell_since", Since::GaugesFell("s".into())),
            ("gauges_back_to", Since::GaugesBackTo("s".into())),
        ] {
            let checks = step(&format!(
                "{{ metrics = \"/m\", {option} = \"s\", families = {{ x = \"*x*\" }} }}"
            ))
            .unwrap();
            let StepKind::Metrics { since: read, .. } = &checks[0].steps[0].kind else {
                panic!("{option}: not a metrics step");
            };
            assert_eq!(read.as_ref(), Some(&since), "{option}");
        }
        let checks = step("{ ws_ping = \"a\" }").unwrap();
        assert_eq!(
            checks[0].steps[0].kind,
            StepKind::WsPing {
                conn: "a".into(),
                within: "5s".into(),
            }
        );
        for (body, error) in [
            (
                "{ expect_attempts = \"a\", command_id = \"x\" }",
                "by = \"timer\", \"reconnect\" or \"sync\"",
            ),
            (
                "{ expect = \"a\", type = \"command\", fields = { \"data.expires_at\" = \"<timestamp data.created_at>\" } }",
                "`<timestamp ≈ now>` or `<timestamp = PATH + DURATION>`",
            ),
            (
                "{ api = \"GET /x\", fields = { at = \"<timestamp = at + soon>\" } }",
                "<timestamp = PATH + DURATION>",
            ),
            (
                "{ api = \"GET /x\", fields = { \"[edge_agent_id].connected\" = true } }",
                "`[edge_agent_id]` is not a selector; write `[member=value]`",
            ),
            (
                "{ ws_ping = \"a\", type = \"pong\" }",
                "`type` is not an option of the `ws_ping` step",
            ),
            (
                "{ expect = \"a\", type = \"x\", reason = \"replaced\" }",
                "`reason` is not an option of the `expect` step",
            ),
            (
                "{ api = \"POST /x\", body_text = '{}', pad = 10 }",
                "pad = BYTES adds a `padding` member to the body: it needs body = { … }",
            ),
            (
                "{ command = \"a\", body = {}, body_text = '{}' }",
                "not both",
            ),
            (
                "{ command = \"a\", body_text = '{\"a\":' }",
                "body_text is not JSON",
            ),
            (
                "{ expect = \"a\", type = \"x\", raw = { p = 'nope' } }",
                "raw `p` is not JSON text",
            ),
            ("{ expect_commands = \"a\" }", "needs ids"),
            (
                "{ metrics = \"/m\", since = \"s\", unchanged_since = \"s\", families = { x = \"*\" } }",
                "exclude each other",
            ),
            (
                "{ metrics = \"/m\", gauges_fell_since = \"s\", gauges_back_to = \"s\", families = { x = \"*\" } }",
                "exclude each other",
            ),
            (
                "{ metrics = \"/m\", unchanged_since = \"s\" }",
                "needs `families`",
            ),
            (
                "{ metrics = \"/m\", gauges_back_to = \"s\" }",
                "needs `families`",
            ),
            (
                "{ metrics = \"/m\", families = { x = \"*a*{replaced\" } }",
                "`*a*{replaced` is not a name pattern",
            ),
            (
                "{ metrics = \"/m\", families = { x = \"*a*|{replaced}\" } }",
                "`{replaced}` is not a name pattern",
            ),
            (
                "{ close = \"a\", raw = { p = '1' } }",
                "`raw` is not an option of the `close` step",
            ),
        ] {
            let message = step(body).unwrap_err().message;
            assert!(message.contains(error), "{body}: {message}");
        }
    }

    #[test]
    fn rule_ids_must_be_protocol_ids() {
        let text = HEAD.replace("WS-PING-1", "PING") + "steps = []\n";
        assert!(parse_str(&text)
            .unwrap_err()
            .message
            .contains("not a PROTOCOL.md rule id"));
    }
}
