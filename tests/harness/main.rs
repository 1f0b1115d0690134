//! Tests of edge-harness: the suite against the real edge-server, against
//! deliberately broken backends (a fault-injecting proxy), the CLI's exit
//! codes and errors, and snapshots of the three report formats.

mod cli;
mod dashboard;
mod engine;
mod faults;
mod interrupt;
mod load;
mod proxy;
mod registration;
mod snapshots;
mod tls;

/// Runs the edge-harness binary with no backend settings from the environment.
pub fn harness(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_edge-harness"))
        .args(args)
        .env_remove("EDGE_URL")
        .env_remove("EDGE_SECRET")
        .env_remove("ADMIN_TOKEN")
        .env_remove("EDGE_CA_CERT")
        .output()
        .expect("edge-harness runs")
}

/// Asserts a run's exit code, showing its output when it is not.
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// `edge-harness serve` (the embedded edge-server with spec timers) as a
/// child process on an ephemeral port, ended when dropped (a failed
/// assertion too).
pub struct ChildServer {
    child: std::process::Child,
    /// Its base URL.
    pub url: String,
}

impl ChildServer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve_child(dir: &std::path::Path) -> ChildServer {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-harness"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(dir.join("edge.db"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("edge-harness serve starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("it says where")
        .to_string();
    ChildServer {
        child,
        url: format!("http://{addr}"),
    }
}
