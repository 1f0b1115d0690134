//! edge-harness: the conformance suite and load tester for backends that
//! push commands to edge agents over WebSocket (`shared/PROTOCOL.md`).
//!
//! Two products side by side: `conform` (the conformance suite: its
//! runner, the built-in suite, the bad-input fuzz group) and `load` (the
//! load engine). Around them: `cli` (one file per command, the shared
//! target flags, exit codes), `scenario` (TOML scenario files, matching,
//! the step engine), `client` (a raw agent socket), `target` (the backend and its
//! credentials), `tls` (trusted roots, `--ca-cert`), `timing` (timer
//! expressions), `report` (terminal, JUnit, JSON), `embedded`
//! (edge-server in-process).

pub mod cli;
pub mod client;
pub mod conform;
pub mod early_answer;
pub mod embedded;
pub mod load;
pub mod report;
pub mod scenario;
pub mod target;
pub mod timing;
pub mod tls;

/// The suite and the fuzz group, where they were before `conform/` held them.
pub use conform::{fuzz, suite};
