//! One simulated edge agent: connects with its own credentials, pings on
//! its own phase, acks what it gets (by persona), reconnects with the spec's
//! backoff (1 s, ×2, 60 s cap, jitter) and polls `/edge/sync` while its
//! socket is down. Kept small: thousands of these share one process.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::collector::Sample;
use super::dialer::Dialer;
use super::plan::{AckDialect, Persona, Plan};
use super::wire::{Frame, LeanWs};

/// Fleet-wide signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Drop the socket now (a network blip for everyone).
    DropAll,
    /// Churn: this agent leaves and joins again.
    Leave(usize),
}

pub struct AgentSpec {
    pub index: usize,
    pub id: String,
    /// `host:port` of the backend this agent uses.
    pub host: String,
    pub port: u16,
    pub secure: bool,
    pub http_base: String,
    pub token: String,
    pub persona: Persona,
    pub source: Option<IpAddr>,
}

/// The command's sequence number, from ids the injector makes (`ld{shard}-{seq}`).
pub fn seq_of(command_id: &str) -> Option<u64> {
    command_id.rsplit_once('-')?.1.parse().ok()
}

async fn open(spec: &AgentSpec, dialer: &Dialer) -> Result<LeanWs, String> {
    let path = format!("/edge/ws?edge_agent_id={}", spec.id);
    let addr = tokio::net::lookup_host((spec.host.as_str(), spec.port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let stream = dialer.connect(addr, spec.source).await?;
    let _ = stream.set_nodelay(true);
    let stream = dialer.secure(stream, &spec.host, spec.secure).await?;
    LeanWs::handshake(
        stream,
        &format!("{}:{}", spec.host, spec.port),
        &path,
        &spec.token,
    )
    .await
}

fn ack_message(dialect: AckDialect, command_id: &str, success: bool) -> String {
    let data = match (dialect, success) {
        (AckDialect::Spec, true) => {
            json!({"command_id": command_id, "success": true, "error": null})
        }
        (AckDialect::Spec, false) => {
            json!({"command_id": command_id, "success": false, "error": "simulated failure"})
        }
        (AckDialect::Compat, true) => json!({"command_id": command_id, "status": "completed"}),
        (AckDialect::Compat, false) => {
            json!({"command_id": command_id, "status": "failed", "error": "simulated failure"})
        }
    };
    json!({"type": "command_ack", "data": data}).to_string()
}

/// Pings leave on slots of a grid the whole fleet shares, so one wake of
/// the runtime sends a batch of them (and reads their pongs) instead of
/// each ping costing a wake of its own: 10,000 agents pinging every 30 s
/// make 300 slots of ~33 pings spread over the interval (not a burst), and
/// an idle fleet costs under 1 % of a core where a wake per ping cost 3 %.
const PING_GRAIN: Duration = Duration::from_millis(100);

/// The fleet's shared origin for ping slots.
fn ping_epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(tokio::time::Instant::now)
}

/// This agent's offset within the ping interval, on the slot grid; zero for
/// every agent when a profile asks for the burst.
fn ping_phase(plan: &Plan, rng: &mut SmallRng) -> Duration {
    if plan.ping_burst {
        return Duration::ZERO;
    }
    let grain = PING_GRAIN
        .min(plan.ping_interval / 64)
        .max(Duration::from_millis(1));
    let slots = (plan.ping_interval.as_nanos() / grain.as_nanos()).max(1) as u64;
    let slot = rng.random_range(0..slots);
    grain * slot as u32
}

/// This agent's first ping slot after `at`.
fn ping_slot_after(
    at: tokio::time::Instant,
    phase: Duration,
    interval: Duration,
) -> tokio::time::Instant {
    let first = ping_epoch() + phase;
    if at < first {
        return first;
    }
    let periods = (at - first).as_nanos() / interval.as_nanos().max(1) + 1;
    first + interval * periods as u32
}

/// Runs an agent until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    spec: Arc<AgentSpec>,
    plan: Arc<Plan>,
    http: reqwest::Client,
    samples: mpsc::UnboundedSender<Sample>,
    mut signals: broadcast::Receiver<Signal>,
    stop: CancellationToken,
    dialer: Arc<Dialer>,
    on_first_connect: Box<dyn FnOnce() + Send>,
) {
    let mut on_first_connect = Some(on_first_connect);
    let mut rng = SmallRng::seed_from_u64(
        plan.seed ^ (spec.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let persona = spec.persona;
    let mut backoff = Duration::from_secs(1);
    let mut ever_connected = false;
    let phase = ping_phase(&plan, &mut rng);
    let mut reconnect_started: Option<Instant> = None;
    while !stop.is_cancelled() {
        let attempt = Instant::now();
        // Boxed: the handshake's state is large and lives only while connecting,
        // so it must not size every idle agent's task.
        let connecting = Box::pin(async {
            let _turn = dialer.turn().await;
            open(&spec, &dialer).await
        });
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = connecting => opened,
        };
        let ws = match opened {
            Ok(ws) => ws,
            Err(why) => {
                let _ = samples.send(Sample::ConnectFailed { persona, why });
                reconnect_started.get_or_insert(attempt);
                // WS-DLV-5: poll /edge/sync while the socket is down.
                Box::pin(sync_once(&spec, &http, &samples)).await;
                let wait = backoff.mul_f64(rng.random_range(0.8..1.2));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let took = reconnect_started
            .take()
            .map_or(attempt.elapsed(), |since| since.elapsed());
        let _ = samples.send(Sample::Connected {
            persona,
            took,
            reconnect: ever_connected,
            at: Instant::now(),
        });
        ever_connected = true;
        if let Some(first) = on_first_connect.take() {
            first();
        }
        let session_started = Instant::now();
        let Some(reason) = Box::pin(session(
            ws,
            &spec,
            &plan,
            &samples,
            &mut signals,
            &stop,
            &mut rng,
            phase,
        ))
        .await
        else {
            let _ = samples.send(Sample::Disconnected {
                persona,
                reason: "end of run".into(),
            });
            return;
        };
        reconnect_started = Some(Instant::now());
        // The spec's backoff: 1 s, doubling while sockets keep dropping soon
        // after they open, 60 s at most, with jitter; at once after 1012
        // (a deploy) and after a fleet-wide drop (already spread out).
        let at_once = reason == "close 1012" || reason == "dropped";
        let _ = samples.send(Sample::Disconnected { persona, reason });
        if session_started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_secs(1);
        }
        if !at_once {
            let wait = backoff.mul_f64(rng.random_range(0.8..1.2));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
}

/// One connected session; the reason it ended, or None when the run stopped.
/// One timer serves pings, flaps and delayed acks, to keep an idle agent small.
#[allow(clippy::too_many_arguments)]
async fn session(
    mut ws: LeanWs,
    spec: &AgentSpec,
    plan: &Plan,
    samples: &mpsc::UnboundedSender<Sample>,
    signals: &mut broadcast::Receiver<Signal>,
    stop: &CancellationToken,
    rng: &mut SmallRng,
    phase: Duration,
) -> Option<String> {
    let persona = spec.persona;
    let now = tokio::time::Instant::now();
    let mut next_ping =
        (persona != Persona::Silent).then(|| ping_slot_after(now, phase, plan.ping_interval));
    let flap_at = (persona == Persona::Flapper)
        .then(|| now + plan.flap_every.mul_f64(rng.random_range(0.5..1.5)));
    let mut acks: Vec<(tokio::time::Instant, String, bool)> = Vec::new();
    let far = now + Duration::from_secs(86_400);
    let timer = tokio::time::sleep_until(far);
    tokio::pin!(timer);
    // Pinned once per session, not made anew on every wake: each new one
    // would register with the shared token and channel again (a lock that
    // every agent of the process shares), which is most of an idle agent's cost.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let index = spec.index;
    let signal = async {
        loop {
            match signals.recv().await {
                Ok(Signal::Leave(i)) if i == index => return Signal::Leave(i),
                Ok(Signal::DropAll) => return Signal::DropAll,
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                _ => {}
            }
        }
    };
    tokio::pin!(signal);
    loop {
        let wake = [next_ping, flap_at, acks.iter().map(|(at, _, _)| *at).min()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            _ = &mut cancelled => {
                let _ = ws.close().await;
                return None;
            }
            signal = &mut signal => match signal {
                Signal::Leave(_) => {
                    let _ = ws.close().await;
                    return Some("left (churn)".into());
                }
                Signal::DropAll => {
                    drop(ws);
                    // Not all at the same millisecond: spread over a second.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
                    return Some("dropped".into());
                }
            },
            _ = &mut timer => {
                let now = tokio::time::Instant::now();
                if next_ping.is_some_and(|at| at <= now) {
                    next_ping = Some(ping_slot_after(now, phase, plan.ping_interval));
                    if ws.send_text(r#"{"type":"ping"}"#).await.is_err() {
                        return Some("write error".into());
                    }
                    if persona == Persona::MalformedSender && rng.random_bool(0.5) {
                        let _ = ws.send_text("{not json").await;
                    }
                }
                if flap_at.is_some_and(|at| at <= now) {
                    let _ = ws.close().await;
                    return Some("flapped".into());
                }
                let (due, later): (Vec<_>, Vec<_>) = acks.drain(..).partition(|(at, _, _)| *at <= now);
                acks = later;
                for (_, id, success) in due {
                    if ws.send_text(&ack_message(plan.ack_dialect, &id, success)).await.is_err() {
                        return Some("write error".into());
                    }
                    if let Some(seq) = seq_of(&id) {
                        let _ = samples.send(Sample::Acked { seq, at: Instant::now() });
                    }
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Ok(Frame::Text(text)) => text,
                    Ok(Frame::Close(close)) => return Some(close.map_or("close".into(), |(code, _)| format!("close {code}"))),
                    // RFC 6455 §5.5.2: a Ping is answered with a Pong.
                    Ok(Frame::Ping(payload)) => {
                        let _ = ws.pong(&payload).await;
                        continue;
                    }
                    Ok(_) => continue,
                    Err(_) => return Some("connection lost".into()),
                };
                if persona == Persona::SlowReader {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
                }
                // Pongs and the like are most of what arrives: skip them unparsed.
                if !text.contains("\"command\"") {
                    continue;
                }
                let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                if message["type"] != "command" {
                    continue;
                }
                let Some(id) = message["data"]["command_id"].as_str() else { continue };
                if let Some(seq) = seq_of(id) {
                    let _ = samples.send(Sample::Received { seq, persona, at: Instant::now() });
                }
                let success = persona != Persona::FailingAcker && !rng.random_bool(plan.failure_ratio.clamp(0.0, 1.0));
                if persona == Persona::SlowAcker {
                    let (lo, hi) = plan.slow_ack;
                    let delay = lo + hi.saturating_sub(lo).mul_f64(rng.random::<f64>());
                    acks.push((tokio::time::Instant::now() + delay, id.to_string(), success));
                    continue;
                }
                if ws.send_text(&ack_message(plan.ack_dialect, id, success)).await.is_err() {
                    return Some("write error".into());
                }
                if let Some(seq) = seq_of(id) {
                    let _ = samples.send(Sample::Acked { seq, at: Instant::now() });
                }
            }
        }
    }
}

/// WS-DLV-5 / WS-HTTP-2: one poll of `/edge/sync`, acking what it returns over HTTP.
async fn sync_once(
    spec: &AgentSpec,
    http: &reqwest::Client,
    samples: &mpsc::UnboundedSender<Sample>,
) {
    let body = json!({"edge_agent_id": spec.id});
    let Ok(response) = http
        .post(format!("{}/edge/sync", spec.http_base))
        .bearer_auth(&spec.token)
        .json(&body)
        .send()
        .await
    else {
        return;
    };
    let Ok(value) = response.json::<Value>().await else {
        return;
    };
    for command in value["commands"].as_array().into_iter().flatten() {
        let Some(id) = command["command_id"].as_str() else {
            continue;
        };
        let seq = seq_of(id);
        if let Some(seq) = seq {
            let _ = samples.send(Sample::Received {
                seq,
                persona: spec.persona,
                at: Instant::now(),
            });
        }
        let ack = json!({"command_id": id, "success": true, "error": null});
        let acked = http
            .post(format!("{}/edge/command/ack", spec.http_base))
            .bearer_auth(&spec.token)
            .header("x-edge-agent-id", &spec.id)
            .json(&ack)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if let (true, Some(seq)) = (acked, seq) {
            let _ = samples.send(Sample::Acked {
                seq,
                at: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_spread_over_the_interval_on_shared_slots() {
        let plan = Plan::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut per_slot = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let phase = ping_phase(&plan, &mut rng);
            assert!(phase < plan.ping_interval);
            assert_eq!(phase.as_nanos() % PING_GRAIN.as_nanos(), 0, "{phase:?}");
            *per_slot.entry(phase).or_insert(0) += 1;
        }
        // 300 slots of ~33: every slot used, none holding a burst.
        assert_eq!(per_slot.len(), 300);
        assert!(per_slot.values().all(|&n| n < 100), "{per_slot:?}");
        let burst = Plan {
            ping_burst: true,
            ..Plan::default()
        };
        assert_eq!(ping_phase(&burst, &mut rng), Duration::ZERO);
    }

    #[test]
    fn the_next_ping_slot_is_within_one_interval() {
        let interval = Duration::from_secs(30);
        let phase = Duration::from_millis(1_200);
        let epoch = ping_epoch();
        let first = epoch + phase;
        assert_eq!(ping_slot_after(epoch, phase, interval), first);
        assert_eq!(ping_slot_after(first, phase, interval), first + interval);
        let later = first + Duration::from_secs(95);
        assert_eq!(
            ping_slot_after(later, phase, interval),
            first + interval * 4
        );
        for ms in [0u64, 1, 999, 29_999, 30_000, 61_234] {
            let at = epoch + Duration::from_millis(ms);
            let next = ping_slot_after(at, phase, interval);
            assert!(next > at && next <= at + interval, "{ms}");
        }
    }

    #[test]
    fn an_agent_task_stays_small() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (signals, _) = broadcast::channel(1);
        let spec = Arc::new(AgentSpec {
            index: 0,
            id: "a".into(),
            host: "127.0.0.1".into(),
            port: 1,
            secure: false,
            http_base: String::new(),
            token: String::new(),
            persona: Persona::WellBehaved,
            source: None,
        });
        let future = run(
            spec,
            Arc::new(Plan::default()),
            reqwest::Client::new(),
            tx,
            signals.subscribe(),
            CancellationToken::new(),
            Arc::new(Dialer::new(1, (0, 1), None)),
            Box::new(|| {}),
        );
        // The connect and session states are boxed, so the task that lives
        // as long as the agent stays small (it was 13 KiB inline, 1.9 KiB with
        // the WebSocket library's stream in it).
        assert!(
            std::mem::size_of_val(&future) <= 2048,
            "{} bytes",
            std::mem::size_of_val(&future)
        );
    }
}
