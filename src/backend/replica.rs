//! Replication: what the dual backend builds on, apart from the agent-facing
//! [`MemoryBackend`] contract. Only the two storage backends implement [`Replica`].
//!
//! # Versions
//!
//! A memory's `updated_at` is its version. Versions only move forward: a write made as
//! the authoritative side ([`Replica::commit`]) gets a version strictly later than the
//! one it replaces and than the key's last delete (a hybrid logical clock: the later of
//! the writer's clock and the replaced version plus one microsecond), so a clock that
//! stepped back or a value dated in the future never freezes a key. Copies to the other
//! side ([`Replica::apply_memory`]) keep the version and apply only over older ones; two
//! different values with the same version (written by two processes that each took a
//! different side as authoritative) are ordered by their content's bytes, the same way
//! on both sides, so the sides cannot split.
//!
//! # The outbox
//!
//! [`Replica::commit`] performs the write and journals, in the same transaction, that
//! the other side is owed it. Whatever happens after (a crash, a timeout, a side that
//! refuses), the record is there until a replay succeeds, so the other side always
//! catches up. A record is cleared only after its write reached the other side.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::MemoryBackend;
use crate::error::Result;
use crate::record::{AgentId, Execution, Memory, Metric, Tool};

/// One write made as the authoritative side, by [`Replica::commit`].
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Store a memory under its key.
    PutMemory(&'a Memory),
    /// Delete a key (at this time, or later if its value is later).
    DeleteMemory {
        /// The key.
        key: &'a str,
        /// The writer's clock.
        at: DateTime<Utc>,
    },
    /// Register a tool.
    PutTool(&'a Tool),
    /// Delete a tool (at this time, or later if its definition is later).
    DeleteTool {
        /// The tool's name.
        name: &'a str,
        /// The writer's clock.
        at: DateTime<Utc>,
    },
    /// Record a metric.
    Metric(&'a Metric),
    /// Log an execution.
    Execution(&'a Execution),
}

impl Change<'_> {
    /// The journal record that owes this change to the other side.
    pub fn owed(&self) -> OwedWrite {
        match *self {
            Change::PutMemory(memory) => OwedWrite::SyncMemory {
                key: memory.key.clone().unwrap_or_default(),
            },
            Change::DeleteMemory { key, .. } => OwedWrite::SyncMemory {
                key: key.to_string(),
            },
            Change::PutTool(tool) => OwedWrite::SyncTool {
                name: tool.name.clone(),
            },
            Change::DeleteTool { name, at } => OwedWrite::DeleteTool {
                name: name.to_string(),
                at,
            },
            Change::Metric(metric) => OwedWrite::Metric {
                metric: metric.clone(),
            },
            Change::Execution(execution) => OwedWrite::Execution {
                execution: execution.clone(),
            },
        }
    }
}

impl Change<'_> {
    /// The change, for error messages.
    pub(crate) fn describe(&self) -> String {
        match *self {
            Change::PutMemory(memory) => format!(
                "store memory {:?}",
                memory.key.as_deref().unwrap_or_default()
            ),
            Change::DeleteMemory { key, .. } => format!("delete memory {key:?}"),
            Change::PutTool(tool) => format!("register tool {:?}", tool.name),
            Change::DeleteTool { name, .. } => format!("delete tool {name:?}"),
            Change::Metric(metric) => format!("record metric {:?}", metric.name),
            Change::Execution(_) => "log execution".to_string(),
        }
    }
}

/// What a delete deletes: a memory under its key, or a tool under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deletes {
    Memory,
    Tool,
}

impl Deletes {
    /// `memory` or `tool`, whichever this delete is about.
    #[cfg(feature = "postgres")]
    pub(crate) fn pick<T>(self, memory: T, tool: T) -> T {
        match self {
            Deletes::Memory => memory,
            Deletes::Tool => tool,
        }
    }
}

impl<'a> Change<'a> {
    /// For a delete, what it deletes, the key or name, and the writer's clock.
    pub(crate) fn deletes(&self) -> Option<(Deletes, &'a str, DateTime<Utc>)> {
        match *self {
            Change::DeleteMemory { key, at } => Some((Deletes::Memory, key, at)),
            Change::DeleteTool { name, at } => Some((Deletes::Tool, name, at)),
            _ => None,
        }
    }
}

