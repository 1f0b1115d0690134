//! Runs checks against a target: capability gating, `--only`, retries,
//! `--expect-fail`, and the verdict of each check.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use crate::report::{CheckResult, RunReport, Status};
use crate::scenario::step::Ctx;
use crate::scenario::{AttemptsBy, Capability, Check, Level, StepKind};
use crate::target::Target;
use crate::timing::Timings;

/// Called after each check, e.g. to show progress.
pub type OnResult = Box<dyn Fn(&CheckResult) + Send + Sync>;

#[derive(Default)]
pub struct Options {
    /// Rule-id or check-name patterns; `*` matches any run of characters.
    pub only: Vec<String>,
    pub strict: bool,
    /// Extra attempts for timing-sensitive checks.
    pub retries: u32,
    /// Run checks that take minutes at the backend's timers.
    pub slow: bool,
    /// Rule ids (or `RULE name`) known to fail on this backend.
    pub expect_fail: HashSet<String>,
    pub seed: u64,
    /// Makes agent and command ids unique to this run, so runs against one
    /// backend never meet each other's agents (0: chosen at random).
    pub run_id: u32,
    /// Called after each check (progress on long runs).
    pub on_result: Option<OnResult>,
}

/// `*` wildcard matching, case-insensitive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = text.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    rest.is_empty()
}

pub fn selected(check: &Check, only: &[String]) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|p| glob(p, &check.rule) || glob(p, &check.name))
}

/// What a check needs beyond its declared `needs`, read off its steps.
fn implied_needs(check: &Check) -> Vec<Capability> {
    let mut needs = check.needs.clone();
    for step in &check.steps {
        match &step.kind {
            StepKind::Api(_) => needs.push(Capability::ControlApi),
            StepKind::Restart => needs.push(Capability::Restart),
            StepKind::Crash => needs.push(Capability::Crash),
            StepKind::Log { .. } | StepKind::LogHasNoSecrets => needs.push(Capability::ServerLog),
            _ => {}
        }
    }
    needs
}

/// Checks longer than this at the backend's timers run only with `--slow`.
const SLOW: Duration = Duration::from_secs(120);

/// How long a check's timer-driven redeliveries (over the socket or by
/// sync) take at the backend's timers: every attempt's ack_timeout +
/// backoff(n) (WS-DLV-3), then the last ack_timeout, plus WS-DLV-8's
/// tolerance on each.
fn redelivery_time(check: &Check, timings: &Timings) -> Duration {
    let runs = check
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                StepKind::ExpectAttempts {
                    by: AttemptsBy::Timer | AttemptsBy::Sync,
                    ..
                }
            )
        })
        .count() as u32;
    let one: Duration = (1..timings.max_attempts.max(1))
        .map(|n| timings.ack_timeout + Timings::backoff(n))
        .chain(std::iter::once(timings.ack_timeout))
        .map(|d| d + Timings::tolerance(d))
        .sum();
    one * runs
}

/// Why a check cannot run here, if it cannot.
pub fn skip_reason(check: &Check, target: &Target, slow: bool) -> Option<String> {
    let timings = target.timings();
    if check.slow && !slow {
        return Some(
            "needs --slow: it waits out a window of the backend's (about a minute)".into(),
        );
    }
    let takes = redelivery_time(check, &timings);
    if takes > SLOW && !slow {
        return Some(format!(
            "takes about {} min at this backend's timers (ack_timeout {:?}, max_attempts {}): run with --slow, or against a backend with shorter timers",
            takes.as_secs().div_ceil(60),
            timings.ack_timeout,
            timings.max_attempts
        ));
    }
    let provisions = check
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Provision { .. }));
    if provisions && !target.has(Capability::ControlApi) && !target.has(Capability::Registration) {
        return Some(
            "needs a way to provision agents: pass --admin-token or --registration-token".into(),
        );
    }
    let injects = check
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Command { .. }));
    if injects
        && matches!(target.inject, crate::target::Inject::ControlApi)
        && !target.has(Capability::ControlApi)
    {
        return Some("needs a way to send commands: pass --admin-token or --inject".into());
    }
    implied_needs(check)
        .into_iter()
        .find(|c| !target.has(*c))
        .map(|c| c.how_to_enable().to_string())
}

