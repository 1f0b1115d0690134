//! Configuration: every option is a flag and an environment variable.
//!
//! Durations are written the human way (`2s`, `1500ms`, `1m`). Secrets are
//! read from the environment or flags but never printed: `--help` hides their
//! values and `Debug` redacts them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Parses `2s`, `1500ms`, `1m`, `1h 30m` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; write a duration like `2s`, `1500ms` or `1m`"))
}

/// Which token kinds open an agent socket (WS-AUTH-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenKinds {
    /// The shared `EDGE_SECRET` and per-agent HMAC tokens.
    Both,
    /// Only the shared `EDGE_SECRET`.
    Shared,
    /// Only per-agent HMAC tokens.
    Hmac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// edge-server: the reference backend for the edge-agent WebSocket protocol.
///
/// Agents connect to `GET /edge/ws?edge_agent_id=ID` with
/// `Authorization: Bearer TOKEN`; your services push commands with the control
/// API (`POST /api/agents/{id}/commands`, `Authorization: Bearer ADMIN_TOKEN`).
/// Commands are stored durably before they are acknowledged and are delivered
/// at least once. Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad
/// configuration.
#[derive(Clone, Parser)]
#[command(name = "edge-server", version, about, long_about)]
pub struct Config {
    /// Address and port to listen on; overrides --port.
    #[arg(long, env = "LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Port to listen on (all interfaces) when --listen is not given.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Shared secret of the edge agents (Bearer token, and the key of
    /// per-agent HMAC tokens). Required.
    #[arg(long, env = "EDGE_SECRET", hide_env_values = true)]
    pub edge_secret: String,

    /// Bearer token of the control API (/api/...). Required; must differ from
    /// EDGE_SECRET.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Token agents present to POST /edge/register. Without it registration
    /// is disabled (403 registration_disabled).
    #[arg(long, env = "REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,

