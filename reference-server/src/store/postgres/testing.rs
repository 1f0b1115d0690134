//! Test support for the PostgreSQL store, shared by this crate's tests, its
//! integration tests and the harness's: which database to use, and a fresh
//! schema in it per test so tests running at once never see each other.
//!
//! The database comes from `EDGE_TEST_DATABASE_URL` (or a `postgres://`
//! `DATABASE_URL`). Without one, tests print why they skip and pass; under
//! CI (`CI` set) they fail instead, since `.ci/run` always provides one.

use super::{backend, pg_error, Db};
use crate::store::StoreResult;

/// The variables read, in order.
pub const URL_VARS: [&str; 2] = ["EDGE_TEST_DATABASE_URL", "DATABASE_URL"];

/// The test database's URL, or `None` (after printing why) when there is none
/// outside CI. Panics under CI without one.
pub fn database_url(test: &str) -> Option<String> {
    let found = URL_VARS
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run the PostgreSQL tests, but EDGE_TEST_DATABASE_URL is not set"
        );
        eprintln!(
            "{test}: skipped: no PostgreSQL to test against; set \
             EDGE_TEST_DATABASE_URL=postgres://USER:PASSWORD@HOST/DB to run it"
        );
    }
    found
}

/// Creates an empty schema in the database at `base` and returns a URL whose
/// connections use it (`search_path`).
pub async fn fresh_schema(base: &str) -> StoreResult<String> {
    let schema = format!("edge_t_{:016x}", rand::random::<u64>());
    let (client, connection) = Db::new(base)?.connect_raw().await?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    let separator = if base.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// [`database_url`] then [`fresh_schema`]: the URL a test uses, or `None` to skip.
pub async fn schema_for(test: &str) -> Option<String> {
    let base = database_url(test)?;
    Some(fresh_schema(&base).await.expect("create a test schema"))
}

/// Ends the LISTEN connection of instance `name` from the server's side (as
/// a failover or a network cut would) and returns once it is gone, so a
/// NOTIFY sent now reaches nobody.
pub async fn cut_listener(url: &str, name: &str) -> StoreResult<()> {
    let (client, connection) = Db::new(url)?.connect_raw().await?;
    let driver = tokio::spawn(connection);
    let pids: Vec<i32> = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN \"edge_' \
             || left(current_schema(), 40) || '_' \
             || (SELECT tag FROM instances WHERE name = $1) || '\"'",
            &[&name],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pids.is_empty() {
        return Err(backend(format!("instance {name} is not listening")));
    }
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::INT[]) AS pid",
            &[&pids],
        )
        .await
        .map_err(pg_error)?;
    for _ in 0..2_000 {
        let left = client
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .map_err(pg_error)?;
        if left.is_empty() {
            drop(client);
            let _ = driver.await;
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Err(backend("the LISTEN connection did not end"))
}

/// Sends instance `name` a cluster message, as another instance would
/// (`cluster/postgres.rs`: channel `edge_{schema}_{tag}`).
pub async fn notify_instance(url: &str, name: &str, payload: &str) -> StoreResult<()> {
    let (client, connection) = Db::new(url)?.connect_raw().await?;
    let driver = tokio::spawn(connection);
    client
        .execute(
            "SELECT pg_notify('edge_' || left(current_schema(), 40) || '_' \
             || (SELECT tag FROM instances WHERE name = $1), $2)",
            &[&name, &payload],
        )
        .await
        .map_err(pg_error)?;
    drop(client);
    let _ = driver.await;
    Ok(())
}
