//! What keeps the server up: handshake timeout, connection cap, configuration checks.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn a_client_that_never_upgrades_is_dropped() {
    let server = TestServer::start_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(PROMPT, tcp.read(&mut buf))
        .await
        .expect("server closed the idle connection");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => assert!(
            buf[..n].starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
}

#[tokio::test]
async fn connections_past_the_cap_get_503() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    // Two idle TCP connections hold the two places.
    let _first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PROMPT, third.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("over_capacity"));
}

#[test]
fn the_binary_refuses_bad_configuration_with_exit_2() {
    let bin = env!("CARGO_BIN_EXE_edge-server");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(bin)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, stderr) = run(&[], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("EDGE_SECRET") || stderr.contains("--edge-secret"),
        "{stderr}"
    );
    let (code, stderr) = run(
        &[],
        &[("EDGE_SECRET", "same-value"), ("ADMIN_TOKEN", "same-value")],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("ADMIN_TOKEN equals EDGE_SECRET"),
        "{stderr}"
    );
    assert!(!stderr.contains("same-value"), "secrets never printed");
    let (code, stderr) = run(
        &["--ping-timeout", "soon"],
        &[("EDGE_SECRET", "a"), ("ADMIN_TOKEN", "b")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("like `2s`"), "{stderr}");
    let (code, help) = {
        let output = std::process::Command::new(bin)
            .arg("--help")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    assert_eq!(code, Some(0));
    for option in [
        "--ack-timeout",
        "ACK_TIMEOUT",
        "--max-pending",
        "[default: 1000]",
        "--tls-cert",
        "DATABASE_URL",
    ] {
        assert!(help.contains(option), "--help mentions {option}");
    }
}

/// `--help` is the manual: every option, its environment variable and default.
#[test]
fn help_text_snapshot() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_edge-server"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    insta::assert_snapshot!(String::from_utf8_lossy(&output.stdout));
}
