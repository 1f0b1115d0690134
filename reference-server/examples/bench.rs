//! bench: measures a running edge-server from outside (a separate process,
//! so its sockets and memory are not counted as the server's).
//!
//! ```text
//! cargo run --release -p edge-server --example bench -- idle --agents 10000 --server-pid PID
//! cargo run --release -p edge-server --example bench -- throughput --agents 100 --commands 20000
//! cargo run --release -p edge-server --example bench -- latency --agents 100 --rate 1000 --duration 30s
//! # several instances on PostgreSQL: agents on one, commands posted to another
//! cargo run --release -p edge-server --example bench -- --url http://B --post-url http://A latency
//! # agents on C, posts spread over A and B (both flags take a comma-separated list)
//! cargo run --release -p edge-server --example bench -- --url http://C --post-url http://A,http://B throughput
//! ```
//! Agents are provisioned through the control API of the instance they
//! connect to, connect with the shared secret and ack every command at once
//! (spec dialect). Agent `i` connects to the `i mod n`-th `--url`; command
//! `i` is posted to the `i mod n`-th `--post-url`. This is the measurement
//! tool for the edge-server issues (`reports/pg-scale-bench.sh` drives it);
//! `edge-harness load` is the user-facing load tester.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// The server's base URL (agents connect here); several, comma-separated:
    /// agents spread over them (instances sharing one database).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    url: Vec<String>,
    /// Where commands are posted (other instances sharing the database),
    /// round-robin when several; default: --url.
    #[arg(long, value_delimiter = ',')]
    post_url: Vec<String>,
    #[arg(long, env = "EDGE_SECRET", default_value = "bench-edge-secret")]
    edge_secret: String,
    #[arg(long, env = "ADMIN_TOKEN", default_value = "bench-admin-token")]
    admin_token: String,
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Read the server's RSS and CPU time from /proc/PID.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Connect the agents, hold them idle, report the server's RSS per connection.
    Idle {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
        hold: Duration,
    },
    /// Push commands as fast as the server takes them; report completed/s.
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        commands: usize,
        /// Control-API requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Commands at a fixed arrival rate; latency from the scheduled send.
    Latency {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        duration: Duration,
        /// Wait this long after the agents connected before the first
        /// command, so the server's per-connection bookkeeping (a durable
        /// write per connection) is not measured as command latency.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        settle: Duration,
    },
}

/// Memory and CPU time of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some((rss_kib, ticks / 100.0))
}

struct Bench {
    args: Args,
    http: reqwest::Client,
}

/// How long the last command may take to arrive and complete once every
/// post is answered, before the run gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

impl Bench {
    /// Where command `i` is posted.
    fn post_url(&self, i: usize) -> &str {
        let urls = if self.args.post_url.is_empty() {
            &self.args.url
        } else {
            &self.args.post_url
        };
        &urls[i % urls.len()]
    }

    /// The instance agent `i` connects to (and is provisioned through).
    fn agent_url(&self, i: usize) -> &str {
        &self.args.url[i % self.args.url.len()]
    }

    fn agent_id(i: usize) -> String {
        format!("bench-{i:06}")
    }

    async fn provision(&self) {
        let started = Instant::now();
        stream::iter(0..self.args.agents)
            .map(|i| {
                let url = format!("{}/api/agents/{}", self.agent_url(i), Bench::agent_id(i));
                self.http
                    .put(url)
                    .bearer_auth(&self.args.admin_token)
                    .json(&json!({}))
                    .send()
            })
            .buffer_unordered(64)
            .for_each(|r| async move {
                assert!(r.expect("provision").status().is_success());
            })
            .await;
        eprintln!(
            "provisioned {} agents in {:.2?}",
            self.args.agents,
            started.elapsed()
        );
    }

    /// Connects every agent; each acks what it gets and reports (command id, when).
    async fn connect(
        &self,
        received: mpsc::UnboundedSender<(String, Instant)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let started = Instant::now();
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let sockets: Vec<_> = stream::iter(0..self.args.agents)
            .map(|i| {
                let ws_base = self.agent_url(i).replacen("http", "ws", 1);
                let mut request = format!("{ws_base}/edge/ws?edge_agent_id={}", Bench::agent_id(i))
                    .into_client_request()
                    .unwrap();
                request.headers_mut().insert(
                    "authorization",
                    format!("Bearer {}", self.args.edge_secret).parse().unwrap(),
                );
                tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            })
            .buffer_unordered(256)
            .map(|r| r.expect("agent connects").0)
            .collect()
            .await;
        eprintln!(
            "connected {} agents in {:.2?}",
            sockets.len(),
            started.elapsed()
        );
        sockets
            .into_iter()
            .map(|ws| {
                let received = received.clone();
                tokio::spawn(async move {
                    let (mut tx, mut rx) = ws.split();
                    while let Some(Ok(frame)) = rx.next().await {
                        let Message::Text(text) = frame else { continue };
                        let message: Value = serde_json::from_str(&text).unwrap();
                        if message["type"] != "command" {
                            continue;
                        }
                        let id = message["data"]["command_id"].as_str().unwrap().to_string();
                        let at = Instant::now();
                        let ack = json!({"type": "command_ack", "data": {"command_id": id, "success": true, "error": null}});
                        if tx.send(Message::text(ack.to_string())).await.is_err() {
                            return;
                        }
                        let _ = received.send((id, at));
                    }
                })
            })
            .collect()
    }

