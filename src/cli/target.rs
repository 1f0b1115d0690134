//! The backend and its credentials: one set of flags, flattened into every
//! command that drives a backend (`conform`, `run`, `load`), each with its
//! environment variable, so a CI job sets them once.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Error;
use crate::embedded;
use crate::target::{shell_restarter, Lifecycle, Target};
use crate::tls::Trust;

#[derive(Args, Clone, Default)]
pub struct TargetArgs {
    /// The backend's base URL (http://, https://, ws:// or wss://); `load`
    /// takes it repeated, to spread agents over several instances. Without
    /// it, edge-server runs embedded on an ephemeral loopback port (in
    /// process for `conform` and `run`, as a child process for `load`).
    #[arg(long, env = "EDGE_URL")]
    pub url: Vec<String>,
    /// Trust this CA certificate (PEM) besides the public roots, in the HTTP
    /// requests and the wss:// upgrades: for a backend with a private or
    /// self-signed certificate.
    #[arg(long, env = "EDGE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The agents' shared secret (also the key of per-agent HMAC tokens).
    #[arg(long, env = "EDGE_SECRET", hide_env_values = true)]
    pub edge_secret: Option<String>,
    /// Mint per-agent HMAC tokens with this key (for a backend that does not
    /// take the shared secret).
    #[arg(long, env = "EDGE_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,
    /// The control API's token (PROTOCOL.md §8): `load` provisions agents and
    /// injects commands with it; without it, checks that need it are skipped.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Shell command that restarts the backend (WS-CONN-5, `restart` load
    /// events); the harness waits for /health afterwards. Without it, what
    /// needs a restart is skipped.
    #[arg(long, env = "EDGE_RESTART_CMD")]
    pub restart_cmd: Option<String>,
    /// Shell command that kills the backend without warning (`kill -9`) and
    /// starts it again (WS-DLV-6: nothing accepted is lost on a crash); the
    /// harness waits for /health afterwards. Without it, the crash checks
    /// are skipped.
    #[arg(long, env = "EDGE_CRASH_CMD")]
    pub crash_cmd: Option<String>,
}

impl TargetArgs {
    /// Whom to trust over TLS: the public roots and `--ca-cert`.
    pub fn trust(&self) -> Result<Trust, Error> {
        Ok(crate::tls::trust(self.ca_cert.as_deref())?)
    }

    /// The target at `url`. With `embedded` (how to restart an embedded
    /// edge-server) it gets the embedded credentials; otherwise the flags'.
    pub fn target(
        &self,
        url: &str,
        trust: &Trust,
        embedded: Option<Lifecycle>,
    ) -> Result<Target, Error> {
        let mut t = Target::new(url).map_err(|e| Error::Usage(e.to_string()))?;
        match embedded {
            Some(lifecycle) => {
                t.edge_secret = Some(embedded::EDGE_SECRET.into());
                t.admin_token = Some(embedded::ADMIN_TOKEN.into());
                t.registration_token = Some(embedded::REGISTRATION_TOKEN.into());
                t.adopt(lifecycle);
            }
            None => {
                t.edge_secret = self.edge_secret.clone();
                t.hmac_secret = self.hmac_secret.clone();
                t.admin_token = self.admin_token.clone();
                let base = t.http_base.clone();
                let shell = |flag, cmd: &Option<String>| {
                    cmd.clone()
                        .map(|cmd| shell_restarter(flag, cmd, base.clone(), trust.clone()))
                };
                t.restarter = shell("--restart-cmd", &self.restart_cmd);
                t.crasher = shell("--crash-cmd", &self.crash_cmd);
            }
        }
        t.trust(trust).map_err(|e| Error::Usage(e.to_string()))?;
        if t.edge_secret.is_none() && t.hmac_secret.is_none() {
            return Err(Error::Usage(
                "agents cannot authenticate: pass --edge-secret (or --hmac-secret)".into(),
            ));
        }
        Ok(t)
    }
}

/// Waits for the backend's /health; one that never answers is
/// [`Error::Unreachable`] (exit 2), worded with what to check.
pub async fn reach(target: &Target, within: Duration) -> Result<(), Error> {
    target.wait_healthy(within).await.map_err(|e| {
        Error::Unreachable(if crate::tls::is_certificate_failure(&e) {
            crate::tls::hint(e)
        } else {
            format!("{e}: is the backend running at that URL?")
        })
    })
}
