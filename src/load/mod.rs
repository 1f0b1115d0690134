//! `edge-harness load`: thousands of simulated agents against one or more
//! backends, commands injected at a fixed arrival rate (open model), and
//! latency measured from each command's scheduled time.
//!
//! `plan.rs` (the one value every load shape becomes), `pacer.rs` (the
//! open model's clock), `agent.rs` (a simulated agent), `dialer.rs` (how
//! agents open sockets), `wire.rs` (their WebSocket codec), `collector.rs`
//! (the one owner of the histograms), `backend_view.rs` (the backend's
//! `acked_at`), `report.rs` (JSON, summary, merge, baseline), `html.rs`
//! (the page), `thresholds.rs` (`--fail-if`), `server.rs` (the embedded
//! backend), `usage.rs` (the harness's own cost).

pub mod agent;
pub mod backend_view;
pub mod collector;
pub mod dialer;
pub mod html;
pub mod live;
pub mod pacer;
pub mod plan;
pub mod report;
pub mod server;
pub mod thresholds;
pub mod usage;
pub mod verdict;
pub mod wire;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use self::agent::{AgentSpec, Signal};
use self::collector::{Live, Sample};
use self::plan::{Event, Plan};
use self::report::{LoadReport, Meta};
use crate::target::{Restarter, Target};

/// Connection attempts in flight at once while the fleet comes up: enough to
/// be quick, few enough not to overflow the backend's accept queue.
const CONNECTS_IN_FLIGHT: usize = 512;
/// Control-API requests in flight at most, by default; past it, sends
/// wait, and the wait shows in the corrected latency.
pub const REQUESTS_IN_FLIGHT: usize = 2048;

