//! `edge-harness load`: thousands of simulated agents against one or more
//! backends, commands injected at a fixed arrival rate (open model), and
//! latency measured from each command's scheduled time.
//!
//! The engine's parts, which [`run_until`] only wires together:
//! `plan.rs` (the one value every load shape becomes), `fleet.rs` (who the
//! agents are, provisioning, the running fleet), `agent.rs` (a simulated
//! agent), `dialer.rs` (how agents open sockets), `wire.rs` (their
//! WebSocket codec), `pacer.rs` (the open model's clock), `injector.rs`
//! (a command per scheduled time), `timeline.rs` (the plan's events and
//! churn over time), `collector.rs` (the one owner of the histograms),
//! `progress.rs` (what a run says while it runs), `backend_view.rs` (the
//! backend's `acked_at`), `report.rs` (JSON, summary, merge, baseline),
//! `html.rs` (the page), `thresholds.rs` (`--fail-if`), `verdict.rs` (what
//! the run is judged by), `live/` (the `--dashboard` view, fed by a tap
//! between the samples and the collector), `server.rs` (the embedded
//! backend), `usage.rs` (the harness's own cost).

pub mod agent;
pub mod backend_view;
pub mod collector;
pub mod dialer;
pub mod fleet;
pub mod html;
pub mod injector;
pub mod live;
pub mod pacer;
pub mod plan;
pub mod progress;
pub mod report;
pub mod server;
pub mod thresholds;
pub mod timeline;
pub mod usage;
pub mod verdict;
pub mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::collector::Live;
use self::fleet::Fleet;
use self::injector::{command_id, Injector};
use self::plan::Plan;
use self::progress::Progress;
use self::report::{LoadReport, Meta};
use self::timeline::{Bounce, Timeline};
use crate::target::Target;
/// Control-API requests in flight at most, by default; past it, sends
/// wait, and the wait shows in the corrected latency.
pub const REQUESTS_IN_FLIGHT: usize = 2048;

pub struct LoadConfig {
    pub targets: Vec<Target>,
    pub plan: Plan,
    /// (i, n): this process runs the agents whose index is i modulo n.
    pub shard: (usize, usize),
    pub source_ips: Vec<IpAddr>,
    pub provision: bool,
    pub command_line: String,
    pub progress: bool,
    /// Control-API requests in flight at most.
    pub max_in_flight: usize,
    /// Whom agents trust on `wss://` backends.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the live view's frames go (`--dashboard`, `--dashboard-report`).
    pub live: Option<live::Sink>,
}

/// Raises this process's soft open-file limit to the hard one; says how to
/// shard when `needed` does not fit.
pub fn ensure_file_limit(needed: u64, agents: usize, shard_count: usize) -> Result<u64, String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    if needed > limit {
        let per_process = limit.saturating_sub(256).max(1);
        let shards = (agents as u64).div_ceil(per_process);
        return Err(format!(
            "{agents} agents in {shard_count} process(es) need about {needed} open files each, but one process may hold {limit} here (the hard limit). \
             Run {shards} or more processes with --shard i/{shards} (each with its own share of the agents) and merge their reports with `edge-harness report merge`."
        ));
    }
    Ok(limit)
}

/// Why a load run could not be made; each variant's doc says its class
/// (the exit codes are chosen in `cli/exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The fleet does not fit this process's open-file limit (usage: shard it).
    #[error("{0}")]
    FileLimit(String),
    /// No `--url` and no embedded backend (usage).
    #[error("no backend to drive")]
    NoBackend,
    /// The control API refused to register agents before the run (usage:
    /// most often a wrong `--admin-token`).
    #[error("{failures} agents could not be provisioned through the control API (is --admin-token right?)")]
    Provision { failures: usize },
    /// A part of the engine died during the run (runtime: the run failed).
    #[error("the load engine failed: {0}")]
    Engine(String),
}

/// A whole run, to its end.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    run_until(cfg, CancellationToken::new()).await
}

