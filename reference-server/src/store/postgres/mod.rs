//! The PostgreSQL [`Store`]: one database shared by several edge-server
//! instances behind a load balancer (`DATABASE_URL=postgres://…`).
//!
//! Every trait method runs on a pooled connection (`deadpool-postgres`) and
//! returns after its transaction committed: with PostgreSQL's default
//! `synchronous_commit = on` that is after the WAL reached disk, so a caller
//! that got `Ok` may tell the world (WS-DLV-6, WS-API-2). The changes that
//! come once per command (insert, claim, ack) are group-committed by
//! `writer.rs`: one transaction and one WAL flush for many commands.
//!
//! Instances never coordinate through memory: whatever must happen once
//! happens under a row lock (`batch.rs`, `delivery.rs`). Routing between
//! instances lives in `cluster/postgres.rs`, on the same database.
//!
//! - `schema.rs`: tables, migrations (under an advisory lock).
//! - `writer.rs`, `batch.rs`: group commit. Inserts, acks, claims and
//!   retries go to a writer that runs many in one transaction; what becomes
//!   of each command is decided in Rust by `store/rules.rs`, as on SQLite.
//! - `agents.rs`, `commands.rs`, `delivery.rs`: the other statements (reads,
//!   agents, the sweeper); `rows.rs` reads result rows into the store's types.
//! - `sslmode.rs`, `tls.rs`: TLS to the database with libpq's `sslmode`s;
//!   every connection (pool, dedicated, LISTEN) goes through [`PgTls`].

mod agents;
mod batch;
mod commands;
mod delivery;
mod pushed_acks;
mod rows;
mod schema;
pub mod sslmode;
pub mod testing;
pub mod tls;
mod writer;

#[cfg(test)]
mod deadline_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Socket;

use super::{
    AckKind, AckOutcome, AgentRow, Claim, CommandRow, CommitStats, ConnId, DeliveryPolicy,
    HistoryRow, InsertOutcome, Millis, NewCommand, RetryOutcome, Status, Store, StoreError,
    StoreResult, Swept,
};
use crate::raw_json::RawJson;
use batch::{mismatch, Answer, Request};
use sslmode::SslMode;
use tls::{describe, PgTls, PgTlsStream};
use writer::Writer;

/// Pooled connections per instance.
const POOL_SIZE: usize = 16;

/// How long opening a connection may take, from the TCP connect to the end
/// of the session's setup, unless the URL's `connect_timeout` says (libpq's
/// meaning: the whole handshake; tokio-postgres bounds only the TCP
/// connect). Without it, a database host that drops packets (a failover
/// whose old address went dark) held each attempt for the kernel's two
/// minutes of SYN retries, and a server that accepted and never answered,
/// forever.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long data sent on a connection may stay unacknowledged before the
/// kernel drops it (`TCP_USER_TIMEOUT`), unless the URL's
/// `tcp_user_timeout` says: a statement in flight to a host gone dark fails
/// after this, not after Linux's ~15 minutes of retransmissions.
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle time before TCP keepalive probes, unless the URL's
/// `keepalives_idle` says. tokio-postgres's own default is 2 hours: for that
/// long a LISTEN connection to a host gone dark (it only receives, so
/// nothing times out) looked alive while every notification was lost.
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// tokio-postgres's `keepalives_idle` when the URL sets none.
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// The URL's timeouts, or ours where it sets none (see the constants).
/// Returns how long a whole connection attempt may take.
fn apply_timeout_defaults(config: &mut tokio_postgres::Config) -> Duration {
    let deadline = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    config.connect_timeout(deadline);
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_idle() == TOKIO_POSTGRES_KEEPALIVES_IDLE {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    deadline
}

/// A connection attempt that outlived its deadline.
fn connect_timed_out(deadline: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "PostgreSQL did not finish connecting within {deadline:?}: the host dropped the \
         connection attempt or the server never answered (connect_timeout in DATABASE_URL \
         sets this limit)"
    ))
}

