//! The live view (`load --dashboard`) and the HTML report, end to end: two
//! shards of a real run report to one dashboard, a client of `/events`
//! sees the fleet connected, and headless Chromium renders the dashboard
//! (live and after the run) and the report page.
//!
//! Chromium tests skip, saying why, where no Chromium is installed, and
//! fail under CI (`CI` set), where `.ci/run` installs it. With
//! `EDGE_HARNESS_SCREENSHOTS=DIR` they keep their screenshots there.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edge_harness::load::html;
use edge_harness::load::live::board::Status;
use edge_harness::load::live::{server, Board, LiveFrame};
use edge_harness::load::report::LoadReport;
use edge_harness::load::thresholds::Threshold;
use edge_harness::load::verdict::Verdict;

/// The Chromium to test with, or None (after saying why) outside CI.
fn chromium(test: &str) -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |dir| dir.join(name))
        })
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run the headless-Chromium tests, but no chromium is on PATH"
        );
        eprintln!("{test}: skipped: no chromium on PATH (Debian: apt-get install chromium)");
    }
    found
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom`,
/// `--screenshot=FILE`, …); its stdout.
fn headless(chromium: &Path, url: &str, what: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(what)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A screenshot of `url`: a PNG of the window's size with more in it than
/// a blank page; kept in `$EDGE_HARNESS_SCREENSHOTS` when set.
fn screenshot(chromium: &Path, url: &str, name: &str, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    let mut args = vec![format!("--screenshot={}", file.display())];
    args.extend(extra.iter().map(|a| a.to_string()));
    headless(
        chromium,
        url,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let png = std::fs::read(&file).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1200, 900), "the window's size");
    // A blank 1200×900 page compresses to a few KiB; text and plots do not.
    assert!(png.len() > 20_000, "{name}: only {} bytes", png.len());
    if let Some(keep) = std::env::var_os("EDGE_HARNESS_SCREENSHOTS") {
        std::fs::write(Path::new(&keep).join(name), &png).unwrap();
    }
    png
}

/// The text of the element with this id in a dumped DOM.
fn element(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let open = start + dom[start..].find('>')? + 1;
    let close = open + dom[open..].find('<')?;
    Some(dom[open..close].to_string())
}

/// `edge-harness load …` with stderr piped: the child and the dashboard's
/// base URL when it serves one (read from `dashboard: http://…/`).
fn load_child(args: &[&str], serves: bool) -> (Child, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-harness"))
        .arg("load")
        .args(args)
        .env_remove("EDGE_URL")
        .env_remove("EDGE_SECRET")
        .env_remove("ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edge-harness load starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut url = None;
    if serves {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            if let Some(rest) = line.trim().strip_prefix("dashboard: ") {
                url = Some(rest.trim_end_matches('/').to_string());
                break;
            }
            line.clear();
        }
        assert!(url.is_some(), "the dashboard says where it listens");
    }
    // Keep draining it, so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, url)
}

/// Reads `/events` until `until` holds for a status (or the stream ends).
fn read_events(base: &str, until: impl Fn(&Status) -> bool) -> (Vec<String>, Option<Status>) {
    let addr = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(socket);
    let (mut events, mut event) = (Vec::new(), String::new());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let text = line.trim_end().to_string();
        line.clear();
        if let Some(name) = text.strip_prefix("event: ") {
            event = name.to_string();
            events.push(event.clone());
        } else if let Some(data) = text.strip_prefix("data: ") {
            if event == "status" {
                let status: Status = serde_json::from_str(data).unwrap();
                if until(&status) {
                    return (events, Some(status));
                }
            }
        }
    }
    (events, None)
}

#[test]
fn two_shards_report_to_one_live_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let report = |shard: &str| dir.path().join(shard).to_str().unwrap().to_string();
    let common = [
        "--agents",
        "20",
        "--rate",
        "40/s",
        // Long enough that headless Chromium, slow to start on a loaded
        // machine, still finds the run going.
        "--duration",
        "20s",
        "--seed",
        "4",
    ];
    let (r0, r1) = (report("s0"), report("s1"));
    let mut first: Vec<&str> = common.to_vec();
    first.extend([
        "--shard",
        "0/2",
        "--report",
        &r0,
        "--dashboard",
        "127.0.0.1:0",
        "--fail-if",
        "p99<5s",
        "--fail-if",
        "lost==0",
    ]);
    let (mut shard0, url) = load_child(&first, true);
    let url = url.unwrap();
    let mut second: Vec<&str> = common.to_vec();
    second.extend([
        "--shard",
        "1/2",
        "--report",
        &r1,
        "--dashboard-report",
        &url,
    ]);
    let (mut shard1, _) = load_child(&second, false);

    // Live: both shards' sockets connected, commands acked, p99 measured.
    let (events, status) = read_events(&url, |s| {
        s.shards.len() == 2 && s.connected > 0 && s.acked > 0
    });
    let status = status.expect("both shards show up while the run goes");
    assert!(events.contains(&"point".to_string()), "{events:?}");
    assert_eq!(status.expected_shards, 2);
    assert_eq!(status.target, 20, "10 agents a shard");
    assert!(
        status.shards.iter().all(|s| s.connected > 0),
        "{:?}",
        status.shards
    );
    assert!(status.latency.as_ref().unwrap().p99_ms > 0.0);
    assert_eq!(status.thresholds[1].state, "at the end", "lost==0");
    // Listening for the end from now on: the dashboard closes soon after
    // its run ends, however long Chromium takes below.
    let end = {
        let url = url.clone();
        std::thread::spawn(move || read_events(&url, |s| s.done))
    };

    // The page in headless Chromium, mid-run: it drew the live numbers
    // (`?snapshot` hangs up after them, so the page finishes loading).
    if let Some(chromium) = chromium("two_shards_report_to_one_live_dashboard") {
        let page = format!("{url}/?snapshot");
        let dom = headless(
            &chromium,
            &page,
            &["--virtual-time-budget=3000", "--dump-dom"],
        );
        let connected = element(&dom, "connected").and_then(|c| c.parse::<i64>().ok());
        assert!(
            connected.is_some_and(|c| c > 0),
            "the page shows the connected sockets: {connected:?}"
        );
        assert_eq!(element(&dom, "target").as_deref(), Some("20"));
        assert_eq!(element(&dom, "shard-count").as_deref(), Some("2 of 2"));
        screenshot(
            &chromium,
            &page,
            "dashboard-live.png",
            &["--virtual-time-budget=3000"],
        );
    }

    // The run ends: the stream says so and closes.
    let (_, last) = end.join().unwrap();
    let last = last.expect("the last status says the run is done");
    assert!(last.sent > 0 && last.acked > 0);
    for child in [&mut shard0, &mut shard1] {
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }
}

