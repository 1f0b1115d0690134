//! Several instances on one PostgreSQL database (the "Railway" deployment):
//! a command reaches an agent held by another instance, a duplicate
//! connection on another instance takes over (WS-CONN-2), and the death of
//! an instance (kill -9) loses nothing (WS-DLV-6). Each test uses a fresh
//! schema of `EDGE_TEST_DATABASE_URL`, and without one prints why it skips.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_server::cluster::postgres::HEARTBEAT;
use edge_server::store::postgres::testing::{cut_listener, notify_instance, schema_for};
use futures_util::{stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::as_posted::{
    assert_member_as_posted, assert_parameters_as_posted, command_body, CONFIG, PARAMETERS, STATUS,
};
use crate::crash::{api, Process};
use crate::support::*;

/// WS-DLV-1 without the notification: commands stored for an agent held by
/// B, with no announcement at all (as if the submitter died between its
/// commit and its NOTIFY), are pushed by B on its own within a few seconds:
/// one stored as pushed to B's socket, one left `queued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_lost_announcement_costs_latency_not_the_command() {
    let test = "ws_dlv_1_a_lost_announcement_costs_latency_not_the_command";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (_b, mut agent) = agent_on_one(&url).await;
    // Stored straight into the database: nobody announces it.
    let policy = edge_server::store::DeliveryPolicy::PROTOCOL_DEFAULTS;
    let store = edge_server::store::postgres::PgStore::open(&url, policy)
        .await
        .unwrap();
    let now = edge_server::wire::now_millis();
    let command = edge_server::store::NewCommand {
        id: "stranded".into(),
        agent_id: "x".into(),
        command_type: "send_message".into(),
        parameters: edge_server::raw_json::RawJson::parse("{}".to_string()).unwrap(),
        priority: edge_server::store::Priority::Normal,
        created_at: now,
        expires_at: None,
    };
    let stored = edge_server::store::Store::insert_command(&store, command, None)
        .await
        .unwrap();
    assert!(matches!(
        stored,
        edge_server::store::InsertOutcome::Created(_)
    ));
    // And one left `queued` while its agent is connected here (as a claim
    // that failed would leave it).
    store_unannounced(&url, "x", "left", None).await;
    let mut pushed = HashSet::new();
    for _ in 0..2 {
        let command = agent
            .recv_within(Duration::from_secs(10))
            .await
            .expect("pushed without a notification");
        assert_eq!(command["type"], "command", "{command}");
        pushed.insert(command["data"]["command_id"].as_str().unwrap().to_string());
    }
    assert_eq!(pushed, HashSet::from(["stranded".into(), "left".into()]));
}

/// The heartbeat's scan reads every socket of the instance, however many:
/// a lost announcement for an agent whose socket sorts after a thousand
/// others on the same instance is still found (a scan bounded by sockets,
/// like its bound on the commands it returns, would miss it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_lost_announcement_is_found_behind_a_thousand_sockets() {
    let test = "ws_dlv_1_a_lost_announcement_is_found_behind_a_thousand_sockets";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (b, mut agent) = agent_on_one(&url).await;
    // A thousand sockets of B that sort before `x` (with nothing pending).
    sql(&url)
        .await
        .execute(
            "INSERT INTO agent_sockets (agent_id, instance_tag, conn_id, connected_at, remote_addr) \
             SELECT 'a' || lpad(g::TEXT, 4, '0'), i.tag, g, 0, '127.0.0.1' \
             FROM generate_series(1, 1000) g, instances i WHERE i.name = $1",
            &[&b.instance()],
        )
        .await
        .unwrap();
    store_unannounced(&url, "x", "left", None).await;
    let command = agent
        .recv_within(Duration::from_secs(10))
        .await
        .expect("found by the heartbeat's scan");
    assert_eq!(command["data"]["command_id"], "left", "{command}");
}

/// One instance on the schema at `url`, and agent `x` connected to it.
async fn agent_on_one(url: &str) -> (TestServer, Agent) {
    let b = TestServer::start_pg(url, |_| {}).await;
    b.provision("x").await;
    let agent = b.connect("x").await;
    b.wait_agent("x", |v| v["connected"] == true).await;
    (b, agent)
}

