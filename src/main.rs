//! edge-harness: conformance suite and load tester for edge-agent WebSocket
//! backends. `edge-harness --help` teaches the commands.
//!
//! Exit codes: 0 every required check passed, 1 some check failed, 2 usage
//! error, bad scenario file or unreachable backend.

use std::process::ExitCode;

use clap::Parser;
use edge_harness::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edge-harness: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::main(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("edge-harness: {e}");
            ExitCode::from(2)
        }
    }
}
