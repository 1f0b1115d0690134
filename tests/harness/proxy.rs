//! A fault-injecting proxy in front of a correct edge-server: each [`Fault`]
//! turns it into a backend with one realistic bug, so the tests can show
//! that the suite catches it and names the right rule. Fault code lives
//! here, in the tests, never in the server's request path.
//!
//! The proxy speaks HTTP/1.1 and WebSocket on both sides:
//!
//! - a plain HTTP request is one request per connection (`connection:
//!   close` towards the server), so the proxy reads the whole request and
//!   the whole answer and may rewrite either;
//! - an upgrade request is relayed; a refused upgrade's answer may be
//!   rewritten like any answer; an accepted one becomes two WebSockets
//!   (agent side, server side) and every frame passes through the proxy.
//!
//! The fault logic is grouped by where it acts, one file each under
//! `proxy/`: [`Proxy::request`] (request head and body), [`Proxy::response`]
//! (HTTP answers, refused upgrades included), [`Proxy::agent_frame`] and
//! [`Proxy::server_frame`] (agent → server and server → agent frames). The
//! faults themselves are in `fault.rs`; this file holds the plumbing and
//! what the faults remember ([`Memory`]). The upstream connection
//! is made from the agent's own source address, so the server's
//! per-address limits (WS-RATE-1) see what they would see without a proxy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use edge_harness::early_answer::dechunk;
use edge_harness::timing::Timings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use fault::{Fault, LOAD_FAULTS};
use http::Http;
use ordered::Json;

mod fault;
mod frames;
mod http;
mod ordered;
mod request;
mod response;

pub struct Secrets {
    pub edge: String,
    pub admin: String,
    pub registration: String,
}

/// A running proxy: where it listens, and what the test tells it.
#[derive(Clone)]
pub struct Handle {
    pub addr: SocketAddr,
    proxy: Arc<Proxy>,
}

impl Handle {
    /// The commands an `EveryTenthCommand…` fault picked so far.
    pub fn tenths(&self) -> usize {
        self.proxy.memory().tenths.len()
    }

    /// The backend is being restarted (the test's restarter says so; the
    /// proxy cannot see a restart while no socket is open).
    pub fn restarting(&self) {
        if self.proxy.fault == Fault::TtlLostOnRestart {
            let mut memory = self.proxy.memory();
            let forgotten: Vec<String> = memory.with_ttl.iter().cloned().collect();
            memory.ttl_forgotten.extend(forgotten);
        }
        if self.proxy.fault == Fault::QueueInMemory {
            let mut memory = self.proxy.memory();
            let pushed: HashSet<String> = memory.pushed.values().flatten().cloned().collect();
            let waiting: Vec<String> = memory.queued.difference(&pushed).cloned().collect();
            memory.lost.extend(waiting);
        }
    }

    /// The backend is about to be killed (the test's crasher says so):
    /// what a broken backend kept only in memory is gone.
    pub fn crashing(&self) {
        self.proxy.crashes.send_modify(|n| *n += 1);
        let mut memory = self.proxy.memory();
        let lost: Vec<String> = match self.proxy.fault {
            Fault::AcceptedBeforeDurable => memory
                .accepted_at
                .iter()
                .filter(|(_, at)| at.elapsed() < WRITE_BEHIND)
                .map(|(id, _)| id.clone())
                .collect(),
            Fault::InFlightLostOnCrash => memory.pushed.values().flatten().cloned().collect(),
            Fault::GhostConnectionAfterCrash => {
                let live = memory.live.iter().filter(|(_, n)| **n > 0);
                let agents: Vec<String> = live.map(|(agent, _)| agent.clone()).collect();
                memory.ghosts.extend(agents);
                return;
            }
            _ => return,
        };
        memory.lost.extend(lost);
    }
}

/// How long a write-behind fault keeps a write in memory.
const WRITE_BEHIND: Duration = Duration::from_secs(1);

/// Starts the proxy on an ephemeral loopback port; it runs until the test
/// ends. `log` is the server's log, for the faults that write to it.
pub async fn start(
    upstream: SocketAddr,
    fault: Fault,
    secrets: Secrets,
    log: Option<std::path::PathBuf>,
) -> Handle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Arc::new(Proxy {
        upstream,
        fault,
        secrets,
        memory: Mutex::new(Memory::default()),
        crash: watch::channel(0).0,
        crashes: watch::channel(0).0,
        log,
    });
    let handle = Handle {
        addr,
        proxy: proxy.clone(),
    };
    tokio::spawn(async move {
        while let Ok((client, peer)) = listener.accept().await {
            tokio::spawn(proxy.clone().handle(client, peer));
        }
    });
    handle
}

