//! WS-DLV-6: nothing acknowledged by the control API is lost on a crash.
//! The server runs as its own process here so it can be killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

const AGENTS: usize = 10;
const PER_AGENT: usize = 100;

/// edge-server as a child process on an ephemeral port.
pub struct Process {
    child: Child,
    pub addr: String,
}

impl Process {
    pub fn start(db: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                db,
                "--log-level",
                "info",
            ])
            .env("EDGE_SECRET", EDGE_SECRET)
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RATE_CONNECTS_PER_MIN", "0")
            .env("RATE_MESSAGES_PER_MIN", "0")
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
