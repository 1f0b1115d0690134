//! The steps that read the backend's log (`--server-log`): `log` waits for
//! a line (WS-OBS-1's spec lines), `log_has_no_secrets` checks that no
//! secret this check used was written there (WS-AUTH-5: "tokens never
//! appear in logs"). Both read only what the log gained since the check
//! started, and never show a secret: what they quote is redacted. The same
//! secrets, and stack traces, must not be in an HTTP answer either
//! (`no_trace`, WS-HTTP-4).

use std::time::Duration;

use tokio::time::Instant;

use super::{fail, Ctx, StepResult};
use crate::scenario::matcher::substitute_str;
use crate::target::Target;

/// Shorter values are not looked for: they would match by chance.
const SHORTEST_SECRET: usize = 8;

/// What a stack trace of the usual backend languages holds (in a JSON
/// string the newlines are `\n`, so frames are matched by their text).
const STACK_TRACES: [(&str, &str); 8] = [
    ("a Python traceback", "Traceback (most recent call last)"),
    ("a Python frame", "File \"/"),
    ("a Rust panic", "panicked at"),
    ("a Go stack", "goroutine 1 [running]"),
    ("a JavaScript or Java frame", "    at "),
    ("a JavaScript module path", "node_modules/"),
    ("a Java exception", "Exception in thread"),
    ("a Java class", "java.lang."),
];

/// Appends every string of `value`, one per line.
fn strings(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push('\n');
            out.push_str(s);
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(members) => members.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The log's length now: where a check's part of it starts.
pub(super) fn log_length(target: &Target) -> u64 {
    target
        .server_log
        .as_ref()
        .and_then(|path| std::fs::metadata(path).ok())
        .map_or(0, |m| m.len())
}

impl Ctx<'_> {
    /// What the log gained since the check started (all of it, if it was
    /// truncated or rotated meanwhile).
    fn log_since_start(&self) -> Result<String, (String, String)> {
        let Some(path) = &self.target.server_log else {
            return fail("the backend's log", "no --server-log");
        };
        let read = |path: &std::path::Path| -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = std::fs::File::open(path)?;
            // A log may be large: only this check's part is read.
            let start = match file.metadata()?.len() {
                len if len >= self.log_start => self.log_start,
                _ => 0,
            };
            file.seek(SeekFrom::Start(start))?;
            let mut ours = Vec::new();
            file.read_to_end(&mut ours)?;
            Ok(ours)
        };
        let ours = read(path).or_else(|e| {
            fail(
                format!("the backend's log {}", path.display()),
                e.to_string(),
            )
        })?;
        Ok(String::from_utf8_lossy(&ours).into_owned())
    }

    /// Waits until the log holds `text` (variables substituted).
    pub(super) async fn log(&mut self, text: &str, within: &str) -> StepResult {
        let text = substitute_str(text, &self.vars);
        let within = self.eval(within)?;
        let deadline = Instant::now() + within;
        loop {
            let log = self.log_since_start()?;
            if let Some(line) = log.lines().find(|line| line.contains(&text)) {
                let shown = redact(line, &self.secrets());
                self.note(format!("log: {shown}"));
                return Ok(());
            }
            if Instant::now() >= deadline {
                let secrets = self.secrets();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<String> = tail.iter().rev().map(|l| redact(l, &secrets)).collect();
                return fail(
                    format!("a log line with `{text}` within {within:?}"),
                    match tail.is_empty() {
                        true => "nothing logged since the check started".to_string(),
                        false => format!("none; the last lines: {}", tail.join(" ⏎ ")),
                    },
                );
            }
            // A file gives no event to wait on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No secret of [`Ctx::secrets`] is in the log since the check started.
    pub(super) fn log_has_no_secrets(&mut self) -> StepResult {
        let log = self.log_since_start()?;
        let secrets = self.secrets();
        self.note(format!(
            "log: {} lines searched for {} secrets",
            log.lines().count(),
            secrets.len()
        ));
        let found: Vec<String> = secrets
            .iter()
            .filter_map(|(what, secret)| {
                let line = log.lines().find(|line| line.contains(secret.as_str()))?;
                Some(format!("{what}, in: {}", redact(line, &secrets)))
            })
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        fail("no token or secret in the backend's log", found.join("; "))
    }

    /// What in an HTTP answer's body leaks (WS-HTTP-4: "never a stack
    /// trace, never a secret"), redacted, if anything does.
    pub(super) fn leak(&self, body: &str) -> Option<String> {
        // The text as sent, and a JSON answer's strings unescaped (where a
        // trace's newlines and quotes are real).
        let mut text = body.to_string();
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
            strings(&value, &mut text);
        }
        let secrets = self.secrets();
        let quoted = |at: usize| {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(40)
                .map_or(0, |(i, _)| i);
            redact(&text[start..], &secrets)
        };
        if let Some((what, at)) = STACK_TRACES
            .iter()
            .find_map(|(what, marker)| text.find(marker).map(|at| (*what, at)))
        {
            return Some(format!("{what} in the answer: …{}", quoted(at)));
        }
        secrets.iter().find_map(|(what, secret)| {
            let at = text.find(secret.as_str())?;
            Some(format!("{what} in the answer: …{}", quoted(at)))
        })
    }

    /// Every secret this check knows: the flags' secrets, every token its
    /// requests carried, every token it was given (registration, provisioning).
    fn secrets(&self) -> Vec<(String, String)> {
        let target = self.target;
        let flags = [
            ("the shared secret (--edge-secret)", &target.edge_secret),
            ("the HMAC key (--hmac-secret)", &target.hmac_secret),
            ("the admin token", &target.admin_token),
            ("the registration token", &target.registration_token),
        ];
        let mut secrets: Vec<(String, String)> = flags
            .into_iter()
            .filter_map(|(what, value)| Some((what.to_string(), value.clone()?)))
            .collect();
        secrets.extend(
            self.sent_tokens
                .iter()
                .map(|token| ("a token this check sent".to_string(), token.clone())),
        );
        secrets.extend(
            self.vars
                .iter()
                .filter(|(name, _)| name.starts_with("token:") || name.ends_with("token"))
                .map(|(name, value)| (format!("the token `{name}`"), value.clone())),
        );
        // Each value once, under its first (most telling) name; longest
        // first, so a secret inside a longer token is redacted with it.
        let mut seen = std::collections::HashSet::new();
        secrets.retain(|(_, value)| value.len() >= SHORTEST_SECRET && seen.insert(value.clone()));
        secrets.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        secrets
    }
}