    /// Where state lives: sqlite://PATH (one file; created if missing), or
    /// postgres://USER:PASSWORD@HOST/DB, shared by several instances behind
    /// a load balancer (migrations run at start). TLS to PostgreSQL as libpq
    /// does it: ?sslmode=disable|prefer (default)|require|verify-ca|verify-full,
    /// and &sslrootcert=PATH for the CA.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://edge-server.db"
    )]
    pub database_url: String,

    /// PEM file of the CA that signed the PostgreSQL server's certificate:
    /// sslmode=verify-ca and verify-full check against it (and require
    /// then checks the chain too). Without it they trust the public web
    /// CAs. sslrootcert in DATABASE_URL takes precedence.
    #[arg(long, env = "DATABASE_CA_CERT", value_name = "PEM_FILE")]
    pub database_ca_cert: Option<PathBuf>,

    /// This instance's name among several sharing a PostgreSQL database
    /// (shown by GET /api/agents/{id}); unique per instance. Default:
    /// HOSTNAME:PORT.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Which agent tokens are accepted (WS-AUTH-5).
    #[arg(long, env = "EDGE_TOKEN_KINDS", value_enum, default_value_t = TokenKinds::Both)]
    pub token_kinds: TokenKinds,

    /// Ping interval advertised to agents in `connected`.
    #[arg(long, env = "PING_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub ping_interval: Duration,

    /// Close a socket that sent nothing for this long (close 4008, WS-CONN-3).
    #[arg(long, env = "PING_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub ping_timeout: Duration,

    /// Redeliver a command not acked within this long (WS-DLV-3).
    #[arg(long, env = "ACK_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub ack_timeout: Duration,

    /// Deliveries before a command is dead (WS-DLV-3).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// First redelivery backoff; doubles per attempt (WS-DLV-3).
    #[arg(long, env = "BACKOFF_BASE", value_parser = parse_duration, default_value = "1s")]
    pub backoff_base: Duration,

    /// Largest redelivery backoff.
    #[arg(long, env = "BACKOFF_CAP", value_parser = parse_duration, default_value = "60s")]
    pub backoff_cap: Duration,

    /// Commands not yet final per agent; past it the control API answers
    /// 429 queue_full (WS-API-2).
    #[arg(long, env = "MAX_PENDING", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending: u64,

    /// Polling interval pushed to agents as config_updates.sync_interval.
    #[arg(long, env = "SYNC_INTERVAL", value_parser = parse_duration, default_value = "15s")]
    pub sync_interval: Duration,

    /// Connection attempts per agent per minute, after auth (WS-RATE-1). 0 = no limit.
    #[arg(long, env = "RATE_CONNECTS_PER_MIN", default_value_t = 10)]
    pub rate_connects_per_min: u32,

    /// Rejected upgrades per remote address per minute (WS-RATE-1). 0 = no limit.
    #[arg(long, env = "RATE_REJECTS_PER_MIN", default_value_t = 10)]
    pub rate_rejects_per_min: u32,

    /// Messages per agent per minute (WS-RATE-2). 0 = no limit.
    #[arg(long, env = "RATE_MESSAGES_PER_MIN", default_value_t = 100)]
    pub rate_messages_per_min: u32,

    /// At most one ping answered per this long per agent (WS-RATE-3). 0s = no limit.
    #[arg(long, env = "RATE_PING_INTERVAL", value_parser = parse_duration, default_value = "10s")]
    pub rate_ping_interval: Duration,

    /// Drop a TCP connection that has not sent its request (or finished TLS) by then.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,

    /// Open connections (sockets and HTTP) at most; more are refused with 503.
    /// Keep it below the process's open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 19_000)]
    pub max_connections: usize,

    /// Messages waiting to be written to one agent at most; an agent that
    /// reads slower than that is disconnected (close 1008) and gets its
    /// commands again when it reconnects. Nothing is lost.
    #[arg(long, env = "SEND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_queue: u64,

    /// Time a write to a socket may take before the agent counts as stalled.
    #[arg(long, env = "WRITE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub write_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for sockets to close (1012) and
    /// requests to finish.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    /// PEM certificate chain: serve wss:// and https:// (with --tls-key).
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `edge_server=debug` (RUST_LOG syntax).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Why a configuration cannot start a server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("EDGE_SECRET is empty: set it (or --edge-secret) to the agents' shared secret")]
    EmptyEdgeSecret,
    #[error("ADMIN_TOKEN is empty: set it (or --admin-token) to the control API's token")]
    EmptyAdminToken,
    #[error("ADMIN_TOKEN equals EDGE_SECRET: the control API needs its own secret (WS-API-1)")]
    AdminEqualsEdge,
    #[error("DATABASE_URL `{0}` is not supported: use sqlite://PATH or postgres://…")]
    UnsupportedDatabase(String),
    #[error("DATABASE_URL: {0}")]
    DatabaseTls(#[from] crate::store::postgres::sslmode::SslModeError),
    #[error("--ping-timeout must be longer than --ping-interval")]
    PingTimeoutTooShort,
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL, as given.
    Postgres(String),
}

impl Config {
    /// Checks what clap cannot: secrets present and distinct, a known database.
    pub fn validate(&self) -> Result<Database, ConfigError> {
        if self.edge_secret.is_empty() {
            return Err(ConfigError::EmptyEdgeSecret);
        }
        if self.admin_token.is_empty() {
            return Err(ConfigError::EmptyAdminToken);
        }
        if self.admin_token == self.edge_secret {
            return Err(ConfigError::AdminEqualsEdge);
        }
        if self.ping_timeout <= self.ping_interval {
            return Err(ConfigError::PingTimeoutTooShort);
        }
        self.database()
    }