struct Proxy {
    upstream: SocketAddr,
    fault: Fault,
    secrets: Secrets,
    memory: Mutex<Memory>,
    /// Bumped when the "server" crashes: every session ends.
    crash: watch::Sender<u32>,
    /// Bumped when the test kills the real server ([`Handle::crashing`]).
    crashes: watch::Sender<u32>,
    /// The server's log.
    log: Option<std::path::PathBuf>,
}

/// What a broken backend remembers across connections (only the faults
/// that need it fill it in).
#[derive(Default)]
struct Memory {
    /// Open agent sockets per agent id.
    live: HashMap<String, usize>,
    /// Commands pushed to each agent, on any of its sockets.
    pushed: HashMap<String, HashSet<String>>,
    /// Refused upgrades per agent id (CountsRejectsPerAgent).
    rejects: HashMap<String, u32>,
    /// Agents once answered 429 (LimitNeverResets).
    limited: HashSet<String>,
    /// Agents whose latest socket replaced a live one
    /// (ReplacedCleanupCancelsTimer and its kin).
    replacing: HashSet<String>,
    /// Agent ids an upgrade was refused 403 for (UnknownAgentsNotCounted).
    forbidden: HashSet<String>,
    /// The latest ack per command, as a status.
    last_ack: HashMap<String, String>,
    /// When each agent last closed its socket.
    closed_at: HashMap<String, Instant>,
    /// Commands put back by `retry`.
    retried: HashSet<String>,
    /// The highest attempt pushed per command (before any retry).
    attempts: HashMap<String, u64>,
    /// Commands accepted by the control API.
    created: HashSet<String>,
    /// Commands lost for good (a restart's, QueueFullEvictsOldest's).
    lost: HashSet<String>,
    /// AcceptedBeforeDurable: when each command was answered 202.
    accepted_at: HashMap<String, Instant>,
    /// Commands the control API accepted while their agent was away.
    queued: HashSet<String>,
    /// Commands pushed again on a later socket.
    repushed: HashSet<String>,
    /// The latest progress state (`received`/`executing`) acked per command.
    progress: HashMap<String, String>,
    /// OneAttemptTooMany: until when a command is shown `sent` instead of `dead`.
    extra_until: HashMap<String, Instant>,
    /// QueueFullEvictsOldest: agents whose oldest command is to be lost.
    evict: HashSet<String>,
    /// Agents whose registry entry a replaced socket's cleanup removed.
    unregistered: HashSet<String>,
    /// `max_attempts` as advertised in `connected`.
    max_attempts: u64,
    /// Agents the control API refused a command for (queue full).
    full: HashSet<String>,
    /// Phones registered (ReregistrationTokenUseless).
    phones: HashSet<String>,
    /// Commands on their last attempt when their socket closed
    /// (LastAttemptStrandedOnClose).
    stranded_on_close: HashSet<String>,
    /// The id made from the clock, and when (ServerIdsFromClock).
    clock_id: Option<(String, Instant)>,
    /// When each address last sent a ping (PingLimitPerAddress).
    pinged_from: HashMap<Option<IpAddr>, Instant>,
    /// Agents whose last socket was closed for its missing pings.
    timed_out: HashSet<String>,
    /// Agents that sent a status (StatusFirstOnly).
    status_seen: HashSet<String>,
    /// Agents whose last status a sync without one cleared (SyncClearsStatus).
    status_cleared: HashSet<String>,
    /// CacheClearedOnAcksOnly: each command's cached answer, and since when.
    cached: HashMap<String, (Value, Instant)>,
    /// Commands acked `received`/`executing` over HTTP
    /// (HttpProgressAckLeavesTimer).
    http_progress: HashSet<String>,
    /// When each command's last push has its ack_timeout behind it
    /// (ProgressBuriedAtAckDeadline).
    ack_deadline: HashMap<String, Instant>,
    /// Commands another agent acked while they were in flight
    /// (ForeignAckCancelsTimer).
    timer_cancelled: HashSet<String>,
    /// Commands a repeated POST put back to `queued` (RepeatResetsInFlight).
    reset: HashSet<String>,
    /// Per agent: every status member it ever sent (StatusMerged).
    statuses: HashMap<String, Vec<(String, Json)>>,
    /// What `/edge/sync` returned per agent.
    synced: HashMap<String, Vec<Value>>,
    /// Event ids `/edge/sync` acknowledged.
    events: HashSet<String>,
    /// Per command: the state shown, and a newer one with when it was first seen.
    shown: HashMap<String, (Value, Option<(Value, Instant)>)>,
    /// Commands that got a final ack (RepeatedAckCountedTwice).
    final_acked: HashSet<String>,
    /// Final acks for commands already final (RepeatedAckCountedTwice).
    repeated_final_acks: u64,
    /// Sockets a broken active-connections gauge never counted out
    /// (GaugeKeepsReplacedSockets and its kin).
    gauge_kept: u64,
    /// StaleTimerAfterReconnect: when each command was last pushed, and as
    /// which attempt.
    last_push: HashMap<String, (Instant, u64)>,
    /// EveryTenthCommand…: the commands pushed so far, and every tenth.
    pushed_once: HashSet<String>,
    tenths: HashSet<String>,
    /// Agents provisioned once, and those provisioned again
    /// (ReprovisionDropsQueue).
    provisioned: HashSet<String>,
    reprovisioned: HashSet<String>,
    /// Commands posted with `ttl_s`, and those whose TTL a restart forgot
    /// (TtlLostOnRestart).
    with_ttl: HashSet<String>,
    ttl_forgotten: HashSet<String>,
    /// Each command posted with `ttl_s`: when it was accepted, and its TTL
    /// (FinalCommandsExpireAtTtl, TtlRestartsOnPush).
    ttls: HashMap<String, (Instant, Duration)>,
    /// Commands `/edge/sync` delivered (SyncedNotPushedOnConnect).
    via_sync: HashSet<String>,
    /// When each command was retried (RetryNotPushedLive).
    retried_at: HashMap<String, Instant>,
    /// Agents connected when the backend crashed (GhostConnectionAfterCrash).
    ghosts: HashSet<String>,
    /// Every command frame pushed, by id, with its agent (only for the
    /// faults that read it: FinalAckLeavesTimer, FailedRepushedOnReconnect, RepeatedIdRequeues,
    /// AttemptsSpentOffline).
    frames: HashMap<String, (String, Message)>,
    /// Commands a fault pushes again at their agent's next connect.
    replay: HashSet<String>,
    /// Agents that got a `connected` (WelcomeOnlyOnFirstSocket).
    welcomed: HashSet<String>,
    /// Sockets closed with 1012 so far (OnlyFirstSocketGets1012).
    restart_closes: u32,
    /// Agents answered `rate_limited` once (OnlyFirstExtraAnswered).
    limited_once: HashSet<String>,
    /// When a repeated success ack came, per command (FinalAckRestamps).
    restamped: HashMap<String, String>,
    /// Agents answered `pong` once (PingWindowNeverPasses).
    ponged: HashSet<String>,
    /// Commands posted with `priority: immediate` (ImmediateRelayedAsIs).
    immediate: HashSet<String>,
    /// Each command's agent, as posted (SharedSecretAckSkipsOwner).
    owners: HashMap<String, String>,
    /// Commands posted with a `ttl_s`, per agent (ExpiredCountedPending).
    ttl_posts: HashMap<String, u64>,
}

