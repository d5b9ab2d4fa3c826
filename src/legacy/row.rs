//! The contract conversion: one legacy row -> one contract row, with its deterministic id.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Number, Value};
use uuid::Uuid;

use super::map::{KeyRule, TimeRule, blob_json, time_of};
use super::read::{SourceRow, TableInfo, TableKind};
use super::time::{TIME_COLUMNS, parse_time_value};
use super::value::{SqlValue, ordered_object, without_nul};
use super::{TableSpec, Target};
use crate::backend::codec::time_text;
use crate::error::{Error, Result};
use crate::json::Json;
use crate::record::{AgentId, Execution, MAX_KEY_BYTES, Memory, Metadata, Metric, Tool};

/// The namespace of every legacy row id: UUID v5 of the name
/// `urn:agent-memory:legacy-row:v1` under the standard URL namespace. Fixed forever:
/// changing it would give migrated rows second copies.
pub const LEGACY_ROW_NAMESPACE: Uuid = Uuid::from_u128(0xa581f4c7_e8fc_5bbf_9361_1b7b5553cc3b);

/// The id of a legacy row: UUID v5 (SHA-1) under [`LEGACY_ROW_NAMESPACE`] of the UTF-8
/// bytes of the compact JSON array `[agent, source_db, source_table, key]`, where `key`
/// is the rowid as a JSON number, or, in a `WITHOUT ROWID` table, the primary key as a
/// JSON object of column name to contract value form, in key order. When the operator
/// names the source (`--source NAME`, never empty then), the array is
/// `[agent, source, source_db, source_table, key]`: the same paths of two named sources
/// give different ids, and an unnamed source keeps the ids it always had.
///
/// The JSON is serde_json's compact form: no spaces, strings escaped only where JSON
/// requires it (`"`, `\`, control characters, as `\n`, `\t`, ... or `\u00XX` in lower
/// case hex), non-ASCII as itself: what Python's
/// `json.dumps(x, ensure_ascii=False, separators=(",", ":"))` writes. For example, row
/// 7 of table `memory` in `crawler/memory.db` of agent `crawler` has the id
/// `uuid5(LEGACY_ROW_NAMESPACE, '["crawler","crawler/memory.db","memory",7]')`.
pub fn row_id(origin: &RowOrigin<'_>, source_table: &str, key: &Json) -> Uuid {
    let agent = origin.agent.as_str();
    // Strings and JSON text always serialize.
    let name = match origin.source {
        "" => Json::new(&(agent, origin.source_db, source_table, key)),
        source => Json::new(&(agent, source, origin.source_db, source_table, key)),
    };
    let name = name.map(Json::into_string).unwrap_or_default();
    Uuid::new_v5(&LEGACY_ROW_NAMESPACE, name.as_bytes())
}

/// Where the rows being converted come from: the agent, the source the operator named
/// (empty when none was), and the file relative to the agents path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOrigin<'a> {
    /// The agent the file belongs to.
    pub agent: &'a AgentId,
    /// The source's name (`metadata.source`), or empty.
    pub source: &'a str,
    /// The file, relative to the agents path, `/`-separated (`metadata.source_db`).
    pub source_db: &'a str,
}

/// A contract record of one of the four targets.
#[derive(Debug, Clone, PartialEq)]
pub enum ContractRecord {
    /// For `agent_memories`.
    Memory(Memory),
    /// For `agent_tools`.
    Tool(Tool),
    /// For `agent_metrics`.
    Metric(Metric),
    /// For `agent_executions`.
    Execution(Execution),
}

impl ContractRecord {
    /// The table it goes to.
    pub fn target(&self) -> Target {
        match self {
            ContractRecord::Memory(_) => Target::Memories,
            ContractRecord::Tool(_) => Target::Tools,
            ContractRecord::Metric(_) => Target::Metrics,
            ContractRecord::Execution(_) => Target::Executions,
        }
    }

    /// Its id.
    pub fn id(&self) -> Uuid {
        match self {
            ContractRecord::Memory(r) => r.id,
            ContractRecord::Tool(r) => r.id,
            ContractRecord::Metric(r) => r.id,
            ContractRecord::Execution(r) => r.id,
        }
    }

    /// Its `created_at`.
    pub fn created_at(&self) -> DateTime<Utc> {
        match self {
            ContractRecord::Memory(r) => r.created_at,
            ContractRecord::Tool(r) => r.created_at,
            ContractRecord::Metric(r) => r.created_at,
            ContractRecord::Execution(r) => r.created_at,
        }
    }

