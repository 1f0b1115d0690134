//! `load`: the plan from a profile and flags, the backends, the run (with
//! Ctrl-C/SIGTERM ending it early, still reported), the live dashboard
//! (`--dashboard`, `--dashboard-report`), the report files and the verdict
//! of `--fail-if` and `--baseline`.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::output::{print, write_in_dir as write};
use super::report::read_report;
use super::target::{reach, TargetArgs};
use super::{Error, Outcome};
use crate::load::plan::{AckDialect, Plan, Profile};
use crate::load::server::ChildServer;
use crate::load::thresholds::Threshold;
use crate::load::verdict::Verdict;
use crate::load::{self, html, LoadConfig};

fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    number
        .parse::<f64>()
        .ok()
        .filter(|r| *r >= 0.0 && r.is_finite())
        .ok_or_else(|| format!("`{text}`: write a rate like `1000/s`"))
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: write i/n, e.g. 0/3"))?;
    let (i, n): (usize, usize) = (
        i.parse().map_err(|_| "i is not a number")?,
        n.parse().map_err(|_| "n is not a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("`{text}`: need 0 <= i < n"));
    }
    Ok((i, n))
}

/// `127.0.0.1-127.0.0.16` or a single address.
pub fn parse_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    let bad = || format!("`{text}`: write a range like 127.0.0.1-127.0.0.16");
    let (from, to) = text.split_once('-').unwrap_or((text, text));
    let (from, to): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        from.trim().parse().map_err(|_| bad())?,
        to.trim().parse().map_err(|_| bad())?,
    );
    let (a, b) = (u32::from(from), u32::from(to));
    if b < a || b - a > 65_535 {
        return Err(bad());
    }
    Ok((a..=b).map(|x| IpAddr::V4(x.into())).collect())
}

fn parse_percent(text: &str) -> Result<f64, String> {
    text.trim_end_matches('%')
        .parse::<f64>()
        .map(|p| p / 100.0)
        .map_err(|_| format!("`{text}`: write a percentage like 10%"))
}

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Simulated agents (across all shards).
    #[arg(long)]
    pub agents: Option<usize>,
    /// Commands per second across all shards, e.g. `1000/s`.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// How long commands are injected, e.g. `60s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Ramp the rate up from zero over this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ramp: Option<Duration>,
    /// A load profile (scenarios/load/*.toml): personas, rate shape, events.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = "reports")]
    pub report: PathBuf,
    /// Fail (exit 1) unless this holds, e.g. `p99<20ms`, `lost==0`,
    /// `backend_p99<5ms`, `reconnect_t99<5s`; repeatable. An unknown metric
    /// is a usage error that lists them all.
    #[arg(long)]
    pub fail_if: Vec<Threshold>,
    /// Spread agents over these source addresses (past ~28,000 sockets to one address and port).
    #[arg(long, value_parser = parse_ips)]
    pub source_ips: Option<Vec<IpAddr>>,
    /// Run agents i, i+n, i+2n, … of the fleet (several processes or machines).
    #[arg(long, value_parser = parse_shard, default_value = "0/1")]
    pub shard: (usize, usize),
    /// Fixes every random choice (agents, commands, personas, jitter).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Ping interval of the simulated agents.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    #[arg(long, value_enum)]
    pub ack_dialect: Option<Dialect>,
    /// A report of an earlier run to compare with.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// With --baseline: fail when p50/p99 push→ack or throughput is worse by more than this.
    #[arg(long, value_parser = parse_percent, default_value = "10%")]
    pub max_regression: f64,
    /// Agents already exist on the backend: do not provision them.
    #[arg(long)]
    pub no_provision: bool,
    /// Threads driving the agents: 1 keeps an idle fleet cheapest; more
    /// spread a heavy run over cores (0: one per core).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Control-API requests in flight at most; when the backend stalls,
    /// sends wait, and the wait counts in the corrected latency.
    #[arg(long, default_value_t = load::REQUESTS_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Serve a live view of the run at this address (port 0 picks one; the
    /// URL is printed on stderr): connected vs target sockets, scheduled vs
    /// sent rate, p50/p99/p99.9 per second, errors, closes, reconnects and
    /// each --fail-if. Other shards report to it with --dashboard-report.
    #[arg(long, env = "EDGE_DASHBOARD", value_name = "ADDR")]
    pub dashboard: Option<String>,
    /// Send this run's live numbers to the dashboard another shard's run
    /// serves, e.g. http://10.0.0.5:8089. A run that serves --dashboard
    /// feeds its own instead (so one variable can be set for every shard).
    #[arg(long, env = "EDGE_DASHBOARD_REPORT", value_name = "URL")]
    pub dashboard_report: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Dialect {
    Spec,
    Compat,
}

