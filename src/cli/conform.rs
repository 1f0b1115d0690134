//! `conform` (the built-in suite) and `run` (any scenario files): the
//! checks, the embedded edge-server when there is no --url, the reports.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::output::{self, print};
use super::target::{reach, TargetArgs};
use super::{Error, Outcome};
use crate::conform::{self, fuzz, suite, Options};
use crate::embedded::Embedded;
use crate::report::{self, RunReport};
use crate::scenario::{self, Check};
use crate::target::{Inject, Target};

/// How checks run and report: the flags `conform` and `run` share.
#[derive(Args, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Token for POST /edge/register; also used to provision agents when
    /// there is no control API.
    #[arg(long, env = "REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,
    /// The backend has no REGISTRATION_TOKEN configured: check that
    /// registration answers 403 `registration_disabled` (WS-HTTP-3).
    #[arg(long, conflicts_with = "registration_token")]
    pub no_registration: bool,
    /// Put commands into the backend with this request instead of the control
    /// API: `METHOD URL`, `{agent}` replaced by the agent id.
    #[arg(long, value_name = "METHOD URL")]
    pub inject: Option<String>,
    /// JSON body template for --inject: {agent}, {command_id}, {command_type},
    /// {priority}, {parameters} (raw JSON), {ttl_s}.
    #[arg(
        long,
        requires = "inject",
        default_value = r#"{"command_id":"{command_id}","command_type":"{command_type}","parameters":{parameters},"priority":"{priority}","ttl_s":{ttl_s}}"#
    )]
    pub inject_body: String,
    /// Extra header for --inject requests, `Name: value` (repeatable).
    #[arg(long, requires = "inject")]
    pub inject_header: Vec<String>,
    /// Multiply every deadline (slow CI machines: 2 or 3).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
    /// The backend's ping timeout; overrides what its `connected` message says.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_timeout: Option<Duration>,
    /// The backend's ack timeout; overrides what its `connected` message says.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ack_timeout: Option<Duration>,
    /// The backend's log file (where its stdout/stderr go): the checks of
    /// WS-AUTH-5 (no token in the logs) and WS-OBS-1 (the spec's log lines)
    /// read what it gains during each check. Without it they are skipped
    /// (the embedded server has a log of its own).
    #[arg(long, env = "EDGE_SERVER_LOG", value_name = "FILE")]
    pub server_log: Option<PathBuf>,
    /// Print what crossed the wire for each failure.
    #[arg(long, short)]
    pub verbose: bool,
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
    /// Write JUnit XML here (one testcase per check).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one self-contained HTML page here (verdict, a table by rule
    /// group, each check's detail and frames; no scripts, nothing fetched).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Only checks whose rule id or name matches (`WS-CONN-*`); repeatable.
    /// A pattern that matches no check is a usage error (exit 2), not an
    /// empty run.
    #[arg(long)]
    pub only: Vec<String>,
    /// SHOULD ([decided]) failures fail the run too.
    #[arg(long)]
    pub strict: bool,
    /// Retry timing-sensitive checks up to N more times; a check fails only if
    /// every attempt fails, and a retried pass is reported as flaky.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// File of rule ids (or `RULE check-name`) known to fail on this backend:
    /// reported, not fatal; a listed check that passes is reported too.
    #[arg(long)]
    pub expect_fail: Option<PathBuf>,
    /// Also run checks that take minutes at the backend's timers (with the
    /// spec's 30 s ack timeout and 10 attempts, dead-after-max-attempts takes
    /// about 9 minutes) and those that wait out a rate-limit window (about a
    /// minute); without it they are skipped, saying how long they would take.
    #[arg(long)]
    pub slow: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Args)]
pub struct ConformArgs {
    #[command(flatten)]
    pub checks: CheckArgs,
    /// List every check with its rule, level and requirement, and exit.
    #[arg(long)]
    pub list: bool,
    /// Read the suite from this directory instead of the built-in one.
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
    /// Seed of the bad-input fuzz group (random if not given; the report says which).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Frames the fuzz group sends (0 turns it off).
    #[arg(long, default_value_t = 60)]
    pub fuzz_cases: u32,
}