/// What a [`Change`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The memory as now stored: the key's id and `created_at`, the new version.
    Memory(Memory),
    /// A delete of a memory or a tool: whether a value was there, and the version the
    /// delete took.
    Deleted {
        /// Whether a value was deleted.
        existed: bool,
        /// The delete's version (its tombstone).
        at: DateTime<Utc>,
    },
    /// The tool as now registered.
    Tool(Tool),
    /// A metric or execution recorded (or already there).
    Recorded,
}

/// A committed [`Change`] and its journal record.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// What the change did.
    pub outcome: Outcome,
    /// The journal record's sequence number, when one was written.
    pub seq: Option<i64>,
}

impl Committed {
    /// Whether the committed delete found a value to delete.
    pub(crate) fn existed(&self) -> bool {
        match self.outcome {
            Outcome::Deleted { existed, .. } => existed,
            ref other => unreachable!("a delete commits a delete, not {other:?}"),
        }
    }
}

/// One journal record as stored: its text is decoded by the reader, so a record that
/// cannot be read is parked instead of stopping every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedRecord {
    /// Sequence number, in journal order.
    pub seq: i64,
    /// The record's JSON ([`OwedWrite`]).
    pub op: String,
}

/// How many records an agent has in one side's journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwedCount {
    /// The agent.
    pub agent: AgentId,
    /// Records waiting to be replayed.
    pub pending: u64,
    /// Records parked after a lasting failure (see [`Replica::park_owed`]).
    pub parked: u64,
    /// Why the agent's journal could not be read, when it could not (a corrupt file).
    pub error: Option<String>,
}

/// The replication side of a storage backend: versioned writes that converge in any
/// order, tombstones, and the journal of writes owed to the other side.
///
/// # Contract
///
/// The scenarios in `memshift::testing::replication` (feature `testing`) check
/// these on both implementations:
///
/// - **Versions move forward.** [`commit`](Self::commit) of a memory stores a version
///   later than the one it replaces and than the key's last delete.
/// - **Newer wins, in any order.** [`apply_memory`](Self::apply_memory) and
///   [`apply_memory_delete`](Self::apply_memory_delete) end in the same state whatever
///   order they arrive in; equal versions are decided by content bytes.
/// - **Deletes win over older values** and are never undone by an older copy: of memories
///   ([`apply_memory_delete`](Self::apply_memory_delete)) and of tools
///   ([`apply_tool_delete`](Self::apply_tool_delete)) alike.
/// - **Restore only of the exact version.**
/// - **Outbox.** A committed change and its journal record are one transaction: both or
///   neither survive a crash.
#[async_trait]
pub trait Replica: MemoryBackend {
    /// Performs `change` as the authoritative side, in one transaction with a journal
    /// record owing it to the other side (when `journal`) and with the removal of the
    /// records `clear` (replayed since).
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for refused values; database errors
    /// (then nothing was written, or, when the answer was lost, the outcome is unknown:
    /// either both the change and its record are there, or neither).
    async fn commit(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        journal: bool,
        clear: &[i64],
    ) -> Result<Committed>;

    /// Stores `memory`, keeping its version, unless this side holds a version of its key
    /// at least as new (a value with a later `updated_at`, or the same with content that
    /// sorts at or after it, or a delete at or after it). Returns the memory as now
    /// stored (an existing key keeps its id and `created_at`), or `None` when it was
    /// kept out.
    ///
    /// # Errors
    /// As [`MemoryBackend::put_memory`].
    async fn apply_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>>;

