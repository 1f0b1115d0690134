//! `edge-harness load` end to end: a run against the embedded edge-server,
//! storms (a restart, a fleet-wide drop), thresholds, shards merged, coordinated-omission correction against a
//! backend that stalls, what a backend that loses or repeats commands is
//! charged with, the fd-limit advice, and the summary table.

use crate::{assert_exit, harness, text};
use std::process::Command;
use std::time::Duration;

use edge_harness::embedded::{Embedded, ADMIN_TOKEN, EDGE_SECRET, REGISTRATION_TOKEN};
use edge_harness::load::plan::Plan;
use edge_harness::load::report::LoadReport;
use edge_harness::load::thresholds::Threshold;
use edge_harness::load::verdict::Verdict;
use edge_harness::load::{self, LoadConfig};
use edge_harness::target::Target;

use crate::proxy::{self, Fault, Secrets};

fn report_in(dir: &std::path::Path) -> (LoadReport, std::path::PathBuf) {
    let json = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON report");
    (
        LoadReport::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap(),
        json,
    )
}

#[test]
fn a_run_against_edge_server_loses_nothing_and_writes_both_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness(&[
        "load",
        "--agents",
        "40",
        "--rate",
        "100/s",
        "--duration",
        "3s",
        "--seed",
        "5",
        "--report",
        dir.path().to_str().unwrap(),
        "--fail-if",
        "lost==0",
        "--fail-if",
        "p99<2s",
    ]);
    assert_exit(&out, 0);
    let (report, json) = report_in(dir.path());
    assert_eq!(report.counts.scheduled, 300);
    assert_eq!(report.counts.accepted, 300);
    assert_eq!(report.counts.received, 300);
    assert_eq!(report.counts.lost, 0);
    assert_eq!(report.counts.connected_at_start, 40);
    assert_eq!(report.seed, 5);
    assert!(
        report.command_line.contains("--seed 5"),
        "the command line is recorded for a replay"
    );
    assert_eq!(report.histogram("push_ack").unwrap().len(), 300);
    // The backend's view: every acked command (fewer than the sample size)
    // read back, at edge-server's whole-millisecond timestamps, and never
    // before the agent could have sent its ack.
    let backend = &report.percentiles["push_ack_backend"];
    assert_eq!(backend.count, 300);
    assert!(
        report.counts.backend_unread.is_empty(),
        "{:?}",
        report.counts.backend_unread
    );
    assert_eq!(report.notes["backend_ack_timestamp_resolution_ms"], 1.0);
    let receive = &report.percentiles["push_receive"];
    assert!(
        backend.p50_ms >= receive.p50_ms - 1.0,
        "backend p50 {} ms is earlier than receipt {} ms",
        backend.p50_ms,
        receive.p50_ms
    );
    let html = std::fs::read_to_string(json.with_extension("html")).unwrap();
    // Four plots: no storm, so no (empty) reconnect curve.
    assert_eq!(html.matches("<svg").count(), 4, "four plots");
    assert!(!html.contains("Reconnect curve"));
    assert!(html.contains("PASSED: every threshold held"), "the banner");
    assert!(
        html.contains("<code>lost==0</code></td><td>0.00</td><td class=\"ok\">holds</td>"),
        "the thresholds table"
    );
    assert!(html.contains("p50, p99, p99.9"));
    assert!(!html.contains("<script"), "self-contained: no scripts");
    assert!(
        !html.contains("src=\"http"),
        "self-contained: nothing fetched"
    );
    assert!(text(&out.stdout).contains("push→ack"));
}

/// A storm in the middle of a run: every agent is back, commands flow
/// again, and no accepted command is lost across it.
fn storm(event: &str) -> LoadReport {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("storm.toml");
    std::fs::write(
        &profile,
        format!("agents = 40\nrate = 40\nduration = \"6s\"\nevents = [{{ kind = \"{event}\", at = \"2s\" }}]\n"),
    )
    .unwrap();
    let out = harness(&[
        "load",
        "--profile",
        profile.to_str().unwrap(),
        "--seed",
        "3",
        "--report",
        dir.path().to_str().unwrap(),
        "--fail-if",
        "lost==0",
        "--fail-if",
        "reconnect_t100<4s",
        "--fail-if",
        "reconnect_flowing<4s",
    ]);
    assert_exit(&out, 0);
    let (report, _) = report_in(dir.path());
    assert_eq!(report.reconnect.fleet, 40);
    assert_eq!(report.reconnect.back, 40);
    assert!(report.reconnect.t50_ms <= report.reconnect.t100_ms);
    let flowing = report.reconnect.flowing_ms.expect("commands flowed again");
    assert!(flowing > 0.0);
    // Every command received was accepted, or (after a crash) stored
    // with its answer cut off.
    let counts = &report.counts;
    assert_eq!(counts.received, counts.accepted + counts.unanswered);
    if event != "crash" {
        assert_eq!(counts.unanswered, 0);
    }
    assert!(text(&out.stdout).contains("commands flowing again in"));
    report
}

