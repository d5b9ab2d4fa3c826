//! Files of the library's own SQLite layout: their rows read back as the records they are, unchanged.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::Target;
use super::open::Source;
use super::row::{ContractRecord, ContractRow, RowSource};
use crate::backend::codec::{bytes_embedding, parse_json, parse_metadata, parse_time};
use crate::error::{Error, Result};
use crate::record::{AgentId, Execution, Memory, Metric, Tool};

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
    rows.iter()
        .map(|row| {
            let what = || format!("{table} row of {} (agent {agent:?})", path.display());
            let record = decode(row, target, what).map_err(|e| match e {
                DecodeError::Sqlx(e) => fail(e),
                DecodeError::Crate(e) => e,
            })?;
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
pub async fn read_own_tombstones(
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
pub async fn read_own_tool_tombstones(
    source: &mut Source,
) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
    read_tombstones(source, "agent_tool_tombstones", "name").await
}

/// The rows of tombstone table `table`, whose names are in column `name`.
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

enum DecodeError {
    Sqlx(sqlx::Error),
    Crate(Error),
}

impl From<sqlx::Error> for DecodeError {
    fn from(e: sqlx::Error) -> Self {
        DecodeError::Sqlx(e)
    }
}

impl From<Error> for DecodeError {
    fn from(e: Error) -> Self {
        DecodeError::Crate(e)
    }
}

/// Decodes with the SQLite backend's own value forms (`backend::codec`), using
/// `try_get` so a hand-edited file gives an error, never a panic.
fn decode(
    row: &SqliteRow,
    target: Target,
    what: impl Fn() -> String + Copy,
) -> std::result::Result<ContractRecord, DecodeError> {
    let text = |name: &str| row.try_get::<String, _>(name);
    let id: uuid::Uuid = text("id")?
        .parse()
        .map_err(|e| Error::invalid("stored id", format!("{}: {e}", what())))?;
    let content = parse_json(&text("content")?, what)?;
    let metadata = parse_metadata(&text("metadata")?, what)?;
    let created_at = parse_time(&text("created_at")?, what)?;
    Ok(match target {
        Target::Memories => ContractRecord::Memory(Memory {
            id,
            key: row.try_get("key")?,
            content,
            metadata,
            embedding: row
                .try_get::<Option<Vec<u8>>, _>("embedding")?
                .map(|b| bytes_embedding(&b, what))
                .transpose()?,
            created_at,
            updated_at: parse_time(&text("updated_at")?, what)?,
        }),
        Target::Tools => ContractRecord::Tool(Tool {
            id,
            name: text("name")?,
            content,
            metadata,
            created_at,
            updated_at: parse_time(&text("updated_at")?, what)?,
        }),
        Target::Metrics => ContractRecord::Metric(Metric {
            id,
            name: text("name")?,
            value: row.try_get("value")?,
            content,
            metadata,
            created_at,
        }),
        Target::Executions => ContractRecord::Execution(Execution {
            id,
            status: row.try_get("status")?,
            content,
            metadata,
            created_at,
        }),
    })
}