/// Loopback source address for check `index`, so one check's refused
/// upgrades never count against another's (WS-RATE-1 is per address).
fn source_for(index: usize) -> IpAddr {
    let n = index % (250 * 250);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        2 + (n % 250) as u8,
    ))
}

/// Runs one check once.
async fn attempt(
    check: &Check,
    target: &Target,
    prefix: String,
    source: Option<IpAddr>,
) -> (Result<(), crate::scenario::step::StepFailure>, Vec<String>) {
    let mut ctx = Ctx::new(target, prefix, source);
    let mut outcome = Ok(());
    for step in &check.steps {
        if let Err(failure) = ctx.run(step.line, &step.kind).await {
            outcome = Err(failure);
            break;
        }
    }
    ctx.finish().await;
    (outcome, ctx.transcript)
}

pub async fn run_check(
    check: &Check,
    index: usize,
    run_id: u32,
    target: &Target,
    options: &Options,
) -> CheckResult {
    let started = Instant::now();
    let mut result = CheckResult {
        rule: check.rule.clone(),
        name: check.name.clone(),
        group: check.group.clone(),
        level: check.level,
        requirement: check.requirement.clone(),
        status: Status::Pass,
        location: format!("{}:{}", check.file.display(), check.line),
        expected: None,
        observed: None,
        reason: None,
        transcript: Vec::new(),
        duration: Duration::ZERO,
        attempts: 0,
        flaky: false,
    };
    if let Some(reason) = skip_reason(check, target, options.slow) {
        result.status = Status::Skipped;
        result.reason = Some(reason);
        return result;
    }
    let tries = 1 + if check.timing { options.retries } else { 0 };
    // A check that hangs fails instead of stalling the run.
    let limit = target.timings().scaled(Duration::from_secs(60))
        + target.timings().ping_timeout * 2
        + target.timings().ack_timeout * 12
        + redelivery_time(check, &target.timings());
    let source = target.spread_sources.then(|| source_for(index));
    for n in 1..=tries {
        result.attempts = n;
        let prefix = format!("h{run_id:x}-{index}-{n}");
        let (outcome, transcript) =
            match tokio::time::timeout(limit, attempt(check, target, prefix, source)).await {
                Ok(done) => done,
                Err(_) => (
                    Err(crate::scenario::step::StepFailure {
                        line: check.line,
                        expected: format!("the check finishes within {limit:?}"),
                        observed: "it did not".into(),
                    }),
                    Vec::new(),
                ),
            };
        match outcome {
            Ok(()) => {
                result.status = Status::Pass;
                result.flaky = n > 1;
                result.expected = None;
                result.observed = None;
                result.transcript.clear();
                break;
            }
            Err(failure) => {
                result.status = if check.level == Level::Should && !options.strict {
                    Status::NonStrict
                } else {
                    Status::Fail
                };
                result.location = format!("{}:{}", check.file.display(), failure.line);
                result.expected = Some(failure.expected);
                result.observed = Some(failure.observed);
                result.transcript = transcript;
            }
        }
    }
    let listed = options.expect_fail.contains(&check.rule)
        || options
            .expect_fail
            .contains(&format!("{} {}", check.rule, check.name));
    result.status = match (listed, result.status) {
        (true, Status::Fail | Status::NonStrict) => Status::ExpectedFail,
        (true, Status::Pass) => Status::UnexpectedPass,
        (_, status) => status,
    };
    result.duration = started.elapsed();
    result
}

/// Runs the selected checks, one after another (their timing matters).
pub async fn run(checks: &[Check], target: &Target, options: &Options, label: &str) -> RunReport {
    let started = Instant::now();
    let run_id = if options.run_id == 0 {
        rand::random::<u32>() | 1
    } else {
        options.run_id
    };
    let mut results = Vec::new();
    for (index, check) in checks
        .iter()
        .enumerate()
        .filter(|(_, c)| selected(c, &options.only))
    {
        let result = run_check(check, index, run_id, target, options).await;
        if let Some(callback) = &options.on_result {
            callback(&result);
        }
        results.push(result);
    }
    RunReport {
        target: label.to_string(),
        seed: options.seed,
        strict: options.strict,
        results,
        duration: started.elapsed(),
    }
}