pub(crate) fn backend(e: impl Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failed connection or statement, with its causes (tokio-postgres's
/// `Display` leaves out why a TLS handshake failed).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match unreachable(&e) {
        true => StoreError::Unavailable(describe(&e)),
        false => StoreError::Backend(describe(&e)),
    }
}

/// Whether `e` says the database is not there now (a failover, a restart):
/// the connection closed or could not be made, or the server is shutting
/// down, starting up or out of connections (SQLSTATE class 08, 57P01-57P03,
/// 53300).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        }
        None => {
            e.is_closed()
                || std::error::Error::source(e).is_some_and(|cause| cause.is::<std::io::Error>())
        }
    }
}

/// Ends a failed transaction so the pooled connection can be reused.
async fn rollback(client: &Object, e: tokio_postgres::Error) -> StoreError {
    let _ = client.batch_execute("ROLLBACK").await;
    pg_error(e)
}

/// The connection pool, and what every operation needs from it.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: PgTls,
    /// How long one connection attempt may take ([`DEFAULT_CONNECT_TIMEOUT`]).
    connect_deadline: Duration,
}

/// Run on every pooled connection once it is open.
///
/// `enable_seqscan = off`: every statement the store runs has an index to
/// use, and must. A statement is prepared once per connection, and after five
/// runs PostgreSQL may keep one generic plan for it, made while the table was
/// still small (a new deployment, a fresh schema). A sequential scan chosen
/// then stays as the table grows: measured, a push's read of its commands by
/// id scanned 15,000 rows (50-120 ms) instead of probing the unique index,
/// and two instances fell seconds behind at 1,000 commands/s. Statements
/// that read a whole table (counts by state) use an index-only scan instead.
///
/// `jit = off`: a table with no index for a condition (the few rows of
/// `instances`) is still scanned, at a cost inflated by `enable_seqscan =
/// off` far past `jit_above_cost`, and PostgreSQL compiled that statement
/// with LLVM on every heartbeat (70 ms each). No statement here gains from
/// JIT; many managed PostgreSQLs have it on.
///
/// `plan_cache_mode = force_generic_plan`: every statement is planned once
/// per connection, not again on each run. Left to choose, PostgreSQL kept
/// planning some of the batch's statements every time (their arrays make a
/// custom plan look cheaper): measured, about a tenth of PostgreSQL's CPU
/// per command. The generic plans are the ones the plan test checks.
const SESSION_SETUP: &str =
    "SET enable_seqscan = off; SET jit = off; SET plan_cache_mode = force_generic_plan";

/// How the pool opens its connections: as [`Db::connect_raw`] does, then
/// [`SESSION_SETUP`].
struct PoolConnect(PgTls);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = self.0.connect(&config).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("PostgreSQL connection ended: {}", describe(&e));
                }
            });
            client.batch_execute(SESSION_SETUP).await?;
            Ok((client, task))
        })
    }
}

impl Db {
    /// Connects (a pool of `POOL_SIZE`, opened lazily) to `url`, a
    /// `postgres://` URL or a libpq key=value string.
    pub fn new(url: &str) -> StoreResult<Db> {
        Db::with_ca(url, None)
    }

