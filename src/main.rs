//! edge-harness: conformance suite and load tester for edge-agent WebSocket
//! backends. `edge-harness --help` teaches the commands.
//!
//! Exit codes, decided only here (from [`cli::exit_code`]): 0 every required
//! check passed and every threshold held (a closed stdout counts as
//! success); 1 some check or threshold failed, or the run failed partway;
//! 2 usage error, bad scenario/profile/report file, unreachable backend;
//! 130 interrupted by Ctrl-C or SIGTERM (`load` still wrote its partial
//! report).

use std::process::ExitCode;

use clap::Parser;
use edge_harness::cli::{self, Cli, Command, Error};

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
    let result = match runtime {
        Ok(runtime) => runtime.block_on(cli::main(cli)),
        Err(e) => Err(Error::Setup(format!("cannot start the async runtime: {e}"))),
    };
    match &result {
        Err(Error::BrokenPipe) | Ok(_) => {}
        Err(e) => eprintln!("edge-harness: {e}"),
    }
    ExitCode::from(cli::exit_code(&result))
}