/// WS-MSG-1: connects one agent before the checks to read the timers the
/// backend advertises, so checks that never connect still wait the right
/// time. Skipped quietly when agents cannot be provisioned.
pub async fn learn_timings(target: &Target) {
    let probe = Check {
        name: "probe".into(),
        rule: "WS-MSG-1".into(),
        level: Level::Should,
        requirement: String::new(),
        needs: Vec::new(),
        timing: false,
        slow: false,
        group: String::new(),
        file: Default::default(),
        line: 0,
        steps: vec![
            crate::scenario::Step {
                line: 0,
                kind: StepKind::Provision {
                    agent: "probe".into(),
                },
            },
            crate::scenario::Step {
                line: 0,
                kind: StepKind::Connect {
                    conn: "probe".into(),
                    agent: "probe".into(),
                    token: "edge".into(),
                    id: None,
                    header_id: None,
                    outcome: crate::scenario::ConnectOutcome::Accepted,
                    source: None,
                    welcome: None,
                },
            },
        ],
    };
    if skip_reason(&probe, target, false).is_none() {
        let _ = attempt(
            &probe,
            target,
            format!("probe{:x}", rand::random::<u32>()),
            None,
        )
        .await;
    }
}

/// Reads an `--expect-fail` file: one rule id (or `RULE name`) a line; `#` comments.
pub fn read_expect_fail(text: &str) -> HashSet<String> {
    text.lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("WS-CONN-*", "WS-CONN-2"));
        assert!(glob("ws-conn-2", "WS-CONN-2"));
        assert!(!glob("WS-CONN-*", "WS-AUTH-1"));
        assert!(glob("*timeout*", "ping-timeout-closes-4008"));
        assert!(glob("*", "anything"));
        assert!(!glob("WS-CONN-2", "WS-CONN-22"));
    }

    #[test]
    fn expect_fail_lists() {
        let list =
            read_expect_fail("# known\nWS-CONN-3\n\nWS-DLV-3 redelivery-backoff  # flaky here\n");
        assert_eq!(
            list,
            HashSet::from([
                "WS-CONN-3".to_string(),
                "WS-DLV-3 redelivery-backoff".to_string()
            ])
        );
    }

    #[test]
    fn slow_checks_are_skipped_with_how_long_they_take() {
        let checks = crate::suite::builtin().unwrap();
        let dead = checks
            .iter()
            .find(|c| c.name == "dead-after-max-attempts")
            .unwrap();
        let mut target = Target::new("http://127.0.0.1:9").unwrap();
        target.admin_token = Some("admin".into());
        // The spec's timers: 9 sends 30 s + backoff apart, then 30 s, each
        // with WS-DLV-8's 10 %: about 9.9 minutes.
        let takes = redelivery_time(dead, &target.timings());
        assert_eq!(takes.as_secs(), (270 + 243 + 30) * 11 / 10);
        let reason = skip_reason(dead, &target, false).unwrap();
        assert!(
            reason.contains("about 10 min") && reason.contains("--slow"),
            "{reason}"
        );
        assert_eq!(skip_reason(dead, &target, true), None);
        // Short timers run it without --slow.
        target.timings.lock().unwrap().ack_timeout = Duration::from_secs(1);
        target.timings.lock().unwrap().max_attempts = 3;
        assert_eq!(skip_reason(dead, &target, false), None);
    }

    #[test]
    fn sources_stay_on_loopback() {
        for i in [0, 1, 249, 250, 62_499, 62_500] {
            let IpAddr::V4(ip) = source_for(i) else {
                panic!()
            };
            assert_eq!(ip.octets()[0], 127);
            assert!(ip.octets()[3] >= 2);
        }
        assert_ne!(source_for(0), source_for(1));
    }
}