/// Two shards' frames, with known numbers, on a board whose run is over.
fn finished_board() -> std::sync::Arc<Board> {
    let thresholds: Vec<Threshold> = ["p99<50ms", "errors==0", "lost==0"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let board = Board::new(thresholds);
    let t0 = 1_700_000_000;
    for i in 0..30u64 {
        for shard in 0..2u64 {
            let mut h =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
            for k in 0..50 {
                h.record(2_000 + k * 100 + shard * 1_000 + i * 50).unwrap();
            }
            h.record(20_000 + i * 500).unwrap();
            let mut bytes = Vec::new();
            hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2DeflateSerializer::new(),
                &h,
                &mut bytes,
            )
            .unwrap();
            let frame = LiveFrame {
                shard: format!("{shard}/2"),
                t: t0 + i,
                connected: 18 + shard as i64,
                target: 20,
                scheduled: 51,
                sent: 51,
                acked: 51,
                behind: 0,
                lag_ms: 0.4,
                reconnects: u64::from(i == 10) * 3,
                closes: [("close 1012".to_string(), u64::from(i == 10) * 3)]
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .collect(),
                histogram: base64_encode(&bytes),
                ..LiveFrame::default()
            };
            board.push(frame).unwrap();
        }
    }
    board.finish(false);
    board
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_headless_chromium() {
    let Some(chromium) = chromium("the_dashboard_renders_in_headless_chromium") else {
        return;
    };
    let board = finished_board();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(server::serve(
        listener,
        board.clone(),
        stop.clone().cancelled_owned(),
    ));
    let (dom, _png) = tokio::task::spawn_blocking(move || {
        // The run is over, so the event stream ends and the page loads.
        let wait = "--virtual-time-budget=5000";
        let dom = headless(&chromium, &url, &[wait, "--dump-dom"]);
        let png = screenshot(&chromium, &url, "dashboard.png", &[wait]);
        (dom, png)
    })
    .await
    .unwrap();
    stop.cancel();
    serving.await.unwrap();

    let status = board.status();
    let at = |id: &str| element(&dom, id).unwrap_or_else(|| panic!("no #{id} in {dom}"));
    assert_eq!(at("state"), "run finished");
    assert_eq!((at("connected"), at("target")), ("37".into(), "40".into()));
    assert_eq!(at("shard-count"), "2 of 2");
    assert_eq!(
        (at("sent-rate"), at("sched-rate")),
        ("102".into(), "102".into())
    );
    assert_eq!(at("reconnects"), "6");
    let latency = status.latency.unwrap();
    assert_eq!(at("run-p99"), format!("{:.2}", latency.p99_ms));
    let last = board.points().pop().unwrap();
    assert_eq!(at("p99"), format!("{:.2}", last.p99_ms));
    assert_eq!(at("p999"), format!("{:.2}", last.p999_ms));
    assert!(dom.contains(">close 1012<"), "the closes table");
    assert!(dom.contains(">holds<") && dom.contains(">at the end<"));
    // Lines drawn (the script's own template has `points="${…}"`).
    let lines = dom
        .split("points=\"")
        .skip(1)
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(lines, 8, "three charts: 2 + 3 + 3 lines");
}

#[test]
fn the_html_report_renders_in_headless_chromium() {
    let Some(chromium) = chromium("the_html_report_renders_in_headless_chromium") else {
        return;
    };
    let report = LoadReport::from_json(include_str!("fixtures/load-report.json")).unwrap();
    let thresholds: Vec<Threshold> = ["p99<5s", "lost==0", "duplicates==0"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let verdict = Verdict::check(&report, &thresholds, Some(("baseline.json", &report, 0.1)));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("load-report.html");
    std::fs::write(&page, html::render_judged(&report, &verdict)).unwrap();
    let url = format!("file://{}", page.display());
    let dom = headless(&chromium, &url, &["--dump-dom"]);
    assert!(dom.contains("class=\"verdict failed\""), "the banner");
    assert!(dom.contains("duplicates==0 breached"), "names what failed");
    assert_eq!(dom.matches("<svg").count(), 4);
    screenshot(&chromium, &url, "load-report.png", &[]);
}