#[derive(Args)]
pub struct RunArgs {
    /// Scenario files or directories of them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub checks: CheckArgs,
}

/// `run FILE…`: the user's own scenario files.
pub async fn run_command(args: RunArgs) -> Result<Outcome, Error> {
    let checks = scenario::load(&args.files).map_err(|e| Error::Usage(e.to_string()))?;
    execute(&args.checks, &checks, 0, 0).await
}

pub async fn conform_command(args: ConformArgs) -> Result<Outcome, Error> {
    let checks = match &args.scenarios {
        Some(dir) => scenario::load(std::slice::from_ref(dir)),
        None => suite::builtin(),
    }
    .map_err(|e| Error::Usage(e.to_string()))?;
    if args.list {
        print(&list(&checks))?;
        return Ok(Outcome::Passed);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    execute(&args.checks, &checks, seed, args.fuzz_cases).await
}

/// `--list`: every check and its requirement, without touching a backend.
pub fn list(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut group = "";
    for check in checks {
        if check.group != group {
            group = &check.group;
            out.push_str(&format!("\n{group}\n"));
        }
        out.push_str(&format!(
            "  {:<11} {:<6} {}\n      {}\n",
            check.rule,
            check.level.to_string(),
            check.name,
            check.requirement
        ));
    }
    out.push_str("\nBad input fuzzing\n  WS-ERR-2    MUST   fuzz-bad-input\n      No bad input ever crashes the server, affects another agent, or loses a command.\n");
    out
}

/// The target of the checks: the shared flags, then what only checks use
/// (registration, `--inject`, timers).
fn build_target(args: &CheckArgs, embedded: Option<&Embedded>) -> Result<Target, Error> {
    let shared = &args.target;
    if shared.url.len() > 1 {
        return Err(Error::Usage(
            "checks drive one backend: pass --url once (only `load` spreads over several)".into(),
        ));
    }
    if embedded.is_none() && shared.edge_secret.is_some() && shared.hmac_secret.is_some() {
        return Err(Error::Usage(
            "pass --edge-secret or --hmac-secret, not both: the checks of per-agent tokens need to know which the backend takes".into(),
        ));
    }
    let trust = shared.trust()?;
    let mut target = match (embedded, shared.url.first()) {
        (Some(e), _) => shared.target(&e.url(), &trust, Some(e.lifecycle()))?,
        (None, Some(url)) => {
            let mut t = shared.target(url, &trust, None)?;
            t.registration_token = args.registration_token.clone();
            t.registration_disabled = args.no_registration;
            t.server_log = args.server_log.clone();
            t
        }
        (None, None) => unreachable!("embedded when no --url"),
    };
    if let Some(inject) = &args.inject {
        let (method, url) = inject.split_once(' ').ok_or_else(|| {
            Error::Usage(format!(
                "--inject `{inject}`: write `METHOD URL`, e.g. `POST https://host/x/{{agent}}`"
            ))
        })?;
        let mut headers = Vec::new();
        for header in &args.inject_header {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                Error::Usage(format!("--inject-header `{header}`: write `Name: value`"))
            })?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        target.inject = Inject::Template {
            method: method.to_uppercase(),
            url: url.trim().to_string(),
            body: args.inject_body.clone(),
            headers,
        };
    }
    if !(0.1..=100.0).contains(&args.timeout_scale) {
        return Err(Error::Usage(format!(
            "--timeout-scale {} is out of range: use 0.1 to 100",
            args.timeout_scale
        )));
    }
    let mut timings = target.timings();
    timings.scale = args.timeout_scale;
    if let Some(d) = args.ping_timeout {
        timings.ping_timeout = d;
        target.pinned.0 = true;
    }
    if let Some(d) = args.ack_timeout {
        timings.ack_timeout = d;
        target.pinned.1 = true;
    }
    *target.timings.lock().expect("timings lock") = timings;
    Ok(target)
}