    /// Posts command number `i` to agent `i mod agents`.
    async fn post(&self, i: usize, command_id: String) -> reqwest::StatusCode {
        let url = format!(
            "{}/api/agents/{}/commands",
            self.post_url(i),
            Bench::agent_id(i % self.args.agents)
        );
        let body = json!({"command_type": "send_message", "command_id": command_id, "parameters": {"message": "hi"}});
        self.http
            .post(url)
            .bearer_auth(&self.args.admin_token)
            .json(&body)
            .send()
            .await
            .expect("post")
            .status()
    }

    async fn completed(&self) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/api/stats", self.post_url(0)))
            .bearer_auth(&self.args.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["commands"]["completed"].as_u64().unwrap_or(0)
    }
}

fn print_histogram(name: &str, h: &Histogram<u64>) {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<32} n={:<7} p50={:.3}ms p90={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bench = Arc::new(Bench {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
        args,
    });
    bench.provision().await;
    let pid = bench.args.server_pid;
    let before = pid.and_then(proc_usage);
    let (received_tx, mut received) = mpsc::unbounded_channel();
    let _agents = bench.connect(received_tx).await;
    match bench.args.mode {
        Mode::Idle { hold } => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let connected = pid.and_then(proc_usage);
            tokio::time::sleep(hold).await;
            let after = pid.and_then(proc_usage);
            if let (Some((rss0, _)), Some((rss1, cpu1)), Some((_, cpu2))) =
                (before, connected, after)
            {
                let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / bench.args.agents as f64;
                println!("server RSS before connects   {rss0} KiB");
                println!("server RSS with {} agents  {rss1} KiB", bench.args.agents);
                println!(
                    "server RSS per idle agent    {:.0} bytes ({:.2} KiB)",
                    per,
                    per / 1024.0
                );
                println!(
                    "server CPU while idle        {:.2}% of a core over {hold:?}",
                    (cpu2 - cpu1) / hold.as_secs_f64() * 100.0
                );
            }
        }
        Mode::Throughput {
            commands,
            concurrency,
        } => {
            let base = bench.completed().await;
            let started = Instant::now();
            let posted = stream::iter(0..commands)
                .map(|i| {
                    let bench = bench.clone();
                    async move {
                        bench
                            .post(i, format!("t{}-{i}", started.elapsed().as_nanos()))
                            .await
                    }
                })
                .buffer_unordered(concurrency)
                .filter(|s| std::future::ready(*s == reqwest::StatusCode::ACCEPTED))
                .count()
                .await;
            let accepted_in = started.elapsed();
            let drained = Instant::now() + DRAIN_LIMIT;
            let mut seen = 0;
            while seen < commands {
                match tokio::time::timeout_at(drained.into(), received.recv()).await {
                    Ok(Some(_)) => seen += 1,
                    Ok(None) => break,
                    Err(_) => panic!("only {seen} of {commands} commands reached the agents within {DRAIN_LIMIT:?} of the last post"),
                }
            }
            loop {
                let completed = bench.completed().await - base;
                if completed >= commands as u64 {
                    break;
                }
                assert!(
                    Instant::now() < drained,
                    "only {completed} of {commands} commands completed within {DRAIN_LIMIT:?} of the last post"
                );
                // Each look counts every command in the store (PostgreSQL: a
                // GROUP BY over the table): often enough, not a load of its own.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let elapsed = started.elapsed();
            println!(
                "accepted {posted}/{commands} in {accepted_in:.2?}: {:.0} commands/s accepted",
                posted as f64 / accepted_in.as_secs_f64()
            );
            println!("completed {commands} in {elapsed:.2?}: {:.0} commands/s accepted→pushed→acked→completed", commands as f64 / elapsed.as_secs_f64());
        }
        Mode::Latency {
            rate,
            duration,
            settle,
        } => {
            tokio::time::sleep(settle).await;
            let total = (rate as f64 * duration.as_secs_f64()) as u64;
            let scheduled: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
            let accept = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
            let start = Instant::now() + Duration::from_millis(100);
            let collector = {
                let scheduled = scheduled.clone();
                tokio::spawn(async move {
                    let mut push = Histogram::<u64>::new(3).unwrap();
                    while push.len() < total {
                        let Some((id, at)) = received.recv().await else {
                            break;
                        };
                        if let Some(t0) = scheduled.lock().unwrap().remove(&id) {
                            push.record(at.saturating_duration_since(t0).as_micros() as u64)
                                .unwrap();
                        }
                    }
                    push
                })
            };
            for i in 0..total {
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(at.into()).await;
                let id = format!("l{}-{i}", start.elapsed().as_nanos());
                scheduled.lock().unwrap().insert(id.clone(), at);
                let (bench, accept) = (bench.clone(), accept.clone());
                tokio::spawn(async move {
                    let status = bench.post(i as usize, id).await;
                    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
                    accept
                        .lock()
                        .unwrap()
                        .record(at.elapsed().as_micros() as u64)
                        .unwrap();
                });
            }
            let push = tokio::time::timeout(Duration::from_secs(30), collector)
                .await
                .expect("all acked")
                .unwrap();
            println!("{total} commands at {rate}/s over {duration:?} (latency from the scheduled send time)");
            print_histogram("scheduled → 202 accepted", &accept.lock().unwrap());
            print_histogram("scheduled → agent got it & acked", &push);
        }
    }
    if let (Some(pid), Some((_, cpu0))) = (pid, before) {
        if let Some((rss, cpu)) = proc_usage(pid) {
            println!(
                "server RSS at end {rss} KiB; server CPU {:.2}s during the run",
                cpu - cpu0
            );
        }
    }
}