#[test]
fn a_backend_restart_storm_brings_every_agent_back() {
    let report = storm("restart");
    // Every socket was closed with 1012 by the restart.
    let closes = &report.personas["well_behaved"].disconnects;
    assert_eq!(closes.get("close 1012"), Some(&40), "{closes:?}");
}

/// A `kill -9` of the (child-process) edge-server mid-run: every socket is
/// cut without a close frame, every agent comes back, and every command
/// answered 202 is still delivered (`lost==0`).
#[test]
fn a_backend_crash_under_load_loses_nothing() {
    let report = storm("crash");
    let closes = &report.personas["well_behaved"].disconnects;
    assert_eq!(closes.get("connection lost"), Some(&40), "{closes:?}");
}

#[test]
fn a_fleet_wide_drop_brings_every_agent_back() {
    let report = storm("drop_all");
    let closes = &report.personas["well_behaved"].disconnects;
    assert_eq!(closes.get("dropped"), Some(&40), "{closes:?}");
}

/// `wss://`: agents speak TLS to a backend whose certificate is trusted
/// through `--ca-cert`; without it, the run refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_backend_is_driven_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cert_file, key_file) = (cert_path.clone(), key_path.clone());
    let server = Embedded::start(move |c| {
        c.tls_cert = Some(cert_file);
        c.tls_key = Some(key_file);
        // Load-test settings: agents ping every 30 s, many connect from one address.
        c.ping_timeout = Duration::from_secs(90);
        c.rate_connects_per_min = 0;
        c.rate_rejects_per_min = 0;
        c.rate_messages_per_min = 0;
        c.rate_ping_interval = Duration::ZERO;
    })
    .await
    .unwrap();
    let url = format!("wss://localhost:{}", server.addr.port());
    let reports = dir.path().join("reports");
    let run = |trust: bool| {
        let mut args: Vec<String> = [
            "load",
            "--url",
            &url,
            "--edge-secret",
            EDGE_SECRET,
            "--admin-token",
            ADMIN_TOKEN,
            "--agents",
            "20",
            "--rate",
            "50/s",
            "--duration",
            "2s",
            "--seed",
            "4",
            "--report",
            reports.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if trust {
            args.extend(["--ca-cert".into(), cert_path.to_str().unwrap().into()]);
        }
        tokio::task::spawn_blocking(move || {
            harness(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let out = run(true).await.unwrap();
    assert_exit(&out, 0);
    let (report, _) = report_in(&reports);
    assert_eq!(report.counts.connected_at_start, 20);
    assert_eq!(report.counts.scheduled, 100);
    assert_eq!(report.counts.acked, 100);
    assert_eq!(report.counts.lost, 0);
    assert_eq!(report.percentiles["push_ack_backend"].count, 100);

    let out = run(false).await.unwrap();
    assert_exit(&out, 2);
    let said = text(&out.stderr);
    assert!(
        said.contains("certificate") && said.contains("--ca-cert"),
        "{said}"
    );
}

#[test]
fn a_breached_threshold_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness(&[
        "load",
        "--agents",
        "5",
        "--rate",
        "20/s",
        "--duration",
        "1s",
        "--report",
        dir.path().to_str().unwrap(),
        "--fail-if",
        "p50<1us",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("FAIL: p50<1us breached"),
        "{}",
        text(&out.stdout)
    );
    let (_, json) = report_in(dir.path());
    let html = std::fs::read_to_string(json.with_extension("html")).unwrap();
    assert!(
        html.contains("FAILED: p50&lt;1us breached: measured"),
        "the banner names the failing threshold"
    );
    let out = harness(&["load", "--fail-if", "p98<1ms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown metric"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shards_merge_into_one_report() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |s: &str| {
        let sub = dir.path().join(s.replace('/', "of"));
        let out = harness(&[
            "load",
            "--agents",
            "20",
            "--rate",
            "40/s",
            "--duration",
            "2s",
            "--seed",
            "3",
            "--shard",
            s,
            "--report",
            sub.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        report_in(&sub)
    };
    let (a, a_path) = shard("0/2");
    let (b, b_path) = shard("1/2");
    assert_eq!(a.counts.agents + b.counts.agents, 20);
    let merged_path = dir.path().join("merged.json");
    let out = harness(&[
        "report",
        "merge",
        a_path.to_str().unwrap(),
        b_path.to_str().unwrap(),
        "-o",
        merged_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let merged = LoadReport::from_json(&std::fs::read_to_string(&merged_path).unwrap()).unwrap();
    assert_eq!(merged.counts.agents, 20);
    assert_eq!(
        merged.counts.scheduled,
        a.counts.scheduled + b.counts.scheduled
    );
    assert_eq!(
        merged.histogram("push_ack").unwrap().len(),
        a.histogram("push_ack").unwrap().len() + b.histogram("push_ack").unwrap().len()
    );
    assert_eq!(merged.shards, ["0/2", "1/2"]);
    assert!(merged_path.with_extension("html").exists());
}

#[test]
fn too_many_agents_for_one_process_says_how_to_shard() {
    let err = load::ensure_file_limit(1_000_000, 1_000_000, 1).unwrap_err();
    assert!(err.contains("--shard i/"), "{err}");
    assert!(err.contains("report merge"), "{err}");
    assert!(load::ensure_file_limit(100, 100, 1).is_ok());
}

#[test]
fn a_shard_without_agents_is_a_usage_error() {
    let out = harness(&[
        "load",
        "--agents",
        "1",
        "--shard",
        "1/2",
        "--duration",
        "1s",
    ]);
    assert_exit(&out, 2);
    let said = text(&out.stderr);
    assert!(
        said.contains("--shard 1/2 gets none of the 1 agents"),
        "{said}"
    );
}

/// A backend that stalls for a second (SIGSTOP … SIGCONT) must show in the
/// corrected p99 and max; with few requests in flight, the uncorrected
/// numbers hide most of it, which is why the correction exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinated_omission_correction_shows_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::serve_child(dir.path());
    let url = server.url.clone();
    let mut target = Target::new(&url).unwrap();
    target.edge_secret = Some(edge_harness::embedded::EDGE_SECRET.into());
    target.admin_token = Some(edge_harness::embedded::ADMIN_TOKEN.into());
    let plan = Plan {
        agents: 20,
        rate: 200.0,
        duration: Duration::from_secs(5),
        seed: 1,
        ..Plan::default()
    };
    let pid = server.pid().to_string();
    let stall = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    });
    let config = LoadConfig {
        targets: vec![target],
        plan,
        shard: (0, 1),
        source_ips: vec![],
        provision: true,
        command_line: "test".into(),
        progress: false,
        max_in_flight: 2,
        tls: None,
        live: None,
    };
    let report = load::run(config).await.unwrap();
    stall.await.unwrap();
    let corrected = &report.percentiles["push_ack"];
    let uncorrected = &report.percentiles["push_ack_uncorrected"];
    assert_eq!(report.counts.lost, 0);
    assert!(
        corrected.max_ms >= 900.0,
        "the stall shows in max: {corrected:?}"
    );
    assert!(corrected.p99_ms >= 500.0, "and in p99: {corrected:?}");
    assert!(
        uncorrected.p99_ms < corrected.p99_ms / 2.0,
        "uncorrected hides it: {uncorrected:?} vs {corrected:?}"
    );
}

/// A load run through the fault proxy in front of edge-server: the report
/// and how many commands the fault picked (every tenth pushed).
async fn load_through(fault: Fault) -> (LoadReport, usize) {
    let server = Embedded::start(|_| {}).await.unwrap();
    let secrets = Secrets {
        edge: EDGE_SECRET.into(),
        admin: ADMIN_TOKEN.into(),
        registration: REGISTRATION_TOKEN.into(),
    };
    let proxy = proxy::start(server.addr, fault, secrets, server.lifecycle().log).await;
    let mut target = Target::new(&format!("http://{}", proxy.addr)).unwrap();
    target.edge_secret = Some(EDGE_SECRET.into());
    target.admin_token = Some(ADMIN_TOKEN.into());
    let config = LoadConfig {
        targets: vec![target],
        plan: Plan {
            agents: 20,
            rate: 100.0,
            duration: Duration::from_secs(2),
            drain: Duration::from_secs(2),
            seed: 7,
            ..Plan::default()
        },
        shard: (0, 1),
        source_ips: vec![],
        provision: true,
        command_line: "test".into(),
        progress: false,
        max_in_flight: 8,
        tls: None,
        live: None,
    };
    let report = load::run(config).await.unwrap();
    (report, proxy.tenths())
}

/// A backend that accepts every command and never pushes one in ten is
/// charged with exactly those as lost, and the `lost==0` threshold fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_backend_never_pushes_are_counted_lost() {
    let (report, never_pushed) = load_through(Fault::EveryTenthCommandNeverPushed).await;
    let c = &report.counts;
    assert_eq!((c.scheduled, c.accepted), (200, 200), "{c:?}");
    assert_eq!(never_pushed, 20, "every tenth of 200");
    assert_eq!(c.lost, 20, "{c:?}");
    assert_eq!(c.received, 180, "{c:?}");
    assert_eq!(c.duplicates, 0, "{c:?}");
    let lost_none: Threshold = "lost==0".parse().unwrap();
    assert_eq!(
        Verdict::check(&report, &[lost_none], None).failures(),
        ["lost==0 breached: measured 20.000"]
    );
}

/// A backend that pushes one command in ten twice is charged with exactly
/// those as duplicates, and nothing as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_backend_pushes_twice_are_counted_as_duplicates() {
    let (report, doubled) = load_through(Fault::EveryTenthCommandPushedTwice).await;
    let c = &report.counts;
    assert_eq!(
        (c.scheduled, c.accepted, c.received),
        (200, 200, 200),
        "{c:?}"
    );
    assert_eq!(doubled, 20, "every tenth of 200");
    assert_eq!(c.duplicates, 20, "{c:?}");
    assert_eq!(c.lost, 0, "{c:?}");
    let no_duplicates: Threshold = "duplicates==0".parse().unwrap();
    assert_eq!(
        Verdict::check(&report, &[no_duplicates], None).failures(),
        ["duplicates==0 breached: measured 20.000"]
    );
}

/// A backend whose every push reaches the agent 200 ms late shows it in
/// every latency from the scheduled send: no percentile below 200 ms, and
/// the median not far above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_pushes_late_shows_it_in_the_latencies() {
    let (report, _) = load_through(Fault::EveryPushDelayed200ms).await;
    assert_eq!(report.counts.lost, 0, "{:?}", report.counts);
    for histogram in ["push_receive", "push_ack"] {
        let p = &report.percentiles[histogram];
        assert_eq!(p.count, 200, "{histogram}: {p:?}");
        let min_ms = report.histogram(histogram).unwrap().min() as f64 / 1000.0;
        assert!(
            min_ms >= 200.0,
            "{histogram}: {min_ms} ms, sooner than the delay"
        );
        assert!(
            p.p50_ms < 400.0,
            "{histogram}: the median is the delay and a little: {p:?}"
        );
    }
}

#[test]
fn summary_table_snapshot() {
    let report = LoadReport::from_json(include_str!("fixtures/load-report.json")).unwrap();
    insta::assert_snapshot!(report
        .summary()
        .replace(&report.targets[0], "http://127.0.0.1:PORT"));
}

/// The HTML report of the fixture, judged by two thresholds (one holds, one
/// breaks) and by itself as the baseline.
#[test]
fn judged_html_report_snapshot() {
    use edge_harness::load::html;
    use edge_harness::load::thresholds::Threshold;
    use edge_harness::load::verdict::Verdict;
    let report = LoadReport::from_json(include_str!("fixtures/load-report.json")).unwrap();
    let thresholds: Vec<Threshold> = ["p99<5s", "lost==0", "backend_p99<1ms"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let verdict = Verdict::check(&report, &thresholds, Some(("baseline.json", &report, 0.1)));
    let page = html::render_judged(&report, &verdict);
    assert!(page.contains("class=\"verdict failed\""));
    assert!(!page.contains("Reconnect curve"), "no storm, no curve");
    // The banner and the tables; the plots' coordinates are left out.
    let head = &page[..page.find("<pre>").unwrap()];
    insta::assert_snapshot!(head
        .replace(&report.targets[0], "http://127.0.0.1:PORT")
        .replace("><", ">\n<"));
}

#[test]
fn report_html_rerenders_a_saved_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    std::fs::write(&json, include_str!("fixtures/load-report.json")).unwrap();
    let out = harness(&["report", "html", json.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    // No storm in the fixture: no reconnect curve.
    assert_eq!(html.matches("<svg").count(), 4, "four plots");
    assert!(html.contains("No thresholds"), "nothing to judge it by");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let out = harness(&["report", "html", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a load report"),
        "{}",
        text(&out.stderr)
    );
}