/// Two instances on the schema at `url`, and agent `x` connected to B, which
/// A sees holding it.
async fn agent_on_b(url: &str) -> (TestServer, TestServer, Agent) {
    let a = TestServer::start_pg(url, |_| {}).await;
    let b = TestServer::start_pg(url, |_| {}).await;
    a.provision("x").await;
    let agent = b.connect("x").await;
    a.wait_agent("x", |v| v["instance"] == b.instance()).await;
    (a, b, agent)
}

/// Stores command `id` for `agent` straight into the database, as a submit
/// that stopped between storing and routing would leave it (nobody
/// announces it): `queued`, or with `conn` as attempt 1 pushed to that
/// connection (its ack due in an hour).
async fn store_unannounced(url: &str, agent: &str, id: &str, conn: Option<i64>) {
    let now = edge_server::wire::now_millis();
    let status = if conn.is_some() { "sent" } else { "queued" };
    sql(url)
        .await
        .execute(
            "INSERT INTO commands (id, agent_id, command_type, parameters, priority, status, \
             attempts, created_at, sent_at, ack_deadline, conn_id) \
             VALUES ($1, $2, 'send_message', '{}', $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &agent,
                &edge_server::store::Priority::Normal.rank(),
                &status,
                &i64::from(conn.is_some()),
                &now,
                &conn.map(|_| now),
                &conn.map(|_| now + 3_600_000),
                &conn,
            ],
        )
        .await
        .unwrap();
}

/// WS-DLV-1 across instances for a command left `queued` while its agent is
/// held elsewhere (its first submit stopped between storing and routing):
/// the repeat posted to A is announced to the holder B, which claims and
/// pushes it at once, not when its heartbeat's scan comes round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_repeat_of_a_queued_command_is_announced_to_the_holder() {
    let test = "ws_dlv_1_a_repeat_of_a_queued_command_is_announced_to_the_holder";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, _b, mut agent) = agent_on_b(&url).await;

    let stored = Instant::now();
    store_unannounced(&url, "x", "left", None).await;

    let (status, body) = a
        .command(
            "x",
            json!({"command_type": "send_message", "command_id": "left"}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("queued")),
        "{body}"
    );
    let pushed = agent.expect("command").await;
    // The scan only takes commands older than HEARTBEAT: a push sooner than
    // that after the command was stored came from A's announcement.
    assert!(
        stored.elapsed() < HEARTBEAT,
        "pushed {:?} after the command was stored: found by the heartbeat, not announced",
        stored.elapsed()
    );
    assert_eq!(pushed["data"]["command_id"], "left", "{pushed}");
    agent.ack("left", true).await;
    a.wait_status("left", "completed", PROMPT).await;
}

