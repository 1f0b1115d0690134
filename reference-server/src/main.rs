//! edge-server: run the reference backend.
//!
//! ```text
//! EDGE_SECRET=… ADMIN_TOKEN=… edge-server --listen 0.0.0.0:8080
//! ```
//! `edge-server --help` lists every option with its environment variable and
//! default. Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when the
//! server fails at runtime, 2 when the configuration is wrong.

use std::process::ExitCode;

use clap::Parser;
use edge_server::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc, not glibc's malloc: a request allocates many small objects
/// across worker threads, and glibc's arenas spent about a fifth of the
/// server's CPU in malloc, free and their consolidation (perf, two
/// instances on PostgreSQL at ~4,000 commands/s; see
/// `reports/edge-server-postgres.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("edge-server: {e}");
        return ExitCode::from(2);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edge-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr();
    let listener =
        edge_server::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let server = edge_server::start(config, listener).await?;
    tracing::info!(
        "edge-server {} listening on {}",
        env!("CARGO_PKG_VERSION"),
        server.addr
    );
    shutdown_signal().await;
    server.stop().await;
    tracing::info!("edge-server stopped");
    Ok(())
}

/// SIGTERM (a deploy) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
