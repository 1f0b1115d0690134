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
//! [`StepKind`], a match arm in [`StepSpec::into_kind`], and its execution in
//! `step.rs`. The step reference is in `scenarios/README.md`.

pub mod matcher;
pub mod step;

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
}

impl Capability {
    pub fn how_to_enable(self) -> &'static str {
        match self {
            Capability::ControlApi => "needs the control API: pass --admin-token",
            Capability::Hmac => "needs HMAC tokens: pass --edge-secret or --hmac-secret",
            Capability::SharedSecret => "needs the shared secret: pass --edge-secret",
            Capability::Registration => "needs registration: pass --registration-token",
            Capability::Restart => "needs a way to restart the backend: pass --restart-cmd",
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
    steps: Vec<Spanned<StepSpec>>,
}

/// One step as written. Exactly one of the kind keys (`provision`,
/// `connect`, `send`, `expect`, `expect_close`, `expect_open`,
/// `expect_silence`, `close`, `command`, `http`, `api`, `wait`, `restart`)
/// must be present; the others are options of that kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    // kinds
    pub provision: Option<String>,
    pub connect: Option<String>,
    pub send: Option<String>,
    pub expect: Option<String>,
    pub expect_close: Option<String>,
    pub expect_open: Option<String>,
    pub expect_silence: Option<String>,
    pub close: Option<String>,
    pub command: Option<String>,
    pub http: Option<String>,
    pub api: Option<String>,
    pub wait: Option<String>,
    pub restart: Option<bool>,
    // options
    pub agent: Option<String>,
    pub token: Option<String>,
    pub id: Option<String>,
    pub header_id: Option<String>,
    pub outcome: Option<String>,
    pub statuses: Option<Vec<u16>>,
    pub codes: Option<Vec<u16>>,
    pub json: Option<toml::Value>,
    pub text: Option<String>,
    pub binary: Option<String>,
    pub frame: Option<String>,
    pub repeat: Option<u32>,
    #[serde(rename = "type")]
    pub msg_type: Option<String>,
    pub fields: Option<BTreeMap<String, toml::Value>>,
    pub save: Option<BTreeMap<String, String>>,
    pub mark: Option<String>,
    pub after: Option<String>,
    pub within: Option<String>,
    pub not_before: Option<String>,
    pub tolerance: Option<bool>,
    pub body: Option<toml::Value>,
    pub status: Option<Vec<u16>>,
    pub header: Option<BTreeMap<String, String>>,
    pub eventually: Option<String>,
    pub retry_after: Option<bool>,
    pub source: Option<String>,
}

/// How a connection attempt should end.
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
    /// A hand-made frame: `invalid_utf8`, `reserved_opcode`, `oversized`.
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

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: String,
    pub path: String,
    pub token: String,
    pub agent: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
    pub statuses: Vec<u16>,
    pub fields: Vec<(String, Value)>,
    pub save: BTreeMap<String, String>,
    pub eventually: Option<String>,
    pub retry_after: bool,
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
        save: BTreeMap<String, String>,
        mark: Option<String>,
        window: Window,
    },
    ExpectClose {
        conn: String,
        codes: Vec<u16>,
        window: Window,
    },
    ExpectOpen {
        conn: String,
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
        body: Value,
        save_as: Option<String>,
    },
    Http(HttpCall),
    Api(HttpCall),
    Wait {
        during: String,
    },
    Restart,
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

pub fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

fn fields(map: Option<BTreeMap<String, toml::Value>>) -> Vec<(String, Value)> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, toml_to_json(v)))
        .collect()
}

impl StepSpec {
    fn window(&mut self, default_within: &str) -> Window {
        Window {
            after: self.after.take(),
            within: self
                .within
                .take()
                .unwrap_or_else(|| default_within.to_string()),
            not_before: self.not_before.take(),
            tolerance: self.tolerance.take().unwrap_or(false),
        }
    }

