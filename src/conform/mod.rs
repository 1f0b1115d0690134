//! The conformance product: `edge-harness conform` and `run`. The suite's
//! checks are data (`scenarios/conformance/`); this module runs them.
//!
//! `runner.rs` (selecting, skipping, retrying and running checks),
//! `suite.rs` (the built-in suite, embedded at build time), `fuzz.rs` (the
//! bad-input group, WS-ERR-2). The load product lives beside it in `load/`.

pub mod fuzz;
pub mod runner;
pub mod suite;

pub use runner::*;
