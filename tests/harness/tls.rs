//! WS-AUTH-6 over real TLS: `conform --ca-cert` trusts a self-signed
//! edge-server in the HTTP requests and the wss:// upgrades; without it the
//! check fails naming the certificate; over http:// it is skipped.

use std::path::{Path, PathBuf};

use crate::{assert_exit, text};
use edge_harness::embedded::{Embedded, ADMIN_TOKEN, EDGE_SECRET};

/// `edge-harness conform --only WS-AUTH-6` against `url` (trusting
/// `ca_cert` if given): its exit code, stderr, and the check's JSON result.
async fn ws_auth_6(
    url: &str,
    ca_cert: Option<&Path>,
    dir: &Path,
) -> (Option<i32>, String, serde_json::Value) {
    let (code, stderr, result) = conform_one(url, ca_cert, dir, "WS-AUTH-6").await;
    assert_eq!(result["rule"], "WS-AUTH-6");
    assert_eq!(result["name"], "tls-chain-and-wss");
    (code, stderr, result)
}

/// `edge-harness conform --only ONLY` (one check) against `url`.
async fn conform_one(
    url: &str,
    ca_cert: Option<&Path>,
    dir: &Path,
    only: &str,
) -> (Option<i32>, String, serde_json::Value) {
    let json = dir.join(format!("conform-{}.json", rand::random::<u32>()));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edge-harness"));
    command
        .args(["conform", "--url", url, "--edge-secret", EDGE_SECRET])
        .args(["--admin-token", ADMIN_TOKEN, "--only", only])
        .args(["--color", "never", "--json"])
        .arg(&json)
        .env_remove("EDGE_CA_CERT")
        .env_remove("EDGE_HMAC_SECRET")
        .env_remove("REGISTRATION_TOKEN");
    if let Some(path) = ca_cert {
        command.arg("--ca-cert").arg(path);
    }
    let out = tokio::task::spawn_blocking(move || command.output().expect("edge-harness runs"))
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json)
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", text(&out.stdout), text(&out.stderr))),
    )
    .unwrap();
    let results = report["report"]["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1, "{results:#?}");
    (out.status.code(), text(&out.stderr), results[0].clone())
}

/// The embedded edge-server over TLS with a self-signed certificate made
/// in `dir`: (the server, the certificate to trust).
async fn tls_server(dir: &Path) -> (Embedded, PathBuf) {
    let (cert, key) = self_signed(dir);
    let cert_file = cert.clone();
    let server = Embedded::start(move |c| {
        c.tls_cert = Some(cert_file);
        c.tls_key = Some(key);
    })
    .await
    .unwrap();
    (server, cert)
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_auth_6_passes_with_ca_cert_and_fails_naming_the_certificate_without() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path()).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());

    // Trusted: GET /health over HTTPS, then a wss:// upgrade and a ping.
    let (code, stderr, result) = ws_auth_6(&url, Some(&cert), dir.path()).await;
    assert_eq!(result["status"], "pass", "{result:#}\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");

    // Not trusted: the check runs and fails, naming the cause and the flag.
    let (code, stderr, result) = ws_auth_6(&url, None, dir.path()).await;
    assert_eq!(result["status"], "fail", "{result:#}\n{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    let observed = result["observed"].as_str().unwrap_or_default();
    assert!(
        observed.contains("invalid peer certificate: UnknownIssuer")
            && observed.contains("pass --ca-cert FILE"),
        "{result:#}"
    );
    assert!(stderr.contains("--ca-cert"), "{stderr}");
}

/// A big body goes over its own TLS connection (it reads the 413 while
/// it still writes), trusting --ca-cert as the other requests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_body_is_refused_over_tls_too() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path()).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let (code, stderr, result) =
        conform_one(&url, Some(&cert), dir.path(), "big-body-is-413-json").await;
    assert_eq!(result["status"], "pass", "{result:#}\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}

/// The wss:// upgrade itself trusts --ca-cert, and names the certificate
/// when it does not verify (the HTTP client is checked above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wss_upgrade_trusts_the_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path()).await;
    let url = format!(
        "wss://127.0.0.1:{}/edge/ws?edge_agent_id=x",
        server.addr.port()
    );
    let deadline = std::time::Duration::from_secs(5);
    let (tls, _) = edge_harness::tls::trust(Some(&cert)).unwrap();
    // No token: refused with 401, which needs the TLS handshake to pass.
    let upgrade = edge_harness::client::connect(&url, &[], None, deadline, Some(tls))
        .await
        .unwrap();
    assert!(matches!(
        upgrade,
        edge_harness::client::Upgrade::Refused { status: 401, .. }
    ));
    let Err(error) = edge_harness::client::connect(&url, &[], None, deadline, None).await else {
        panic!("an untrusted certificate is accepted");
    };
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer")
            && error.contains("pass --ca-cert FILE"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_auth_6_is_skipped_over_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Embedded::start(|_| {}).await.unwrap();
    let (code, stderr, result) = ws_auth_6(&server.url(), None, dir.path()).await;
    assert_eq!(result["status"], "skipped", "{result:#}\n{stderr}");
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| r.contains("https://")),
        "{result:#}"
    );
    // The one check selected was skipped: nothing was checked, so the run
    // is not a pass (exit 1), though the skip itself is no failure.
    assert_eq!(code, Some(1), "{stderr}");
}

#[test]
fn a_bad_ca_cert_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (path, why) in [(&missing, "No such file"), (&not_pem, "no PEM certificate")] {
        let out = crate::harness(&[
            "conform",
            "--url",
            "https://127.0.0.1:9",
            "--edge-secret",
            "s",
            "--ca-cert",
            path.to_str().unwrap(),
        ]);
        assert_exit(&out, 2);
        let said = text(&out.stderr);
        assert!(
            said.contains(&format!("--ca-cert {}", path.display())) && said.contains(why),
            "{said}"
        );
    }
}
