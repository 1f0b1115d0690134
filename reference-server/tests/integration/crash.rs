//! WS-DLV-6: nothing acknowledged by the control API is lost on a crash.
//! The server runs as its own process here so it can be killed with SIGKILL:
//! one instance on SQLite, and one of two instances sharing a PostgreSQL
//! schema (`schema_for`; skipped without `EDGE_TEST_DATABASE_URL`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_server::cluster::postgres::{HEARTBEAT, STALE};
use edge_server::store::postgres::testing::schema_for;
use futures_util::{stream, SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const AGENTS: usize = 10;
const PER_AGENT: usize = 100;

/// edge-server as a child process on an ephemeral port.
pub struct Process {
    child: Child,
    pub addr: String,
}

impl Process {
    /// A server on `db`: a `sqlite://` path, or a `postgres://` URL (a test
    /// schema's, from `schema_for`: several processes on it are one cluster).
    pub fn start(db: &str) -> Process {
        Process::start_with(db, &[])
    }

    /// Like [`Process::start`], with more environment (`INSTANCE_ID`,
    /// `ACK_TIMEOUT`, `LOG_LEVEL`, …): every option of `edge-server --help`
    /// has a variable, and these override the defaults set here.
    pub fn start_with(db: &str, env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_edge-server"));
        command
            .args(["--listen", "127.0.0.1:0", "--database-url", db])
            .env("LOG_LEVEL", "info")
            .env("EDGE_SECRET", EDGE_SECRET)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RATE_CONNECTS_PER_MIN", "0")
            .env("RATE_MESSAGES_PER_MIN", "0");
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("edge-server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the listening address, then keeps draining the log so the
        // server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server prints its address");
        Process { child, addr }
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn api(
    http: &reqwest::Client,
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = http
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_6_kill_9_loses_no_accepted_command_and_completes_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("edge.db").display());
    let http = reqwest::Client::new();

    let first = Process::start(&db);
    for a in 0..AGENTS {
        let (status, _) = api(
            &http,
            &first.addr,
            reqwest::Method::PUT,
            &format!("/api/agents/agent{a}"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let posts = (0..AGENTS * PER_AGENT).map(|i| {
        let (http, addr) = (http.clone(), first.addr.clone());
        async move {
            let body = json!({"command_type": "send_message", "command_id": format!("c{i}"), "parameters": {"i": i}});
            api(&http, &addr, reqwest::Method::POST, &format!("/api/agents/agent{}/commands", i % AGENTS), body).await
        }
    });
    let answers: Vec<(StatusCode, Value)> =
        stream::iter(posts).buffer_unordered(64).collect().await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == StatusCode::ACCEPTED && b["status"] == "queued"),
        "all 1,000 accepted"
    );
    first.kill_9();

    let second = Process::start(&db);
    let url = |a: usize| format!("ws://{}/edge/ws?edge_agent_id=agent{a}", second.addr);
    let mut tasks = Vec::new();
    for a in 0..AGENTS {
        let url = url(a);
        tasks.push(tokio::spawn(async move {
            let mut agent = connect_url(&url, Some(EDGE_SECRET), &[])
                .await
                .expect("reconnects");
            agent.expect("connected").await;
            let mut seen = std::collections::HashSet::new();
            while seen.len() < PER_AGENT {
                let command = agent.expect("command").await;
                let id = command["data"]["command_id"].as_str().unwrap().to_string();
                agent.ack(&id, true).await;
                seen.insert(id);
            }
            agent.round_trip().await;
            seen
        }));
    }
    let mut delivered = std::collections::HashSet::new();
    for task in tasks {
        delivered.extend(task.await.unwrap());
    }
    assert_eq!(
        delivered.len(),
        AGENTS * PER_AGENT,
        "every accepted command arrived"
    );

    for a in 0..AGENTS {
        let path = format!("/api/agents/agent{a}/commands?status=completed");
        let (_, completed) = api(
            &http,
            &second.addr,
            reqwest::Method::GET,
            &path,
            Value::Null,
        )
        .await;
        assert_eq!(
            completed.as_array().unwrap().len(),
            PER_AGENT,
            "agent{a}: all completed"
        );
    }
    let metrics = http
        .get(format!("http://{}/metrics", second.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, r#"edge_commands_total{outcome="completed"}"#),
        (AGENTS * PER_AGENT) as f64,
        "none completed twice"
    );
    assert_eq!(
        metric(&metrics, r#"edge_acks_total{result="duplicate"}"#),
        0.0
    );
}

// ---------------------------------------------------------------------------
// WS-DLV-6 on PostgreSQL (issue 10): kill -9 of one of two instances with
// 10,000 commands in flight: 0 lost, 0 completed twice.

/// Commands posted in one run, to agents that each get `PG_COMMANDS / PG_AGENTS`.
const PG_COMMANDS: usize = 10_000;
const PG_AGENTS: usize = 100;
/// Control-API posts in flight at once.
const POSTS_IN_FLIGHT: usize = 64;
/// The kill comes once the agents have acked this many (of `PG_COMMANDS`).
const KILL_AT_ACKED: usize = 1_000;
/// The whole run, from the servers' start to the last completion, takes at
/// most this. On a quiet 2-core machine (debug build) 19 s and 32 s run
/// one at a time, 52 s both at once; 45–110 s both at once beside other
/// builds (load average 8–11).
const PG_RUN_LIMIT: Duration = Duration::from_secs(180);

/// Which of the two instances is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// The instance holding every agent's socket (commands are posted to
    /// the other one).
    Holder,
    /// The instance the commands are posted to (agents are on the other one).
    Poster,
}

/// Every command id an agent received, with the socket of each receipt
/// (0: its first socket; 1, 2, …: the ones after it failed over).
type Receipts = HashMap<String, Vec<usize>>;

/// One edge agent: connects to `urls[0]`, and after its socket dies to
/// `urls[1]`; acks `completed` for every command it gets, each time it gets
/// it (as a real agent that dedups by id still acks), once `ack_gate` is
/// open (until then it holds its acks back, so the commands stay in flight).
/// Runs until `stop`; returns what it received.
async fn acking_agent(
    agent: String,
    urls: [String; 2],
    acked: Arc<watch::Sender<usize>>,
    mut ack_gate: watch::Receiver<bool>,
    stop: CancellationToken,
) -> Receipts {
    let mut receipts = Receipts::new();
    // Received while the gate was closed, not acked yet.
    let mut held: Vec<String> = Vec::new();
    for socket in 0.. {
        let url = format!("{}?edge_agent_id={agent}", urls[usize::min(socket, 1)]);
        let mut ws = connect_url(&url, Some(EDGE_SECRET), &[])
            .await
            .unwrap_or_else(|e| panic!("{agent} connects to {url}: {e:?}"))
            .ws;
        // A socket that died took its held acks with it: the survivor
        // pushes those commands again.
        held.clear();
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                Ok(()) = ack_gate.changed(), if !*ack_gate.borrow() => {
                    let mut sent = true;
                    for id in held.drain(..) {
                        acked.send_modify(|n| *n += 1);
                        sent &= ws.send(Message::text(ack_of(&id))).await.is_ok();
                    }
                    if !sent {
                        break;
                    }
                    continue;
                }
                () = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return receipts;
                }
            };
            let Some(Ok(frame)) = frame else {
                break; // its instance died: fail over
            };
            let Message::Text(text) = frame else {
                continue;
            };
            let message: Value = serde_json::from_str(&text).expect("server sends JSON");
            if message["type"] != "command" {
                continue;
            }
            let id = message["data"]["command_id"].as_str().unwrap().to_string();
            let sockets = receipts.entry(id.clone()).or_default();
            sockets.push(socket);
            if !*ack_gate.borrow() {
                held.push(id);
                continue;
            }
            if sockets.len() == 1 {
                acked.send_modify(|n| *n += 1);
            }
            if ws.send(Message::text(ack_of(&id))).await.is_err() {
                break;
            }
        }
    }
    unreachable!("the socket loop only ends by returning")
}

fn ack_of(id: &str) -> String {
    json!({"type": "command_ack", "data": {"command_id": id, "success": true, "error": null}})
        .to_string()
}

/// POSTs a command to `urls[0]`, and if that instance does not answer (or
/// answers 5xx), the same command (same id) to `urls[1]`, as a client
/// behind a load balancer would. Returns the answer's status.
async fn post_with_failover(
    http: &reqwest::Client,
    urls: [&str; 2],
    agent: &str,
    id: &str,
) -> StatusCode {
    let body = json!({"command_type": "send_message", "command_id": id, "parameters": {"n": id}});
    for url in urls {
        let sent = http
            .post(format!("http://{url}/api/agents/{agent}/commands"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(answer) if !answer.status().is_server_error() => return answer.status(),
            _ => continue,
        }
    }
    panic!("neither instance answered the post of {id}")
}

/// Runs the scenario with `victim` killed, and checks WS-DLV-6: every
/// accepted command completed, exactly once in the store, and no command
/// pushed again after an ack the store had kept.
async fn kill_9_on_postgres(test: &str, victim: Victim) {
    let Some(url) = schema_for(test).await else {
        return;
    };
    let started = std::time::Instant::now();
    // Info only for the start-up lines: one log line per push and per
    // connection costs the debug build more than the test can spare.
    let quiet = "info,edge_server::delivery=warn,edge_server::session=warn";
    let poster = Process::start_with(&url, &[("INSTANCE_ID", "poster"), ("LOG_LEVEL", quiet)]);
    let holder = Process::start_with(&url, &[("INSTANCE_ID", "holder"), ("LOG_LEVEL", quiet)]);
    let (poster_addr, holder_addr) = (poster.addr.clone(), holder.addr.clone());
    let survivor_addr = match victim {
        Victim::Holder => poster_addr.clone(),
        Victim::Poster => holder_addr.clone(),
    };
    let http = reqwest::Client::new();
    let agents: Vec<String> = (0..PG_AGENTS).map(|a| format!("agent{a:03}")).collect();
    for agent in &agents {
        let (status, _) = api(
            &http,
            &poster_addr,
            Method::PUT,
            &format!("/api/agents/{agent}"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }

    // The agents, on the holder; they fail over to the survivor.
    let ws = |addr: &str| format!("ws://{addr}/edge/ws");
    let (acked, mut acked_rx) = watch::channel(0usize);
    let acked = Arc::new(acked);
    // Killing the holder: the agents hold their acks until every command
    // was accepted, so at the kill ~9,000 accepted commands are pushed and
    // unacked. Killing the poster: acks flow at once, the kill comes while
    // posts are in flight.
    let (ack_gate, ack_gate_rx) = watch::channel(victim == Victim::Poster);
    let stop = CancellationToken::new();
    let agent_tasks: Vec<_> = agents
        .iter()
        .map(|agent| {
            let urls = [ws(&holder_addr), ws(&survivor_addr)];
            tokio::spawn(acking_agent(
                agent.clone(),
                urls,
                acked.clone(),
                ack_gate_rx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for agent in &agents {
        wait_until(
            &http,
            &poster_addr,
            &format!("/api/agents/{agent}"),
            "the agent is connected",
            |v| v["connected"] == true,
        )
        .await;
    }

    // 10,000 commands posted to the poster, 64 at a time; a post it does not
    // answer goes to the holder with the same id.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posting = {
        let (http, answered) = (http.clone(), answered.clone());
        let urls = [poster_addr.clone(), holder_addr.clone()];
        let agents = agents.clone();
        tokio::spawn(async move {
            stream::iter(0..PG_COMMANDS)
                .map(|i| {
                    let (http, answered, urls, agent) = (
                        http.clone(),
                        answered.clone(),
                        urls.clone(),
                        agents[i % PG_AGENTS].clone(),
                    );
                    async move {
                        let id = format!("c{i:05}");
                        let status =
                            post_with_failover(&http, [&urls[0], &urls[1]], &agent, &id).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        (id, status)
                    }
                })
                .buffer_unordered(POSTS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
        })
    };

    let mut posting = posting;
    let answered_early = if victim == Victim::Holder {
        let answers = tokio::time::timeout(PG_RUN_LIMIT, &mut posting)
            .await
            .unwrap_or_else(|_| panic!("the {PG_COMMANDS} posts were not answered in time"))
            .unwrap();
        ack_gate.send_replace(true);
        Some(answers)
    } else {
        None
    };
    // While commands flow (a real event, not a sleep): kill -9.
    let acked_by_kill =
        tokio::time::timeout(PG_RUN_LIMIT, acked_rx.wait_for(|n| *n >= KILL_AT_ACKED))
            .await
            .unwrap_or_else(|_| {
                panic!("the agents did not ack {KILL_AT_ACKED} commands within {PG_RUN_LIMIT:?}")
            })
            .map(|n| *n)
            .unwrap();
    let answered_by_kill = answered.load(Ordering::Relaxed);
    let killed_after = started.elapsed();
    match victim {
        Victim::Holder => holder.kill_9(),
        Victim::Poster => poster.kill_9(),
    }
    assert!(
        acked_by_kill < PG_COMMANDS,
        "the kill came after every command was acked: nothing was in flight"
    );

    let answers = match answered_early {
        Some(answers) => answers,
        None => tokio::time::timeout(PG_RUN_LIMIT, posting)
            .await
            .unwrap_or_else(|_| {
                panic!("the {PG_COMMANDS} posts were not answered within {PG_RUN_LIMIT:?}")
            })
            .unwrap(),
    };
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, s)| *s != StatusCode::ACCEPTED && *s != StatusCode::OK)
        .collect();
    assert!(refused.is_empty(), "posts not accepted: {refused:?}");
    // 200: stored by the victim before it died, its answer lost with it.
    let accepted_before = answers.iter().filter(|(_, s)| *s == StatusCode::OK).count();

    // Nothing lost: the store completes every accepted command.
    let deadline = started + PG_RUN_LIMIT;
    let stats = loop {
        let (_, stats) = api(
            &http,
            &survivor_addr,
            Method::GET,
            "/api/stats",
            Value::Null,
        )
        .await;
        if stats["commands"]["completed"] == PG_COMMANDS {
            break stats;
        }
        if std::time::Instant::now() > deadline {
            let stuck = not_completed(&url).await;
            panic!(
                "{victim:?} killed: not every accepted command completed within {PG_RUN_LIMIT:?}: \
                 {stats}; not completed (id, status, attempts): {stuck:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    let mut receipts = Receipts::new();
    for task in agent_tasks {
        receipts.extend(task.await.unwrap());
    }
    let metrics = http
        .get(format!("http://{survivor_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Completed once each: PG_COMMANDS rows, all completed.
    assert_eq!(
        receipts.len(),
        PG_COMMANDS,
        "every accepted command reached its agent"
    );
    let pending: u64 = [
        "queued",
        "sent",
        "received",
        "executing",
        "failed",
        "expired",
        "dead",
    ]
    .iter()
    .map(|s| stats["commands"][s].as_u64().unwrap())
    .sum();
    assert_eq!(pending, 0, "only completed commands in the store: {stats}");
    let (rows, completed, pushes) = sql_counts(&url).await;
    assert_eq!(
        (rows, completed),
        (PG_COMMANDS as i64, PG_COMMANDS as i64),
        "the commands table holds each accepted command once, completed"
    );
    // Never pushed again after a kept ack: an agent acks every push, so a
    // push of a completed command comes back as an ack the survivor counts
    // as a duplicate.
    assert_eq!(
        metric(&metrics, r#"edge_acks_total{result="duplicate"}"#),
        0.0,
        "the survivor pushed a command that had completed"
    );
    // Pushed again only after the victim died, and only what was acked to
    // it: at most one receipt per socket, and none twice on the survivor.
    let twice_on_one_socket: Vec<_> = receipts
        .iter()
        .filter(|(_, sockets)| sockets.windows(2).any(|w| w[0] == w[1]))
        .collect();
    assert!(
        twice_on_one_socket.is_empty(),
        "pushed twice on one socket: {twice_on_one_socket:?}"
    );
    let again: Vec<&String> = receipts
        .iter()
        .filter(|(_, sockets)| sockets.len() > 1)
        .map(|(id, _)| id)
        .collect();
    let failed_over: Vec<_> = receipts
        .iter()
        .filter(|(_, sockets)| sockets.iter().any(|s| *s > 0))
        .collect();
    match victim {
        // The victim's acks not yet committed when it died come again
        // from the survivor, once (WS-DLV-4); each was acked on the victim.
        Victim::Holder => {
            assert!(!failed_over.is_empty(), "no agent failed over");
            assert!(
                receipts
                    .values()
                    .all(|s| s.len() == 1 || (s.len() == 2 && s[0] == 0 && s[1] > 0)),
                "pushed again other than once after the failover"
            );
        }
        // The agents never lost their sockets: each command came once.
        Victim::Poster => {
            assert!(
                failed_over.is_empty(),
                "an agent lost its socket on the survivor"
            );
            assert!(again.is_empty(), "pushed twice: {again:?}");
        }
    }
    // The survivor forgets the dead instance once it has been silent for
    // STALE: its row and its sockets' rows go, so crashes leave nothing
    // behind in the cluster's tables.
    let victim_name = match victim {
        Victim::Holder => "holder",
        Victim::Poster => "poster",
    };
    wait_forgotten(&url, victim_name, STALE + 3 * HEARTBEAT).await;
    eprintln!(
        "{victim:?} killed after {:.1?}, with {acked_by_kill} of {PG_COMMANDS} acked and \
         {answered_by_kill} posts answered; {accepted_before} posts answered 200 after the \
         failover (stored by the victim, answer lost); {} commands pushed again after the \
         failover (acked to the victim, ack lost with it: legitimate at-least-once); duplicate \
         acks on the survivor: 0; {PG_COMMANDS} completed in the store after {pushes} pushes \
         (attempts); run took {:.1?}",
        killed_after,
        again.len(),
        started.elapsed(),
    );
}

/// Polls `GET {path}` on `addr` until `done` holds (bounded by `PROMPT`).
async fn wait_until(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let (_, body) = api(http, addr, Method::GET, path, Value::Null).await;
        if done(&body) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: never {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the schema at `url` (no event says when an instance is forgotten)
/// until instance `name` has no row in `instances` and no socket is left
/// whose instance has none; fails after `within`.
async fn wait_forgotten(url: &str, name: &str, within: Duration) {
    let client = sql(url).await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM instances WHERE name = $1), \
                 (SELECT count(*) FROM agent_sockets \
                 WHERE instance_tag NOT IN (SELECT tag FROM instances))",
                &[&name],
            )
            .await
            .expect("count instances and sockets");
        let (instances, orphans): (i64, i64) = (row.get(0), row.get(1));
        if (instances, orphans) == (0, 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {name} not forgotten {within:?} after its death: {instances} rows in \
             `instances`, {orphans} sockets of no live instance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows in `commands`, how many are completed, and the pushes they took
/// (the sum of `attempts`), read with SQL.
async fn sql_counts(url: &str) -> (i64, i64, i64) {
    let row = sql(url)
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed'), \
             coalesce(sum(attempts), 0)::BIGINT FROM commands",
            &[],
        )
        .await
        .expect("count commands");
    (row.get(0), row.get(1), row.get(2))
}

/// The commands of the schema at `url` that are not completed, read with
/// SQL (for the failure message).
async fn not_completed(url: &str) -> Vec<(String, String, i64)> {
    sql(url)
        .await
        .query("SELECT id, status, attempts FROM commands WHERE status <> 'completed' ORDER BY id LIMIT 50", &[])
        .await
        .expect("read commands")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Killing the instance that holds the agents' sockets is the reading a
/// user feels most: all 10,000 commands accepted and pushed, the agents
/// acking (acks held until every post was answered), and the kill after
/// 1,000 acks, so ~9,000 accepted commands are in flight. Its agents lose
/// their sockets, acks it had not committed die with it, and everything it
/// had claimed must reach the agents again from the survivor (WS-DLV-4,
/// WS-DLV-6) without re-pushing anything already completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_6_postgres_kill_9_of_the_instance_holding_the_sockets_with_10000_in_flight() {
    let test = "ws_dlv_6_postgres_kill_9_of_the_instance_holding_the_sockets_with_10000_in_flight";
    kill_9_on_postgres(test, Victim::Holder).await;
}

/// The other reading: the instance taking the posts dies. A post in flight
/// gets no answer and is retried on the other instance with the same id
/// (WS-API-2 idempotency); whatever the victim stored before it died must
/// still reach the agents, who never notice the death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_6_postgres_kill_9_of_the_instance_taking_the_posts_with_10000_in_flight() {
    let test = "ws_dlv_6_postgres_kill_9_of_the_instance_taking_the_posts_with_10000_in_flight";
    kill_9_on_postgres(test, Victim::Poster).await;
}

/// WS-DLV-4 on PostgreSQL: an instance restarted under its name (kill -9,
/// then the same `INSTANCE_ID`, as an orchestrator restarts a pod) forgets
/// the sockets of its old process as it starts, not `STALE` later. A
/// command for one of those agents is stored `queued` for the agent's next
/// connection, not as pushed to a socket that died (whose ack timeouts
/// would spend its attempts while the agent is away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_4_an_instance_restarted_under_its_name_forgets_its_old_sockets_at_once() {
    let test = "ws_dlv_4_an_instance_restarted_under_its_name_forgets_its_old_sockets_at_once";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let a = TestServer::start_pg(&url, |_| {}).await;
    a.provision("x").await;
    let b = Process::start_with(&url, &[("INSTANCE_ID", "b")]);
    let socket = format!("ws://{}/edge/ws?edge_agent_id=x", b.addr);
    let mut agent = connect_url(&socket, Some(EDGE_SECRET), &[])
        .await
        .expect("connects");
    agent.expect("connected").await;
    a.wait_agent("x", |v| v["instance"] == "b").await;

    b.kill_9();
    // Serving means started: the old process's rows were forgotten first.
    let _b = Process::start_with(&url, &[("INSTANCE_ID", "b")]);
    let (status, body) = a
        .command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::ACCEPTED, &json!("queued")),
        "stored as pushed to the dead process's socket: {body}"
    );
}