    fn http_call(&mut self, line: &str, default_token: &str) -> Result<HttpCall, String> {
        let (method, path) = line
            .trim()
            .split_once(' ')
            .ok_or("write the call as `METHOD /path`, e.g. `POST /edge/sync`")?;
        if !path.starts_with('/') {
            return Err(format!("the path `{path}` must start with /"));
        }
        Ok(HttpCall {
            method: method.to_uppercase(),
            path: path.trim().to_string(),
            token: self
                .token
                .take()
                .unwrap_or_else(|| default_token.to_string()),
            agent: self.agent.take(),
            headers: self.header.take().unwrap_or_default(),
            body: self.body.take().map(toml_to_json),
            statuses: self.status.take().unwrap_or_else(|| vec![200]),
            fields: fields(self.fields.take()),
            save: self.save.take().unwrap_or_default(),
            eventually: self.eventually.take(),
            retry_after: self.retry_after.take().unwrap_or(false),
        })
    }

    /// Turns the written step into its kind, or says what is wrong.
    fn into_kind(mut self) -> Result<StepKind, String> {
        let kinds = [
            ("provision", self.provision.is_some()),
            ("connect", self.connect.is_some()),
            ("send", self.send.is_some()),
            ("expect", self.expect.is_some()),
            ("expect_close", self.expect_close.is_some()),
            ("expect_open", self.expect_open.is_some()),
            ("expect_silence", self.expect_silence.is_some()),
            ("close", self.close.is_some()),
            ("command", self.command.is_some()),
            ("http", self.http.is_some()),
            ("api", self.api.is_some()),
            ("wait", self.wait.is_some()),
            ("restart", self.restart.is_some()),
        ];
        let present: Vec<&str> = kinds.iter().filter(|(_, p)| *p).map(|(k, _)| *k).collect();
        if present.len() != 1 {
            let all: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
            return Err(if present.is_empty() {
                format!("a step needs one of: {}", all.join(", "))
            } else {
                format!(
                    "a step has exactly one kind, this one has {}",
                    present.join(" and ")
                )
            });
        }
        let kind = match present[0] {
            "provision" => StepKind::Provision {
                agent: self.provision.take().unwrap(),
            },
            "connect" => {
                let conn = self.connect.take().unwrap();
                let outcome = match self.outcome.take().as_deref().unwrap_or("accepted") {
                    "accepted" => ConnectOutcome::Accepted,
                    "refused" => ConnectOutcome::Refused {
                        statuses: self.statuses.take().unwrap_or_else(|| vec![401, 403]),
                        codes: self.codes.take().unwrap_or_else(|| vec![4001]),
                    },
                    "status" => ConnectOutcome::Status(
                        self.statuses
                            .take()
                            .ok_or("outcome = \"status\" needs statuses = [...]")?,
                    ),
                    "rate_limited" => ConnectOutcome::RateLimited {
                        attempts: self.repeat.take().unwrap_or(25),
                        retry_after: self.retry_after.take().unwrap_or(false),
                    },
                    other => {
                        return Err(format!(
                        "unknown outcome `{other}`: use accepted, refused, status or rate_limited"
                    ))
                    }
                };
                StepKind::Connect {
                    agent: self.agent.take().unwrap_or_else(|| conn.clone()),
                    conn,
                    token: self.token.take().unwrap_or_else(|| "edge".into()),
                    id: self.id.take(),
                    header_id: self.header_id.take(),
                    outcome,
                    source: self.source.take(),
                    welcome: self.fields.take().map(|f| fields(Some(f))),
                }
            }
            "send" => {
                let payloads = [
                    self.json.take().map(|j| Payload::Json(toml_to_json(j))),
                    self.text.take().map(Payload::Text),
                    self.binary
                        .take()
                        .map(|hex| {
                            hex::decode(hex)
                                .map(Payload::Binary)
                                .map_err(|e| format!("binary must be hex: {e}"))
                        })
                        .transpose()?,
                    self.frame.take().map(Payload::Frame),
                ];
                let mut given: Vec<Payload> = payloads.into_iter().flatten().collect();
                if given.len() != 1 {
                    return Err(
                        "send needs exactly one of json, text, binary (hex) or frame".into(),
                    );
                }
                StepKind::Send {
                    conn: self.send.take().unwrap(),
                    payload: given.remove(0),
                    repeat: self.repeat.take().unwrap_or(1),
                }
            }
            "expect" => StepKind::Expect {
                conn: self.expect.take().unwrap(),
                msg_type: self.msg_type.take().ok_or("expect needs type = \"...\"")?,
                fields: fields(self.fields.take()),
                save: self.save.take().unwrap_or_default(),
                mark: self.mark.take(),
                window: self.window("5s"),
            },
            "expect_close" => StepKind::ExpectClose {
                conn: self.expect_close.take().unwrap(),
                codes: self
                    .codes
                    .take()
                    .ok_or("expect_close needs codes = [...] ([] for any close)")?,
                window: self.window("5s"),
            },
            "expect_open" => StepKind::ExpectOpen {
                conn: self.expect_open.take().unwrap(),
            },
            "expect_silence" => StepKind::ExpectSilence {
                conn: self.expect_silence.take().unwrap(),
                msg_type: self.msg_type.take(),
                during: self
                    .within
                    .take()
                    .ok_or("expect_silence needs within = \"...\" (how long)")?,
            },
            "close" => StepKind::Close {
                conn: self.close.take().unwrap(),
            },
            "command" => StepKind::Command {
                agent: self.command.take().unwrap(),
                body: self
                    .body
                    .take()
                    .map(toml_to_json)
                    .ok_or("command needs body = { command_type = ... }")?,
                save_as: match self.save.take() {
                    None => None,
                    Some(save) if save.len() == 1 && save.contains_key("id") => {
                        save.get("id").cloned()
                    }
                    Some(_) => {
                        return Err(
                            "a command step saves only its id: save = { id = \"NAME\" }".into()
                        )
                    }
                },
            },
            "http" => {
                let line = self.http.take().unwrap();
                StepKind::Http(self.http_call(&line, "edge")?)
            }
            "api" => {
                let line = self.api.take().unwrap();
                StepKind::Api(self.http_call(&line, "admin")?)
            }
            "wait" => StepKind::Wait {
                during: self.wait.take().unwrap(),
            },
            "restart" => {
                if self.restart != Some(true) {
                    return Err("write `restart = true`".into());
                }
                StepKind::Restart
            }
            _ => unreachable!("listed above"),
        };
        self.leftover_options().map_or(Ok(kind), |name| {
            Err(format!(
                "`{name}` is not an option of a `{}` step",
                present[0]
            ))
        })
    }