/// A run that `interrupt` may end early: it stops injecting, drains,
/// and reports what was measured, marked partial.
pub async fn run_until(
    cfg: LoadConfig,
    interrupt: CancellationToken,
) -> Result<LoadReport, LoadError> {
    let plan = Arc::new(cfg.plan);
    let (shard, shards) = cfg.shard;
    let indices = fleet::indices(&plan, cfg.shard);
    let sockets = fleet::sockets(&plan, &indices);
    ensure_file_limit(sockets as u64 + 256, plan.agents, shards).map_err(LoadError::FileLimit)?;
    // The targets' client: it trusts what --ca-cert says.
    let http = cfg
        .targets
        .first()
        .ok_or(LoadError::NoBackend)?
        .http
        .clone();
    let specs = fleet::specs(&plan, &indices, &cfg.targets, &cfg.source_ips);
    if cfg.provision {
        fleet::provision(&specs, &cfg.targets, &http, cfg.progress).await?;
    }

    let floor = usage::loopback_floor(2000).await;
    let before = usage::own();
    let started = Instant::now();
    let (samples, rx) = mpsc::unbounded_channel();
    let (live_tx, live) = watch::channel(Live::default());
    let clock = backend_view::ClockPair::now();
    // live view (--dashboard): a tap between the workers and the collector.
    let (rx, live_started) = self::live::tap(
        rx,
        cfg.live.as_ref(),
        plan.clone(),
        cfg.shard,
        sockets as u64,
    );
    let collector = tokio::spawn(collector::collect(rx, plan.seed, live_tx));
    let (signals, _) = broadcast::channel(64);
    let fleet = Fleet::start(
        specs,
        fleet::Shared {
            plan: plan.clone(),
            http,
            samples: samples.clone(),
            signals: signals.clone(),
            shard: cfg.shard,
            tls: cfg.tls.clone(),
        },
    );

    // The fleet comes up (or as much of it as can within a minute).
    let mut progress = Progress::new(cfg.progress, live, sockets);
    fleet
        .wait_connected(Duration::from_secs(60), &interrupt)
        .await;
    let connect_all_s = started.elapsed().as_secs_f64();
    let connected_at_start = fleet.connected() as u64;
    progress.say(format!(
        "connected {connected_at_start} of {sockets} sockets in {connect_all_s:.2}s"
    ));
    // Let the connect burst settle before measuring what the fleet costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_usage = usage::own();

    // Open model: command n goes out at its scheduled time whatever happened to n-1.
    let run_start = Instant::now();
    live_started.at(run_start); // live view: the schedule starts now
    tokio::spawn(timeline::run(
        Timeline::new(&plan, indices.clone()),
        run_start,
        signals,
        samples.clone(),
        Bounce {
            restart: cfg.targets[0].restarter.clone(),
            crash: cfg.targets[0].crasher.clone(),
        },
        fleet.stopping(),
    ));
    let targets = Arc::new(cfg.targets);
    let agent_count = indices.len();
    let mut injector = Injector::new(
        targets.clone(),
        indices,
        samples,
        shard,
        cfg.max_in_flight,
        plan.seed,
    );
    // A shard without agents has nothing to send and no clock to run.
    let (schedule, pacer) = if agent_count > 0 {
        let (schedule, pacer) = pacer::start(plan.clone(), 1.0 / shards as f64, run_start);
        (schedule, Some(pacer))
    } else {
        (mpsc::unbounded_channel().1, None)
    };
    injector.run(schedule, &interrupt, &mut progress).await;
    let partial = interrupt.is_cancelled();
    // The schedule ended because the pacer did: this join does not wait.
    // Interrupted, the pacer ends at its next send (the receiver is gone).
    if let Some(pacer) = pacer.filter(|_| !partial) {
        let _ = pacer.join();
    }
    let injected_s = run_start.elapsed().as_secs_f64();
    let after = usage::own();
    // Drain: wait for acks still on their way.
    injector.drain(&mut progress, plan.drain).await;
    progress.finish();
    drop(injector);
    fleet.stop().await;
    let mut collected = collector
        .await
        .map_err(|e| LoadError::Engine(format!("the collector: {e}")))?;
    let view = backend_view::read_into(
        &mut collected,
        &targets,
        |seq| command_id(shard, seq),
        clock,
        plan.seed,
        cfg.progress,
    )
    .await;
    let meta = Meta {
        command_line: cfg.command_line,
        seed: plan.seed,
        shard: format!("{shard}/{shards}"),
        targets: targets.iter().map(|t| t.http_base.clone()).collect(),
        plan: serde_json::to_value(&*plan).unwrap_or_default(),
        duration_s: injected_s,
        connect_all_s,
        agents: agent_count as u64,
        connected_at_start,
    };
    let mut report = LoadReport::build(collected, meta);
    let backend_resolution = view.map(|view| {
        report.counts.backend_unread = view.unread;
        view.resolution
    });
    report.partial = partial;
    let notes = &mut report.notes;
    usage::note_harness_cost(notes, [before, connected_usage, after], sockets, injected_s);
    if let Some(tick) = backend_resolution {
        notes.insert(
            "backend_ack_timestamp_resolution_ms".into(),
            tick.as_secs_f64() * 1000.0,
        );
    }
    if let Some((p50, p99)) = floor {
        notes.insert("loopback_ws_rtt_floor_p50_ms".into(), p50);
        notes.insert("loopback_ws_rtt_floor_p99_ms".into(), p99);
    }
    Ok(report)
}
