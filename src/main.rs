//! edge-harness: conformance suite and load tester for edge-agent WebSocket
//! backends. `edge-harness --help` teaches the commands.
//!
//! Exit codes: 0 every required check passed, 1 some check failed, 2 usage
//! error, bad scenario file or unreachable backend.

use std::process::ExitCode;

use clap::Parser;
use edge_harness::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `load --threads N`: one thread by default, so an idle fleet's events
    // are handled where they arrive instead of waking a second thread each.
    let threads = match &cli.command {
        Command::Load(args) => args.threads,
        _ => 0,
    };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Runtime::new(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
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
