//! Decoding the library's own SQLite rows.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::quick::MemoryColumns;
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

/// One row read in the backend's value forms; `what` names the value in errors.
struct Columns<'r> {
    row: &'r SqliteRow,
    what: String,
}

impl<'r> Columns<'r> {
    /// The reader of a row whose value is named by its `name_column` (a key, a name, an
    /// id): `<kind> <name> <whose>`, and that name.
    fn named<T>(row: &'r SqliteRow, kind: &str, name_column: &str, whose: &str) -> Result<(T, Self)>
    where
        T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + std::fmt::Debug,
    {
        let name: T = column(row, name_column, || format!("a {kind} {whose}"))?;
        let what = format!("{kind} {name:?} {whose}");
        Ok((name, Columns { row, what }))
    }

    fn what(&self) -> impl Fn() -> String + Copy + '_ {
        || self.what.clone()
    }

    fn get<T>(&self, name: &str) -> Result<T>
    where
        T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        column(self.row, name, self.what())
    }

    fn id(&self) -> Result<uuid::Uuid> {
        parse_id(self.get("id")?, self.what())
    }

    fn content(&self) -> Result<crate::json::Json> {
        parse_json(self.get("content")?, self.what())
    }

    fn metadata(&self) -> Result<crate::record::Metadata> {
        parse_metadata(self.get("metadata")?, self.what())
    }

    fn time(&self, name: &str) -> Result<chrono::DateTime<chrono::Utc>> {
        parse_time(self.get(name)?, self.what())
    }
}

/// A memory as the SQLite backend stores it.
pub(crate) fn memory_from_row(row: &SqliteRow, whose: &str) -> Result<Memory> {
    let (key, c) = Columns::named::<Option<String>>(row, "memory", "key", whose)?;
    let columns = MemoryColumns {
        id: c.get("id")?,
        key,
        content: c.get("content")?,
        metadata: c.get("metadata")?,
        embedding: c.get("embedding")?,
        created_at: c.get("created_at")?,
        updated_at: c.get("updated_at")?,
    };
    memory_from_columns(columns, whose)
}

/// A memory from its columns as the SQLite backend stores them (read by the pool or
/// by a quick read).
pub(super) fn memory_from_columns(c: MemoryColumns, whose: &str) -> Result<Memory> {
    let what = || format!("memory {:?} {whose}", c.key);
    Ok(Memory {
        id: parse_id(&c.id, what)?,
        content: parse_json(&c.content, what)?,
        metadata: parse_metadata(&c.metadata, what)?,
        embedding: c
            .embedding
            .as_deref()
            .map(|b| bytes_embedding(b, what))
            .transpose()?,
        created_at: parse_time(&c.created_at, what)?,
        updated_at: parse_time(&c.updated_at, what)?,
        key: c.key,
    })
}

/// A tool as the SQLite backend stores it.
pub(crate) fn tool_from_row(row: &SqliteRow, whose: &str) -> Result<Tool> {
    let (name, c) = Columns::named(row, "tool", "name", whose)?;
    Ok(Tool {
        id: c.id()?,
        content: c.content()?,
        metadata: c.metadata()?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
        name,
    })
}

/// A metric as the SQLite backend stores it.
pub(crate) fn metric_from_row(row: &SqliteRow, whose: &str) -> Result<Metric> {
    let (name, c) = Columns::named(row, "metric", "name", whose)?;
    Ok(Metric {
        id: c.id()?,
        value: c.get("value")?,
        content: c.content()?,
        metadata: c.metadata()?,
        created_at: c.time("created_at")?,
        name,
    })
}

/// An execution as the SQLite backend stores it.
pub(crate) fn execution_from_row(row: &SqliteRow, whose: &str) -> Result<Execution> {
    let id: String = column(row, "id", || format!("an execution {whose}"))?;
    let what = format!("execution {id} {whose}");
    let c = Columns { row, what };
    Ok(Execution {
        id: parse_id(&id, c.what())?,
        status: c.get("status")?,
        content: c.content()?,
        metadata: c.metadata()?,
        created_at: c.time("created_at")?,
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
