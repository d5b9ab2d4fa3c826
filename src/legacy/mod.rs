//! Legacy SQLite files: finding them, reading them undisturbed, and turning their rows into contract rows.
//!
//! This is the one place that decides how a legacy row becomes a row of the data
//! contract (`docs/contract.md`, "One migrated row") and which id it gets: the bulk
//! backfill loads what it decides and `--verify` compares with it, so the two cannot
//! disagree. Lazy migration does not come here: the dual backend's copy on a read that
//! misses PostgreSQL copies a row the SQLite backend stored, as itself, and never reads
//! a legacy file; the backfill moves files of the library's own layout the same way
//! ([`read_own_records`]).
//!
//! - [`find`] walks the agents path without opening anything; [`discover`] also probes
//!   every `*.db`, `*.sqlite`, `*.sqlite3`
//!   file ([`Found`]): a legacy database, a file of the library's own layout, or a
//!   problem stated per file.
//! - [`Source`] opens one file without disturbing it (see its docs for the read-only and
//!   WAL strategy), lists its tables ([`Source::tables`], with skip reasons) and streams
//!   their rows in key order ([`Source::rows`]).
//! - [`convert_row`] turns one [`SourceRow`] into a [`ContractRow`]; [`row_id`] is the
//!   deterministic id. Which of several rows keeps a shared key is settled where the
//!   rows meet, in PostgreSQL, by the backfill's load (`backfill::load`).
//! - [`read_own_records`] reads a file of the library's own layout as its records,
//!   unchanged.
//! - An embedding a legacy row kept is decoded when the backfill is asked to
//!   ([`BackfillOptions::legacy_embeddings`](crate::backfill::BackfillOptions::legacy_embeddings)).
//! - [`TableMap`] says which tables go where and how ([`TableSpec`]: key, time, JSON
//!   BLOBs), from the operator's `--map` and `--exclude` (syntax in its module, `map.rs`);
//!   [`suggest`] proposes a map for a table nothing maps.

mod discover;
// Embeddings and tombstones of legacy files matter only to the backfill, which needs both
// backends.
#[cfg(feature = "postgres")]
mod embedding;
mod map;
mod open;
mod own;
mod read;
mod row;
mod time;
mod value;

pub use discover::{Found, Probe, discover, find};
#[cfg(feature = "postgres")]
pub(crate) use embedding::embedding_of;
pub use map::{
    DEFAULT_SEPARATOR, Decision, KeyRule, MapCheck, Observed, Suggestion, SurveyFile, TableMap,
    TableSpec, TimeRule, file_matches, suggest, survey,
};
#[cfg(feature = "postgres")]
pub(crate) use open::regular_file;
pub use open::{OpenStrategy, ReadOptions};
#[cfg(feature = "postgres")]
pub(crate) use own::{read_own_tombstones, read_own_tool_tombstones};
pub use read::TableKind;

// Doors for tests/legacy.rs, tests/backfill.rs and the bench's client-side backfill,
// which read and convert rows themselves; not part of the API.
#[doc(hidden)]
pub use open::Source;
#[doc(hidden)]
pub use own::read_own_records;
#[doc(hidden)]
pub use read::{RowBatches, SourceRow, TableInfo};
#[doc(hidden)]
pub use row::{
    ContractRecord, ContractRow, LEGACY_ROW_NAMESPACE, RowOrigin, RowSource, convert_row, row_id,
};
#[doc(hidden)]
pub use value::SqlValue;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A contract table that legacy rows go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `agent_memories`.
    Memories,
    /// `agent_tools`.
    Tools,
    /// `agent_metrics`.
    Metrics,
    /// `agent_executions`.
    Executions,
}

impl Target {
    /// The four targets, in the contract's order.
    pub const ALL: [Target; 4] = [
        Target::Memories,
        Target::Tools,
        Target::Metrics,
        Target::Executions,
    ];

    /// The PostgreSQL table's name.
    pub fn table(self) -> &'static str {
        match self {
            Target::Memories => "agent_memories",
            Target::Tools => "agent_tools",
            Target::Metrics => "agent_metrics",
            Target::Executions => "agent_executions",
        }
    }

    /// The target for a PostgreSQL table name (`agent_memories`, ...) or its short form
    /// (`memories`, `tools`, `metrics`, `executions`), as `--map TABLE=TARGET` takes it.
    pub fn parse(name: &str) -> Option<Target> {
        match name.to_ascii_lowercase().as_str() {
            "agent_memories" | "memories" => Some(Target::Memories),
            "agent_tools" | "tools" => Some(Target::Tools),
            "agent_metrics" | "metrics" => Some(Target::Metrics),
            "agent_executions" | "executions" => Some(Target::Executions),
            _ => None,
        }
    }
}

// As the PostgreSQL table's name, the form the backfill's bookkeeping keeps.
impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.table())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Target::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("{name:?} is not a contract table")))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table())
    }
}

/// The contract's target of a legacy table name (`memory`, `agent_memory`, `tools`,
/// `agent_tools`, `metrics`, `performance`, `execution_log`; matched without regard to
/// ASCII case, as SQLite itself matches table names).
pub(crate) fn contract_target(table: &str) -> Option<Target> {
    match table.to_ascii_lowercase().as_str() {
        "memory" | "agent_memory" => Some(Target::Memories),
        "tools" | "agent_tools" => Some(Target::Tools),
        "metrics" | "performance" => Some(Target::Metrics),
        "execution_log" => Some(Target::Executions),
        _ => None,
    }
}