    /// Deletes the memory under `key` unless its value is newer than `at`, and records a
    /// tombstone at `at` so that no older copy of the key is stored again. Returns
    /// whether a value was deleted.
    ///
    /// # Errors
    /// Database errors.
    async fn apply_memory_delete(
        &self,
        agent: &AgentId,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// Undoes one version of a memory: if the value under `key` is exactly the version
    /// written at `version` (its `updated_at`), replaces its content, metadata,
    /// embedding and `updated_at` with `to`'s, or deletes it when `to` is `None`.
    /// Returns whether it did. A newer version is left alone.
    ///
    /// # Errors
    /// Database errors.
    async fn restore_memory(
        &self,
        agent: &AgentId,
        key: &str,
        version: DateTime<Utc>,
        to: Option<&Memory>,
    ) -> Result<bool>;

    /// When `key` was last deleted, if this side recorded a delete of it.
    ///
    /// # Errors
    /// Database errors.
    async fn memory_tombstone(&self, agent: &AgentId, key: &str) -> Result<Option<DateTime<Utc>>>;

    /// Registers `tool`, keeping its version, unless a version at least as new is
    /// registered or the name was deleted at or after it. Returns the tool as now
    /// registered, or `None` when it was kept out.
    ///
    /// # Errors
    /// As [`MemoryBackend::put_tool`].
    async fn apply_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>>;

    /// Deletes the tool `name` unless its definition is newer than `at`, and records a
    /// tombstone at `at` so that no older copy of it is registered again. Returns
    /// whether a tool was deleted.
    ///
    /// # Errors
    /// Database errors.
    async fn apply_tool_delete(
        &self,
        agent: &AgentId,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// When the tool `name` was last deleted, if this side recorded a delete of it.
    ///
    /// # Errors
    /// Database errors.
    async fn tool_tombstone(&self, agent: &AgentId, name: &str) -> Result<Option<DateTime<Utc>>>;

    /// Up to `limit` of the agent's pending (not parked) journal records, oldest first.
    ///
    /// # Errors
    /// Database errors.
    async fn owed_writes(&self, agent: &AgentId, limit: usize) -> Result<Vec<OwedRecord>>;

    /// Removes replayed records by sequence number.
    ///
    /// # Errors
    /// Database errors.
    async fn clear_owed(&self, agent: &AgentId, seqs: &[i64]) -> Result<()>;

    /// Parks a record that failed for a reason that will not go away, with its error:
    /// it stays in the journal, counted, but replays skip it.
    ///
    /// # Errors
    /// Database errors.
    async fn park_owed(&self, agent: &AgentId, seq: i64, error: &str) -> Result<()>;

    /// Makes the agent's parked records pending again; returns how many.
    ///
    /// # Errors
    /// Database errors.
    async fn unpark_owed(&self, agent: &AgentId) -> Result<u64>;

    /// Every agent with records in this side's journal, with how many are pending and
    /// parked.
    ///
    /// # Errors
    /// Database errors.
    async fn owed_agents(&self) -> Result<Vec<OwedCount>>;
}

/// A record in a side's journal (its outbox) of a write the other side is owed, kept
/// until repair replays it. Replaying is idempotent: memories and tools apply only over
/// older versions, deletes only over older values, metrics and executions only when
/// their id is absent.
///
/// The library journals [`SyncMemory`](Self::SyncMemory) and
/// [`SyncTool`](Self::SyncTool) for memories and tools (and
/// [`DeleteTool`](Self::DeleteTool) for tool deletes): replaying one copies the key's
/// state as the journaling side holds it at replay time (its newest value, or its
/// delete), so a record needs no payload and many records of one key converge on the
/// same state. The other payload forms are read from journals written by earlier
/// versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OwedWrite {
    /// A memory key changed (stored or deleted) on the journaling side.
    SyncMemory {
        /// The key.
        key: String,
    },
    /// A tool changed on the journaling side.
    SyncTool {
        /// The tool's name.
        name: String,
    },
    /// A tool deleted on the journaling side. Replayed like
    /// [`SyncTool`](Self::SyncTool) (the name's state as the journaling side holds it
    /// then); a record of its own, so that a version that does not know tool deletes
    /// parks it instead of clearing it unapplied.
    DeleteTool {
        /// The tool's name.
        name: String,
        /// When it was deleted (the writer's clock).
        at: DateTime<Utc>,
    },
    /// A stored memory.
    PutMemory {
        /// The memory as written.
        memory: Memory,
    },
    /// A version of a memory the agent was told failed, possibly left on the side whose
    /// journal holds this entry: replaying it makes that side's key match the other
    /// side's, unless a newer write has replaced that version meanwhile.
    RestoreMemory {
        /// The key.
        key: String,
        /// The `updated_at` of the version to replace.
        version: DateTime<Utc>,
    },
    /// A deleted key.
    DeleteMemory {
        /// The key.
        key: String,
        /// When it was deleted.
        at: DateTime<Utc>,
    },
    /// A registered tool.
    PutTool {
        /// The tool as written.
        tool: Tool,
    },
    /// A recorded metric.
    Metric {
        /// The metric as written.
        metric: Metric,
    },
    /// A logged execution.
    Execution {
        /// The execution as written.
        execution: Execution,
    },
}

// Not derived: a derived internally tagged enum buffers its fields first, and that
// buffer cannot hold a record's content (`Json` keeps its exact text only when
// serde_json's own deserializer reads it). A plain struct reads it directly from the text.
impl<'de> Deserialize<'de> for OwedWrite {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            op: String,
            memory: Option<Memory>,
            key: Option<String>,
            at: Option<DateTime<Utc>>,
            version: Option<DateTime<Utc>>,
            tool: Option<Tool>,
            name: Option<String>,
            metric: Option<Metric>,
            execution: Option<Execution>,
        }
        let f = Fields::deserialize(deserializer)?;
        let need = |field: &'static str| D::Error::missing_field(field);
        Ok(match f.op.as_str() {
            "sync_memory" => OwedWrite::SyncMemory {
                key: f.key.ok_or_else(|| need("key"))?,
            },
            "sync_tool" => OwedWrite::SyncTool {
                name: f.name.ok_or_else(|| need("name"))?,
            },
            "put_memory" => OwedWrite::PutMemory {
                memory: f.memory.ok_or_else(|| need("memory"))?,
            },
            "restore_memory" => OwedWrite::RestoreMemory {
                key: f.key.ok_or_else(|| need("key"))?,
                version: f.version.ok_or_else(|| need("version"))?,
            },
            "delete_memory" => OwedWrite::DeleteMemory {
                key: f.key.ok_or_else(|| need("key"))?,
                at: f.at.ok_or_else(|| need("at"))?,
            },
            "delete_tool" => OwedWrite::DeleteTool {
                name: f.name.ok_or_else(|| need("name"))?,
                at: f.at.ok_or_else(|| need("at"))?,
            },
            "put_tool" => OwedWrite::PutTool {
                tool: f.tool.ok_or_else(|| need("tool"))?,
            },
            "metric" => OwedWrite::Metric {
                metric: f.metric.ok_or_else(|| need("metric"))?,
            },
            "execution" => OwedWrite::Execution {
                execution: f.execution.ok_or_else(|| need("execution"))?,
            },
            other => {
                return Err(D::Error::unknown_variant(
                    other,
                    &[
                        "sync_memory",
                        "sync_tool",
                        "put_memory",
                        "restore_memory",
                        "delete_memory",
                        "delete_tool",
                        "put_tool",
                        "metric",
                        "execution",
                    ],
                ));
            }
        })
    }
}