/// A `--only` pattern that selects nothing is a mistake (a typo, a renamed
/// check), not an empty run: a CI gate would pass with 0 checks run.
fn unmatched_only(only: &[String], checks: &[Check], fuzz: bool) -> Result<(), Error> {
    let fuzz_names = ["WS-ERR-2", "fuzz-bad-input"];
    let matches = |pattern: &String| {
        let one = std::slice::from_ref(pattern);
        checks.iter().any(|c| conform::selected(c, one))
            || (fuzz && fuzz_names.iter().any(|name| conform::glob(pattern, name)))
    };
    match only.iter().find(|pattern| !matches(pattern)) {
        None => Ok(()),
        Some(pattern) => Err(Error::Usage(format!(
            "--only `{pattern}` matches no check: give a rule id (`WS-CONN-2`, `WS-CONN-*`) or a check name (`edge-harness conform --list` lists the suite's)"
        ))),
    }
}

/// Starts the embedded server if needed, runs the checks, writes the reports.
async fn execute(
    args: &CheckArgs,
    checks: &[Check],
    seed: u64,
    fuzz_cases: u32,
) -> Result<Outcome, Error> {
    unmatched_only(&args.only, checks, fuzz_cases > 0)?;
    let embedded =
        match &args.target.url[..] {
            [] => Some(Embedded::start(|_| {}).await.map_err(|e| {
                Error::Setup(format!("cannot start the embedded edge-server: {e:#}"))
            })?),
            _ => None,
        };
    let target = build_target(args, embedded.as_ref())?;
    match reach(&target, Duration::from_secs(2)).await {
        // It answers, but its certificate does not verify: the checks fail, naming it.
        Err(Error::Unreachable(e)) if crate::tls::is_certificate_failure(&e) => {
            eprintln!("warning: {e}")
        }
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    conform::learn_timings(&target).await;
    let expect_fail = match &args.expect_fail {
        Some(path) => conform::read_expect_fail(
            &std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("--expect-fail {}: {e}", path.display())))?,
        ),
        None => Default::default(),
    };
    let progress = std::io::stderr().is_terminal();
    let total = checks
        .iter()
        .filter(|c| conform::selected(c, &args.only))
        .count();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let options = Options {
        only: args.only.clone(),
        strict: args.strict,
        retries: args.retries,
        slow: args.slow,
        expect_fail,
        seed,
        run_id: 0,
        on_result: progress.then(|| {
            Box::new(move |r: &report::CheckResult| {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprint!(
                    "\r\x1b[2K[{n}/{total}] {} {} {}",
                    r.rule,
                    r.name,
                    r.status.label()
                );
            }) as conform::OnResult
        }),
    };
    let label = args
        .target
        .url
        .first()
        .cloned()
        .unwrap_or_else(|| format!("embedded edge-server ({})", target.http_base));
    let mut report = conform::run(checks, &target, &options, &label).await;
    if fuzz_cases > 0
        && (args.only.is_empty()
            || args
                .only
                .iter()
                .any(|p| conform::glob(p, "WS-ERR-2") || conform::glob(p, "fuzz-bad-input")))
    {
        let started = std::time::Instant::now();
        let mut result = fuzz::run(&target, seed, fuzz_cases).await;
        if options.expect_fail.contains("WS-ERR-2")
            || options.expect_fail.contains("WS-ERR-2 fuzz-bad-input")
        {
            result.status = match result.status {
                report::Status::Fail => report::Status::ExpectedFail,
                report::Status::Pass => report::Status::UnexpectedPass,
                other => other,
            };
        }
        report.results.push(result);
        report.duration += started.elapsed();
    }
    if progress {
        eprint!("\r\x1b[2K");
    }
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    write_reports(args, &report)?;
    Ok(Outcome::from_passed(report.passed()))
}

fn write_reports(args: &CheckArgs, report: &RunReport) -> Result<(), Error> {
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let style = report::terminal::Style {
        color,
        verbose: args.verbose,
    };
    // A closed stdout does not stop the files being written.
    let printed = print(&report::terminal::render(report, &style));
    if let Some(path) = &args.junit {
        output::write(path, &report::junit::render(report))?;
    }
    if let Some(path) = &args.json {
        output::write(path, &report::json::render(report))?;
    }
    if let Some(path) = &args.html {
        output::write(
            path,
            &report::html::render(report, std::time::SystemTime::now()),
        )?;
    }
    printed
}
