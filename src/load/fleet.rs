//! The simulated agents of this process: who they are ([`specs`]: this
//! shard's share of the plan, spread over the backends and source
//! addresses), provisioning them through the control API, and the running
//! fleet ([`Fleet`]): every agent a task, started together, counted as
//! they first connect, stopped together.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::agent::{self, AgentSpec, Signal};
use super::collector::Sample;
use super::dialer::Dialer;
use super::plan::{Persona, Plan};
use super::LoadError;
use crate::target::Target;

/// Connection attempts in flight at once while the fleet comes up: enough to
/// be quick, few enough not to overflow the backend's accept queue.
const CONNECTS_IN_FLIGHT: usize = 512;

/// The agent indices this shard runs: i, i+n, i+2n, … of the plan's.
pub fn indices(plan: &Plan, (shard, shards): (usize, usize)) -> Vec<usize> {
    (0..plan.agents).filter(|k| k % shards == shard).collect()
}

/// Sockets the agents open: a `Duplicate` agent holds two.
fn copies(persona: Persona) -> usize {
    if persona == Persona::Duplicate {
        2
    } else {
        1
    }
}

/// Sockets the agents at `indices` open.
pub fn sockets(plan: &Plan, indices: &[usize]) -> usize {
    indices.iter().map(|k| copies(plan.persona_of(*k))).sum()
}

/// Agent `k`'s id, as provisioned and as commands address it.
pub fn agent_id(k: usize) -> String {
    format!("load-{k:06}")
}

/// Who each agent is: its id, token, backend (agent k uses target k mod
/// the number of targets), persona and source address.
pub fn specs(
    plan: &Plan,
    indices: &[usize],
    targets: &[Target],
    source_ips: &[IpAddr],
) -> Vec<AgentSpec> {
    indices
        .iter()
        .map(|&k| {
            let target = &targets[k % targets.len()];
            let id = agent_id(k);
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
                source: (!source_ips.is_empty()).then(|| source_ips[k % source_ips.len()]),
            }
        })
        .collect()
}

/// Registers every agent with `PUT /api/agents/{id}` on its backend (64 at
/// once); a refusal is [`LoadError::Provision`].
pub async fn provision(
    specs: &[AgentSpec],
    targets: &[Target],
    http: &reqwest::Client,
    progress: bool,
) -> Result<(), LoadError> {
    let started = Instant::now();
    let failures = stream::iter(specs.iter())
        .map(|spec| {
            let target = targets
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
        return Err(LoadError::Provision { failures });
    }
    if progress {
        eprintln!(
            "provisioned {} agents in {:.2?}",
            specs.len(),
            started.elapsed()
        );
    }
    Ok(())
}

/// Counts sockets as they first connect; wakes the waiter at the last.
struct Ready {
    connected: AtomicUsize,
    all: Notify,
    total: usize,
}

/// The running agents.
pub struct Fleet {
    agents: Vec<JoinHandle<()>>,
    ready: Arc<Ready>,
    stop: CancellationToken,
}

/// What every agent task shares.
pub struct Shared {
    pub plan: Arc<Plan>,
    pub http: reqwest::Client,
    pub samples: mpsc::UnboundedSender<Sample>,
    pub signals: broadcast::Sender<Signal>,
    pub shard: (usize, usize),
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Fleet {
    /// Starts an agent task per socket (two for a `Duplicate`).
    pub fn start(specs: Vec<AgentSpec>, shared: Shared) -> Fleet {
        let total = specs.iter().map(|s| copies(s.persona)).sum();
        let ready = Arc::new(Ready {
            connected: AtomicUsize::new(0),
            all: Notify::new(),
            total,
        });
        let stop = CancellationToken::new();
        let dialer = Arc::new(Dialer::new(CONNECTS_IN_FLIGHT, shared.shard, shared.tls));
        let mut agents = Vec::with_capacity(total);
        for spec in specs {
            let copies = copies(spec.persona);
            let spec = Arc::new(spec);
            for _ in 0..copies {
                let (spec, plan, http, samples, signals, stop, ready, dialer) = (
                    spec.clone(),
                    shared.plan.clone(),
                    shared.http.clone(),
                    shared.samples.clone(),
                    shared.signals.subscribe(),
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
        Fleet {
            agents,
            ready,
            stop,
        }
    }

    /// Sockets the fleet opens.
    pub fn sockets(&self) -> usize {
        self.ready.total
    }

    /// Sockets that have connected at least once.
    pub fn connected(&self) -> usize {
        self.ready.connected.load(Ordering::Acquire)
    }

    /// Waits until every socket has connected once, `within` has passed, or
    /// `interrupt` fires, whichever is first.
    pub async fn wait_connected(&self, within: Duration, interrupt: &CancellationToken) {
        if self.ready.total == 0 {
            return;
        }
        tokio::select! {
            _ = self.ready.all.notified() => {}
            _ = tokio::time::sleep(within) => {}
            _ = interrupt.cancelled() => {}
        }
    }

    /// Cancelled when the fleet is told to stop (churn stops with it).
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tells every agent to close and waits up to 5 s for each.
    pub async fn stop(self) {
        self.stop.cancel();
        for agent in self.agents {
            let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
        }
    }
}
