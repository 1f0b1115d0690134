//! Steps as written in TOML ([`StepSpec`]) and their validation into a
//! [`StepKind`], with an error that says what is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::matcher::{path_error, timestamp_wildcard};
use super::raw::Ordered;
use super::{AttemptsBy, Body, ConnectOutcome, HttpCall, Payload, Since, StepKind, Window};

/// One step as written. Exactly one of the kind keys (`provision`,
/// `connect`, `send`, `expect`, `expect_close`, `expect_open`,
/// `expect_silence`, `ws_ping`, `close`, `command`, `http`, `api`, `wait`,
/// `restart`, `crash`, `log`, `log_has_no_secrets`, `fill`, `expect_commands`, `expect_attempts`, `metrics`) must be
/// present; the others are options of that kind.
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
    pub ws_ping: Option<String>,
    pub close: Option<String>,
    pub command: Option<String>,
    pub http: Option<String>,
    pub api: Option<String>,
    pub wait: Option<String>,
    pub restart: Option<bool>,
    pub crash: Option<bool>,
    pub log: Option<String>,
    pub log_has_no_secrets: Option<bool>,
    pub fill: Option<String>,
    pub expect_commands: Option<String>,
    pub expect_attempts: Option<String>,
    pub metrics: Option<String>,
    // options
    pub agent: Option<String>,
    pub token: Option<String>,
    pub id: Option<String>,
    pub header_id: Option<String>,
    pub outcome: Option<String>,
    pub statuses: Option<Vec<u16>>,
    pub codes: Option<Vec<u16>>,
    pub reason: Option<String>,
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
    pub raw: Option<BTreeMap<String, String>>,
    pub body_text: Option<String>,
    pub pad: Option<usize>,
    pub max: Option<u32>,
    pub ids: Option<String>,
    pub command_id: Option<String>,
    pub by: Option<String>,
    pub from: Option<u32>,
    pub families: Option<BTreeMap<String, String>>,
    pub snapshot: Option<String>,
    pub since: Option<String>,
    pub unchanged_since: Option<String>,
    pub gauges_rose_since: Option<String>,
    pub gauges_fell_since: Option<String>,
    pub gauges_back_to: Option<String>,
    pub no_trace: Option<bool>,
}

/// How a connection attempt should end.
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