    pub fn database(&self) -> Result<Database, ConfigError> {
        let url = &self.database_url;
        if let Some(path) = url.strip_prefix("sqlite://").filter(|p| !p.is_empty()) {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if ["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
        {
            // A bad sslmode is a configuration error (exit 2), found before
            // any connection.
            crate::store::postgres::sslmode::split(url)?;
            return Ok(Database::Postgres(url.clone()));
        }
        Err(ConfigError::UnsupportedDatabase(redact_url(url)))
    }

    /// The instance's name: `--instance-id`, else HOSTNAME:PORT.
    pub fn instance_name(&self, port: u16) -> String {
        if let Some(id) = self.instance_id.as_ref().filter(|id| !id.is_empty()) {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "edge-server".into());
        format!("{host}:{port}")
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port)))
    }

    /// A configuration for tests and the embedded default: given secrets and
    /// database, every other option at its default.
    pub fn for_secrets(edge_secret: &str, admin_token: &str, database_url: &str) -> Config {
        Config::parse_from([
            "edge-server",
            "--edge-secret",
            edge_secret,
            "--admin-token",
            admin_token,
            "--database-url",
            database_url,
        ])
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen_addr())
            .field("edge_secret", &"<redacted>")
            .field("admin_token", &"<redacted>")
            .field(
                "registration_token",
                &self.registration_token.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url", &redact_url(&self.database_url))
            .field("database_ca_cert", &self.database_ca_cert)
            .field("instance_id", &self.instance_id)
            .field("token_kinds", &self.token_kinds)
            .field("ping_timeout", &self.ping_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

/// A database URL without its password (`postgres://user:…@host/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:<redacted>@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_human_way() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").unwrap_err().contains("like `2s`"));
    }

    #[test]
    fn refuses_admin_token_equal_to_edge_secret() {
        let config = Config::for_secrets("same", "same", "sqlite://x.db");
        assert_eq!(config.validate(), Err(ConfigError::AdminEqualsEdge));
    }

    #[test]
    fn refuses_unknown_database_scheme() {
        let config = Config::for_secrets("a", "b", "mysql://x");
        assert!(matches!(
            config.validate(),
            Err(ConfigError::UnsupportedDatabase(_))
        ));
    }

    #[test]
    fn postgres_urls_are_accepted_and_their_passwords_never_shown() {
        let url = "postgres://edge:pa55word@db.internal:5432/edge";
        let config = Config::for_secrets("a", "b", url);
        assert_eq!(config.validate(), Ok(Database::Postgres(url.into())));
        let config = Config::for_secrets("a", "b", "postgresql://h/db");
        assert!(matches!(config.validate(), Ok(Database::Postgres(_))));
        assert!(!format!("{config:?}").contains("pa55word"));
        let shown = format!("{:?}", Config::for_secrets("a", "b", url));
        assert!(!shown.contains("pa55word"), "{shown}");
        assert!(matches!(
            Config::for_secrets("a", "b", "postgres://").validate(),
            Err(ConfigError::UnsupportedDatabase(_))
        ));
    }

    #[test]
    fn postgres_sslmodes_are_checked_before_connecting() {
        let url = "postgres://edge:pa55word@db/edge?sslmode=verify-full&sslrootcert=/ca.pem";
        let config = Config::for_secrets("a", "b", url);
        assert_eq!(config.validate(), Ok(Database::Postgres(url.into())));
        let config = Config::for_secrets("a", "b", "postgres://edge:pa55word@db/edge?sslmode=on");
        let e = config.validate().unwrap_err();
        assert!(matches!(e, ConfigError::DatabaseTls(_)), "{e}");
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!(!e.to_string().contains("pa55word"), "{e}");
    }

    #[test]
    fn instance_name_defaults_to_host_and_port() {
        let mut config = Config::for_secrets("a", "b", "sqlite://x.db");
        assert!(config.instance_name(8080).ends_with(":8080"));
        config.instance_id = Some("edge-1".into());
        assert_eq!(config.instance_name(8080), "edge-1");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = Config::for_secrets("edge-s3cret", "admin-s3cret", "sqlite://x.db");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
