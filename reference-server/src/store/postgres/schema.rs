//! The PostgreSQL schema and its migrations.
//!
//! `schema_migrations` counts the migrations applied. Several instances may
//! start at once against one database: each takes a session-level advisory
//! lock ([`MIGRATION_LOCK`]) around reading the version and applying what is
//! missing, so exactly one of them migrates and the others find it done.
//!
//! To change the schema, append a migration to [`MIGRATIONS`]; never edit one
//! that has shipped, since databases in the field have already run it.

use tokio_postgres::Client;

use super::pg_error;
use crate::store::{StoreError, StoreResult};

/// The advisory lock key of migrations (any constant the app owns).
pub(super) const MIGRATION_LOCK: i64 = 0x6564_6765_6d69_6772; // "edgemigr"

/// The non-final states (WS-DLV-4), spelled as in the partial indexes' `WHERE`.
macro_rules! pending {
    () => {
        "status IN ('queued','sent','received','executing')"
    };
}
pub(super) use pending;

/// Schema versions, applied in order, each in its own transaction.
pub(super) const MIGRATIONS: &[&str] = &[
    concat!(
        "
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    user_phone  TEXT,
    created_at  BIGINT NOT NULL,
    last_seen   BIGINT,
    last_status TEXT
);
CREATE TABLE commands (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    agent_id        TEXT NOT NULL,
    command_type    TEXT NOT NULL,
    parameters      TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    sent_at         BIGINT,
    ack_deadline    BIGINT,
    next_attempt_at BIGINT,
    acked_at        BIGINT,
    completed_at    BIGINT,
    error           TEXT,
    delivered_via   TEXT,
    conn_id         BIGINT
);
-- WS-DLV-4: pending commands of an agent in push order; also counts them.
CREATE INDEX commands_pending ON commands (agent_id, priority, seq) WHERE ",
        pending!(),
        ";
CREATE INDEX commands_agent ON commands (agent_id, seq);
-- Sweeper, WS-DLV-7.
CREATE INDEX commands_expiry ON commands (expires_at) WHERE expires_at IS NOT NULL AND ",
        pending!(),
        ";
-- Sweeper, WS-DLV-3.
CREATE INDEX commands_dead ON commands (attempts, ack_deadline) WHERE status = 'sent';
-- Counting by state (`status_counts`).
CREATE INDEX commands_status ON commands (status);
CREATE TABLE connection_history (
    id              BIGSERIAL PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    conn_id         BIGINT NOT NULL,
    connected_at    BIGINT NOT NULL,
    disconnected_at BIGINT,
    reason          TEXT,
    remote_addr     TEXT NOT NULL
);
CREATE INDEX connection_history_agent ON connection_history (agent_id, id);
CREATE TABLE sync_events (
    agent_id    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    details     TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, event_id)
);
-- Cluster (`cluster/postgres.rs`): the live instances, each with a tag that
-- names its NOTIFY channel and the high bits of its connection ids.
CREATE TABLE instances (
    tag          BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
CREATE INDEX instances_name ON instances (name);
-- WS-CONN-1 across instances: which instance holds each agent's socket.
CREATE TABLE agent_sockets (
    agent_id     TEXT PRIMARY KEY,
    instance_tag BIGINT NOT NULL,
    conn_id      BIGINT NOT NULL,
    connected_at BIGINT NOT NULL,
    remote_addr  TEXT NOT NULL
);
CREATE INDEX agent_sockets_instance ON agent_sockets (instance_tag);
"
    ),
    // Messages between instances too long for a NOTIFY payload (8,000 bytes):
    // the NOTIFY carries the row's id, the receiver takes the row.
    "
CREATE TABLE cluster_messages (
    id          BIGSERIAL PRIMARY KEY,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
",
    // WS-RATE-2/3 across instances (`cluster/limits.rs`): the rate-limit
    // windows (JSON) the agent's last released socket `conn_id` left, for
    // whichever instance holds its next socket.
    "
CREATE TABLE agent_limits (
    agent_id TEXT PRIMARY KEY,
    conn_id  BIGINT NOT NULL,
    limits   TEXT NOT NULL
);
",
];

/// Applies the migrations the database has not seen yet; refuses a database
/// from a newer server. Safe when several instances start at once.
pub(super) async fn migrate(client: &mut Client) -> StoreResult<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let result = apply(client).await;
    // Unlocked whatever happened (closing the session would unlock it too).
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error);
    result.and(unlocked.map(|_| ()))
}

async fn apply(client: &mut Client) -> StoreResult<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg_error)?;
    let version: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this server knows ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&((i + 1) as i64)],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
    }
    Ok(())
}