    /// Like [`Db::new`], trusting the CAs in `ca_cert` (PEM) unless the URL
    /// names its own (`sslrootcert`). `sslmode` is read as libpq reads it
    /// (`sslmode.rs`, `tls.rs`).
    pub fn with_ca(url: &str, ca_cert: Option<&Path>) -> StoreResult<Db> {
        let (url, mut settings) = sslmode::split(url)
            .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?;
        if settings.root_cert.is_none() {
            settings.root_cert = ca_cert.map(Path::to_path_buf);
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {}", describe(&e))))?;
        config.ssl_mode(settings.mode.negotiation());
        let connect_deadline = apply_timeout_defaults(&mut config);
        let tls = PgTls::new(&settings).map_err(backend)?;
        let manager = Manager::from_connect(
            config.clone(),
            PoolConnect(tls.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_deadline))
            .build()
            .map_err(backend)?;
        Ok(Db {
            pool,
            config,
            tls,
            connect_deadline,
        })
    }

    pub async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.connect_error(e),
            PoolError::Timeout(_) => connect_timed_out(self.connect_deadline),
            e => backend(e),
        })
    }

    /// A failed connection, with what to do when the server wants TLS.
    fn connect_error(&self, e: tokio_postgres::Error) -> StoreError {
        let tls_only = e
            .as_db_error()
            .is_some_and(|db| db.message().ends_with("no encryption"));
        match pg_error(e) {
            StoreError::Backend(text) if tls_only && self.tls.mode() == SslMode::Disable => {
                StoreError::Backend(format!(
                    "{text}; the server admits this user over TLS only: use sslmode=require, \
                     or sslmode=verify-full with the server's CA"
                ))
            }
            other => other,
        }
    }

    /// A connection of its own, outside the pool (for LISTEN, and migrations).
    pub async fn dedicated(&self) -> StoreResult<tokio_postgres::Client> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("PostgreSQL connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Like [`Db::dedicated`], but also hands back the connection, whose
    /// asynchronous messages (NOTIFY) the caller polls.
    pub async fn connect_raw(
        &self,
    ) -> StoreResult<(
        tokio_postgres::Client,
        tokio_postgres::Connection<Socket, PgTlsStream>,
    )> {
        tokio::time::timeout(self.connect_deadline, self.tls.connect(&self.config))
            .await
            .map_err(|_| connect_timed_out(self.connect_deadline))?
            .map_err(|e| self.connect_error(e))
    }

    /// Runs one statement (prepared once per connection) in autocommit.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.execute(&stmt, params).await.map_err(pg_error)
    }

    /// Runs `statements` (each prepared once per connection) in one
    /// transaction, sent together: one round trip and one commit, not one
    /// round trip per statement. Each statement runs once the one before it
    /// finished, so a lock taken by one is held when the next takes its
    /// snapshot. Rows come back in order; on an error nothing was stored.
    pub async fn transaction(
        &self,
        statements: &[(&str, &[&(dyn ToSql + Sync)])],
    ) -> StoreResult<Vec<Vec<tokio_postgres::Row>>> {
        let client = self.client().await?;
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, _) in statements {
            prepared.push(client.prepare_cached(sql).await.map_err(pg_error)?);
        }
        let queries = prepared
            .iter()
            .zip(statements)
            .map(|(statement, (_, params))| client.query(statement, params));
        // Sent in the order first polled: BEGIN, the statements, COMMIT (a
        // COMMIT after a failed statement rolls back).
        let done = futures_util::try_join!(
            client.batch_execute("BEGIN"),
            futures_util::future::try_join_all(queries),
            client.batch_execute("COMMIT"),
        );
        match done {
            Ok((_, rows, _)) => Ok(rows),
            Err(e) => Err(rollback(&client, e).await),
        }
    }

    /// Runs one query (prepared once per connection) in autocommit.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&stmt, params).await.map_err(pg_error)
    }
}

/// PostgreSQL-backed [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    db: Db,
    policy: DeliveryPolicy,
    writer: Writer,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.db.pool.status())
            .finish()
    }
}

impl PgStore {
    /// Connects to `url`, brings the schema up to date (safely when several
    /// instances start at once) and opens the pool.
    pub async fn open(url: &str, policy: DeliveryPolicy) -> StoreResult<PgStore> {
        PgStore::open_with_ca(url, None, policy).await
    }

    /// Like [`PgStore::open`], trusting the CAs in `ca_cert` (PEM) for TLS
    /// unless the URL names its own (`sslrootcert`).
    pub async fn open_with_ca(
        url: &str,
        ca_cert: Option<&Path>,
        policy: DeliveryPolicy,
    ) -> StoreResult<PgStore> {
        let db = Db::with_ca(url, ca_cert)?;
        let mut client = db.dedicated().await?;
        schema::migrate(&mut client).await?;
        let writer = Writer::start(db.clone(), policy);
        Ok(PgStore { db, policy, writer })
    }

    /// How much the group commit has batched so far.
    pub fn stats(&self) -> CommitStats {
        self.writer.stats()
    }

