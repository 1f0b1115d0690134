//! `serve` (hidden): the embedded edge-server with the spec's timers and no
//! per-agent limits, as the child process `load` starts when there is no
//! --url (a separate process, so the load's own cost is measured apart).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Error, Outcome};

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    #[arg(long)]
    pub database: PathBuf,
    /// Stop when stdin reaches EOF: `load`'s child stops with its parent,
    /// however the parent ends.
    #[arg(long)]
    pub until_stdin_closes: bool,
}

pub async fn serve(args: ServeArgs) -> Result<Outcome, Error> {
    let db = format!("sqlite://{}", args.database.display());
    let mut config = crate::embedded::config(&db);
    // Its stderr is the load run's terminal: warnings only.
    config.log_level = "warn".into();
    // Spec timers, and no per-agent limits: the load decides the traffic.
    let spec = edge_server::Config::for_secrets("x", "y", &db);
    config.ping_interval = spec.ping_interval;
    config.ping_timeout = spec.ping_timeout;
    config.ack_timeout = spec.ack_timeout;
    config.max_attempts = spec.max_attempts;
    config.rate_connects_per_min = 0;
    config.rate_rejects_per_min = 0;
    config.rate_messages_per_min = 0;
    config.rate_ping_interval = Duration::ZERO;
    config.max_pending = 100_000;
    let cannot =
        |e: &dyn std::fmt::Display| Error::Setup(format!("cannot listen on {}: {e}", args.listen));
    let addr = tokio::net::lookup_host(&args.listen)
        .await
        .map_err(|e| cannot(&e))?
        .next()
        .ok_or_else(|| cannot(&"no address"))?;
    let listener = edge_server::bind(addr).map_err(|e| cannot(&e))?;
    let server = edge_server::start(config, listener)
        .await
        .map_err(|e| Error::Setup(format!("{e:#}")))?;
    println!("listening on {}", server.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Setup(e.to_string()))?;
    let parent_gone = async {
        if args.until_stdin_closes {
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = parent_gone => {}
    }
    server.stop().await;
    Ok(Outcome::Passed)
}