    /// Its `content`.
    pub fn content(&self) -> &Json {
        match self {
            ContractRecord::Memory(r) => &r.content,
            ContractRecord::Tool(r) => &r.content,
            ContractRecord::Metric(r) => &r.content,
            ContractRecord::Execution(r) => &r.content,
        }
    }

    /// Its `updated_at` (its version), for the two targets that have one.
    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        match self {
            ContractRecord::Memory(r) => Some(r.updated_at),
            ContractRecord::Tool(r) => Some(r.updated_at),
            ContractRecord::Metric(_) | ContractRecord::Execution(_) => None,
        }
    }

    /// Its `metadata`.
    pub fn metadata(&self) -> &Metadata {
        match self {
            ContractRecord::Memory(r) => &r.metadata,
            ContractRecord::Tool(r) => &r.metadata,
            ContractRecord::Metric(r) => &r.metadata,
            ContractRecord::Execution(r) => &r.metadata,
        }
    }
}

/// Where a contract row came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSource {
    /// The agent it belongs to.
    pub agent: AgentId,
    /// The file, relative to the agents path, `/`-separated.
    pub source_db: String,
    /// The table.
    pub source_table: String,
    /// The rowid, or `None` in a `WITHOUT ROWID` table.
    pub rowid: Option<i64>,
}

/// One legacy row converted: the record for its target, where it came from, and why
/// its own time could not be read, when it could not.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractRow {
    /// Where it came from.
    pub source: RowSource,
    /// The record.
    pub record: ContractRecord,
    /// Set when the row had a time column whose value is not a time; `created_at` is
    /// then `migrated_at`.
    pub time_problem: Option<String>,
    /// Set when the row's own time (its `created_at`, or the `updated_at` of a row of the
    /// library's own layout) is later than `migrated_at`: a clock that was ahead, or a
    /// number in an unexpected unit. `created_at` keeps the row's time; its version
    /// (`updated_at`) is capped at `migrated_at` (see [`ContractRow::cap_version`]).
    pub future_time: bool,
}

impl ContractRow {
    /// Caps the row's version (`updated_at`) at `migrated_at`, so that a legacy time in
    /// the future cannot outrank the writes agents make after the migration (the
    /// contract's `updated_at` rule); `created_at` stays the row's own time. Sets
    /// [`future_time`](Self::future_time) when `created_at` or `updated_at` was later
    /// than `migrated_at`, and returns it.
    ///
    /// [`convert_row`] applies it to every row it makes; callers moving rows of the
    /// library's own layout ([`read_own_records`](super::read_own_records)) apply it
    /// with their migration time.
    pub fn cap_version(&mut self, migrated_at: DateTime<Utc>) -> bool {
        let future = self.record.created_at() > migrated_at
            || self.record.updated_at().is_some_and(|at| at > migrated_at);
        match &mut self.record {
            ContractRecord::Memory(r) => r.updated_at = r.updated_at.min(migrated_at),
            ContractRecord::Tool(r) => r.updated_at = r.updated_at.min(migrated_at),
            ContractRecord::Metric(_) | ContractRecord::Execution(_) => {}
        }
        self.future_time |= future;
        self.future_time
    }
}