    /// The pool, for the cluster that shares the database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// [`Store::ack`], or with `pushed` [`Store::ack_pushed`].
    async fn write_ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
        pushed: bool,
    ) -> StoreResult<AckOutcome> {
        let request = Request::Ack {
            agent_id: agent_id.to_string(),
            command_id: command_id.to_string(),
            ack,
            now,
            pushed,
        };
        match self.writer.call(request).await? {
            Answer::Ack(outcome) => Ok(outcome),
            _ => Err(mismatch()),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn upsert_agent(
        &self,
        id: &str,
        user_phone: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        agents::upsert(&self.db, id, user_phone, now).await
    }

    async fn agent(&self, id: &str) -> StoreResult<Option<AgentRow>> {
        agents::get(&self.db, id).await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRow>> {
        agents::list(&self.db).await
    }

    async fn set_agent_status(&self, id: &str, status: &RawJson, now: Millis) -> StoreResult<()> {
        // WS-CMD-2: the text as the agent sent it.
        agents::set_status(&self.db, id, status.as_str(), now).await
    }

    async fn record_connect(
        &self,
        agent_id: &str,
        conn: ConnId,
        remote_addr: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        agents::record_connect(&self.db, agent_id, conn, remote_addr, now).await
    }

    async fn record_disconnect(
        &self,
        agent_id: &str,
        conn: ConnId,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()> {
        agents::record_disconnect(&self.db, agent_id, conn, reason, now).await
    }

    async fn history(&self, agent_id: &str, limit: u32) -> StoreResult<Vec<HistoryRow>> {
        agents::history(&self.db, agent_id, limit).await
    }

    async fn insert_command(
        &self,
        command: NewCommand,
        push_to: Option<ConnId>,
    ) -> StoreResult<InsertOutcome> {
        match self
            .writer
            .call(Request::Insert { command, push_to })
            .await?
        {
            Answer::Insert(outcome) => Ok(outcome),
            _ => Err(mismatch()),
        }
    }

    async fn command(&self, id: &str) -> StoreResult<Option<CommandRow>> {
        let client = self.db.client().await?;
        commands::by_id(&client, id).await
    }

    async fn commands_by_id(&self, ids: &[String]) -> StoreResult<Vec<CommandRow>> {
        commands::by_ids(&self.db, ids).await
    }

    async fn commands(
        &self,
        agent_id: &str,
        status: Option<Status>,
        limit: u32,
    ) -> StoreResult<Vec<CommandRow>> {
        commands::list(&self.db, agent_id, status, limit).await
    }

    async fn claim(&self, claim: Claim, now: Millis) -> StoreResult<Vec<CommandRow>> {
        match self.writer.call(Request::Claim { claim, now }).await? {
            Answer::Claim(rows) => Ok(rows),
            _ => Err(mismatch()),
        }
    }

    async fn ack(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome> {
        self.write_ack(agent_id, command_id, ack, now, false).await
    }

    async fn ack_pushed(
        &self,
        agent_id: &str,
        command_id: &str,
        ack: AckKind,
        now: Millis,
    ) -> StoreResult<AckOutcome> {
        self.write_ack(agent_id, command_id, ack, now, true).await
    }

    async fn retry(&self, command_id: &str, _now: Millis) -> StoreResult<RetryOutcome> {
        let command_id = command_id.to_string();
        match self.writer.call(Request::Retry { command_id }).await? {
            Answer::Retry(outcome) => Ok(outcome),
            _ => Err(mismatch()),
        }
    }

    async fn sweep(&self, now: Millis) -> StoreResult<Vec<Swept>> {
        delivery::sweep(&self.db, &self.policy, now).await
    }

    async fn record_event(
        &self,
        agent_id: &str,
        event_id: &str,
        event_type: &str,
        details: &Value,
        now: Millis,
    ) -> StoreResult<bool> {
        let details = details.to_string();
        agents::record_event(&self.db, agent_id, event_id, event_type, &details, now).await
    }

    async fn status_counts(&self) -> StoreResult<Vec<(Status, u64)>> {
        commands::status_counts(&self.db).await
    }
}