/// `fields = { PATH = VALUE }`; a malformed `<timestamp…>` or `[selector]` is an error here,
/// not a mismatch later.
fn fields(map: Option<BTreeMap<String, toml::Value>>) -> Result<Vec<(String, Value)>, String> {
    let fields: Vec<(String, Value)> = map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, toml_to_json(v)))
        .collect();
    match fields.iter().find_map(|(path, v)| {
        path_error(path).or_else(|| v.as_str().and_then(timestamp_wildcard)?.err())
    }) {
        Some(error) => Err(error),
        None => Ok(fields),
    }
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

    /// `body` (a table) or `body_text` (JSON text sent as written).
    fn body(&mut self) -> Result<Option<Body>, String> {
        match (self.body.take(), self.body_text.take()) {
            (Some(_), Some(_)) => Err("give `body` or `body_text`, not both".into()),
            (Some(table), None) => Ok(Some(Body::Json(toml_to_json(table)))),
            (None, Some(text)) => {
                Ordered::parse(&text).map_err(|e| format!("body_text is not JSON: {e}"))?;
                Ok(Some(Body::Text(text)))
            }
            (None, None) => Ok(None),
        }
    }

    /// `raw = { PATH = 'JSON text' }`: members compared in written order (WS-CMD-2).
    fn raw(&mut self) -> Result<Vec<(String, String)>, String> {
        let raw = self.raw.take().unwrap_or_default();
        for (path, text) in &raw {
            Ordered::parse(text).map_err(|e| format!("raw `{path}` is not JSON text: {e}"))?;
        }
        Ok(raw.into_iter().collect())
    }

    fn http_call(&mut self, line: &str, default_token: &str) -> Result<HttpCall, String> {
        let (method, path) = line
            .trim()
            .split_once(' ')
            .ok_or("write the call as `METHOD /path`, e.g. `POST /edge/sync`")?;
        if !path.starts_with('/') {
            return Err(format!("the path `{path}` must start with /"));
        }
        if self.pad.is_some() && !matches!(&self.body, Some(toml::Value::Table(_))) {
            return Err(
                "pad = BYTES adds a `padding` member to the body: it needs body = { … }".into(),
            );
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
            body: self.body()?,
            statuses: self.status.take().unwrap_or_else(|| vec![200]),
            fields: fields(self.fields.take())?,
            raw: self.raw()?,
            save: self.save.take().unwrap_or_default(),
            eventually: self.eventually.take(),
            retry_after: self.retry_after.take().unwrap_or(false),
            pad: self.pad.take(),
            no_trace: self.no_trace.take().unwrap_or(false),
        })
    }

    /// Turns the written step into its kind, or says what is wrong.
    pub(super) fn into_kind(mut self) -> Result<StepKind, String> {
        let kinds = [
            ("provision", self.provision.is_some()),
            ("connect", self.connect.is_some()),
            ("send", self.send.is_some()),
            ("expect", self.expect.is_some()),
            ("expect_close", self.expect_close.is_some()),
            ("expect_open", self.expect_open.is_some()),
            ("expect_silence", self.expect_silence.is_some()),
            ("ws_ping", self.ws_ping.is_some()),
            ("close", self.close.is_some()),
            ("command", self.command.is_some()),
            ("http", self.http.is_some()),
            ("api", self.api.is_some()),
            ("wait", self.wait.is_some()),
            ("restart", self.restart.is_some()),
            ("crash", self.crash.is_some()),
            ("log", self.log.is_some()),
            ("log_has_no_secrets", self.log_has_no_secrets.is_some()),
            ("fill", self.fill.is_some()),
            ("expect_commands", self.expect_commands.is_some()),
            ("expect_attempts", self.expect_attempts.is_some()),
            ("metrics", self.metrics.is_some()),
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
                    welcome: self.fields.take().map(|f| fields(Some(f))).transpose()?,
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
                fields: fields(self.fields.take())?,
                raw: self.raw()?,
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
                reason: self.reason.take(),
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
            "ws_ping" => StepKind::WsPing {
                conn: self.ws_ping.take().unwrap(),
                within: self.within.take().unwrap_or_else(|| "5s".into()),
            },
            "close" => StepKind::Close {
                conn: self.close.take().unwrap(),
            },
            "command" => StepKind::Command {
                agent: self.command.take().unwrap(),
                body: self
                    .body()?
                    .ok_or("command needs body = { command_type = ... } (or body_text)")?,
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
            "restart" => switch(self.restart, "restart", StepKind::Restart)?,
            "crash" => switch(self.crash, "crash", StepKind::Crash)?,
            "log" => StepKind::Log {
                text: self.log.take().unwrap(),
                within: self.within.take().unwrap_or_else(|| "2s".into()),
            },
            "log_has_no_secrets" => switch(
                self.log_has_no_secrets,
                "log_has_no_secrets",
                StepKind::LogHasNoSecrets,
            )?,
            "fill" => StepKind::Fill {
                agent: self.fill.take().unwrap(),
                body: self
                    .body()?
                    .ok_or("fill needs body = { command_type = ... }")?,
                // `status = []`: no refusal expected, all `max` accepted.
                statuses: self.status.take().unwrap_or_else(|| vec![429]),
                fields: fields(self.fields.take())?,
                max: self.max.take().unwrap_or(2000),
                save_as: self.ids.take(),
            },
            "expect_commands" => StepKind::ExpectCommands {
                conn: self.expect_commands.take().unwrap(),
                ids: self
                    .ids
                    .take()
                    .ok_or("expect_commands needs ids = \"LIST\" (saved by a fill step)")?,
                within: self.within.take().unwrap_or_else(|| "10s".into()),
            },
            "expect_attempts" => StepKind::ExpectAttempts {
                conn: self.expect_attempts.take().unwrap(),
                command_id: self
                    .command_id
                    .take()
                    .ok_or("expect_attempts needs command_id = \"{VAR}\"")?,
                by: match self.by.take().as_deref() {
                    Some("timer") => AttemptsBy::Timer,
                    Some("reconnect") => AttemptsBy::Reconnect,
                    Some("sync") => AttemptsBy::Sync,
                    _ => {
                        return Err(
                            "expect_attempts needs by = \"timer\", \"reconnect\" or \"sync\""
                                .into(),
                        )
                    }
                },
                from: self.from.take().unwrap_or(1).max(1),
            },
            "metrics" => {
                let families: Vec<(String, String)> = self
                    .families
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let mut comparisons: Vec<Since> = [
                    self.since.take().map(Since::Grown),
                    self.unchanged_since.take().map(Since::Unchanged),
                    self.gauges_rose_since.take().map(Since::GaugesRose),
                    self.gauges_fell_since.take().map(Since::GaugesFell),
                    self.gauges_back_to.take().map(Since::GaugesBackTo),
                ]
                .into_iter()
                .flatten()
                .collect();
                if comparisons.len() > 1 {
                    return Err("`since`, `unchanged_since`, `gauges_rose_since`, \
                                `gauges_fell_since` and `gauges_back_to` exclude each other: \
                                use one `metrics` step for each comparison"
                        .into());
                }
                let since = comparisons.pop();
                if let Some((what, pattern)) = families.iter().find_map(|(what, patterns)| {
                    let bad = |p: &&str| {
                        let (name, label) = p.split_once('{').unwrap_or((p, "}"));
                        name.trim().is_empty() || name.contains('}') || !label.ends_with('}')
                    };
                    patterns.split('|').find(bad).map(|p| (what, p))
                }) {
                    return Err(format!(
                        "family `{what}`: `{pattern}` is not a name pattern; write NAME or \
                         NAME{{LABEL VALUE}}, globs with `*`, e.g. `*disconnect*{{replaced}}`"
                    ));
                }
                if since.is_some() && families.is_empty() {
                    return Err("a comparison with a snapshot needs `families`: \
                                the counters or gauges to compare"
                        .into());
                }
                StepKind::Metrics {
                    path: self.metrics.take().unwrap(),
                    token: self.token.take().unwrap_or_else(|| "none".into()),
                    families,
                    snapshot: self.snapshot.take(),
                    since,
                }
            }
            _ => unreachable!("listed above"),
        };
        self.leftover_options().map_or(Ok(kind), |name| {
            Err(format!(
                "`{name}` is not an option of the `{}` step",
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
            ("reason", self.reason.is_some()),
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
            ("raw", self.raw.is_some()),
            ("body_text", self.body_text.is_some()),
            ("pad", self.pad.is_some()),
            ("max", self.max.is_some()),
            ("ids", self.ids.is_some()),
            ("command_id", self.command_id.is_some()),
            ("by", self.by.is_some()),
            ("from", self.from.is_some()),
            ("families", self.families.is_some()),
            ("snapshot", self.snapshot.is_some()),
            ("since", self.since.is_some()),
            ("unchanged_since", self.unchanged_since.is_some()),
            ("gauges_rose_since", self.gauges_rose_since.is_some()),
            ("gauges_fell_since", self.gauges_fell_since.is_some()),
            ("gauges_back_to", self.gauges_back_to.is_some()),
            ("no_trace", self.no_trace.is_some()),
        ];
        options
            .iter()
            .find(|(_, given)| *given)
            .map(|(name, _)| *name)
    }
}

/// A step written `KEY = true`: the value says nothing more, but `false`
/// would read as "do not", so only `true` is taken.
fn switch(value: Option<bool>, key: &str, kind: StepKind) -> Result<StepKind, String> {
    match value {
        Some(true) => Ok(kind),
        _ => Err(format!("write `{key} = true`")),
    }
}
