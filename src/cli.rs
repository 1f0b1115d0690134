//! The command line: `conform` (the suite), `run` (any scenario files).
//! Exit codes: 0 every required check passed, 1 some failed, 2 usage error
//! or unreachable backend.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::conform::{self, Options};
use crate::embedded::{self, Embedded};
use crate::report::{self, RunReport};
use crate::scenario::{self, Check};
use crate::target::{shell_restarter, Inject, Target};
use crate::{fuzz, suite};

/// Conformance suite and load tester for backends that push commands to
/// edge agents over WebSocket (PROTOCOL.md).
///
/// Exit codes: 0 every required check passed; 1 some check failed;
/// 2 usage error, bad scenario file, or unreachable backend.
#[derive(Parser)]
#[command(name = "edge-harness", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the conformance suite against a backend (or the embedded edge-server).
    ///
    /// Every check cites a PROTOCOL.md rule id. Without --url the suite runs
    /// against edge-server started in this process with short timers.
    ///
    ///   edge-harness conform
    ///   edge-harness conform --url http://localhost:8080 --edge-secret S --admin-token T --junit conform.xml
    Conform(ConformArgs),
    /// Run scenario files (TOML; see scenarios/README.md) against a backend.
    Run(RunArgs),
    /// Drive simulated agents and measure command latency percentiles.
    ///
    /// Commands are injected at a fixed arrival rate and latency is measured
    /// from each command's scheduled send time (coordinated omission
    /// corrected) to the agent's receipt, its ack, and the backend's own
    /// record of the ack; reports go to --report as JSON and HTML.
    ///
    /// Examples:
    ///
    ///   edge-harness load --agents 1000 --rate 200/s --duration 30s
    ///
    ///   edge-harness load --url https://edge.example.com --edge-secret S --admin-token T \
    ///       --agents 10000 --rate 1000/s --duration 60s --fail-if 'p99<20ms' --fail-if 'lost==0'
    ///
    ///   edge-harness load --url http://localhost:8080 --edge-secret S --admin-token T \
    ///       --profile scenarios/load/restart-storm.toml --restart-cmd 'systemctl restart edge'
    #[command(verbatim_doc_comment)]
    Load(Box<crate::load_cli::LoadArgs>),
    /// Merge shard reports, or re-render a report as HTML.
    #[command(subcommand)]
    Report(crate::load_cli::ReportCommand),
    /// Run the embedded edge-server (used by `load` as its child process).
    #[command(hide = true)]
    Serve(crate::load_cli::ServeArgs),
}

#[derive(Args, Clone)]
pub struct TargetArgs {
    /// The backend's base URL (http://, https://, ws:// or wss://). Without
    /// it, edge-server runs in-process on an ephemeral port.
    #[arg(long, env = "EDGE_URL")]
    pub url: Option<String>,
    /// Trust this CA certificate (PEM) besides the public roots, in the HTTP
    /// requests and the wss:// upgrades: for a backend with a private or
    /// self-signed certificate.
    #[arg(long, env = "EDGE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The agents' shared secret (also the key of per-agent HMAC tokens).
    #[arg(
        long,
        env = "EDGE_SECRET",
        hide_env_values = true,
        conflicts_with = "hmac_secret"
    )]
    pub edge_secret: Option<String>,
    /// Only mint per-agent HMAC tokens with this key (the backend does not take the shared secret).
    #[arg(long, env = "EDGE_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,
    /// The control API's token (PROTOCOL.md §8). Without it, checks that need
    /// the control API are skipped.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token for POST /edge/register; also used to provision agents when
    /// there is no control API.
    #[arg(long, env = "REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,
    /// The backend has no REGISTRATION_TOKEN configured: check that
    /// registration answers 403 `registration_disabled` (WS-HTTP-3).
    #[arg(long, conflicts_with = "registration_token")]
    pub no_registration: bool,
    /// Shell command that restarts the backend (for WS-CONN-5); the harness
    /// waits for /health afterwards. Checks that need it are skipped without it.
    #[arg(long)]
    pub restart_cmd: Option<String>,
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
    /// about 9 minutes); without it they are skipped, saying how long they
    /// would take.
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
    pub target: TargetArgs,
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
    pub target: TargetArgs,
}

/// A usage problem: exit code 2, with a message that says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn main(cli: Cli) -> Result<bool, UsageError> {
    match cli.command {
        Command::Conform(args) => conform_command(args).await,
        Command::Run(args) => {
            let checks = scenario::load(&args.files).map_err(|e| UsageError(e.to_string()))?;
            execute(&args.target, &checks, 0, 0).await
        }
        Command::Load(args) => crate::load_cli::load(*args).await,
        Command::Report(command) => crate::load_cli::report(command).await,
        Command::Serve(args) => crate::load_cli::serve(args).await,
    }
}

