//! Ctrl-C during `load`, end to end: the real binary against the embedded
//! edge-server it starts (real loopback sockets), a SIGINT once the fleet
//! is up, and a JSON + HTML report marked partial (the page's verdict
//! banner too), exit code 130.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_harness::load::report::LoadReport;

use crate::text;

#[test]
fn sigint_during_load_drains_and_writes_a_partial_report_with_exit_130() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-harness"))
        .args([
            "load",
            "--agents",
            "20",
            "--rate",
            "50/s",
            "--duration",
            "10m",
            "--seed",
            "3",
            "--fail-if",
            "lost==0",
            "--report",
        ])
        .arg(dir.path())
        .env_remove("EDGE_URL")
        .env_remove("EDGE_SECRET")
        .env_remove("ADMIN_TOKEN")
        .env_remove("EDGE_CA_CERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-harness load starts");
    let started = Instant::now();
    // Every line of stderr, as it comes.
    let (lines, said) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The fleet is up when it says so (a generous bound: a loaded CI
    // machine starts the embedded server and 20 sockets slowly).
    let mut before = Vec::new();
    loop {
        let line = said.recv_timeout(Duration::from_secs(180)).unwrap_or_else(|e| {
            panic!("no `connected … sockets` on stderr within 3 minutes ({e}); it said: {before:#?}")
        });
        before.push(line.clone());
        if line.starts_with("connected ") {
            assert_eq!(
                line.split(' ').take(4).collect::<Vec<_>>(),
                ["connected", "20", "of", "20"],
                "{line}"
            );
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    // It drains (the plan's drain, at most) and writes the report: far
    // sooner than the 10 minutes planned.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "still running after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    reader.join().unwrap();
    let stderr: Vec<String> = said.try_iter().collect();
    assert_eq!(status.code(), Some(130), "{stdout}\n{}", stderr.join("\n"));
    assert!(
        stderr.iter().any(|l| l.contains("interrupted")),
        "it says it was interrupted: {stderr:?}"
    );
    assert!(
        stdout.starts_with("PARTIAL"),
        "the summary is marked: {stdout}"
    );

    let json = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON report");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(raw["partial"], true, "marked partial in the JSON");
    let report = LoadReport::from_json(&text(&std::fs::read(&json).unwrap())).unwrap();
    assert_eq!(report.counts.connected_at_start, 20);
    assert!(report.duration_s < 60.0, "{}", report.duration_s);
    assert_eq!(
        report.counts.acked, report.counts.scheduled,
        "drained: every command sent before the interrupt was acked"
    );
    let html = std::fs::read_to_string(json.with_extension("html")).unwrap();
    assert!(html.contains("PARTIAL"), "marked partial in the HTML");
    // The verdict banner is the partial one, though `lost==0` was asked
    // for (and holds): an interrupted run is judged partial, not passed.
    assert!(
        html.contains(
            "<div class=\"verdict partial\" id=\"verdict\">PARTIAL: the run was cut short"
        ),
        "the page's verdict banner says partial: {}",
        &html[..html.len().min(3000)]
    );
    assert!(
        html.contains("<h2>Thresholds</h2>"),
        "the thresholds table is still shown"
    );
}
