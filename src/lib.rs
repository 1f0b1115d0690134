//! edge-harness: the conformance suite and load tester for backends that
//! push commands to edge agents over WebSocket (`shared/PROTOCOL.md`).
//!
//! Modules: `cli` (commands and exit codes), `scenario` (TOML scenario
//! files, matching, the step engine), `suite` (the built-in conformance
//! suite), `conform` (running checks), `fuzz` (the bad-input group),
//! `client` (a raw agent socket), `target` (the backend and its
//! credentials), `tls` (trusted roots, `--ca-cert`), `timing` (timer
//! expressions), `report` (terminal, JUnit, JSON), `embedded`
//! (edge-server in-process).

pub mod cli;
pub mod client;
pub mod conform;
pub mod embedded;
pub mod fuzz;
pub mod load;
pub mod load_cli;
pub mod report;
pub mod scenario;
pub mod suite;
pub mod target;
pub mod timing;
pub mod tls;