/// Converts one row of a legacy data table by the contract ("One migrated row").
///
/// `migrated_at` is the migration's time (`metadata.migrated_at`, and `created_at` when
/// the row has no readable time of its own). `updated_at` is `created_at` capped at
/// `migrated_at` ([`ContractRow::cap_version`]).
///
/// A `key` or `name` longer than [`MAX_KEY_BYTES`] (which PostgreSQL's unique index
/// could not hold, and the library refuses) is not used: the memory arrives with `key`
/// null and `metadata.key_too_long` = the key's length in bytes; the tool or metric gets
/// the fallback name `"<source_table>:<rowid>"` and `metadata.name_too_long` = the
/// name's length in bytes. `content` keeps the full value either way.
///
/// # Errors
/// [`Error::InvalidInput`] when `table` is a skipped table or `row` does not have its
/// columns.
pub fn convert_row(
    origin: &RowOrigin<'_>,
    table: &TableInfo,
    spec: &TableSpec,
    row: &SourceRow,
    migrated_at: DateTime<Utc>,
) -> Result<ContractRow> {
    let RowOrigin {
        agent, source_db, ..
    } = *origin;
    let target = spec.target;
    let TableKind::Data {
        columns,
        without_rowid,
        primary_key,
    } = &table.kind
    else {
        return Err(Error::invalid(
            "legacy table",
            format!("{:?} is skipped, it has no rows to convert", table.name),
        ));
    };
    if columns.len() != row.values.len() {
        return Err(Error::invalid(
            "legacy row",
            format!(
                "table {:?} of {source_db:?} has {} columns, the row {}",
                table.name,
                columns.len(),
                row.values.len()
            ),
        ));
    }
    let column = |name: &str| -> Option<&SqlValue> {
        let at = columns
            .iter()
            .position(|c| c == name)
            .or_else(|| columns.iter().position(|c| c.eq_ignore_ascii_case(name)))?;
        row.values.get(at)
    };
    // Every column the spec names must be there, or no row of the table converts.
    let spec_columns = match (&spec.key, &spec.time) {
        (KeyRule::Columns { columns, .. }, TimeRule::Columns(time)) => {
            columns.iter().chain(time).collect()
        }
        (KeyRule::Columns { columns, .. }, _) => columns.iter().collect(),
        (_, TimeRule::Columns(time)) => time.iter().collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = spec_columns.into_iter().find(|c| column(c).is_none()) {
        return Err(Error::invalid(
            "legacy table map",
            format!(
                "table {:?} of {source_db:?} has no column {missing:?} (its columns: {})",
                table.name,
                columns.join(", ")
            ),
        ));
    }
    let content = row_content(columns, &row.values, spec.json_blobs);

    let mut metadata = Metadata::new();
    metadata.insert("source_table".into(), table.name.clone().into());
    metadata.insert("source_db".into(), source_db.into());
    if !origin.source.is_empty() {
        metadata.insert("source".into(), origin.source.into());
    }
    let (key, fallback_name) = match (without_rowid, row.rowid) {
        (false, Some(rowid)) => {
            metadata.insert("source_rowid".into(), Value::Number(Number::from(rowid)));
            (
                Json::from(Value::from(rowid)),
                format!("{}:{rowid}", table.name),
            )
        }
        _ => {
            let key: Vec<(&str, Value)> = primary_key
                .iter()
                .map(|c| (c.as_str(), column(c).map_or(Value::Null, SqlValue::to_json)))
                .collect();
            metadata.insert("source_rowid".into(), Value::Null);
            metadata.insert(
                "source_key".into(),
                Value::Object(
                    key.iter()
                        .cloned()
                        .map(|(c, v)| (c.to_string(), v))
                        .collect(),
                ),
            );
            // The id and the fallback name take the key in column order.
            let key = ordered_object(&key);
            let name = format!("{}:{key}", table.name);
            (key, name)
        }
    };
    metadata.insert("migrated_at".into(), time_text(&migrated_at).into());
    let text = |name: &str| column(name).and_then(SqlValue::typed_text);
    // The typed column of the target (a memory's key, a tool's or metric's name, an
    // execution's status): the contract's column, or what the map names.
    let (label, label_value) = match &spec.key {
        KeyRule::Default => {
            let name = match target {
                Target::Memories => "key",
                Target::Tools | Target::Metrics => "name",
                Target::Executions => "status",
            };
            (text(name), column(name))
        }
        KeyRule::None => (None, None),
        KeyRule::Columns { columns, separator } => {
            let parts: Option<Vec<String>> = columns.iter().map(|c| text(c)).collect();
            let single = match columns.as_slice() {
                [only] => column(only),
                _ => None,
            };
            (parts.map(|p| p.join(separator)), single)
        }
    };
    // Keys and names PostgreSQL's unique index cannot hold are left out of the typed
    // column (and counted in bytes of the value as stored there); content keeps them.
    let (mut key_text, mut name, status) = match target {
        Target::Memories => (label, None, None),
        Target::Tools | Target::Metrics => (None, label, None),
        Target::Executions => (None, None, label),
    };
    if let Some(long) = key_text.take_if(|k| k.len() > MAX_KEY_BYTES) {
        metadata.insert("key_too_long".into(), long_length(label_value, &long));
    }
    if let Some(long) = name.take_if(|n| n.len() > MAX_KEY_BYTES) {
        metadata.insert("name_too_long".into(), long_length(label_value, &long));
    }
    let metadata: Metadata = metadata
        .into_iter()
        .map(|(k, v)| (k, without_nul(v)))
        .collect();

    let mut time_problem = None;
    let mut created_at = migrated_at;
    match &spec.time {
        TimeRule::Default => {
            if let Some((name, value)) = TIME_COLUMNS
                .iter()
                .filter_map(|name| column(name).map(|v| (*name, v)))
                .find(|(_, v)| **v != SqlValue::Null)
            {
                match parse_time_value(value) {
                    Ok(at) => created_at = at,
                    Err(reason) => time_problem = Some(format!("column {name}: {reason}")),
                }
            }
        }
        TimeRule::None => {}
        TimeRule::Columns(names) => {
            if let Some((name, value)) = names
                .iter()
                .filter_map(|name| column(name).map(|v| (name, v)))
                .find(|(_, v)| **v != SqlValue::Null)
            {
                match time_of(value) {
                    Ok(at) => created_at = at.trunc_subsecs(6),
                    Err(reason) => time_problem = Some(format!("column {name}: {reason}")),
                }
            }
        }
    }

    let id = row_id(origin, &table.name, &key);
    let name = name.unwrap_or_else(|| {
        let fallback = without_nul_text(fallback_name);
        // A WITHOUT ROWID table's fallback holds its primary key, which may be long too.
        if fallback.len() > MAX_KEY_BYTES {
            id.to_string()
        } else {
            fallback
        }
    });
    let record = match target {
        Target::Memories => ContractRecord::Memory(Memory {
            id,
            key: key_text,
            content,
            metadata,
            embedding: None,
            created_at,
            updated_at: created_at,
        }),
        Target::Tools => ContractRecord::Tool(Tool {
            id,
            name,
            content,
            metadata,
            created_at,
            updated_at: created_at,
        }),
        Target::Metrics => ContractRecord::Metric(Metric {
            id,
            name,
            value: column("value").and_then(SqlValue::as_f64),
            content,
            metadata,
            created_at,
        }),
        Target::Executions => ContractRecord::Execution(Execution {
            id,
            status,
            content,
            metadata,
            created_at,
        }),
    };
    let mut row = ContractRow {
        source: RowSource {
            agent: agent.clone(),
            source_db: source_db.to_string(),
            source_table: table.name.clone(),
            rowid: row.rowid.filter(|_| !without_rowid),
        },
        record,
        time_problem,
        future_time: false,
    };
    row.cap_version(migrated_at);
    Ok(row)
}

/// A row's `content`: column name to contract value, in column order; with `json_blobs`,
/// a BLOB holding exactly one JSON document (see [`blob_json`]) as that JSON's own text.
fn row_content(columns: &[String], values: &[SqlValue], json_blobs: bool) -> Json {
    let raw: Vec<Option<Box<serde_json::value::RawValue>>> = values
        .iter()
        .map(|v| match v {
            SqlValue::Blob(bytes) if json_blobs => blob_json(bytes),
            _ => None,
        })
        .collect();
    if raw.iter().all(Option::is_none) {
        let content: Vec<(&str, Value)> = columns
            .iter()
            .zip(values)
            .map(|(c, v)| (c.as_str(), v.to_json()))
            .collect();
        return ordered_object(&content);
    }
    struct Cells<'a>(Vec<(&'a str, Cell)>);
    enum Cell {
        Value(Value),
        Raw(Box<serde_json::value::RawValue>),
    }
    impl serde::Serialize for Cell {
        fn serialize<S: serde::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            match self {
                Cell::Value(v) => v.serialize(serializer),
                Cell::Raw(r) => r.serialize(serializer),
            }
        }
    }
    impl serde::Serialize for Cells<'_> {
        fn serialize<S: serde::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(name, cell)| (name, cell)))
        }
    }
    let cells = columns
        .iter()
        .zip(values)
        .zip(raw)
        .map(|((c, v), raw)| {
            let cell = match raw {
                Some(raw) => Cell::Raw(raw),
                None => Cell::Value(v.to_json()),
            };
            (c.as_str(), cell)
        })
        .collect();
    // String keys, JSON values and checked JSON text always serialize.
    Json::new(&Cells(cells)).unwrap_or_else(|_| Json::from(Value::Null))
}

/// The length in bytes of a key or name too long for its typed column: of the legacy
/// text itself (of its bytes for a BLOB), else of the text it would have been stored as.
fn long_length(value: Option<&SqlValue>, typed: &str) -> Value {
    let bytes = match value {
        Some(SqlValue::Text(s)) => s.len(),
        Some(SqlValue::Blob(b) | SqlValue::InvalidText(b)) => b.len(),
        _ => typed.len(),
    };
    Value::Number(Number::from(bytes))
}

/// A fallback name holding a key's text may hold NUL; give it the `$base64` form.
fn without_nul_text(text: String) -> String {
    match without_nul(Value::String(text)) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}