async fn conform_command(args: ConformArgs) -> Result<bool, UsageError> {
    let checks = match &args.scenarios {
        Some(dir) => scenario::load(std::slice::from_ref(dir)),
        None => suite::builtin(),
    }
    .map_err(|e| UsageError(e.to_string()))?;
    if args.list {
        print!("{}", list(&checks));
        return Ok(true);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    execute(&args.target, &checks, seed, args.fuzz_cases).await
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

fn build_target(args: &TargetArgs, embedded: Option<&Embedded>) -> Result<Target, UsageError> {
    let usage = |m: String| UsageError(m);
    let trust = crate::tls::trust(args.ca_cert.as_deref()).map_err(usage)?;
    let mut target = match (embedded, &args.url) {
        (Some(e), _) => {
            let mut t = Target::new(&e.url()).map_err(usage)?;
            t.edge_secret = Some(embedded::EDGE_SECRET.into());
            t.admin_token = Some(embedded::ADMIN_TOKEN.into());
            t.registration_token = Some(embedded::REGISTRATION_TOKEN.into());
            t.restarter = Some(e.restarter());
            t
        }
        (None, Some(url)) => {
            let mut t = Target::new(url).map_err(usage)?;
            t.edge_secret = args.edge_secret.clone();
            t.hmac_secret = args.hmac_secret.clone();
            t.admin_token = args.admin_token.clone();
            t.registration_token = args.registration_token.clone();
            t.registration_disabled = args.no_registration;
            t.restarter = args
                .restart_cmd
                .clone()
                .map(|cmd| shell_restarter(cmd, t.http_base.clone(), trust.clone()));
            t
        }
        (None, None) => unreachable!("embedded when no --url"),
    };
    target.trust(&trust).map_err(usage)?;
    if target.edge_secret.is_none() && target.hmac_secret.is_none() {
        return Err(UsageError(
            "agents cannot authenticate: pass --edge-secret (or --hmac-secret)".into(),
        ));
    }
    if let Some(inject) = &args.inject {
        let (method, url) = inject.split_once(' ').ok_or_else(|| {
            UsageError(format!(
                "--inject `{inject}`: write `METHOD URL`, e.g. `POST https://host/x/{{agent}}`"
            ))
        })?;
        let mut headers = Vec::new();
        for header in &args.inject_header {
            let (name, value) = header.split_once(':').ok_or_else(|| {
                UsageError(format!("--inject-header `{header}`: write `Name: value`"))
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
        return Err(UsageError(format!(
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

/// Starts the embedded server if needed, runs the checks, writes the reports.
async fn execute(
    args: &TargetArgs,
    checks: &[Check],
    seed: u64,
    fuzz_cases: u32,
) -> Result<bool, UsageError> {
    let embedded =
        match &args.url {
            Some(_) => None,
            None => Some(Embedded::start(|_| {}).await.map_err(|e| {
                UsageError(format!("cannot start the embedded edge-server: {e:#}"))
            })?),
        };
    let target = build_target(args, embedded.as_ref())?;
    match target.wait_healthy(Duration::from_secs(2)).await {
        // It answers, but its certificate does not verify: the checks fail, naming it.
        Err(e) if crate::tls::is_certificate_failure(&e) => {
            eprintln!("warning: {}", crate::tls::hint(e))
        }
        Err(e) => {
            return Err(UsageError(format!(
                "{e}: is the backend running at that URL?"
            )))
        }
        Ok(()) => {}
    }
    conform::learn_timings(&target).await;
    let expect_fail = match &args.expect_fail {
        Some(path) => conform::read_expect_fail(
            &std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("--expect-fail {}: {e}", path.display())))?,
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
        .url
        .clone()
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
    Ok(report.passed())
}

fn write_reports(args: &TargetArgs, report: &RunReport) -> Result<(), UsageError> {
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    print!(
        "{}",
        report::terminal::render(
            report,
            &report::terminal::Style {
                color,
                verbose: args.verbose
            }
        )
    );
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text)
            .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(path) = &args.junit {
        write(path, report::junit::render(report))?;
    }
    if let Some(path) = &args.json {
        write(path, report::json::render(report))?;
    }
    if let Some(path) = &args.html {
        write(
            path,
            report::html::render(report, std::time::SystemTime::now()),
        )?;
    }
    Ok(())
}