/// WS-DLV-1 across instances without a claim: A stores the command as
/// pushed to B's socket and announces it; B pushes it once, even when the
/// announcement comes again (a notifier retrying, a scan), and the agent's
/// ack completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_push_announced_twice_is_pushed_once() {
    let test = "ws_dlv_1_a_push_announced_twice_is_pushed_once";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b, mut agent) = agent_on_b(&url).await;
    let first = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    // Stored as attempt 1 on B's socket at once: A's answer says so.
    let (_, stored) = a.get(&format!("/api/commands/{first}")).await;
    assert_eq!(
        (stored["status"].as_str(), stored["attempts"].as_u64()),
        (Some("sent"), Some(1)),
        "{stored}"
    );
    let pushed = agent.expect("command").await;
    assert_eq!(pushed["data"]["command_id"], first.as_str());
    assert_eq!(pushed["data"]["attempt"], 1);

    let again = json!({"kind": "push", "ids": [first]}).to_string();
    notify_instance(&url, &b.instance(), &again).await.unwrap();
    notify_instance(&url, &b.instance(), &again).await.unwrap();
    // B's inbox takes notifications in order: the next command's push
    // comes after both repeats were handled.
    let second = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    let next = agent.expect("command").await;
    assert_eq!(next["data"]["command_id"], second.as_str(), "{next}");
    agent.ack(&first, true).await;
    agent.ack(&second, true).await;
    b.wait_status(&first, "completed", PROMPT).await;
    b.wait_status(&second, "completed", PROMPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_command_posted_to_one_instance_reaches_the_agent_on_another() {
    let test = "ws_dlv_1_a_command_posted_to_one_instance_reaches_the_agent_on_another";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let a = TestServer::start_pg(&url, |_| {}).await;
    let b = TestServer::start_pg(&url, |_| {}).await;
    assert_ne!(a.instance(), b.instance());
    a.provision("x").await;
    let mut agent = b.connect("x").await;

    // GET /api/agents/{id} on A says B holds the socket.
    let seen = a
        .wait_agent("x", |v| {
            v["connected"] == true && v["instance"] == b.instance()
        })
        .await;
    assert!(seen["connected_since"].is_string(), "{seen}");
    let (_, listed) = a.get("/api/agents?connected=true").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Accepted by A, pushed by B at once (one NOTIFY, no polling). The
    // heartbeat's scan for stranded commands only takes those older than
    // HEARTBEAT, so a push sooner than that came from the announcement.
    let posted = Instant::now();
    let id = a
        .send_command(
            "x",
            json!({"command_type": "send_message", "parameters": {"m": 1}}),
        )
        .await;
    let command = agent.expect("command").await;
    assert!(
        posted.elapsed() < HEARTBEAT,
        "pushed {:?} after the POST: found by the heartbeat, not announced",
        posted.elapsed()
    );
    assert_eq!(command["data"]["command_id"], id);
    assert_eq!(command["data"]["attempt"], 1);
    agent.ack(&id, true).await;
    a.wait_status(&id, "completed", PROMPT).await;

    // WS-CFG-1 through A, and a retried command through A.
    let (status, body) = a
        .api(
            Method::POST,
            "/api/agents/x/config",
            Some(json!({"log_level": "debug"})),
        )
        .await;
    assert_eq!(
        (status, &body["delivered"]),
        (StatusCode::ACCEPTED, &json!(true))
    );
    let update = agent.expect("config_update").await;
    assert_eq!(update["data"]["log_level"], "debug");
    // Longer than a NOTIFY can carry (8,000 bytes): it goes all the same.
    let big = "x".repeat(20_000);
    let (status, body) = a
        .api(
            Method::POST,
            "/api/agents/x/config",
            Some(json!({"allow_list": big})),
        )
        .await;
    assert_eq!(
        (status, &body["delivered"]),
        (StatusCode::ACCEPTED, &json!(true))
    );
    let update = agent.expect("config_update").await;
    assert_eq!(update["data"]["allow_list"], big);

    // The agent goes away: A sees it disconnected, and queues.
    agent.close().await;
    a.wait_agent("x", |v| v["connected"] == false).await;
    let (status, body) = a
        .command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::ACCEPTED, &json!("queued"))
    );
    let mut agent = a.connect("x").await;
    assert_eq!(
        agent.expect("command").await["data"]["command_id"],
        body["command_id"]
    );
    b.wait_agent("x", |v| v["instance"] == a.instance()).await;
}

