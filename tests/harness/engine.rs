//! The scenario engine's own behaviour, against the embedded edge-server
//! (short timers: a 1.5 s ping timeout): what a check may rely on however
//! its steps are arranged.

use std::path::Path;

use edge_harness::conform::{self, Options};
use edge_harness::embedded::{self, Embedded};
use edge_harness::report::{CheckResult, Status};
use edge_harness::scenario;
use edge_harness::target::Target;

/// Runs one check, given as the TOML of its steps, once (no retries).
async fn run_steps(steps: &str) -> CheckResult {
    let text = format!(
        "group = \"Engine\"\n[[check]]\nname = \"engine\"\nrule = \"WS-CONN-3\"\nlevel = \"MUST\"\nrequirement = \"r\"\nsteps = [\n{steps}\n]\n"
    );
    let checks = scenario::parse(Path::new("engine.toml"), &text).unwrap();
    let server = Embedded::start(|_| {}).await.unwrap();
    let mut target = Target::new(&server.url()).unwrap();
    target.edge_secret = Some(embedded::EDGE_SECRET.into());
    target.admin_token = Some(embedded::ADMIN_TOKEN.into());
    conform::learn_timings(&target).await;
    let options = Options {
        strict: true,
        seed: 7,
        ..Options::default()
    };
    let mut report = conform::run(&checks, &target, &options, "engine").await;
    server.stop().await;
    report.results.remove(0)
}

/// An agent stays alive while HTTP steps run, as a live agent keeps pinging
/// whatever the backend's API is doing: here a poll that lasts longer than
/// the ping timeout (a command's 2 s TTL running out) with an agent
/// connected and no socket step in between. Before, the agent fell silent
/// for the whole poll and the backend rightly closed it with 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_kept_alive_through_a_long_http_poll() {
    let result = run_steps(
        r#"  { provision = "a" },
  { provision = "b" },
  { connect = "a" },
  { command = "b", body = { command_type = "send_message", ttl_s = 2 }, save = { id = "c1" } },
  { api = "GET /api/commands/{c1}", eventually = "6s", fields = { status = "expired" } },
  { expect_open = "a" },"#,
    )
    .await;
    assert_eq!(result.status, Status::Pass, "{result:#?}");
}

/// `wait` sends nothing on any socket: checks such as
/// `any-frame-keeps-the-socket-alive` rely on the agent being silent but for
/// their own frames, so a backend that counts only Pings as life fails them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_silent_on_every_socket() {
    let result = run_steps(
        r#"  { provision = "a" },
  { connect = "a" },
  { wait = "2s" },
  { expect_close = "a", codes = [4008], within = "1s" },"#,
    )
    .await;
    assert_eq!(result.status, Status::Pass, "{result:#?}");
}

/// A gauge comparison whose patterns match only counters fails and says so,
/// instead of comparing 0 with 0 (`gauges_back_to` would pass on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gauge_comparison_without_a_gauge_fails_and_says_so() {
    let result = run_steps(
        r#"  { metrics = "/metrics", snapshot = "s", families = { total = "*connections_total*" } },
  { metrics = "/metrics", gauges_back_to = "s", families = { total = "*connections_total*" } },"#,
    )
    .await;
    assert_eq!(result.status, Status::Fail, "{result:#?}");
    assert_eq!(
        result.expected.as_deref(),
        Some("a gauge sample for: total (*connections_total*)")
    );
}
