//! WS-ERR-2: arbitrary frames on a live socket never crash the server, never
//! close the socket (never 1011), are answered per §3, and never disturb the
//! commands another agent is receiving.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The codes §3 allows as an answer to a bad (or foreign) message.
const ALLOWED: [&str; 5] = [
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "unknown_command",
    "unsupported_frame",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "ping",
            "command_ack",
            "status",
            "command",
            "connected",
            "pong",
            "error"
        ])
        .prop_map(|t| json!(t)),
        "[a-z_]{0,16}".prop_map(Value::String),
        any_json(),
    ]
}

fn ack_data() -> impl Strategy<Value = Value> {
    (
        any_json(),
        prop::option::of(any::<bool>()),
        prop::option::of("received|executing|completed|failed|[a-z]{0,8}"),
        any_json(),
    )
        .prop_map(|(id, success, status, error)| {
            let mut data = json!({ "command_id": id, "error": error });
            if let Some(success) = success {
                data["success"] = json!(success);
            }
            if let Some(status) = status {
                data["status"] = json!(status);
            }
            data
        })
}

fn frame() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,200}".prop_map(Message::text),
        (message_type(), any_json())
            .prop_map(|(t, data)| Message::text(json!({"type": t, "data": data}).to_string())),
        ack_data().prop_map(|data| Message::text(
            json!({"type": "command_ack", "data": data}).to_string()
        )),
        any_json().prop_map(|v| Message::text(v.to_string())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
    ]
}

#[test]
fn ws_err_2_arbitrary_frames_are_answered_and_never_disturb_another_agent() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, fuzzed, bystander) = runtime.block_on(async {
        let server = TestServer::start().await;
        let fuzzed = server.agent("fuzzed").await;
        let bystander = server.agent("bystander").await;
        (server, fuzzed, bystander)
    });
    let agents = RefCell::new((fuzzed, bystander, 0u32));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&frame(), |message| {
        let (fuzzed, bystander, n) = &mut *agents.borrow_mut();
        *n += 1;
        let sentinel = format!("sentinel-{n}");
        let shown = format!("{message:?}");
        runtime.block_on(async {
            fuzzed.send(message).await;
            // Everything up to the sentinel's answer must be a §3 answer.
            fuzzed.send_json(json!({"type": "command_ack", "data": {"command_id": sentinel, "success": true}})).await;
            loop {
                let answer = fuzzed.recv().await;
                let kind = answer["type"].as_str().unwrap_or_default();
                if kind == "error" && answer["data"]["ref"] == sentinel.as_str() {
                    break;
                }
                let code = answer["data"]["code"].as_str().unwrap_or_default();
                assert!(kind == "pong" || (kind == "error" && ALLOWED.contains(&code)), "{shown} → {answer}");
            }
            let id = server.send_command("bystander", json!({"command_type": "send_message", "parameters": {"n": *n}})).await;
            let pushed = bystander.expect("command").await;
            assert_eq!(pushed["data"]["command_id"], id.as_str());
            bystander.ack(&id, true).await;
        });
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (_fuzzed, mut bystander, _) = agents.into_inner();
    runtime.block_on(async {
        // The last ack is stored once the ping sent after it is answered.
        bystander.round_trip().await;
        let (_, completed) = server
            .get("/api/agents/bystander/commands?status=completed")
            .await;
        assert_eq!(
            completed.as_array().unwrap().len(),
            256,
            "every bystander command completed"
        );
        let metrics = server.metrics().await;
        assert_eq!(
            metric(&metrics, "edge_connections_total"),
            2.0,
            "neither socket was ever closed"
        );
    });
}
