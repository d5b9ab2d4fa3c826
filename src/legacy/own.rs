//! Files of the library's own SQLite layout: their rows read back as the records they
//! are, unchanged, by the SQLite backend's own decoder.

use sqlx::Row;

use super::Target;
use super::open::Source;
use super::row::{ContractRecord, ContractRow, RowSource};
#[cfg(feature = "postgres")]
use crate::backend::codec::parse_time;
use crate::backend::sqlite::{execution_from_row, memory_from_row, metric_from_row, tool_from_row};
use crate::error::{Error, Result};
use crate::record::AgentId;

/// The table a file of the library's own layout is recognised by.
pub(crate) const OWN_SCHEMA_TABLE: &str = "agent_memory_schema";

/// The table of `target` in the library's own SQLite layout.
pub(crate) fn own_table(target: Target) -> &'static str {
    target.table()
}

/// Up to `batch_size` records of `target` from a file of the library's own layout
/// (`agent_memory_schema` present), in rowid order after rowid `after` (start with
/// `i64::MIN`; continue with the last row's `source.rowid`). Each comes back exactly as
/// the SQLite backend stored it: same id, key, content, metadata, embedding and times.
/// A caller moving them caps their versions at its migration time first
/// ([`ContractRow::cap_version`]), so a clock that was ahead cannot make a row outrank
/// later writes.
///
/// # Errors
/// [`Error::Database`] when the table cannot be read, [`Error::Json`] or
/// [`Error::InvalidInput`] for a stored value the backend could not have written.
pub async fn read_own_records(
    source: &mut Source,
    agent: &AgentId,
    source_db: &str,
    target: Target,
    after: i64,
) -> Result<Vec<ContractRow>> {
    let table = own_table(target);
    let columns = match target {
        Target::Memories => "id, key, content, metadata, embedding, created_at, updated_at",
        Target::Tools => "id, name, content, metadata, created_at, updated_at",
        Target::Metrics => "id, name, value, content, metadata, created_at",
        Target::Executions => "id, status, content, metadata, created_at",
    };
    let sql = format!(
        "select rowid as source_rowid, {columns} from {table} where rowid > ? order by rowid limit ?"
    );
    let limit = i64::try_from(source.options.batch_size.max(1)).unwrap_or(i64::MAX);
    let path = source.path.clone();
    let fail = |e: sqlx::Error| Error::Database {
        backend: "sqlite",
        operation: format!("read {table} of {}", path.display()),
        source: Box::new(e),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(limit)
        .fetch_all(&mut source.conn)
        .await
        .map_err(fail)?;
    let whose = format!("in {} (agent {agent:?})", path.display());
    rows.iter()
        .map(|row| {
            let record = match target {
                Target::Memories => ContractRecord::Memory(memory_from_row(row, &whose)?),
                Target::Tools => ContractRecord::Tool(tool_from_row(row, &whose)?),
                Target::Metrics => ContractRecord::Metric(metric_from_row(row, &whose)?),
                Target::Executions => ContractRecord::Execution(execution_from_row(row, &whose)?),
            };
            Ok(ContractRow {
                source: RowSource {
                    agent: agent.clone(),
                    source_db: source_db.to_string(),
                    source_table: table.to_string(),
                    rowid: row.try_get("source_rowid").map_err(fail)?,
                },
                record,
                time_problem: None,
                future_time: false,
            })
        })
        .collect()
}

/// The deletes recorded in a file of the library's own layout (its tombstones): each
/// deleted key with when it was deleted, so a backfill carries the delete over and no
/// older copy of the key arrives later.
///
/// # Errors
/// [`Error::Database`] when the table cannot be read (files written before tombstones
/// existed have none, and give an empty list).
#[cfg(feature = "postgres")]
pub(crate) async fn read_own_tombstones(
    source: &mut Source,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    read_tombstones(source, "agent_memory_tombstones", "key").await
}

/// The tool deletes recorded in a file of the library's own layout: each deleted tool
/// name with when it was deleted, as [`read_own_tombstones`] for keys.
///
/// # Errors
/// As [`read_own_tombstones`] (files written before tool deletes existed give an empty
/// list).
#[cfg(feature = "postgres")]
pub(crate) async fn read_own_tool_tombstones(
    source: &mut Source,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    read_tombstones(source, "agent_tool_tombstones", "name").await
}

/// The rows of tombstone table `table`, whose names are in column `name`.
#[cfg(feature = "postgres")]
async fn read_tombstones(
    source: &mut Source,
    table: &'static str,
    name: &'static str,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    if !source.has_table(table).await? {
        return Ok(Vec::new());
    }
    let path = source.path.clone();
    // Both are names of ours, never input text.
    let sql = format!("select {name}, deleted_at from {table} order by {name}");
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut source.conn)
        .await
        .map_err(|e| Error::Database {
            backend: "sqlite",
            operation: format!("read the deletes recorded in {}", path.display()),
            source: Box::new(e),
        })?;
    rows.into_iter()
        .map(|(key, at)| {
            let at = parse_time(&at, || {
                format!("tombstone of {key:?} in {}", path.display())
            })?;
            Ok((key, at))
        })
        .collect()
}