/// What happens to an agent's socket after a frame.
enum Act {
    /// Forward to the server.
    Server(Message),
    /// Send to the agent now.
    Agent(Message),
    /// Send to the agent at this time (kept in order of time), unless it
    /// is a command the agent acked meanwhile.
    AgentAt(Instant, Message),
    /// Send to the agent at this time, acked or not: a command pushed
    /// again after it finished.
    ReplayAt(Instant, Message),
    /// A command pushed at connect: held, then released re-ordered.
    Hold(Json),
    /// Close the agent's socket with this code; the session ends.
    Close(u16, &'static str),
    /// The agent's socket stays up, but nothing from the server reaches it.
    Deafen,
    /// Drop both connections, no close frame.
    Drop,
    /// Store this `status` as the agent's (`POST /edge/sync`, edge secret)
    /// before anything else is relayed.
    StoreStatus(Value),
}

/// One agent socket through the proxy.
struct Session {
    agent: String,
    /// The agent's address (the same for every agent of a check).
    ip: Option<IpAddr>,
    /// The last frame of any kind from the agent, and the last `ping` message.
    last_frame: Instant,
    last_ping: Instant,
    last_type: String,
    /// The last message from the agent was JSON without a string `type`.
    untyped: bool,
    /// The last message from the agent was JSON but not an object.
    not_object: bool,
    /// The last message from the agent was a `status` whose `data` is not
    /// an object.
    status_not_object: bool,
    /// When the socket opened.
    opened: Instant,
    /// Text and binary messages from the agent (WS-RATE-2 counts them).
    messages: u32,
    /// `ping` messages from the agent.
    pings: u32,
    rate_limited: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    ack_timeout: Duration,
    max_attempts: u64,
    /// Commands the agent acked on this socket.
    acked: HashSet<String>,
    /// Commands pushed on this socket.
    seen: HashSet<String>,
    /// What the agent sent past the message limit (a status's data, else
    /// null), until the server's `rate_limited` for it comes back
    /// (ExtraMessagesProcessed).
    ignored: VecDeque<Value>,
}

/// Commands pending at connect are held until none has come for this long,
/// then released in a fault's order.
const HOLD: Duration = Duration::from_millis(200);

impl Proxy {
    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap()
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let Some((head, rest)) = read_head(&mut client).await else {
            return;
        };
        let mut request = Http { head, body: rest };
        let length = request.content_length();
        while request.body.len() < length {
            let mut chunk = [0u8; 4096];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.body.extend_from_slice(&chunk[..n]),
            }
        }
        let upgrade = request
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if self.fault == Fault::TokensLogged {
            self.log_request(&request);
        }
        if let Some(answer) = self.request(&mut request) {
            let _ = client.write_all(&answer.to_bytes()).await;
            return;
        }
        if !upgrade {
            // One request per connection, so every request passes through here.
            request.set_header("connection", "close");
            let Some(mut server) = self.connect_upstream(peer).await else {
                return;
            };
            // A server may answer before it has read the whole body (a 413)
            // and close: what it answered is read all the same.
            let _ = server.write_all(&request.to_bytes()).await;
            let mut raw = Vec::new();
            let _ = server.read_to_end(&mut raw).await;
            if raw.is_empty() {
                return;
            }
            // Said on every answer, so the client never reuses the connection.
            let answer = match Http::parse(&raw) {
                Some(mut answer) => {
                    self.response(&request, &mut answer).await;
                    answer.set_header("connection", "close");
                    answer.to_bytes()
                }
                None => raw,
            };
            let _ = client.write_all(&answer).await;
            return;
        }
        self.upgrade(client, peer, request).await;
    }

    /// TokensLogged: one line in the server's log, headers and all.
    fn log_request(&self, request: &Http) {
        let Some(path) = &self.log else { return };
        let line = format!(
            "2026-01-01T00:00:00Z DEBUG http: {} {} authorization={:?}\n",
            request.method(),
            request.path(),
            request.header("authorization").unwrap_or("")
        );
        let file = std::fs::OpenOptions::new().append(true).open(path);
        if let Ok(mut file) = file {
            use std::io::Write as _;
            let _ = file.write_all(line.as_bytes());
        }
    }

    /// Sends `request` to the server after [`WRITE_BEHIND`], unless the
    /// server crashes first.
    fn write_behind(&self, mut request: Http) {
        request.set_header("connection", "close");
        let (upstream, mut crashes) = (self.upstream, self.crashes.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = crashes.changed() => {}
                _ = tokio::time::sleep(WRITE_BEHIND) => {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = server.write_all(&request.to_bytes()).await;
                        let _ = server.read_to_end(&mut Vec::new()).await;
                    }
                }
            }
        });
    }

    /// From the agent's own source address (loopback only), so per-address
    /// limits work as without a proxy.
    async fn connect_upstream(&self, peer: SocketAddr) -> Option<TcpStream> {
        let socket = TcpSocket::new_v4().ok()?;
        if peer.ip().is_loopback() {
            socket.bind(SocketAddr::new(peer.ip(), 0)).ok()?;
        }
        socket.connect(self.upstream).await.ok()
    }

    async fn upgrade(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr, request: Http) {
        let agent = query_param(request.path(), "edge_agent_id").unwrap_or_default();
        // A new socket registers the agent again (before the server replaces the old one).
        self.memory().unregistered.remove(&agent);
        // A replacement loses what was pushed on the old socket, decided
        // now: were it decided when the 4000 close crosses the old socket,
        // the new socket's redelivery could win that race and pass.
        if matches!(
            self.fault,
            Fault::ReplacedCleanupCancelsTimer
                | Fault::TakeoverRepushesSentOnly
                | Fault::ReplacedCleanupClearsIdleTimer
        ) {
            let mut memory = self.memory();
            if memory.live.get(&agent).is_some_and(|&n| n > 0) {
                memory.replacing.insert(agent.clone());
            } else {
                memory.replacing.remove(&agent);
            }
        }
        if self.fault == Fault::ReplacementLosesInFlight {
            let mut memory = self.memory();
            if memory.live.get(&agent).is_some_and(|&n| n > 0) {
                let pushed = memory.pushed.get(&agent).cloned().unwrap_or_default();
                memory.lost.extend(pushed);
            }
        }
        let mut tries = 0;
        let (server, server_rest) = loop {
            tries += 1;
            // AddressLimitSkipsValidTokens retries from another address.
            let from = if tries == 1 {
                peer
            } else {
                ([127, 0, 0, 1], 0).into()
            };
            let Some(mut server) = self.connect_upstream(from).await else {
                return;
            };
            if server.write_all(&request.to_bytes()).await.is_err() {
                return;
            }
            let Some((head, mut rest)) = read_head(&mut server).await else {
                return;
            };
            if head.starts_with("HTTP/1.1 101") {
                if client.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                break (server, rest);
            }
            let mut answer = Http {
                head,
                body: Vec::new(),
            };
            let length = answer.content_length();
            while rest.len() < length {
                let mut chunk = [0u8; 4096];
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            answer.body = rest;
            let refused_as = |code: u16| (answer.status() == code).then_some(code);
            match self.fault {
                // Auto-provisioning: the agent is created, then let in; or
                // a per-agent HMAC token is trusted on its signature alone.
                Fault::AcceptsUnknownAgents | Fault::HmacTokenSkipsAgentLookup
                    if tries == 1
                        && refused_as(403).is_some()
                        && (self.fault == Fault::AcceptsUnknownAgents
                            || request
                                .header("authorization")
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .and_then(hmac_token)
                                .is_some()) =>
                {
                    self.admin("PUT", &format!("/api/agents/{agent}"), "{}")
                        .await;
                    continue;
                }
                Fault::AddressLimitSkipsValidTokens
                    if tries == 1 && refused_as(429).is_some() && self.valid_token(&request) =>
                {
                    continue;
                }
                // The refusal comes after a slow token lookup.
                Fault::RefusesLate if refused_as(401).is_some() => {
                    let after = Duration::from_secs(6);
                    return accept_then_close(client, &request, None, 4001, after).await;
                }
                Fault::RefusesWithClose1008 if refused_as(401).is_some() => {
                    return accept_then_close(client, &request, None, 1008, Duration::ZERO).await;
                }
                Fault::WelcomesBeforeRefusing if refused_as(401).is_some() => {
                    let hello = json!({"type": "connected", "data": {"edge_agent_id": agent}});
                    return accept_then_close(client, &request, Some(hello), 4001, Duration::ZERO)
                        .await;
                }
                Fault::NoConnectRateLimit if refused_as(429).is_some() => {
                    return accept_then_close(client, &request, None, 0, Duration::ZERO).await;
                }
                _ => {}
            }
            self.response(&request, &mut answer).await;
            // This connection ends here: the client must not reuse it.
            answer.set_header("connection", "close");
            let _ = client.write_all(&answer.to_bytes()).await;
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let agent_ws = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
        let server_ws =
            WebSocketStream::from_partially_read(server, server_rest, Role::Client, Some(config))
                .await;
        *self.memory().live.entry(agent.clone()).or_default() += 1;
        self.pump(agent.clone(), agent_ws, server_ws).await;
        let mut memory = self.memory();
        *memory.live.entry(agent.clone()).or_default() -= 1;
        if self.fault == Fault::GaugeNeverFalls {
            memory.gauge_kept += 1;
        }
        if self.fault == Fault::LastAttemptStrandedOnClose {
            let last = memory.max_attempts;
            let on_last: Vec<String> = (memory.pushed.get(&agent).into_iter().flatten())
                .filter(|id| memory.attempts.get(*id) == Some(&last))
                .cloned()
                .collect();
            memory.stranded_on_close.extend(on_last);
        }
        memory.closed_at.insert(agent, Instant::now());
    }

    /// The shared secret or an HMAC-shaped token (the proxy does not verify HMACs).
    fn valid_token(&self, request: &Http) -> bool {
        let bearer = request.header("authorization").unwrap_or("");
        bearer == format!("Bearer {}", self.secrets.edge)
            || bearer
                .strip_prefix("Bearer ")
                .and_then(hmac_token)
                .is_some()
    }

    /// A control-API call of the proxy's own (admin token), answer as JSON.
    async fn admin(&self, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
        self.call(&self.secrets.admin, method, path, body).await
    }

    /// A call of the proxy's own to the server with this token, answer as JSON.
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Option<(u16, Value)> {
        let mut stream = TcpStream::connect(self.upstream).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: proxy\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let answer = Http::parse(&raw)?;
        Some((answer.status(), answer.json().unwrap_or(Value::Null)))
    }

    async fn pump(
        &self,
        agent: String,
        mut client: WebSocketStream<TcpStream>,
        mut server: WebSocketStream<TcpStream>,
    ) {
        let now = Instant::now();
        let mut s = Session {
            agent,
            ip: client.get_ref().peer_addr().ok().map(|a| a.ip()),
            last_frame: now,
            last_ping: now,
            last_type: String::new(),
            untyped: false,
            not_object: false,
            status_not_object: false,
            opened: now,
            messages: 0,
            pings: 0,
            rate_limited: false,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(30),
            max_attempts: 10,
            acked: HashSet::new(),
            seen: HashSet::new(),
            ignored: VecDeque::new(),
        };
        let mut crash = self.crash.subscribe();
        // (when, what, sent even if acked meanwhile)
        let mut later: Vec<(Instant, Message, bool)> = Vec::new();
        let mut held: Vec<Json> = Vec::new();
        let mut release = now;
        let mut deaf = false;
        // The agent's reader fails for good after a broken frame (it is fused).
        let mut agent_broken = false;
        let far = now + Duration::from_secs(3600);
        loop {
            let due = later.first().map(|(t, ..)| *t);
            let idle = self.idle_deadline(&s);
            let acts = tokio::select! {
                _ = sleep_until(due.unwrap_or(far)), if due.is_some() => {
                    let (_, message, anyway) = later.remove(0);
                    let acked = !anyway && json(&message).is_some_and(|v| {
                        v["data"]["command_id"].as_str().is_some_and(|id| {
                            s.acked.contains(id)
                                // The timer left behind fires only after a
                                // progress ack over HTTP.
                                || (self.fault == Fault::HttpProgressAckLeavesTimer
                                    && !self.memory().http_progress.contains(id))
                        })
                    });
                    match message {
                        // A delayed delivery of a command acked meanwhile is not sent.
                        _ if acked => vec![],
                        Message::Close(_) => vec![Act::Agent(message), Act::Drop],
                        _ => vec![Act::Agent(message)],
                    }
                }
                _ = sleep_until(release), if !held.is_empty() => {
                    let mut commands = std::mem::take(&mut held);
                    self.connect_order(&mut commands);
                    commands.into_iter().map(|c| Act::Agent(Message::text(c.to_text()))).collect()
                }
                _ = sleep_until(idle.unwrap_or(far)), if idle.is_some() => {
                    vec![Act::Close(4008, "ping timeout")]
                }
                _ = crash.changed() => vec![Act::Close(1011, "internal error")],
                from_client = client.next(), if !agent_broken => match from_client {
                    Some(Ok(message)) => {
                        s.last_frame = Instant::now();
                        self.agent_frame(&mut s, message)
                    }
                    // A broken frame the proxy's own reader refuses: the
                    // server gets the same, and answers for itself.
                    Some(Err(WsError::Utf8(_))) => {
                        agent_broken = true;
                        let bytes = vec![b'{', 0xff, 0xfe, b'}'];
                        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
                        vec![Act::Server(Message::Frame(frame))]
                    }
                    Some(Err(WsError::Protocol(_))) => {
                        agent_broken = true;
                        let _ = server.get_mut().write_all(&reserved_opcode_frame()).await;
                        continue;
                    }
                    _ => {
                        let _ = server.close(None).await;
                        return;
                    }
                },
                from_server = server.next(), if !deaf => match from_server {
                    Some(Ok(message)) => self.server_frame(&mut s, message),
                    _ => {
                        let _ = client.close(None).await;
                        return;
                    }
                },
            };
            for act in acts {
                let sent = match act {
                    Act::Server(message) => server.send(message).await.is_ok(),
                    Act::Agent(message) => client.send(message).await.is_ok(),
                    Act::AgentAt(at, message) => {
                        let at = at.max(later.last().map_or(at, |(t, ..)| *t));
                        later.push((at, message, false));
                        true
                    }
                    Act::ReplayAt(at, message) => {
                        let at = at.max(later.last().map_or(at, |(t, ..)| *t));
                        later.push((at, message, true));
                        true
                    }
                    Act::Hold(command) => {
                        held.push(command);
                        release = Instant::now() + HOLD;
                        true
                    }
                    Act::Close(code, reason) => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        let _ = client.send(Message::Close(Some(frame))).await;
                        let _ = server.close(None).await;
                        false
                    }
                    Act::Deafen => {
                        deaf = true;
                        true
                    }
                    Act::Drop => false,
                    Act::StoreStatus(status) => {
                        let body = json!({"edge_agent_id": s.agent, "status": status});
                        let edge = &self.secrets.edge;
                        let _ = self
                            .call(edge, "POST", "/edge/sync", &body.to_string())
                            .await;
                        true
                    }
                };
                if !sent {
                    return;
                }
            }
        }
    }

    /// When the proxy itself closes a quiet agent (faults with their own ping timeout).
    fn idle_deadline(&self, s: &Session) -> Option<Instant> {
        match self.fault {
            Fault::OnlyPingMessagesCount => Some(s.last_ping + s.ping_timeout),
            Fault::TimesOutAtPingInterval => Some(s.last_frame + s.ping_interval),
            _ => None,
        }
    }

    /// AttemptsSpentOffline: whether the agent of a command pushed before
    /// was away long enough for a timer to spend an attempt (2 s: the
    /// embedded ack_timeout plus backoff(1)), and, with `still`, still is.
    fn away_long(&self, id: &str, still: bool) -> bool {
        let memory = self.memory();
        let Some((agent, _)) = memory.frames.get(id) else {
            return false;
        };
        let gone = memory.live.get(agent).is_none_or(|n| *n == 0);
        let long =
            (memory.closed_at.get(agent)).is_some_and(|at| at.elapsed() > Duration::from_secs(2));
        long && (gone || !still)
    }
}

