//! The `load`, `report` and (hidden) `serve` commands.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cli::UsageError;
use crate::load::plan::{AckDialect, Plan, Profile};
use crate::load::report::LoadReport;
use crate::load::server::ChildServer;
use crate::load::thresholds::Threshold;
use crate::load::verdict::Verdict;
use crate::load::{self, html, LoadConfig};
use crate::target::{shell_restarter, Target};

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
    /// Backend URL; repeat to spread agents over several instances. Without
    /// it, edge-server runs as a child process on a temporary SQLite file.
    #[arg(long)]
    pub url: Vec<String>,
    #[arg(long, env = "EDGE_SECRET", hide_env_values = true)]
    pub edge_secret: Option<String>,
    /// Mint per-agent HMAC tokens with this key instead of using the shared secret.
    #[arg(long, env = "EDGE_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,
    /// The control API's token: provisions agents and injects commands.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
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
    /// Shell command that restarts the backend (for `restart` events).
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// A report of an earlier run to compare with.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// With --baseline: fail when p50/p99 push→ack or throughput is worse by more than this.
    #[arg(long, value_parser = parse_percent, default_value = "10%")]
    pub max_regression: f64,
    /// Agents already exist on the backend: do not provision them.
    #[arg(long)]
    pub no_provision: bool,
    /// Trust this CA certificate (PEM) besides the public roots: for
    /// `https://`/`wss://` backends with a private or self-signed certificate.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
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
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<String>,
    /// Send this run's live numbers to the dashboard another shard's run
    /// serves, e.g. http://10.0.0.5:8089.
    #[arg(long, value_name = "URL", conflicts_with = "dashboard")]
    pub dashboard_report: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Dialect {
    Spec,
    Compat,
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Merge shard reports losslessly into one (histograms are added).
    Merge {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the merged JSON goes (its HTML goes beside it).
        #[arg(long, short, default_value = "reports/merged.json")]
        output: PathBuf,
    },
    /// Render a JSON report as a self-contained HTML page.
    Html {
        file: PathBuf,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    #[arg(long)]
    pub database: PathBuf,
}

fn read_report(path: &PathBuf) -> Result<LoadReport, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    LoadReport::from_json(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))
}

fn write(path: &PathBuf, text: &str) -> Result<(), UsageError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| UsageError(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, text)
        .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))
}

pub async fn report(command: ReportCommand) -> Result<bool, UsageError> {
    match command {
        ReportCommand::Merge { files, output } => {
            let reports = files
                .iter()
                .map(read_report)
                .collect::<Result<Vec<_>, _>>()?;
            let merged = LoadReport::merge(reports).map_err(UsageError)?;
            write(&output, &merged.to_json())?;
            write(&output.with_extension("html"), &html::render(&merged))?;
            print!("{}", merged.summary());
            println!(
                "\nwrote {} and {}",
                output.display(),
                output.with_extension("html").display()
            );
        }
        ReportCommand::Html { file, output } => {
            let report = read_report(&file)?;
            let output = output.unwrap_or_else(|| file.with_extension("html"));
            write(&output, &html::render(&report))?;
            println!("wrote {}", output.display());
        }
    }
    Ok(true)
}