pub struct LoadConfig {
    pub targets: Vec<Target>,
    pub plan: Plan,
    /// (i, n): this process runs the agents whose index is i modulo n.
    pub shard: (usize, usize),
    pub source_ips: Vec<IpAddr>,
    pub restarter: Option<Restarter>,
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

struct Ready {
    connected: AtomicUsize,
    all: Notify,
    total: usize,
}

pub async fn run(cfg: LoadConfig) -> Result<LoadReport, String> {
    let plan = Arc::new(cfg.plan);
    let (shard, shards) = cfg.shard;
    let indices: Vec<usize> = (0..plan.agents).filter(|k| k % shards == shard).collect();
    let sockets = indices
        .iter()
        .map(|k| {
            if plan.persona_of(*k) == plan::Persona::Duplicate {
                2
            } else {
                1
            }
        })
        .sum::<usize>();
    ensure_file_limit(sockets as u64 + 256, plan.agents, shards)?;
    // The targets' client: it trusts what --ca-cert says.
    let http = cfg
        .targets
        .first()
        .ok_or("no backend to drive")?
        .http
        .clone();

    let specs: Vec<AgentSpec> = indices
        .iter()
        .map(|&k| {
            let target = &cfg.targets[k % cfg.targets.len()];
            let id = format!("load-{k:06}");
            let token = target
                .edge_secret
                .clone()
                .filter(|_| target.hmac_secret.is_none())
                .or_else(|| target.mint(&id, 0))
                .unwrap_or_default();
            let (secure, authority) = match target.http_base.split_once("://") {
                Some((scheme, rest)) => (scheme == "https", rest.to_string()),
                None => (false, target.http_base.clone()),
            };
            let (host, port) = authority.rsplit_once(':').map_or(
                (authority.clone(), if secure { 443 } else { 80 }),
                |(h, p)| (h.to_string(), p.parse().unwrap_or(80)),
            );
            AgentSpec {
                index: k,
                id,
                host: host.trim_matches(['[', ']']).to_string(),
                port,
                secure,
                http_base: target.http_base.clone(),
                token,
                persona: plan.persona_of(k),
                source: (!cfg.source_ips.is_empty())
                    .then(|| cfg.source_ips[k % cfg.source_ips.len()]),
            }
        })
        .collect();

    if cfg.provision {
        let started = Instant::now();
        let failures = stream::iter(specs.iter())
            .map(|spec| {
                let target = cfg
                    .targets
                    .iter()
                    .find(|t| t.http_base == spec.http_base)
                    .expect("its target");
                let request = target.admin_token.as_ref().map(|admin| {
                    http.put(format!("{}/api/agents/{}", spec.http_base, spec.id))
                        .bearer_auth(admin)
                        .json(&json!({}))
                        .send()
                });
                async move {
                    match request {
                        Some(request) => request
                            .await
                            .map(|r| r.status().is_success())
                            .unwrap_or(false),
                        None => true,
                    }
                }
            })
            .buffer_unordered(64)
            .filter(|ok| std::future::ready(!ok))
            .count()
            .await;
        if failures > 0 {
            return Err(format!("{failures} agents could not be provisioned through the control API (is --admin-token right?)"));
        }
        if cfg.progress {
            eprintln!(
                "provisioned {} agents in {:.2?}",
                specs.len(),
                started.elapsed()
            );
        }
    }

    let floor = usage::loopback_floor(2000).await;
    let before = usage::own();
    let started = Instant::now();
    let (samples, rx) = mpsc::unbounded_channel();
    let (live_tx, mut live) = watch::channel(Live::default());
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
    let stop = CancellationToken::new();
    let ready = Arc::new(Ready {
        connected: AtomicUsize::new(0),
        all: Notify::new(),
        total: sockets,
    });
    let dialer = Arc::new(dialer::Dialer::new(
        CONNECTS_IN_FLIGHT,
        (shard, shards),
        cfg.tls.clone(),
    ));
    let mut agents = Vec::with_capacity(sockets);
    for spec in specs {
        let copies = if spec.persona == plan::Persona::Duplicate {
            2
        } else {
            1
        };
        let spec = Arc::new(spec);
        for _ in 0..copies {
            let (spec, plan, http, samples, signals, stop, ready, dialer) = (
                spec.clone(),
                plan.clone(),
                http.clone(),
                samples.clone(),
                signals.subscribe(),
                stop.clone(),
                ready.clone(),
                dialer.clone(),
            );
            agents.push(tokio::spawn(async move {
                let on_first_connect = move || {
                    if ready.connected.fetch_add(1, Ordering::AcqRel) + 1 == ready.total {
                        ready.all.notify_one();
                    }
                };
                agent::run(
                    spec,
                    plan,
                    http,
                    samples,
                    signals,
                    stop,
                    dialer,
                    Box::new(on_first_connect),
                )
                .await
            }));
        }
    }

    // The fleet comes up (or as much of it as can within a minute).
    let bar = progress_bar(cfg.progress);
    let connect_deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(connect_deadline);
    if sockets > 0 {
        tokio::select! {
            _ = ready.all.notified() => {}
            _ = &mut connect_deadline => {}
        }
    }
    let connect_all_s = started.elapsed().as_secs_f64();
    let connected_at_start = ready.connected.load(Ordering::Acquire) as u64;
    bar.println(format!(
        "connected {connected_at_start} of {sockets} sockets in {connect_all_s:.2}s"
    ));
    // Let the connect burst settle before measuring what the fleet costs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_usage = usage::own();

    // Open model: command n goes out at its scheduled time whatever happened to n-1.
    let run_start = Instant::now();
    live_started.at(run_start); // live view: the schedule starts now
    let mut events: Vec<Event> = plan.events.clone();
    events.sort_by_key(Event::at);
    for event in events {
        let (signals, samples, restarter) =
            (signals.clone(), samples.clone(), cfg.restarter.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until((run_start + event.at()).into()).await;
            let _ = samples.send(Sample::Storm { at: Instant::now() });
            match event {
                Event::DropAll { .. } => {
                    let _ = signals.send(Signal::DropAll);
                }
                Event::Restart { .. } => match restarter {
                    Some(restart) => {
                        if let Err(e) = restart().await {
                            let _ = samples.send(Sample::Error {
                                kind: format!("restart failed: {e}"),
                            });
                        }
                    }
                    None => {
                        let _ = samples.send(Sample::Error {
                            kind: "restart event without --restart-cmd".into(),
                        });
                    }
                },
            }
        });
    }
    if plan.churn_per_s > 0.0 {
        let (signals, stop, indices, every, seed) = (
            signals.clone(),
            stop.clone(),
            indices.clone(),
            Duration::from_secs_f64(1.0 / plan.churn_per_s),
            plan.seed,
        );
        tokio::spawn(async move {
            let mut rng =
                <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed ^ 0xC4u64);
            let mut tick = tokio::time::interval(every);
            while !stop.is_cancelled() {
                tick.tick().await;
                let _ = signals.send(Signal::Leave(
                    indices[rand::Rng::random_range(&mut rng, 0..indices.len())],
                ));
            }
        });
    }
    let max_in_flight = cfg.max_in_flight.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let targets = Arc::new(cfg.targets);
    let agent_count = indices.len();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(plan.seed);
    let mut seq: u64 = 0;
    // A shard without agents has nothing to send and no clock to run.
    let (mut schedule, pacer) = if agent_count > 0 {
        let (schedule, pacer) = pacer::start(plan.clone(), 1.0 / shards as f64, run_start);
        (schedule, Some(pacer))
    } else {
        (mpsc::unbounded_channel().1, None)
    };
    let mut refresh = tokio::time::interval(Duration::from_millis(250));
    loop {
        let scheduled = tokio::select! {
            scheduled = schedule.recv() => match scheduled {
                Some(scheduled) => scheduled,
                None => break,
            },
            _ = refresh.tick() => {
                show(&bar, &live.borrow_and_update(), sockets);
                continue;
            }
        };
        let k = indices[rand::Rng::random_range(&mut rng, 0..agent_count)];
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (samples, targets) = (samples.clone(), targets.clone());
        let this = seq;
        let body = format!(r#"{{"command_type":"send_message","parameters":{{"seq":{this}}}}}"#);
        tokio::spawn(async move {
            let target = &targets[k % targets.len()];
            let _ = samples.send(Sample::Started {
                seq: this,
                target: k % targets.len(),
                scheduled,
                sent: Instant::now(),
            });
            let status = match target
                .inject(&format!("load-{k:06}"), &command_id(shard, this), &body)
                .await
            {
                Ok(()) => 202,
                Err(e) => {
                    let _ = samples.send(Sample::Error {
                        kind: first_words(&e),
                    });
                    0
                }
            };
            let _ = samples.send(Sample::Answered {
                seq: this,
                status,
                at: Instant::now(),
            });
            drop(permit);
        });
        seq += 1;
    }
    // The schedule ended because the pacer did: this join does not wait.
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    let injected_s = run_start.elapsed().as_secs_f64();
    let after = usage::own();
    // Drain: wait for acks still on their way.
    let drain_until = Instant::now() + plan.drain;
    while Instant::now() < drain_until {
        let now = *live.borrow_and_update();
        show(&bar, &now, sockets);
        if now.acked >= seq && in_flight.available_permits() == max_in_flight {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), live.changed()).await;
    }
    bar.finish_and_clear();
    stop.cancel();
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    }
    drop(samples);
    let mut collected = collector.await.map_err(|e| e.to_string())?;
    let (mut backend_unread, mut backend_resolution) = (Default::default(), None);
    if targets.iter().all(|t| t.admin_token.is_some()) && !collected.ack_sample.is_empty() {
        if cfg.progress {
            eprintln!(
                "reading acked_at of {} acked commands back from the backend",
                collected.ack_sample.len()
            );
        }
        let view = backend_view::look_up(
            &targets,
            &collected.ack_sample,
            |seq| command_id(shard, seq),
            clock,
            plan.seed,
        )
        .await;
        collected.push_ack_backend = view.corrected;
        collected.push_ack_backend_uncorrected = view.uncorrected;
        backend_unread = view.unread;
        backend_resolution = Some(view.resolution);
    }
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
    report.counts.backend_unread = backend_unread;
    let notes = &mut report.notes;
    if let (Some((rss0, _)), Some((rss1, cpu1)), Some((_, cpu2))) = (before, connected_usage, after)
    {
        notes.insert("harness_rss_kib".into(), rss1 as f64);
        notes.insert(
            "harness_rss_per_socket_bytes".into(),
            rss1.saturating_sub(rss0) as f64 * 1024.0 / sockets.max(1) as f64,
        );
        notes.insert(
            "harness_cpu_pct_of_a_core".into(),
            (cpu2 - cpu1) / injected_s.max(0.001) * 100.0,
        );
    }
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

/// The id of command `seq` of this shard; agents read `seq` back from it.
fn command_id(shard: usize, seq: u64) -> String {
    format!("ld{shard}-{seq}")
}

fn first_words(error: &str) -> String {
    error.chars().take(80).collect()
}

fn progress_bar(enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &indicatif::ProgressBar, live: &Live, sockets: usize) {
    bar.set_message(format!(
        "connected {}/{sockets} | sent {} | acked {} | p99 {:.2} ms | errors {}",
        live.connected, live.sent, live.acked, live.p99_ms, live.errors
    ));
}