/// WS-CMD-2 on PostgreSQL: what A accepts reaches the agent on B (and back)
/// as posted, through the store, NOTIFY and `cluster_messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_cmd_2_relayed_as_posted_across_instances() {
    let Some(url) = schema_for("ws_cmd_2_relayed_as_posted_across_instances").await else {
        return;
    };
    let fast_redelivery = |c: &mut edge_server::Config| c.ack_timeout = Duration::from_millis(300);
    let a = TestServer::start_pg(&url, fast_redelivery).await;
    let b = TestServer::start_pg(&url, fast_redelivery).await;
    a.provision("x").await;
    let mut agent = b.connect("x").await;
    a.wait_agent("x", |v| v["instance"] == b.instance()).await;

    // Posted to A, stored in PostgreSQL, pushed by B, then redelivered by B.
    let (status, answer) = a
        .post_text("/api/agents/x/commands", ADMIN_TOKEN, &command_body("c1"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    for attempt in [1, 2] {
        let (text, frame) = agent.expect_text("command").await;
        assert_eq!(frame["data"]["attempt"], attempt, "{text}");
        assert_parameters_as_posted(&text);
    }
    // Pushed by A from the store when the agent reconnects there.
    agent.close().await;
    let mut agent = a.connect("x").await;
    let (text, _) = agent.expect_text("command").await;
    assert_parameters_as_posted(&text);
    agent.ack("c1", true).await;
    b.wait_status("c1", "completed", PROMPT).await;
    let shown = b.get_text("/api/commands/c1").await;
    assert_member_as_posted(&shown, "parameters", PARAMETERS);

    // A config posted to B reaches the agent on A: in a NOTIFY, and past
    // 8,000 bytes through `cluster_messages`.
    b.wait_agent("x", |v| v["instance"] == a.instance()).await;
    let long = format!(
        r#"{{"zeta":"{}","10":1,"9":2.50,"a":{{"y":[],"x":12345678901234567890123}}}}"#,
        "p".repeat(9_000)
    );
    for config in [CONFIG, long.as_str()] {
        let (status, answer) = b
            .post_text("/api/agents/x/config", ADMIN_TOKEN, config)
            .await;
        assert_eq!(
            (status, answer.as_str()),
            (StatusCode::ACCEPTED, r#"{"delivered":true}"#)
        );
        let (text, _) = agent.expect_text("config_update").await;
        assert_member_as_posted(&text, "data", config);
    }
    // The long one was taken from `cluster_messages` as it was delivered,
    // not left for the heartbeat's sweep of old messages.
    let left: i64 = sql(&url)
        .await
        .query_one("SELECT COUNT(*) FROM cluster_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a delivered cluster message was left in the table");

    // A status sent to A, as B's control API shows it.
    agent
        .send(Message::text(format!(
            r#"{{"type":"status","data":{STATUS}}}"#
        )))
        .await;
    assert!(agent.round_trip().await.is_empty());
    for path in ["/api/agents/x", "/api/agents?connected=true"] {
        let shown = b.get_text(path).await;
        assert_member_as_posted(&shown, "last_status", STATUS);
    }

    // Queued through A while the agent is away; fetched by sync from B.
    agent.close().await;
    a.wait_agent("x", |v| v["connected"] == false).await;
    let (status, answer) = a
        .post_text("/api/agents/x/commands", ADMIN_TOKEN, &command_body("c2"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = b
        .post_text("/edge/sync", EDGE_SECRET, r#"{"edge_agent_id":"x"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.contains(r#""command_id":"c2""#), "{answer}");
    assert_parameters_as_posted(&answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_conn_2_a_duplicate_on_another_instance_closes_the_old_socket_with_4000() {
    let test = "ws_conn_2_a_duplicate_on_another_instance_closes_the_old_socket_with_4000";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let a = TestServer::start_pg(&url, |_| {}).await;
    let b = TestServer::start_pg(&url, |_| {}).await;
    let mut old = a.agent("x").await;
    let id = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(old.expect("command").await["data"]["attempt"], 1);

    // The same agent connects to B: A closes its socket with 4000 ...
    let mut new = b.connect("x").await;
    assert_eq!(
        old.ended(PROMPT).await,
        Ended::Closed(4000, "replaced".into())
    );
    // ... and the unacked command goes to the new socket.
    let again = new.expect("command").await;
    assert_eq!(again["data"]["command_id"], id);
    assert_eq!(again["data"]["attempt"], 2);
    new.ack(&id, true).await;
    b.wait_status(&id, "completed", PROMPT).await;

    // From now on A routes to B.
    a.wait_agent("x", |v| v["instance"] == b.instance()).await;
    let next = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(new.expect("command").await["data"]["command_id"], next);
    let (_, history) = b.get("/api/agents/x").await;
    assert_eq!(history["history"][1]["reason"], "replaced", "{history}");
}

/// WS-CONN-2 on one instance, seen from another: the replaced socket's end
/// does not erase the record of the socket that replaced it, so A still
/// sees the agent on B and its commands reach the new socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_conn_2_a_duplicate_on_the_same_instance_stays_reachable_from_another() {
    let test = "ws_conn_2_a_duplicate_on_the_same_instance_stays_reachable_from_another";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let a = TestServer::start_pg(&url, |_| {}).await;
    let b = TestServer::start_pg(&url, |_| {}).await;
    a.provision("x").await;
    let mut old = b.connect("x").await;
    let mut new = b.connect("x").await;
    assert_eq!(
        old.ended(PROMPT).await,
        Ended::Closed(4000, "replaced".into())
    );
    // The old session has ended: it released its socket's record, then
    // recorded its disconnect.
    b.wait_agent("x", |v| v["history"][1]["disconnected_at"].is_string())
        .await;
    let (_, seen) = a.get("/api/agents/x").await;
    assert_eq!(
        (&seen["connected"], &seen["instance"]),
        (&json!(true), &json!(b.instance())),
        "{seen}"
    );
    let id = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(new.expect("command").await["data"]["command_id"], id);
}

/// WS-CONN-2: a takeover message names the connection it closes. One for a
/// connection already gone (the agent came back to B since) leaves the
/// agent's socket on B open: the command posted next reaches it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_conn_2_a_takeover_of_a_socket_already_gone_leaves_the_new_one_open() {
    let test = "ws_conn_2_a_takeover_of_a_socket_already_gone_leaves_the_new_one_open";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b, mut agent) = agent_on_b(&url).await;
    // Connection 1 is no connection of B's (its ids carry its tag).
    let stale = json!({"kind": "kick", "agent": "x", "conn": 1}).to_string();
    notify_instance(&url, &b.instance(), &stale).await.unwrap();
    // B's inbox takes notifications in order: the push comes after the kick.
    let id = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(agent.expect("command").await["data"]["command_id"], id);
}

/// WS-DLV-1 across instances: a `push` message makes B push only what is
/// stored as pushed to the agent's socket there. Announced (again) after
/// it completed, or for a command stored as pushed to another connection,
/// nothing goes out: the command posted next is the next the agent gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_push_message_for_a_command_not_pushed_to_this_socket_sends_nothing() {
    let test = "ws_dlv_1_a_push_message_for_a_command_not_pushed_to_this_socket_sends_nothing";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b, mut agent) = agent_on_b(&url).await;
    let done = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(agent.expect("command").await["data"]["command_id"], done);
    agent.ack(&done, true).await;
    a.wait_status(&done, "completed", PROMPT).await;
    // Stored as pushed to connection 1, which is not the agent's socket.
    store_unannounced(&url, "x", "elsewhere", Some(1)).await;

    let stale = json!({"kind": "push", "ids": [done, "elsewhere"]}).to_string();
    notify_instance(&url, &b.instance(), &stale).await.unwrap();
    // B's inbox takes notifications in order: the next push comes after.
    let next = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(agent.expect("command").await["data"]["command_id"], next);
}

/// WS-DLV-1 across instances without a read: a `push` that carries its
/// row (as A's notifier sends every row that fits) is pushed as carried,
/// even for a command B could not have read (here: one never stored). A
/// carried row stored as pushed to another connection, no longer `sent`,
/// or past its TTL (WS-DLV-7; the sweeper may not have marked it yet),
/// sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_a_push_that_carries_its_row_is_pushed_without_a_read() {
    let test = "ws_dlv_1_a_push_that_carries_its_row_is_pushed_without_a_read";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b, mut agent) = agent_on_b(&url).await;
    let conn: i64 = sql(&url)
        .await
        .query_one(
            "SELECT conn_id FROM agent_sockets WHERE agent_id = 'x'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let now = edge_server::wire::now_millis();
    let row = |id: &str, status: &str, conn: i64| {
        json!({
            "seq": 1, "id": id, "agent_id": "x", "command_type": "send_message",
            "parameters": {"carried": true}, "priority": "normal", "status": status,
            "attempts": 1, "created_at": now, "expires_at": null, "sent_at": now,
            "ack_deadline": now + 30_000, "next_attempt_at": now + 31_000,
            "acked_at": null, "completed_at": null, "error": null,
            "delivered_via": "ws", "conn_id": conn,
        })
    };
    let mut expired = row("expired", "sent", conn);
    expired["expires_at"] = json!(now - 1);
    let push = json!({
        "kind": "push",
        "ids": ["elsewhere", "done", "expired", "carried"],
        "rows": [row("elsewhere", "sent", 1), row("done", "completed", conn), expired, row("carried", "sent", conn)],
    });
    notify_instance(&url, &b.instance(), &push.to_string())
        .await
        .unwrap();
    let pushed = agent.expect("command").await;
    assert_eq!(pushed["data"]["command_id"], "carried", "{pushed}");
    assert_eq!(pushed["data"]["parameters"], json!({"carried": true}));
    // B's inbox takes notifications in order: nothing else came before the
    // next command's push.
    let next = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(agent.expect("command").await["data"]["command_id"], next);
}

/// An instance that could not hear the cluster for a while (its LISTEN
/// connection cut) makes up for what it missed once it listens again: a
/// command posted meanwhile reaches its agent (WS-DLV-1), and a socket taken
/// over meanwhile closes with 4000 (WS-CONN-2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_1_messages_lost_while_an_instance_could_not_listen_are_made_up_for() {
    let test = "ws_dlv_1_messages_lost_while_an_instance_could_not_listen_are_made_up_for";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b, mut old) = agent_on_b(&url).await;

    // B's notifications go nowhere now; the command's NOTIFY is lost.
    cut_listener(&url, &b.instance()).await.unwrap();
    let posted = Instant::now();
    let id = a
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    let command = old.expect("command").await;
    // B listens again within a fraction of a second and looks for what it
    // missed at once; its heartbeat's scan only takes commands older than
    // HEARTBEAT.
    assert!(
        posted.elapsed() < HEARTBEAT,
        "pushed {:?} after the POST: found by the heartbeat, not when B listened again",
        posted.elapsed()
    );
    assert_eq!(command["data"]["command_id"], id);
    assert_eq!(command["data"]["attempt"], 1);
    old.ack(&id, true).await;
    a.wait_status(&id, "completed", PROMPT).await;

    // Again, and the agent connects to A meanwhile: the kick is lost too.
    cut_listener(&url, &b.instance()).await.unwrap();
    let mut new = a.connect("x").await;
    assert_eq!(
        old.ended(PROMPT).await,
        Ended::Closed(4000, "replaced".into())
    );
    let next = b
        .send_command("x", json!({"command_type": "send_message"}))
        .await;
    assert_eq!(new.expect("command").await["data"]["command_id"], next);
}