/// `line` with every one of `secrets` replaced, so a report never shows one.
fn redact(line: &str, secrets: &[(String, String)]) -> String {
    // Redacted before it is shortened: a cut must not leave half a secret.
    let redacted = secrets.iter().fold(line.to_string(), |text, (_, secret)| {
        text.replace(secret.as_str(), "<redacted>")
    });
    redacted.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const ADMIN: &str = "admin-token-0123456789";

    fn target(log: &std::path::Path) -> Target {
        let mut target = Target::new("http://127.0.0.1:9").unwrap();
        target.admin_token = Some(ADMIN.into());
        target.edge_secret = Some("short".into());
        target.server_log = Some(log.to_path_buf());
        target
    }

    fn append(log: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn only_what_the_check_adds_is_read_and_secrets_are_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        // Before the check: not this check's business.
        append(&log, &format!("old line with {ADMIN}\n"));
        let target = target(&log);
        let mut ctx = Ctx::new(&target, "t".into(), None);
        ctx.sent_tokens.insert("agent-token-abcdefgh".into());
        assert_eq!(ctx.log_has_no_secrets(), Ok(()));
        let padding = "x".repeat(290);
        append(
            &log,
            &format!("INFO {padding} Bearer agent-token-abcdefgh\n"),
        );
        ctx.log("Bearer", "100ms").await.unwrap();
        let (expected, observed) = ctx.log_has_no_secrets().unwrap_err();
        assert_eq!(expected, "no token or secret in the backend's log");
        assert!(
            observed.starts_with("a token this check sent, in: INFO xxx"),
            "{observed}"
        );
        // Redacted before it is cut at 300 characters: no half secret.
        assert!(!observed.contains("agent-tok"), "{observed}");
        assert!(!ctx.transcript.iter().any(|line| line.contains("agent-tok")));
        // The shared secret is too short to look for; the admin token is not.
        append(&log, &format!("short {ADMIN}\n"));
        let (_, observed) = ctx.log_has_no_secrets().unwrap_err();
        assert!(
            observed.contains("the admin token, in: short <redacted>"),
            "{observed}"
        );
    }

    #[tokio::test]
    async fn a_missing_line_fails_with_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let target = target(&log);
        let mut ctx = Ctx::new(&target, "t".into(), None);
        // No file yet: said, with its path.
        let (expected, observed) = ctx.log("Sent command", "50ms").await.unwrap_err();
        assert!(expected.contains(&log.display().to_string()), "{expected}");
        assert!(observed.contains("No such file"), "{observed}");
        append(&log, &format!("Edge agent a connected, admin {ADMIN}\n"));
        let (expected, observed) = ctx.log("Sent command", "50ms").await.unwrap_err();
        assert!(expected.contains("`Sent command`"), "{expected}");
        assert_eq!(
            observed,
            "none; the last lines: Edge agent a connected, admin <redacted>"
        );
    }

    #[test]
    fn an_answer_leaks_a_trace_or_a_secret() {
        let target = target(std::path::Path::new("/nonexistent"));
        let ctx = Ctx::new(&target, "t".into(), None);
        let clean = r#"{"error":"invalid_body","message":"expected a string at line 1 column 18"}"#;
        assert_eq!(ctx.leak(clean), None);
        let python = r#"{"error":"internal","trace":"Traceback (most recent call last):\n  File \"/app/main.py\", line 3"}"#;
        assert!(ctx.leak(python).unwrap().starts_with("a Python traceback"));
        let go = "panic: boom\n\ngoroutine 1 [running]:\nmain.main()";
        assert!(ctx.leak(go).unwrap().starts_with("a Go stack"));
        let echoed = format!(r#"{{"error":"bad","authorization":"Bearer {ADMIN}"}}"#);
        let leak = ctx.leak(&echoed).unwrap();
        assert!(leak.starts_with("the admin token in the answer"), "{leak}");
        assert!(!leak.contains(ADMIN), "{leak}");
    }

    proptest::proptest! {
        /// Whatever the backend logs around a secret, a quoted line never
        /// holds it, whole or cut.
        #[test]
        fn a_quoted_line_never_holds_a_secret(
            before in "[ -~]{0,400}",
            after in "[ -~]{0,50}",
            secret in "[a-zA-Z0-9+/=]{8,40}",
        ) {
            let target = target(std::path::Path::new("/nonexistent"));
            let mut ctx = Ctx::new(&target, "t".into(), None);
            ctx.sent_tokens.insert(secret.clone());
            let shown = redact(&format!("{before}{secret}{after}"), &ctx.secrets());
            proptest::prop_assert!(!shown.contains(&secret));
            proptest::prop_assert!(shown.chars().count() <= 300);
        }
    }
}
