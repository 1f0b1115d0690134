//! The suite catches real bugs: each broken backend fails the run with the
//! rule it breaks, and the same checks pass through the proxy when it
//! injects nothing (so the failure is the fault's, not the proxy's).

use std::collections::BTreeSet;

use edge_harness::conform::{self, Options};
use edge_harness::embedded::{self, Embedded};
use edge_harness::report::{RunReport, Status};
use edge_harness::suite;
use edge_harness::target::Target;

use crate::proxy::{self, Fault, Secrets};

/// The proxy makes every upstream upgrade come from 127.0.0.1: the embedded
/// server runs without a per-address limit, so checks cannot trip each other.
async fn server() -> Embedded {
    Embedded::start(|c| c.rate_rejects_per_min = 0)
        .await
        .unwrap()
}

/// A target that reaches `server` through a proxy injecting `fault`.
async fn through_proxy(server: &Embedded, fault: Fault) -> Target {
    let secrets = Secrets {
        edge: embedded::EDGE_SECRET.into(),
        admin: embedded::ADMIN_TOKEN.into(),
    };
    let addr = proxy::start(server.addr, fault, secrets).await;
    let mut target = Target::new(&format!("http://{addr}")).unwrap();
    target.edge_secret = Some(embedded::EDGE_SECRET.into());
    target.admin_token = Some(embedded::ADMIN_TOKEN.into());
    target.registration_token = Some(embedded::REGISTRATION_TOKEN.into());
    target
}

async fn run_against(fault: Fault, only: &[&str]) -> RunReport {
    let server = server().await;
    let target = through_proxy(&server, fault).await;
    let options = Options {
        only: only.iter().map(|s| s.to_string()).collect(),
        strict: true,
        retries: 1,
        seed: 7,
        ..Options::default()
    };
    let report = conform::run(&suite::builtin().unwrap(), &target, &options, "proxy").await;
    server.stop().await;
    report
}

fn failing(report: &RunReport) -> BTreeSet<String> {
    report
        .results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.rule.clone())
        .collect()
}

fn summary(report: &RunReport) -> Vec<String> {
    report
        .results
        .iter()
        .map(|r| format!("{} {} {:?} {:?}", r.rule, r.name, r.status, r.observed))
        .collect()
}

async fn assert_caught(fault: Fault, only: &[&str], rule: &str) {
    let healthy = run_against(Fault::None, only).await;
    assert!(!healthy.results.is_empty(), "{only:?} selects checks");
    assert!(
        healthy.passed(),
        "through a transparent proxy: {:#?}",
        summary(&healthy)
    );
    let broken = run_against(fault, only).await;
    assert!(
        !broken.passed(),
        "{fault:?} went unnoticed: {:#?}",
        summary(&broken)
    );
    assert!(
        failing(&broken).contains(rule),
        "{fault:?} should fail {rule}: {:#?}",
        summary(&broken)
    );
}

macro_rules! caught {
    ($test:ident, $fault:expr, $rule:expr, $($only:expr),+) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            assert_caught($fault, &[$($only),+], $rule).await;
        }
    };
}

caught!(
    accepts_any_token_fails_ws_auth_1,
    Fault::AcceptsAnyToken,
    "WS-AUTH-1",
    "WS-AUTH-1"
);
caught!(
    keeps_old_socket_fails_ws_conn_2,
    Fault::KeepsOldSocket,
    "WS-CONN-2",
    "WS-CONN-2"
);
caught!(
    never_times_out_fails_ws_conn_3,
    Fault::NeverTimesOut,
    "WS-CONN-3",
    "silent-agent-is-closed"
);
caught!(
    drops_queued_commands_fails_ws_dlv_1,
    Fault::DropsQueuedCommands,
    "WS-DLV-1",
    "WS-DLV-1"
);
caught!(
    never_redelivers_fails_ws_dlv_3,
    Fault::NeverRedelivers,
    "WS-DLV-3",
    "unacked-command-redelivered-with-backoff"
);
caught!(
    crashes_on_bad_json_fails_ws_err_1,
    Fault::CrashesOnBadJson,
    "WS-ERR-1",
    "not-json-is-invalid_json"
);
caught!(
    ignores_acks_fails_ws_ack_2,
    Fault::IgnoresAcks,
    "WS-ACK-2",
    "spec-ack-completes"
);
caught!(
    wrong_priority_order_fails_ws_dlv_4,
    Fault::WrongPriorityOrder,
    "WS-DLV-4",
    "pending-pushed-on-reconnect-in-priority-order"
);
caught!(
    admin_api_open_to_edge_secret_fails_ws_api_1,
    Fault::AdminApiOpenToEdgeSecret,
    "WS-API-1",
    "edge-secret-does-not-open-the-api"
);
caught!(
    no_pong_fails_ws_ping_1,
    Fault::NoPong,
    "WS-PING-1",
    "WS-PING-1"
);
caught!(
    silent_on_unknown_ack_fails_ws_ack_3,
    Fault::SilentOnUnknownAck,
    "WS-ACK-3",
    "unknown-command-ack-is-unknown_command"
);
caught!(
    no_message_rate_limit_fails_ws_rate_2,
    Fault::NoMessageRateLimit,
    "WS-RATE-2",
    "messages-past-the-limit-get-rate_limited"
);
caught!(
    no_welcome_fails_ws_msg_1,
    Fault::NoWelcome,
    "WS-MSG-1",
    "WS-MSG-1"
);

/// The fuzz group catches a backend that falls over on garbage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_group_catches_a_crash_on_bad_json() {
    let server = server().await;
    for (fault, should_pass) in [(Fault::None, true), (Fault::CrashesOnBadJson, false)] {
        let target = through_proxy(&server, fault).await;
        let result = edge_harness::fuzz::run(&target, 11, 40).await;
        assert_eq!(
            result.status == Status::Pass,
            should_pass,
            "{fault:?}: {:?} {:?}",
            result.expected,
            result.observed
        );
    }
    server.stop().await;
}
