//! The bad-input fuzz group (WS-ERR-2): seeded, reproducible frames sent to
//! one agent's socket while a second agent keeps receiving commands. It
//! fails if the backend closes the fuzzed socket (1011 or otherwise),
//! answers something §3 does not allow, or the second agent loses a command.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::report::{CheckResult, Status};
use crate::scenario::step::Ctx;
use crate::scenario::{ConnectOutcome, Level, Payload, StepKind, Window};
use crate::target::Target;

/// Answers §3 allows to a bad (or foreign) message.
const ALLOWED: [&str; 6] = [
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "unknown_command",
    "unsupported_frame",
    "rate_limited",
];

const TYPES: [&str; 9] = [
    "ping",
    "command_ack",
    "status",
    "command",
    "connected",
    "pong",
    "error",
    "",
    "config_update",
];

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => char::from_u32(rng.random_range(0x80..0x2FFF)).unwrap_or('?'),
            1 => ['{', '}', '"', ':', ',', '[', ']', '\\'][rng.random_range(0..8)],
            _ => char::from(rng.random_range(0x20u8..0x7f)),
        })
        .collect()
}

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e6),
        4 => json!(random_text(rng, 24)),
        5 => Value::Array(
            (0..rng.random_range(0..5))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| (random_text(rng, 8), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// One generated frame (text up to a few KiB, or binary): never one of the
/// frames §3 answers with a close (oversized, invalid UTF-8, protocol errors).
pub fn frame(rng: &mut StdRng) -> Payload {
    match rng.random_range(0..6) {
        0 => Payload::Text(random_text(rng, 200)),
        1 => Payload::Binary((0..rng.random_range(0..64)).map(|_| rng.random()).collect()),
        2 => {
            let kind = json!(TYPES[rng.random_range(0..TYPES.len())]);
            Payload::Json(json!({"type": kind, "data": random_json(rng, 3)}))
        }
        3 => {
            let mut data = json!({"command_id": random_json(rng, 1), "error": random_json(rng, 1)});
            if rng.random() {
                data["success"] = random_json(rng, 0);
            }
            if rng.random() {
                data["status"] = json!(
                    ["received", "executing", "completed", "failed", "done"]
                        [rng.random_range(0..5)]
                );
            }
            Payload::Json(json!({"type": "command_ack", "data": data}))
        }
        4 => Payload::Json(random_json(rng, 3)),
        _ => Payload::Json(json!({"type": random_json(rng, 1), "data": random_json(rng, 2)})),
    }
}

fn window(within: &str) -> Window {
    Window {
        after: None,
        within: within.into(),
        not_before: None,
        tolerance: false,
    }
}

/// Runs the fuzz group; `cases` frames from `seed`.
pub async fn run(target: &Target, seed: u64, cases: u32) -> CheckResult {
    let started = Instant::now();
    let mut result = CheckResult {
        rule: "WS-ERR-2".into(),
        name: "fuzz-bad-input".into(),
        group: "Bad input fuzzing".into(),
        level: Level::Must,
        requirement:
            "No bad input ever crashes the server, affects another agent, or loses a command."
                .into(),
        status: Status::Pass,
        location: "src/conform/fuzz.rs:1".into(),
        expected: None,
        observed: None,
        reason: None,
        transcript: Vec::new(),
        duration: Duration::ZERO,
        attempts: 1,
        flaky: false,
    };
    if !target.has(crate::scenario::Capability::ControlApi)
        && matches!(target.inject, crate::target::Inject::ControlApi)
    {
        result.status = Status::Skipped;
        result.reason = Some(
            "needs the control API (or --inject) to provision agents and send commands".into(),
        );
        return result;
    }
    let mut ctx = Ctx::new(target, format!("fz{:x}", seed % 0xffff_ffff), None);
    let outcome = fuzz(&mut ctx, seed, cases).await;
    ctx.finish().await;
    if let Err(failure) = outcome {
        result.status = Status::Fail;
        result.expected = Some(failure.expected);
        result.observed = Some(failure.observed);
        result.transcript = ctx.transcript;
    }
    result.duration = started.elapsed();
    result
}

async fn fuzz(
    ctx: &mut Ctx<'_>,
    seed: u64,
    cases: u32,
) -> Result<(), crate::scenario::step::StepFailure> {
    let mut rng = StdRng::seed_from_u64(seed);
    let connect = |name: &str| StepKind::Connect {
        conn: name.into(),
        agent: name.into(),
        token: "edge".into(),
        id: None,
        header_id: None,
        outcome: ConnectOutcome::Accepted,
        source: None,
        welcome: None,
    };
    for name in ["fuzzed", "bystander"] {
        ctx.run(0, &StepKind::Provision { agent: name.into() })
            .await?;
        ctx.run(0, &connect(name)).await?;
    }
    for case in 1..=cases {
        let payload = frame(&mut rng);
        ctx.run(
            case as usize,
            &StepKind::Send {
                conn: "fuzzed".into(),
                payload,
                repeat: 1,
            },
        )
        .await?;
        // Every tenth frame: the fuzzed socket still answers, nothing it got
        // was outside §3, and the bystander still gets its commands.
        if case % 10 == 0 || case == cases {
            drain_answers(ctx, case).await?;
            let body = json!({"command_type": "send_message", "parameters": {"case": case}});
            ctx.run(
                case as usize,
                &StepKind::Command {
                    agent: "bystander".into(),
                    body: crate::scenario::Body::Json(body),
                    save_as: Some("c".into()),
                },
            )
            .await?;
            let fields = vec![("data.command_id".to_string(), json!("{c}"))];
            let expect = StepKind::Expect {
                conn: "bystander".into(),
                msg_type: "command".into(),
                fields,
                raw: Vec::new(),
                save: Default::default(),
                mark: None,
                window: window("5s"),
            };
            ctx.run(case as usize, &expect).await?;
            let ack = Payload::Json(
                json!({"type": "command_ack", "data": {"command_id": "{c}", "success": true, "error": null}}),
            );
            ctx.run(
                case as usize,
                &StepKind::Send {
                    conn: "bystander".into(),
                    payload: ack,
                    repeat: 1,
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Probes the fuzzed socket and checks every answer that came before the probe's.
async fn drain_answers(
    ctx: &mut Ctx<'_>,
    case: u32,
) -> Result<(), crate::scenario::step::StepFailure> {
    ctx.run(
        case as usize,
        &StepKind::ExpectOpen {
            conn: "fuzzed".into(),
        },
    )
    .await?;
    // Whatever was read ahead while probing must be a §3 answer.
    loop {
        let fields = vec![];
        let probe = StepKind::Expect {
            conn: "fuzzed".into(),
            msg_type: "error".into(),
            fields,
            raw: Vec::new(),
            save: [("code".to_string(), "data.code".to_string())].into(),
            mark: None,
            window: window("0s"),
        };
        if ctx.run(case as usize, &probe).await.is_err() {
            return Ok(());
        }
        let code = ctx.var("code").unwrap_or_default();
        if !ALLOWED.contains(&code.as_str()) {
            return Err(crate::scenario::step::StepFailure {
                line: case as usize,
                expected: format!("an error code from {ALLOWED:?}"),
                observed: format!("`{code}`"),
            });
        }
    }
}