pub async fn serve(args: ServeArgs) -> Result<bool, UsageError> {
    let db = format!("sqlite://{}", args.database.display());
    let mut config = crate::embedded::config(&db);
    // Spec timers, and no per-agent limits: the load decides the traffic.
    let spec = edge_server::Config::for_secrets("x", "y", &db);
    config.ping_interval = spec.ping_interval;
    config.ping_timeout = spec.ping_timeout;
    config.ack_timeout = spec.ack_timeout;
    config.max_attempts = spec.max_attempts;
    config.rate_connects_per_min = 0;
    config.rate_rejects_per_min = 0;
    config.rate_messages_per_min = 0;
    config.rate_ping_interval = Duration::ZERO;
    config.max_pending = 100_000;
    let cannot =
        |e: &dyn std::fmt::Display| UsageError(format!("cannot listen on {}: {e}", args.listen));
    let addr = tokio::net::lookup_host(&args.listen)
        .await
        .map_err(|e| cannot(&e))?
        .next()
        .ok_or_else(|| cannot(&"no address"))?;
    let listener = edge_server::bind(addr).map_err(|e| cannot(&e))?;
    let server = edge_server::start(config, listener)
        .await
        .map_err(|e| UsageError(format!("{e:#}")))?;
    println!("listening on {}", server.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| UsageError(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.stop().await;
    Ok(true)
}

pub async fn load(args: LoadArgs) -> Result<bool, UsageError> {
    let mut plan = Plan::default();
    if let Some(path) = &args.profile {
        Profile::load(path)
            .and_then(|p| p.apply(&mut plan))
            .map_err(UsageError)?;
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
        return Err(UsageError("--agents must be at least 1".into()));
    }
    let (shard, shards) = args.shard;
    if shard >= plan.agents {
        return Err(UsageError(format!(
            "--shard {shard}/{shards} gets none of the {} agents: run at most {} shards",
            plan.agents, plan.agents
        )));
    }
    let child = if args.url.is_empty() {
        Some(ChildServer::start().map_err(UsageError)?)
    } else {
        None
    };
    let urls: Vec<String> = match &child {
        Some(c) => vec![format!("http://{}", c.addr)],
        None => args.url.clone(),
    };
    let trust = crate::tls::trust(args.ca_cert.as_deref()).map_err(UsageError)?;
    let mut targets = Vec::new();
    for url in &urls {
        let mut t = Target::new(url).map_err(UsageError)?;
        t.trust(&trust).map_err(UsageError)?;
        if child.is_some() {
            t.edge_secret = Some(crate::embedded::EDGE_SECRET.into());
            t.admin_token = Some(crate::embedded::ADMIN_TOKEN.into());
        } else {
            t.edge_secret = args.edge_secret.clone();
            t.hmac_secret = args.hmac_secret.clone();
            t.admin_token = args.admin_token.clone();
        }
        if t.edge_secret.is_none() && t.hmac_secret.is_none() {
            return Err(UsageError(
                "agents cannot authenticate: pass --edge-secret (or --hmac-secret)".into(),
            ));
        }
        if t.admin_token.is_none() {
            return Err(UsageError(
                "commands are injected through the control API: pass --admin-token".into(),
            ));
        }
        t.wait_healthy(Duration::from_secs(5)).await.map_err(|e| {
            UsageError(if e.contains("certificate") {
                format!("{e}: for a private or self-signed certificate, pass --ca-cert FILE")
            } else {
                format!("{e}: is the backend running?")
            })
        })?;
        targets.push(t);
    }
    let restarter = match (&child, &args.restart_cmd) {
        (Some(c), _) => Some(c.restarter()),
        (None, Some(cmd)) => Some(shell_restarter(cmd.clone(), urls[0].clone(), trust.clone())),
        (None, None) => None,
    };
    let progress = std::io::stderr().is_terminal();
    let command_line = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    // live view: this run serves it, or reports to another run's.
    let dashboard = match &args.dashboard {
        Some(addr) => Some(
            load::live::Dashboard::start(addr, args.fail_if.clone())
                .await
                .map_err(UsageError)?,
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
        restarter,
        provision: !args.no_provision,
        command_line,
        progress,
        max_in_flight: args.max_in_flight,
        tls: Some(trust.0.clone()),
        live,
    };
    let report = load::run(config).await.map_err(UsageError)?;
    if let Some(dashboard) = dashboard {
        dashboard.finish().await;
    }
    drop(child);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (i, n) = args.shard;
    let base = args.report.join(format!("load-{stamp}-shard{i}of{n}"));
    let json_path = base.with_extension("json");
    // An unreadable baseline is a usage error once the reports are written.
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
    print!("{}", report.summary());
    println!("\nreport: {} (and .html)", json_path.display());
    let failures = verdict.failures();
    for failure in &failures {
        println!("FAIL: {failure}");
    }
    if let Some((_, Err(e))) = baseline {
        return Err(e);
    }
    Ok(failures.is_empty())
}
