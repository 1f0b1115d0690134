//! The conformance suite against each of two edge-server instances that
//! share one PostgreSQL database (the deployment behind a load balancer):
//! both keep every rule, with the other instance live on the same tables.
//!
//! Uses a fresh schema of `EDGE_TEST_DATABASE_URL`; without one it prints
//! why it skips (and fails under CI, where `.ci/run` provides one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_harness::conform::{self, Options};
use edge_harness::report::Status;
use edge_harness::target::{Restarter, Target};
use edge_harness::{embedded, suite};
use edge_server::store::postgres::testing::schema_for;
use edge_server::{Config, RunningServer};
use tokio::sync::Mutex;

async fn start(config: Config, addr: SocketAddr) -> Result<RunningServer, String> {
    let mut last = String::new();
    // After a restart the port may take a moment to free up.
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                return edge_server::start(config, listener)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("cannot listen on {addr}: {last}"))
}

/// One instance, with a restarter for the WS-CONN-5 checks (graceful stop,
/// then a new process-equivalent on the same port and database).
struct Instance {
    addr: SocketAddr,
    server: Arc<Mutex<Option<RunningServer>>>,
    config: Config,
}

impl Instance {
    async fn start(config: Config) -> Instance {
        let server = start(config.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("instance starts");
        Instance {
            addr: server.addr,
            server: Arc::new(Mutex::new(Some(server))),
            config,
        }
    }

    fn target(&self) -> Target {
        let mut target = Target::new(&format!("http://{}", self.addr)).unwrap();
        target.edge_secret = Some(embedded::EDGE_SECRET.into());
        target.admin_token = Some(embedded::ADMIN_TOKEN.into());
        target.registration_token = Some(embedded::REGISTRATION_TOKEN.into());
        let (server, config, addr) = (self.server.clone(), self.config.clone(), self.addr);
        let restarter: Restarter = Arc::new(move || {
            let (server, config) = (server.clone(), config.clone());
            Box::pin(async move {
                let mut slot = server.lock().await;
                if let Some(running) = slot.take() {
                    running.stop().await;
                }
                *slot = Some(start(config, addr).await?);
                Ok(())
            })
        });
        target.restarter = Some(restarter);
        target
    }

    async fn stop(self) {
        if let Some(server) = self.server.lock().await.take() {
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_against_each_of_two_postgres_instances() {
    let test = "conformance_suite_passes_against_each_of_two_postgres_instances";
    let Some(url) = schema_for(test).await else {
        return;
    };
    let checks = suite::builtin().expect("the built-in suite parses");
    let config = embedded::config(&url);
    let a = Instance::start(config.clone()).await;
    let b = Instance::start(config).await;
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
        // Every check but two ran and passed (SHOULD ones too); those two
        // need what an in-process plain-ws:// instance with registration
        // cannot be, and say so.
        let others: Vec<String> = report
            .results
            .iter()
            .filter(|r| r.status != Status::Pass)
            .map(|r| format!("{} {:?} {:?}", r.name, r.status, r.reason))
            .collect();
        assert_eq!(others.len(), 2, "{label}: {others:#?}");
        assert!(
            others
                .iter()
                .all(|o| o.contains("Skipped") && o.contains("needs")),
            "{label}: {others:#?}"
        );
        assert!(passed > 90, "{label}: every check ran ({passed})");
    }
    a.stop().await;
    b.stop().await;
}
