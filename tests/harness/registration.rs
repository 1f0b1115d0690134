//! WS-HTTP-3 when the backend has no registration configured: the check
//! runs with `--no-registration`, passes edge-server without a
//! REGISTRATION_TOKEN, and fails one that has a token (answers 401, not
//! `403 registration_disabled`).

use edge_harness::conform::{self, Options};
use edge_harness::embedded::{self, Embedded};
use edge_harness::report::{RunReport, Status};
use edge_harness::suite;
use edge_harness::target::Target;

async fn run_against(registration: bool) -> RunReport {
    let server = Embedded::start(|c| {
        if !registration {
            c.registration_token = None;
        }
    })
    .await
    .unwrap();
    let mut target = Target::new(&server.url()).unwrap();
    target.edge_secret = Some(embedded::EDGE_SECRET.into());
    target.admin_token = Some(embedded::ADMIN_TOKEN.into());
    target.registration_disabled = true;
    let options = Options {
        only: vec!["WS-HTTP-3".into()],
        strict: true,
        seed: 5,
        ..Options::default()
    };
    let report = conform::run(&suite::builtin().unwrap(), &target, &options, "t").await;
    server.stop().await;
    report
}

fn status_of(report: &RunReport, name: &str) -> Status {
    report
        .results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} ran"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_http_3_registration_disabled_passes_a_backend_without_a_token() {
    let report = run_against(false).await;
    assert_eq!(
        status_of(&report, "registration-disabled-is-403"),
        Status::Pass
    );
    assert_eq!(
        status_of(&report, "edge-secret-never-registers"),
        Status::Pass
    );
    // The checks that need a registration token say why they did not run.
    assert_eq!(
        status_of(&report, "register-is-idempotent-per-phone"),
        Status::Skipped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_http_3_registration_disabled_fails_a_backend_that_registers() {
    let report = run_against(true).await;
    let check = report
        .results
        .iter()
        .find(|r| r.name == "registration-disabled-is-403")
        .unwrap();
    assert_eq!(check.status, Status::Fail);
    assert!(
        check.observed.as_deref().unwrap_or("").contains("401"),
        "{:?}",
        check.observed
    );
}