const AGENTS: usize = 10;
const PER_AGENT: usize = 100;

/// One simulated agent: connects to `urls[0]`, acks everything at once, and
/// reconnects to `urls[1]` when its socket dies, until it has seen all of
/// its commands. Returns how many pushes it got.
async fn agent_until_done(
    agent: usize,
    urls: [String; 2],
    seen: Arc<Mutex<HashSet<String>>>,
) -> usize {
    let mut pushes = 0;
    let mut url = &urls[0];
    loop {
        let mut socket = connect_url(
            &format!("{url}?edge_agent_id=agent{agent}"),
            Some(EDGE_SECRET),
            &[],
        )
        .await
        .expect("upgrade accepted");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), socket.ws.next())
                .await
                .expect("commands keep coming");
            let Some(Ok(Message::Text(text))) = frame else {
                break; // the instance died: reconnect to the other one
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["type"] != "command" {
                continue;
            }
            pushes += 1;
            let id = message["data"]["command_id"].as_str().unwrap().to_string();
            if !socket.try_ack(&id, true).await {
                break; // killed before the ack went out: it is pushed again
            }
            let done = {
                let mut seen = seen.lock().unwrap();
                seen.insert(id);
                seen.len() == PER_AGENT
            };
            if done {
                // The last ack is stored before the socket closes.
                socket.round_trip().await;
                return pushes;
            }
        }
        url = &urls[1];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_dlv_6_kill_9_of_one_instance_with_1000_in_flight_loses_none_completes_none_twice() {
    let test = "ws_dlv_6_kill_9_of_one_instance_with_1000_in_flight_loses_none";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let victim = Process::start(&url);
    let survivor = Process::start(&url);
    let http = reqwest::Client::new();
    for a in 0..AGENTS {
        let (status, _) = api(
            &http,
            &survivor.addr,
            Method::PUT,
            &format!("/api/agents/agent{a}"),
            json!({}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let ws = |addr: &str| format!("ws://{addr}/edge/ws");
    // Half the agents on each instance; the victim's move when it dies.
    let seen: Vec<Arc<Mutex<HashSet<String>>>> = (0..AGENTS).map(|_| Arc::default()).collect();
    let agents: Vec<_> = (0..AGENTS)
        .map(|a| {
            let first = if a % 2 == 0 {
                &victim.addr
            } else {
                &survivor.addr
            };
            let urls = [ws(first), ws(&survivor.addr)];
            tokio::spawn(agent_until_done(a, urls, seen[a].clone()))
        })
        .collect();
    for a in 0..AGENTS {
        let holder = if a % 2 == 0 {
            &victim.addr
        } else {
            &survivor.addr
        };
        loop {
            let (_, v) = api(
                &http,
                holder,
                Method::GET,
                &format!("/api/agents/agent{a}"),
                Value::Null,
            )
            .await;
            if v["connected"] == true {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // 1,000 commands, half posted to each instance; a post the victim does
    // not answer is posted again (same id) to the survivor, as a client
    // behind a load balancer would.
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let posting = {
        let (http, victim, survivor) = (http.clone(), victim.addr.clone(), survivor.addr.clone());
        tokio::spawn(async move {
            stream::iter(0..AGENTS * PER_AGENT)
                .map(|i| {
                    let (http, answered) = (http.clone(), answered_tx.clone());
                    let first = if i % 2 == 0 {
                        victim.clone()
                    } else {
                        survivor.clone()
                    };
                    let survivor = survivor.clone();
                    async move {
                        let path = format!("/api/agents/agent{}/commands", i % AGENTS);
                        let body =
                            json!({"command_type": "send_message", "command_id": format!("c{i}")});
                        let request = http
                            .post(format!("http://{first}{path}"))
                            .bearer_auth(ADMIN_TOKEN)
                            .json(&body)
                            .send()
                            .await;
                        let status = match request {
                            Ok(r) if r.status().is_success() => r.status(),
                            _ => api(&http, &survivor, Method::POST, &path, body).await.0,
                        };
                        let _ = answered.send(());
                        status
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        })
    };
    for _ in 0..300 {
        answered.recv().await.expect("posts are answered");
    }
    victim.kill_9();
    let statuses = posting.await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::OK),
        "every command accepted: {statuses:?}"
    );
    let mut pushes = 0;
    for agent in agents {
        pushes += agent.await.unwrap();
    }
    for (a, seen) in seen.iter().enumerate() {
        assert_eq!(
            seen.lock().unwrap().len(),
            PER_AGENT,
            "agent{a} got all its commands"
        );
    }

    // Nothing lost: every command completed, as the database says.
    for a in 0..AGENTS {
        let path = format!("/api/agents/agent{a}/commands?status=completed");
        let (_, completed) = api(&http, &survivor.addr, Method::GET, &path, Value::Null).await;
        assert_eq!(completed.as_array().unwrap().len(), PER_AGENT, "agent{a}");
    }
    let (_, stats) = api(
        &http,
        &survivor.addr,
        Method::GET,
        "/api/stats",
        Value::Null,
    )
    .await;
    assert_eq!(stats["commands"]["completed"], 1000, "{stats}");
    // Nothing completed twice: the survivor never pushed a command that had
    // completed (its agent would have acked it again: a duplicate ack), and
    // the completions it made plus the victim's are the 1,000.
    let metrics = http
        .get(format!("http://{}/metrics", survivor.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, r#"edge_acks_total{result="duplicate"}"#),
        0.0
    );
    let by_survivor = metric(&metrics, r#"edge_commands_total{outcome="completed"}"#);
    assert!(
        by_survivor < 1000.0,
        "the victim completed some before it died"
    );
    eprintln!("{pushes} pushes for 1,000 commands; {by_survivor} completed by the survivor");
    assert!(pushes >= AGENTS * PER_AGENT);
}

/// Both instances of a rate-limit test: 5 messages a minute (WS-RATE-2),
/// one answered ping a minute (WS-RATE-3); agent `x` provisioned.
async fn limited_pair(url: &str) -> (TestServer, TestServer) {
    let limited = |c: &mut edge_server::config::Config| {
        c.rate_messages_per_min = 5;
        c.rate_ping_interval = Duration::from_secs(60);
    };
    let a = TestServer::start_pg(url, limited).await;
    let b = TestServer::start_pg(url, limited).await;
    a.provision("x").await;
    (a, b)
}

/// On B: a ping (answered) and three statuses, four messages in all, each
/// read by B before this returns.
async fn four_messages_on_b(b: &TestServer) -> Agent {
    let mut on_b = b.connect("x").await;
    on_b.send_json(json!({"type": "ping"})).await;
    on_b.expect("pong").await;
    for n in 0..3 {
        on_b.send_json(json!({"type": "status", "data": {"n": n}}))
            .await;
    }
    b.wait_agent("x", |v| v["last_status"]["n"] == 2).await;
    on_b
}

/// WS-RATE-2/3 across instances: an agent's windows move with its socket.
/// Its socket on B closes, and it reconnects through the load balancer to
/// A, which goes on counting where B stopped: no fresh quota, and no
/// second pong within the ping interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rate_2_3_windows_move_with_a_released_socket() {
    let test = "ws_rate_2_3_windows_move_with_a_released_socket";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b) = limited_pair(&url).await;
    four_messages_on_b(&b).await.close().await;
    // B released the socket (and stored its windows) once A sees no holder.
    a.wait_agent("x", |v| v["connected"] == false).await;
    let mut on_a = a.connect("x").await;
    // The fifth message: within the message limit, past the ping limit.
    on_a.send_json(json!({"type": "ping"})).await;
    assert_eq!(on_a.expect("error").await["data"]["code"], "rate_limited");
    // The sixth: past the message limit.
    on_a.send_json(json!({"type": "status", "data": {"n": 9}}))
        .await;
    assert_eq!(on_a.expect("error").await["data"]["code"], "rate_limited");
    let view = a.wait_agent("x", |_| true).await;
    assert_eq!(
        view["last_status"]["n"], 2,
        "the limited status was ignored"
    );
}

/// WS-RATE-2 across instances, on a takeover (WS-CONN-2): A takes the
/// socket over while B still holds it; B closes it with 4000 and sends A
/// the windows it counted, so A refuses the agent's sixth message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rate_2_windows_move_with_a_socket_taken_over() {
    let test = "ws_rate_2_windows_move_with_a_socket_taken_over";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b) = limited_pair(&url).await;
    let mut on_b = four_messages_on_b(&b).await;
    let mut on_a = a.connect("x").await;
    assert!(
        matches!(on_b.ended(PROMPT).await, Ended::Closed(4000, _)),
        "B closes its socket with 4000"
    );
    // B's socket is gone once its history says so (written after B sent
    // its windows to A).
    a.wait_agent("x", |v| {
        v["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|c| c["reason"] == "replaced"))
    })
    .await;
    // Four more: A alone would count them all (4 of 5); with B's four, the
    // sixth message overall is refused. Four, not two, so the test does not
    // depend on the exact moment A hears from B.
    for n in 10..14 {
        on_a.send_json(json!({"type": "status", "data": {"n": n}}))
            .await;
    }
    assert_eq!(on_a.expect("error").await["data"]["code"], "rate_limited");
}

/// WS-RATE-2 across instances counts each message once: an agent that goes
/// from A to B and back to A within the window is not refused early. A
/// forgets the windows it handed over, so they are not added twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rate_2_a_round_trip_through_two_instances_counts_each_message_once() {
    let test = "ws_rate_2_a_round_trip_through_two_instances_counts_each_message_once";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let (a, b) = limited_pair(&url).await;
    for (n, server) in [(0, &a), (1, &b)] {
        let mut agent = server.connect("x").await;
        for m in 0..2 {
            let status = json!({"type": "status", "data": {"n": n * 10 + m}});
            agent.send_json(status).await;
        }
        server
            .wait_agent("x", |v| v["last_status"]["n"] == n * 10 + 1)
            .await;
        agent.close().await;
        a.wait_agent("x", |v| v["connected"] == false).await;
    }
    // Four counted; the fifth is taken, the sixth refused.
    let mut agent = a.connect("x").await;
    agent
        .send_json(json!({"type": "status", "data": {"n": 20}}))
        .await;
    a.wait_agent("x", |v| v["last_status"]["n"] == 20).await;
    agent
        .send_json(json!({"type": "status", "data": {"n": 21}}))
        .await;
    assert_eq!(agent.expect("error").await["data"]["code"], "rate_limited");
}
