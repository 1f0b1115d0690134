//! TLS to a real PostgreSQL, with libpq's `sslmode`s (`tls.rs`).
//!
//! The server's certificate is made by `.ci/run` (`setup_postgres_tls`:
//! openssl, a CA of its own, a certificate for 127.0.0.1 and localhost):
//! a test cannot turn on TLS in a server it does not own. It exports the CA
//! as `EDGE_TEST_DATABASE_CA` beside `EDGE_TEST_DATABASE_URL`, and
//! `EDGE_TEST_DATABASE_TLS_ONLY_URL`, a role pg_hba admits over TLS only.
//! Without them these tests print why they skip; under CI they fail.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::testing::{database_url, fresh_schema};
use super::{Db, PgStore};
use crate::raw_json::RawJson;
use crate::store::{DeliveryPolicy, InsertOutcome, NewCommand, Priority, Store, StoreError};

/// The test database's URL and the CA its certificate chains to, or `None`
/// (after printing why) outside CI.
fn tls_env(test: &str) -> Option<(String, PathBuf)> {
    let url = database_url(test)?;
    let Some(ca) = std::env::var_os("EDGE_TEST_DATABASE_CA") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run the PostgreSQL TLS tests, but EDGE_TEST_DATABASE_CA is not set"
        );
        eprintln!(
            "{test}: skipped: set EDGE_TEST_DATABASE_CA to the PEM CA of the test server's \
             certificate (.ci/run makes one) to run it"
        );
        return None;
    };
    Some((url, PathBuf::from(ca)))
}

/// `url` with `params` added to its query.
fn with(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// Whether the session on `db` is encrypted, as the server sees it.
async fn encrypted(db: &Db) -> Result<bool, StoreError> {
    let (client, connection) = db.connect_raw().await?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(super::backend)?;
    drop(client);
    let _ = driver.await;
    Ok(row.get(0))
}

/// The test database as a key=value string whose host (the name the
/// certificate must carry) is `host`, while TCP goes to the real address.
async fn as_host(url: &str, host: &str) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let real = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr: IpAddr = match real.parse() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((real.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap()
            .ip(),
    };
    let password = String::from_utf8(config.get_password().unwrap_or_default().to_vec()).unwrap();
    format!(
        "host={host} hostaddr={addr} port={port} user='{}' password='{}' dbname='{}'",
        config.get_user().unwrap_or_default(),
        password.replace('\\', "\\\\").replace('\'', "\\'"),
        config.get_dbname().unwrap_or_default(),
    )
}

/// The password of the test database, which no error may show.
fn password(url: &str) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    String::from_utf8(config.get_password().unwrap_or_default().to_vec()).unwrap()
}

/// Connecting to `conn` fails; the message, checked not to hold the password.
async fn refused(conn: &str, ca: Option<&Path>, secret: &str) -> String {
    let db = Db::with_ca(conn, ca).expect("a valid connection string");
    let e = encrypted(&db)
        .await
        .expect_err("the connection should be refused")
        .to_string();
    assert!(
        secret.is_empty() || !e.contains(secret),
        "the error shows the password: {e}"
    );
    eprintln!("refused as expected: {e}");
    e
}

