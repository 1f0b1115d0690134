//! The command line, one file per command: `conform.rs` (`conform`, `run`),
//! `load.rs`, `report.rs`, `serve.rs` (hidden: the embedded backend as a
//! child process). `target.rs` holds the backend flags every command
//! shares, `exit.rs` the outcomes and errors and the exit code of each,
//! `output.rs` stdout and report files.

mod conform;
mod exit;
mod load;
mod output;
mod report;
mod serve;
mod target;

use clap::{Parser, Subcommand};

pub use self::conform::{list, CheckArgs, Color, ConformArgs, RunArgs};
pub use self::exit::{code as exit_code, Error, Outcome};
pub use self::load::{parse_ips, Dialect, LoadArgs};
pub use self::report::ReportCommand;
pub use self::serve::ServeArgs;
pub use self::target::TargetArgs;

/// Conformance suite and load tester for backends that push commands to
/// edge agents over WebSocket (PROTOCOL.md).
///
/// Exit codes: 0 every required check passed (and every --fail-if held);
/// 1 some check or threshold failed, the run failed partway, or every
/// check was skipped (nothing was checked); 2 usage
/// error, bad scenario/profile/report file, or unreachable backend;
/// 130 interrupted (Ctrl-C or SIGTERM; `load` still writes its report,
/// marked partial).
#[derive(Parser)]
#[command(name = "edge-harness", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the conformance suite against a backend (or the embedded edge-server).
    ///
    /// Every check cites a PROTOCOL.md rule id. Without --url the suite runs
    /// against edge-server started in this process with short timers.
    ///
    ///   edge-harness conform
    ///   edge-harness conform --url http://localhost:8080 --edge-secret S --admin-token T --junit conform.xml
    Conform(ConformArgs),
    /// Run scenario files (TOML; see scenarios/README.md) against a backend.
    Run(RunArgs),
    /// Drive simulated agents and measure command latency percentiles.
    ///
    /// Commands are injected at a fixed arrival rate and latency is measured
    /// from each command's scheduled send time (coordinated omission
    /// corrected) to the agent's receipt, its ack, and the backend's own
    /// record of the ack; reports go to --report as JSON and HTML.
    ///
    /// Examples:
    ///
    ///   edge-harness load --agents 1000 --rate 200/s --duration 30s
    ///
    ///   edge-harness load --url https://edge.example.com --edge-secret S --admin-token T \
    ///       --agents 10000 --rate 1000/s --duration 60s --fail-if 'p99<20ms' --fail-if 'lost==0'
    ///
    ///   edge-harness load --url http://localhost:8080 --edge-secret S --admin-token T \
    ///       --profile scenarios/load/restart-storm.toml --restart-cmd 'systemctl restart edge'
    ///
    /// Ctrl-C (or SIGTERM) stops injecting, drains, writes the report of what
    /// was measured marked partial, and exits 130.
    #[command(verbatim_doc_comment)]
    Load(Box<LoadArgs>),
    /// Merge shard reports, or re-render a report as HTML.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Run the embedded edge-server (used by `load` as its child process).
    #[command(hide = true)]
    Serve(ServeArgs),
}

/// Runs the command; `main` turns the result into an exit code with
/// [`exit_code`].
pub async fn main(cli: Cli) -> Result<Outcome, Error> {
    match cli.command {
        Command::Conform(args) => conform::conform_command(args).await,
        Command::Run(args) => conform::run_command(args).await,
        Command::Load(args) => load::load(*args).await,
        Command::Report(command) => report::report(command),
        Command::Serve(args) => serve::serve(args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_target_flag_reads_its_environment_variable() {
        for command in ["conform", "run", "load"] {
            let cli = Cli::command();
            let sub = cli.find_subcommand(command).expect(command);
            for (flag, var) in [
                ("url", "EDGE_URL"),
                ("ca_cert", "EDGE_CA_CERT"),
                ("edge_secret", "EDGE_SECRET"),
                ("hmac_secret", "EDGE_HMAC_SECRET"),
                ("admin_token", "ADMIN_TOKEN"),
                ("restart_cmd", "EDGE_RESTART_CMD"),
            ] {
                let arg = sub
                    .get_arguments()
                    .find(|a| a.get_id() == flag)
                    .unwrap_or_else(|| panic!("{command} --{flag}"));
                assert_eq!(
                    arg.get_env().and_then(|v| v.to_str()),
                    Some(var),
                    "{command} --{flag}"
                );
            }
        }
    }
}