    /// An option given that the step's kind did not use.
    fn leftover_options(&self) -> Option<&'static str> {
        let options = [
            ("outcome", self.outcome.is_some()),
            ("json", self.json.is_some()),
            ("text", self.text.is_some()),
            ("binary", self.binary.is_some()),
            ("frame", self.frame.is_some()),
            ("agent", self.agent.is_some()),
            ("token", self.token.is_some()),
            ("id", self.id.is_some()),
            ("header_id", self.header_id.is_some()),
            ("statuses", self.statuses.is_some()),
            ("codes", self.codes.is_some()),
            ("repeat", self.repeat.is_some()),
            ("type", self.msg_type.is_some()),
            ("fields", self.fields.is_some()),
            ("save", self.save.is_some()),
            ("mark", self.mark.is_some()),
            ("after", self.after.is_some()),
            ("within", self.within.is_some()),
            ("not_before", self.not_before.is_some()),
            ("tolerance", self.tolerance.is_some()),
            ("body", self.body.is_some()),
            ("status", self.status.is_some()),
            ("header", self.header.is_some()),
            ("eventually", self.eventually.is_some()),
            ("retry_after", self.retry_after.is_some()),
            ("source", self.source.is_some()),
        ];
        options
            .iter()
            .find(|(_, given)| *given)
            .map(|(name, _)| *name)
    }
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
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut checks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io_error(&file, e))?;
        checks.extend(parse(&file, &text)?);
    }
    Ok(checks)
}

fn io_error(path: &Path, e: std::io::Error) -> ScenarioError {
    ScenarioError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Check>, ScenarioError> {
        parse(Path::new("x.toml"), text)
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
            "`codes` is not an option of a `close` step"
        );
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = parse_str("group = \"G\"\n\n[[check]\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.file, "x.toml");
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