/// Accepts the upgrade itself (no server behind it), then sends `first`
/// and, `after` that, closes with `code` (0: waits for the agent to close).
async fn accept_then_close(
    mut client: TcpStream,
    request: &Http,
    first: Option<Value>,
    code: u16,
    after: Duration,
) {
    let key = request
        .header("sec-websocket-key")
        .unwrap_or("")
        .to_string();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if client.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Server, None).await;
    if let Some(first) = first {
        let _ = ws.send(Message::text(first.to_string())).await;
    }
    tokio::time::sleep(after).await;
    if code != 0 {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = ws.send(Message::Close(Some(frame))).await;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

/// An empty, masked frame with the reserved opcode 3 (as the harness sends it).
fn reserved_opcode_frame() -> Vec<u8> {
    let mut bytes = Vec::new();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Reserved(3)),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    header.format(0, &mut bytes).unwrap();
    bytes
}

fn json(message: &Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// The routes PROTOCOL.md names (prefixes); any other path is unknown.
const ROUTES: [&str; 9] = [
    "/edge/ws",
    "/edge/sync",
    "/edge/command/ack",
    "/edge/ack_command",
    "/edge/register",
    "/api/agents",
    "/api/commands",
    "/api/stats",
    "/metrics",
];

fn is_command_post(request: &Http) -> bool {
    request.method() == "POST"
        && request.path().starts_with("/api/agents/")
        && request.path().ends_with("/commands")
}

/// An `error` message from "the backend" (WS-ERR-1).
fn error_to_agent(code: &str, message: &str) -> Act {
    let error = json!({"type": "error", "data": {"code": code, "message": message}});
    Act::Agent(Message::text(error.to_string()))
}

/// A date as `toUTCString()` writes it (which one does not matter).
const HTTP_DATE: &str = "Thu, 03 Dec 2026 20:44:49 GMT";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The same token with one hex digit of its HMAC changed.
fn forge(token: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut text = engine.decode(token).unwrap_or_default();
    if let Some(last) = text.last_mut() {
        *last = if *last == b'0' { b'1' } else { b'0' };
    }
    engine.encode(text)
}

/// An ack (`data`) with a command id but no outcome: neither a boolean
/// `success` nor one of the four states (AckWithoutOutcomeCompletes).
fn lacks_outcome(data: &Value) -> bool {
    let states = ["received", "executing", "completed", "failed"];
    let known = data["success"].is_boolean()
        || (data["success"].is_null()
            && data["status"].as_str().is_some_and(|s| states.contains(&s)));
    data["command_id"].is_string() && !known
}

/// The frame limit of FrameLimit16KiB and FrameLimit64000.
fn frame_limit(fault: Fault) -> usize {
    match fault {
        Fault::FrameLimit16KiB => 16 * 1024,
        _ => 64_000,
    }
}

/// Whether `given` is a non-empty proper prefix of `secret`.
fn is_short_prefix(given: &str, secret: &str) -> bool {
    !given.is_empty() && given.len() < secret.len() && secret.starts_with(given)
}

/// An HMAC token (`base64("…:signature")`) whose signature is a proper
/// prefix of the right one, made whole (PrefixSignatureAccepted).
fn signature_completed(token: &str, key: &str) -> Option<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8(engine.decode(token).ok()?).ok()?;
    let (message, signature) = text.rsplit_once(':')?;
    let whole = edge_harness::target::hmac_hex(key, message);
    is_short_prefix(signature, &whole).then(|| engine.encode(format!("{message}:{whole}")))
}

