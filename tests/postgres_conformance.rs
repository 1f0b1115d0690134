//! The conformance suite against each of two edge-server instances that
//! share one PostgreSQL database (the deployment behind a load balancer):
//! both keep every rule, with the other instance live on the same tables,
//! and every connection they make to the database is TLS with the server's
//! certificate verified (`sslmode=verify-full`), as a managed database
//! asks.
//!
//! Uses a fresh schema of `EDGE_TEST_DATABASE_URL` and the CA of
//! `EDGE_TEST_DATABASE_CA`; without them it prints why it skips (and fails
//! under CI, where `.ci/run` provides both).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_harness::conform::{self, Options};
use edge_harness::embedded::{self, Embedded};
use edge_harness::report::Status;
use edge_harness::suite;
use edge_server::store::postgres::testing::schema_for;
use tokio_util::sync::CancellationToken;

/// The PEM CA of the test database's certificate, or `None` (after
/// printing why) outside CI.
fn database_ca(test: &str) -> Option<PathBuf> {
    let Some(ca) = std::env::var_os("EDGE_TEST_DATABASE_CA") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run it over TLS, but EDGE_TEST_DATABASE_CA is not set"
        );
        eprintln!(
            "{test}: skipped: set EDGE_TEST_DATABASE_CA to the PEM CA of the test server's \
             certificate (.ci/run makes one) to run it"
        );
        return None;
    };
    Some(PathBuf::from(ca))
}

/// `path` as a URL query value.
fn query_value(path: &Path) -> String {
    let mut out = String::new();
    for byte in path.to_str().expect("a UTF-8 path").bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// What the database reported about the sessions of one `application_name`
/// over the whole run.
#[derive(Debug, Default)]
struct Seen {
    /// Times the database was asked.
    samples: usize,
    /// Most sessions at once.
    most: usize,
    /// Sessions (backend pids) seen with TLS.
    encrypted: BTreeSet<i32>,
    /// Sessions seen without TLS (should stay empty).
    plain: BTreeSet<i32>,
    /// TLS versions seen.
    versions: BTreeSet<String>,
}

/// Reads `pg_stat_ssl` for every session named in `names` (each instance
/// connects with its own `application_name`) until `stop`, from a
/// connection of its own; the database, not the client, says whether a
/// session is encrypted.
async fn watch_tls(
    url: String,
    names: Vec<String>,
    stop: CancellationToken,
) -> BTreeMap<String, Seen> {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    let mut seen: BTreeMap<String, Seen> =
        names.iter().map(|n| (n.clone(), Seen::default())).collect();
    loop {
        let rows = client
            .query(
                "SELECT a.application_name, a.pid, s.ssl, coalesce(s.version, '') \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
                 WHERE a.application_name = ANY($1)",
                &[&names],
            )
            .await
            .expect("read pg_stat_ssl");
        let mut now: BTreeMap<String, usize> = BTreeMap::new();
        for row in rows {
            let name: String = row.get(0);
            let entry = seen.get_mut(&name).expect("one of ours");
            *now.entry(name).or_default() += 1;
            let pid: i32 = row.get(1);
            if row.get::<_, bool>(2) {
                entry.encrypted.insert(pid);
                entry.versions.insert(row.get(3));
            } else {
                entry.plain.insert(pid);
            }
        }
        for entry in seen.values_mut() {
            entry.samples += 1;
        }
        for (name, n) in now {
            let entry = seen.get_mut(&name).unwrap();
            entry.most = entry.most.max(n);
        }
        tokio::select! {
            () = stop.cancelled() => return seen,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_against_each_of_two_postgres_instances_over_verify_full_tls() {
    let test =
        "conformance_suite_passes_against_each_of_two_postgres_instances_over_verify_full_tls";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let Some(ca) = database_ca(test) else {
        return;
    };
    let checks = suite::builtin().expect("the built-in suite parses");
    // Each instance names its sessions, so the database can be asked about
    // exactly them. A takes the CA as --database-ca-cert, B in the URL (as
    // managed databases document it); channel_binding=require makes the
    // password exchange (SCRAM) bind to the TLS channel too.
    let tag = format!("edge_conf_tls_{:08x}", rand::random::<u32>());
    let names = vec![format!("{tag}_a"), format!("{tag}_b")];
    let tls = "sslmode=verify-full&channel_binding=require";
    let mut config_a = embedded::config(&format!("{url}&{tls}&application_name={}", names[0]));
    config_a.database_ca_cert = Some(ca.clone());
    let config_b = embedded::config(&format!(
        "{url}&{tls}&sslrootcert={}&application_name={}",
        query_value(&ca),
        names[1]
    ));
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_tls(url.clone(), names.clone(), stop.clone()));
    // Each with a graceful restart and a crash (its runtime dropped at
    // once) for the WS-CONN-5 and WS-DLV-6 checks.
    let a = Embedded::start_with(config_a)
        .await
        .expect("instance A starts");
    let b = Embedded::start_with(config_b)
        .await
        .expect("instance B starts");
    // Different seeds: each run's agent and command ids are its own.
    for (seed, instance, label) in [(1, &a, "instance A"), (2, &b, "instance B")] {
        let options = Options {
            seed,
            strict: true,
            retries: 1,
            ..Options::default()
        };
        let report = conform::run(&checks, &instance.target(), &options, label).await;
        let failed: Vec<String> = report
            .results
            .iter()
            .filter(|r| r.status == Status::Fail)
            .map(|r| {
                format!(
                    "{} {} at {}: expected {:?}, observed {:?}",
                    r.rule, r.name, r.location, r.expected, r.observed
                )
            })
            .collect();
        let passed = report
            .results
            .iter()
            .filter(|r| r.status == Status::Pass)
            .count();
        eprintln!(
            "{label}: {passed} of {} checks passed",
            report.results.len()
        );
        assert!(report.passed(), "{label} failed:\n{}", failed.join("\n"));
        // Every check but three ran and passed (SHOULD ones too); two need
        // what an in-process plain-ws:// instance with registration cannot
        // be, and one needs --slow (a minute's wait each, and the fault
        // tests run it against the SQLite server); each says so.
        let others: Vec<String> = report
            .results
            .iter()
            .filter(|r| r.status != Status::Pass)
            .map(|r| format!("{} {:?} {:?}", r.name, r.status, r.reason))
            .collect();
        assert_eq!(others.len(), 3, "{label}: {others:#?}");
        assert!(
            others
                .iter()
                .all(|o| o.contains("Skipped") && o.contains("needs")),
            "{label}: {others:#?}"
        );
        assert!(passed > 90, "{label}: every check ran ({passed})");
    }
    // TLS, as the database saw it: every session of each instance, sampled
    // every 100 ms through both runs (restarts included), was encrypted;
    // and each instance had sessions (its LISTEN connection at least).
    stop.cancel();
    let seen = watcher.await.unwrap();
    a.stop().await;
    b.stop().await;
    for (name, seen) in &seen {
        eprintln!("{name}: {seen:?}");
        assert!(
            !seen.encrypted.is_empty(),
            "no session named {name} was ever seen: {seen:?}"
        );
        assert!(
            seen.plain.is_empty(),
            "{name}: sessions without TLS: {seen:?}"
        );
        assert!(!seen.versions.is_empty(), "{name}: {seen:?}");
    }
}
