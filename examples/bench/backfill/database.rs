//! Connections, checkpoints and checks on the databases the loads fill.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::harness::Result;

/// A connection to `url` that logs no statements (a checksum is slow on purpose).
pub(super) async fn connect(url: &str) -> Result<PgConnection> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.disable_statement_logging().connect().await?)
}

/// Writes dirty buffers out, so one load's leftovers do not land in the next one's time.
pub(super) async fn checkpoint(url: &str) -> Result<()> {
    let mut conn = connect(url).await?;
    sqlx::raw_sql("checkpoint").execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(())
}

/// A single number from `database`.
pub(super) async fn scalar(url: &str, sql: &'static str) -> Result<i64> {
    let mut conn = connect(url).await?;
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    conn.close().await.ok();
    Ok(value)
}

/// The row count and a checksum of every column of `agent_memories`, less the run's id
/// and time in `metadata`, which differ between loads of the same rows.
pub(super) async fn memories_checksum(url: &str) -> Result<(i64, String)> {
    let mut conn = connect(url).await?;
    let row: (i64, String) = sqlx::query_as(
        r"select count(*), coalesce(sum(hashtextextended(concat_ws('|', id::text, agent_id,
                 coalesce(key, '\N'), content, (metadata - 'migration_run' - 'migrated_at')::text,
                 created_at::text, updated_at::text, embedding is null), 0)::numeric), 0)::text
          from agent_memories",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(row)
}