/// A per-agent HMAC token (WS-AUTH-5): (agent id, issued at).
fn hmac_token(token: &str) -> Option<(String, i64)> {
    let text = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [id, _phone, ts, _mac] => Some((id.to_string(), ts.parse().ok()?)),
        _ => None,
    }
}

/// Sets to 0 the value of every sample of a `/metrics` answer that `which`
/// picks (`name{labels} value`).
fn zero_samples(answer: &mut Http, which: impl Fn(&str) -> bool) {
    edit_lines(answer, |line| {
        Some(match line.rsplit_once(' ') {
            Some((sample, _)) if !line.starts_with('#') && which(sample) => format!("{sample} 0"),
            _ => line.to_string(),
        })
    });
}

/// Adds `by` to the value of one `/metrics` sample (`name{labels}` as written).
fn raise_sample(answer: &mut Http, sample: &str, by: f64) {
    edit_lines(answer, |line| {
        Some(match line.rsplit_once(' ') {
            Some((name, n)) if name == sample => {
                format!("{name} {}", n.parse::<f64>().unwrap_or(0.0) + by)
            }
            _ => line.to_string(),
        })
    });
}

/// A UTC timestamp (`…Z`) as the timestamp faults write it: without its
/// zone, or an hour later (UTC+1's local time) still marked `Z`.
fn misdate(fault: Fault, text: &str) -> Option<String> {
    let at = humantime::parse_rfc3339(text).ok()?;
    match fault {
        Fault::TimestampsWithoutZone => Some(text.trim_end_matches(['Z', 'z']).to_string()),
        _ => Some(humantime::format_rfc3339_millis(at + Duration::from_secs(3600)).to_string()),
    }
}

/// Rewrites a text answer line by line (`None` drops the line), keeping
/// its content type.
fn edit_lines(answer: &mut Http, edit: impl Fn(&str) -> Option<String>) {
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let lines: Vec<String> = text.lines().filter_map(edit).collect();
    let content_type = answer
        .header("content-type")
        .unwrap_or("text/plain")
        .to_string();
    answer.set_body(&content_type, &(lines.join("\n") + "\n"));
}

/// A broken limiter's refusal: 429 `rate_limited` with `Retry-After: 60`.
fn too_many_attempts() -> Http {
    let mut answer = Http::answer(
        429,
        json!({"error": "rate_limited", "message": "too many attempts"}),
    );
    answer.set_header("retry-after", "60");
    answer
}

fn query_param(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_string())
    })
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).to_string(), rest));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