/// A PEM CA that signed nothing the server has.
fn stranger_ca(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).unwrap();
    let path = dir.join("stranger-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

#[tokio::test]
async fn verify_full_with_the_ca_connects_and_keeps_a_command() {
    let test = "verify_full_with_the_ca_connects_and_keeps_a_command";
    let Some((base, ca)) = tls_env(test) else {
        return;
    };
    let schema_url = fresh_schema(&base).await.expect("create a test schema");
    let policy = DeliveryPolicy {
        ack_timeout_ms: 30_000,
        max_attempts: 3,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 60_000,
        max_pending: 100,
    };
    // The CA in the URL, as a managed database's docs say to write it.
    // channel_binding=require: SCRAM must use our tls-server-end-point hash
    // (tls.rs), or the server refuses the password.
    let url = with(
        &schema_url,
        &format!(
            "sslmode=verify-full&sslrootcert={}&channel_binding=require",
            ca.display()
        ),
    );
    let store = PgStore::open(&url, policy).await.expect("open over TLS");
    assert!(encrypted(store.db()).await.unwrap());
    assert!(store.upsert_agent("a1", None, 1).await.unwrap());
    let command = NewCommand {
        id: "c1".into(),
        agent_id: "a1".into(),
        command_type: "send_message".into(),
        parameters: RawJson::parse(r#"{"to":"+1","n":2.50}"#.to_string()).unwrap(),
        priority: Priority::Normal,
        created_at: 2,
        expires_at: None,
    };
    assert!(matches!(
        store.insert_command(command, None).await.unwrap(),
        InsertOutcome::Created(_)
    ));
    let row = store.command("c1").await.unwrap().expect("stored");
    assert_eq!(row.parameters.as_str(), r#"{"to":"+1","n":2.50}"#);
    // The CA as --database-ca-cert gives it.
    let url = with(&schema_url, "sslmode=verify-full");
    let store = PgStore::open_with_ca(&url, Some(&ca), policy)
        .await
        .expect("open over TLS with --database-ca-cert");
    assert!(store.command("c1").await.unwrap().is_some());
}

#[tokio::test]
async fn verify_full_refuses_a_host_the_certificate_does_not_name() {
    let test = "verify_full_refuses_a_host_the_certificate_does_not_name";
    let Some((base, ca)) = tls_env(test) else {
        return;
    };
    let conn = as_host(&base, "not-in-the-cert.invalid").await;
    let e = refused(
        &format!("{conn} sslmode=verify-full"),
        Some(&ca),
        &password(&base),
    )
    .await;
    assert!(
        e.contains("does not name the host `not-in-the-cert.invalid`")
            && e.contains("sslmode=verify-ca"),
        "{e}"
    );
    // verify-ca checks the chain only: the same host name is fine.
    let db = Db::with_ca(&format!("{conn} sslmode=verify-ca"), Some(&ca)).unwrap();
    assert!(encrypted(&db)
        .await
        .expect("verify-ca ignores the host name"));
}

#[tokio::test]
async fn verify_ca_without_the_ca_names_the_certificate_and_the_option() {
    let test = "verify_ca_without_the_ca_names_the_certificate_and_the_option";
    let Some((base, _ca)) = tls_env(test) else {
        return;
    };
    let e = refused(&with(&base, "sslmode=verify-ca"), None, &password(&base)).await;
    assert!(
        e.contains("certificate is not signed by a public CA")
            && e.contains("sslrootcert=PATH")
            && e.contains("--database-ca-cert")
            && e.contains("sslmode=require"),
        "{e}"
    );
}

#[tokio::test]
async fn require_encrypts_without_checking_unless_given_a_ca() {
    let test = "require_encrypts_without_checking_unless_given_a_ca";
    let Some((base, _ca)) = tls_env(test) else {
        return;
    };
    let db = Db::new(&with(&base, "sslmode=require")).unwrap();
    assert!(encrypted(&db).await.expect("require without a CA"));
    // libpq's rule: with a CA file, require verifies like verify-ca.
    let dir = tempfile::tempdir().unwrap();
    let stranger = stranger_ca(dir.path());
    let e = refused(
        &with(&base, "sslmode=require"),
        Some(&stranger),
        &password(&base),
    )
    .await;
    assert!(
        e.contains("sslmode=require") && e.contains("stranger-ca.pem"),
        "{e}"
    );
}

#[tokio::test]
async fn prefer_and_disable_do_what_libpq_does() {
    let test = "prefer_and_disable_do_what_libpq_does";
    let Some((base, ca)) = tls_env(test) else {
        return;
    };
    // No sslmode is prefer: TLS when the server offers it.
    assert!(encrypted(&Db::new(&base).unwrap()).await.unwrap());
    assert!(encrypted(&Db::with_ca(&base, Some(&ca)).unwrap())
        .await
        .unwrap());
    // A handshake that fails (a CA that signed nothing here) falls back to plain.
    let dir = tempfile::tempdir().unwrap();
    let stranger = stranger_ca(dir.path());
    let db = Db::with_ca(&with(&base, "sslmode=prefer"), Some(&stranger)).unwrap();
    assert!(!encrypted(&db).await.expect("prefer falls back"));
    let db = Db::new(&with(&base, "sslmode=disable")).unwrap();
    assert!(!encrypted(&db).await.unwrap());
}

#[tokio::test]
async fn disable_is_refused_by_a_server_that_requires_tls() {
    let test = "disable_is_refused_by_a_server_that_requires_tls";
    let Some((_, ca)) = tls_env(test) else {
        return;
    };
    let Ok(url) = std::env::var("EDGE_TEST_DATABASE_TLS_ONLY_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must set EDGE_TEST_DATABASE_TLS_ONLY_URL"
        );
        eprintln!("{test}: skipped: EDGE_TEST_DATABASE_TLS_ONLY_URL is not set (.ci/run sets it)");
        return;
    };
    // (Its password is its user name, which the message names: not checked.)
    let e = refused(&with(&url, "sslmode=disable"), None, "").await;
    assert!(
        e.contains("no encryption") && e.contains("over TLS only: use sslmode=require"),
        "{e}"
    );
    let db = Db::with_ca(&with(&url, "sslmode=verify-full"), Some(&ca)).unwrap();
    assert!(encrypted(&db).await.expect("the same role over TLS"));
}

#[tokio::test]
async fn the_server_takes_its_ca_from_database_ca_cert() {
    let test = "the_server_takes_its_ca_from_database_ca_cert";
    let Some((base, ca)) = tls_env(test) else {
        return;
    };
    let schema_url = fresh_schema(&base).await.expect("create a test schema");
    let listener = || tokio::net::TcpListener::bind("127.0.0.1:0");
    // Without the CA, verify-full stops the start and says what to pass.
    let url = with(&schema_url, "sslmode=verify-full");
    let config = crate::Config::for_secrets("edge-s", "admin-s", &url);
    let Err(e) = crate::start(config.clone(), listener().await.unwrap()).await else {
        panic!("started without the CA");
    };
    let e = format!("{e:#}");
    assert!(e.contains("--database-ca-cert"), "{e}");
    let secret = password(&base);
    assert!(!e.contains(&format!(":{secret}@")), "{e}");
    // With --database-ca-cert it starts (store, migrations, LISTEN).
    let mut config = config;
    config.database_ca_cert = Some(ca);
    config.instance_id = Some("tls-1".into());
    let server = crate::start(config, listener().await.unwrap())
        .await
        .expect("start with --database-ca-cert");
    server.stop().await;
}
