//! Decoding the library's own SQLite rows.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::backend::codec::{bytes_embedding, parse_json, parse_metadata, parse_time};
use crate::error::{Error, Result};
use crate::record::{AgentId, Execution, Memory, Metric, Tool};

// Reading the library's own rows: the one decoder of the SQLite backend's value forms,
// for its reads and for a backfill moving a file of its layout (`crate::legacy`). Columns
// are read with `try_get`, so a hand-edited file gives an error, never a panic. `whose`
// ends the name of a value in messages: `of agent "a"`, `in <file> (agent "a")`.

/// One column of `row`; `what` names the value in the error.
pub(super) fn column<'r, T>(
    row: &'r SqliteRow,
    name: &str,
    what: impl FnOnce() -> String,
) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name)
        .map_err(|e| Error::database("sqlite", format!("read {}", what()), e, None))
}

/// A memory as the SQLite backend stores it.
pub(crate) fn memory_from_row(row: &SqliteRow, whose: &str) -> Result<Memory> {
    let key: Option<String> = column(row, "key", || format!("a memory {whose}"))?;
    let what = || format!("memory {key:?} {whose}");
    Ok(Memory {
        id: parse_id(column(row, "id", what)?, what)?,
        content: parse_json(column(row, "content", what)?, what)?,
        metadata: parse_metadata(column(row, "metadata", what)?, what)?,
        embedding: column::<Option<Vec<u8>>>(row, "embedding", what)?
            .map(|b| bytes_embedding(&b, what))
            .transpose()?,
        created_at: parse_time(column(row, "created_at", what)?, what)?,
        updated_at: parse_time(column(row, "updated_at", what)?, what)?,
        key,
    })
}

/// A tool as the SQLite backend stores it.
pub(crate) fn tool_from_row(row: &SqliteRow, whose: &str) -> Result<Tool> {
    let name: String = column(row, "name", || format!("a tool {whose}"))?;
    let what = || format!("tool {name:?} {whose}");
    Ok(Tool {
        id: parse_id(column(row, "id", what)?, what)?,
        content: parse_json(column(row, "content", what)?, what)?,
        metadata: parse_metadata(column(row, "metadata", what)?, what)?,
        created_at: parse_time(column(row, "created_at", what)?, what)?,
        updated_at: parse_time(column(row, "updated_at", what)?, what)?,
        name,
    })
}

/// A metric as the SQLite backend stores it.
pub(crate) fn metric_from_row(row: &SqliteRow, whose: &str) -> Result<Metric> {
    let name: String = column(row, "name", || format!("a metric {whose}"))?;
    let what = || format!("metric {name:?} {whose}");
    Ok(Metric {
        id: parse_id(column(row, "id", what)?, what)?,
        value: column(row, "value", what)?,
        content: parse_json(column(row, "content", what)?, what)?,
        metadata: parse_metadata(column(row, "metadata", what)?, what)?,
        created_at: parse_time(column(row, "created_at", what)?, what)?,
        name,
    })
}

/// An execution as the SQLite backend stores it.
pub(crate) fn execution_from_row(row: &SqliteRow, whose: &str) -> Result<Execution> {
    let id: String = column(row, "id", || format!("an execution {whose}"))?;
    let what = || format!("execution {id} {whose}");
    Ok(Execution {
        id: parse_id(&id, what)?,
        status: column(row, "status", what)?,
        content: parse_json(column(row, "content", what)?, what)?,
        metadata: parse_metadata(column(row, "metadata", what)?, what)?,
        created_at: parse_time(column(row, "created_at", what)?, what)?,
    })
}

/// `memory` with the id and `created_at` an upsert returned: those of the existing key.
pub(super) fn stored_identity(row: &SqliteRow, memory: &Memory, agent: &AgentId) -> Result<Memory> {
    let what = || format!("memory {:?} of agent {agent:?}", memory.key);
    Ok(Memory {
        id: parse_id(column(row, "id", what)?, what)?,
        created_at: parse_time(column(row, "created_at", what)?, what)?,
        ..memory.clone()
    })
}

pub(super) fn parse_id(text: &str, what: impl FnOnce() -> String) -> Result<uuid::Uuid> {
    text.parse()
        .map_err(|e| Error::invalid("stored id", format!("{}: {e}", what())))
}

/// `of agent "a"`: how values of `agent` are named in messages.
pub(super) fn of_agent(agent: &AgentId) -> String {
    format!("of agent {agent:?}")
}