/// The plan: the profile's, then the flags over it.
fn plan(args: &LoadArgs) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    if let Some(path) = &args.profile {
        Profile::load(path)
            .and_then(|p| p.apply(&mut plan))
            .map_err(|e| Error::Usage(e.to_string()))?; // it names the file and line
    }
    if let Some(n) = args.agents {
        plan.agents = n;
    }
    if let Some(r) = args.rate {
        plan.rate = r;
    }
    if let Some(d) = args.duration {
        plan.duration = d;
    }
    if let Some(d) = args.ramp {
        plan.ramp = d;
    }
    if let Some(d) = args.ping_interval {
        plan.ping_interval = d;
    }
    if let Some(d) = args.ack_dialect {
        plan.ack_dialect = match d {
            Dialect::Spec => AckDialect::Spec,
            Dialect::Compat => AckDialect::Compat,
        };
    }
    plan.seed = args.seed.unwrap_or_else(rand::random);
    if plan.agents == 0 {
        return Err(Error::Usage("--agents must be at least 1".into()));
    }
    let (shard, shards) = args.shard;
    if shard >= plan.agents {
        return Err(Error::Usage(format!(
            "--shard {shard}/{shards} gets none of the {} agents: run at most {} shards",
            plan.agents, plan.agents
        )));
    }
    Ok(plan)
}

/// Cancels `interrupt` at the first SIGINT or SIGTERM; a second one ends
/// the process at once (exit 130), for a drain the user will not wait for.
fn on_interrupt(interrupt: CancellationToken) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let cannot = |e: std::io::Error| Error::Setup(format!("cannot watch for Ctrl-C: {e}"));
    let mut int = signal(SignalKind::interrupt()).map_err(cannot)?;
    let mut term = signal(SignalKind::terminate()).map_err(cannot)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("\ninterrupted: stopping the injection, draining, writing the partial report (again to quit at once)");
        interrupt.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
    Ok(())
}

pub async fn load(args: LoadArgs) -> Result<Outcome, Error> {
    let interrupt = CancellationToken::new();
    on_interrupt(interrupt.clone())?;
    let plan = plan(&args)?;
    let child = if args.target.url.is_empty() {
        Some(ChildServer::start().map_err(|e| Error::Setup(e.to_string()))?)
    } else {
        None
    };
    let urls: Vec<String> = match &child {
        Some(c) => vec![format!("http://{}", c.addr)],
        None => args.target.url.clone(),
    };
    let trust = args.target.trust()?;
    let mut targets = Vec::new();
    for url in &urls {
        let t = args
            .target
            .target(url, &trust, child.as_ref().map(ChildServer::lifecycle))?;
        if t.admin_token.is_none() {
            return Err(Error::Usage(
                "commands are injected through the control API: pass --admin-token".into(),
            ));
        }
        reach(&t, Duration::from_secs(5)).await?;
        targets.push(t);
    }
    let command_line = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    // The live view: this run serves it (and feeds it), or reports to
    // another run's.
    let dashboard = match &args.dashboard {
        Some(addr) => Some(
            load::live::Dashboard::start(addr, args.fail_if.clone())
                .await
                .map_err(Error::Usage)?,
        ),
        None => None,
    };
    let live = match (&dashboard, &args.dashboard_report) {
        (Some(d), _) => Some(d.sink()),
        (None, Some(url)) => Some(load::live::Sink::remote(url)),
        (None, None) => None,
    };
    let config = LoadConfig {
        targets,
        plan,
        shard: args.shard,
        source_ips: args.source_ips.clone().unwrap_or_default(),
        provision: !args.no_provision,
        command_line,
        progress: std::io::stderr().is_terminal(),
        max_in_flight: args.max_in_flight,
        tls: Some(trust.0.clone()),
        live,
    };
    let report = load::run_until(config, interrupt).await?;
    if let Some(dashboard) = dashboard {
        dashboard.finish(report.partial).await;
    }
    drop(child);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (i, n) = args.shard;
    let base = args.report.join(format!("load-{stamp}-shard{i}of{n}"));
    let json_path = base.with_extension("json");
    // An unreadable baseline is an error once the reports are written.
    let baseline = args
        .baseline
        .as_ref()
        .map(|path| (path.display().to_string(), read_report(path)));
    let verdict = Verdict::check(
        &report,
        &args.fail_if,
        match &baseline {
            Some((name, Ok(b))) => Some((name.as_str(), b, args.max_regression)),
            _ => None,
        },
    );
    write(&json_path, &report.to_json())?;
    write(
        &base.with_extension("html"),
        &html::render_judged(&report, &verdict),
    )?;
    let mut said = report.summary();
    said.push_str(&format!("\nreport: {} (and .html)\n", json_path.display()));
    let failures = verdict.failures();
    for failure in &failures {
        said.push_str(&format!("FAIL: {failure}\n"));
    }
    print(&said)?;
    if let Some((_, Err(e))) = baseline {
        return Err(e);
    }
    Ok(if report.partial {
        Outcome::Interrupted
    } else {
        Outcome::from_passed(failures.is_empty())
    })
}
