//! SQLite: the migrations of an agent file.

use sqlx::{Connection, SqliteConnection};

use super::SQLITE_MIGRATIONS;

/// Applies the SQLite migrations a freshly opened agent file lacks, under an immediate
/// transaction so two processes opening the same file do not race.
pub(crate) async fn migrate_sqlite(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin_with("begin immediate").await?;
    sqlx::raw_sql(
        "create table if not exists agent_memory_schema (
             version    integer primary key,
             name       text not null,
             applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )
    .execute(&mut *tx)
    .await?;
    let done: Vec<i64> = sqlx::query_scalar("select version from agent_memory_schema")
        .fetch_all(&mut *tx)
        .await?;
    for m in SQLITE_MIGRATIONS
        .iter()
        .filter(|m| !done.contains(&m.version))
    {
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query("insert into agent_memory_schema (version, name) values (?, ?)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