impl OwedWrite {
    /// The key, tool name or id the write is about, for messages.
    pub fn subject(&self) -> String {
        match self {
            OwedWrite::SyncMemory { key } => format!("memory {key:?}"),
            OwedWrite::SyncTool { name } => format!("tool {name:?}"),
            OwedWrite::PutMemory { memory } => {
                format!("memory {:?}", memory.key.as_deref().unwrap_or_default())
            }
            OwedWrite::DeleteMemory { key, .. } => format!("delete of memory {key:?}"),
            OwedWrite::RestoreMemory { key, .. } => format!("restore of memory {key:?}"),
            OwedWrite::DeleteTool { name, .. } => format!("delete of tool {name:?}"),
            OwedWrite::PutTool { tool } => format!("tool {:?}", tool.name),
            OwedWrite::Metric { metric } => format!("metric {}", metric.id),
            OwedWrite::Execution { execution } => format!("execution {}", execution.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;
    use crate::record::now;

    #[test]
    fn owed_writes_read_back_exactly() {
        let content: Json = r#"{"n": 1.50, "big": 123456789012345678901234567890, "a": -0}"#
            .parse()
            .unwrap();
        let writes = [
            OwedWrite::SyncMemory { key: "k".into() },
            OwedWrite::SyncTool { name: "t".into() },
            OwedWrite::PutMemory {
                memory: Memory::new("k", content.clone()).with_embedding(vec![0.1, -1e-30, 3.4e38]),
            },
            OwedWrite::DeleteMemory {
                key: "k".into(),
                at: now(),
            },
            OwedWrite::PutTool {
                tool: Tool::new("t", content.clone()),
            },
            OwedWrite::Metric {
                metric: Metric::new("m", Some(12.5)),
            },
            OwedWrite::Execution {
                execution: Execution::new(Some("ok".into()), content),
            },
            OwedWrite::DeleteTool {
                name: "t".into(),
                at: now(),
            },
        ];
        let text = serde_json::to_string(&writes[2]).unwrap();
        assert!(
            text.contains(
                r#""content":{"n": 1.50, "big": 123456789012345678901234567890, "a": -0}"#
            ),
            "the journal holds the content's own text: {text}"
        );
        for write in writes {
            let text = serde_json::to_string(&write).unwrap();
            let back: OwedWrite = serde_json::from_str(&text).expect(&text);
            assert_eq!(back, write);
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
        assert!(serde_json::from_str::<OwedWrite>(r#"{"op": "metric"}"#).is_err());
        assert!(serde_json::from_str::<OwedWrite>(r#"{"op": "nope"}"#).is_err());
    }
}
