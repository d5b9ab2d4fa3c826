//! The data every backend stores: agent ids, memories, tools, metrics and executions.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::json::Json;

/// The longest memory key or tool name, in bytes (UTF-8), that both backends store.
///
/// PostgreSQL keeps keys in a unique btree index whose entries cannot exceed about
/// 2,700 bytes (with the agent's id beside the key); SQLite has no such limit. One limit
/// for both, well under PostgreSQL's, so a key one side can hold the other can too.
pub const MAX_KEY_BYTES: usize = 1024;

/// The most dimensions an embedding or a query vector may have: the most a pgvector
/// `vector` holds.
pub const MAX_DIMENSIONS: usize = 16_000;

/// A memory's or record's metadata: a JSON object of `serde_json` values.
///
/// Unlike `content`, metadata is data the library and the databases read (PostgreSQL
/// keeps it as `jsonb`, which orders keys its own way), so it holds what a
/// `serde_json::Value` holds, in the key order of your `serde_json` build.
pub type Metadata = serde_json::Map<String, Value>;

/// The current time at the precision both databases keep (microseconds), so a time
/// reads back the same from SQLite and PostgreSQL.
///
/// Strictly increasing within a process: two writes never share a time, so "the newer
/// write wins" always has one answer, the same on both sides of a dual backend.
pub(crate) fn now() -> DateTime<Utc> {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let wall = Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                return DateTime::from_timestamp_micros(next)
                    .unwrap_or_else(|| Utc::now().trunc_subsecs(6));
            }
            Err(seen) => last = seen,
        }
    }
}

/// A validated agent id: the name an agent is configured with, which is also its folder
/// under the agents path and its `agents.id` in PostgreSQL.
///
/// An id is non-empty, at most 255 bytes, not `.` or `..`, and holds no `/`, `\`, NUL
/// or other control character, so it is safe as a folder name and as PostgreSQL text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    /// Checks `name` and wraps it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the rule the name breaks.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > 255 {
            Some("it is longer than 255 bytes")
        } else if name == "." || name == ".." {
            Some("`.` and `..` are not folder names")
        } else if name.contains(['/', '\\']) {
            Some("it contains a path separator")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::invalid("agent name", format!("{name:?}: {reason}"))),
            None => Ok(AgentId(name)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for AgentId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AgentId::new(s)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        AgentId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One memory: a JSON value stored under a key, with metadata and an optional embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Stable id; kept when the key is overwritten.
    pub id: Uuid,
    /// The key agents store and retrieve by. `None` only for migrated legacy rows whose
    /// key another row of the same agent holds.
    pub key: Option<String>,
    /// The stored value, as the exact JSON text it was stored as.
    pub content: Json,
    /// Free-form metadata (a JSON object).
    pub metadata: Metadata,
    /// An embedding for vector search.
    pub embedding: Option<Vec<f32>>,
    /// When the key was first stored.
    pub created_at: DateTime<Utc>,
    /// When the value last changed.
    pub updated_at: DateTime<Utc>,
}

impl Memory {
    /// A new memory under `key`, with a fresh time-ordered id, empty metadata and no
    /// embedding, created now.
    pub fn new(key: impl Into<String>, content: impl Into<Json>) -> Self {
        let at = now();
        Memory {
            id: Uuid::now_v7(),
            key: Some(key.into()),
            content: content.into(),
            metadata: Metadata::new(),
            embedding: None,
            created_at: at,
            updated_at: at,
        }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the embedding.
    pub fn with_embedding(mut self, embedding: Vec<f32>) -> Self {
        self.embedding = Some(embedding);
        self
    }

    /// Checks that both databases can store this memory exactly.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a missing or NUL-holding key, NUL in a metadata
    /// string, or an embedding that is empty, holds a non-finite number or has more than
    /// 16,000 dimensions.
    pub fn validate(&self) -> Result<()> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| Error::invalid("key", "a memory is stored under a key"))?;
        check_key("key", key)?;
        check_metadata(&self.metadata)?;
        if let Some(embedding) = &self.embedding {
            check_vector("embedding", embedding)?;
        }
        Ok(())
    }
}

/// A tool in an agent's registry: its definition as JSON, under a unique name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Stable id; kept when the tool is registered again.
    pub id: Uuid,
    /// The tool's name, unique per agent.
    pub name: String,
    /// The tool's definition (schema, configuration, ...).
    pub content: Json,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// When the tool was first registered.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

impl Tool {
    /// A new tool definition, registered now.
    pub fn new(name: impl Into<String>, content: impl Into<Json>) -> Self {
        let at = now();
        Tool {
            id: Uuid::now_v7(),
            name: name.into(),
            content: content.into(),
            metadata: Metadata::new(),
            created_at: at,
            updated_at: at,
        }
    }

    /// Checks that both databases can store this tool exactly.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for NUL in the name or a metadata string.
    pub fn validate(&self) -> Result<()> {
        check_key("tool name", &self.name)?;
        check_metadata(&self.metadata)
    }
}

/// One measurement: a named value with optional details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Unique id.
    pub id: Uuid,
    /// What was measured.
    pub name: String,
    /// The measured value, if it is a number.
    pub value: Option<f64>,
    /// Details as JSON.
    pub content: Json,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// When it was measured.
    pub created_at: DateTime<Utc>,
}

impl Metric {
    /// A new measurement taken now, with no details.
    pub fn new(name: impl Into<String>, value: Option<f64>) -> Self {
        Metric {
            id: Uuid::now_v7(),
            name: name.into(),
            value,
            content: Json::from(Value::Object(Metadata::new())),
            metadata: Metadata::new(),
            created_at: now(),
        }
    }

    /// Checks that both databases can store this metric exactly.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a NaN value (SQLite would store it as NULL) or NUL in
    /// the name or a metadata string.
    pub fn validate(&self) -> Result<()> {
        check_text("metric name", &self.name)?;
        if self.value.is_some_and(f64::is_nan) {
            return Err(Error::invalid(
                "metric value",
                format!("{:?} is NaN, which SQLite cannot store", self.name),
            ));
        }
        check_metadata(&self.metadata)
    }
}

/// One entry of an agent's execution history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// Unique id.
    pub id: Uuid,
    /// Outcome, e.g. `ok`, `failed`.
    pub status: Option<String>,
    /// Details as JSON (task, inputs, outputs, ...).
    pub content: Json,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// When it was logged.
    pub created_at: DateTime<Utc>,
}

impl Execution {
    /// A new execution entry logged now.
    pub fn new(status: Option<String>, content: impl Into<Json>) -> Self {
        Execution {
            id: Uuid::now_v7(),
            status,
            content: content.into(),
            metadata: Metadata::new(),
            created_at: now(),
        }
    }

    /// Checks that both databases can store this entry exactly.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for NUL in the status or a metadata string.
    pub fn validate(&self) -> Result<()> {
        if let Some(status) = &self.status {
            check_text("execution status", status)?;
        }
        check_metadata(&self.metadata)
    }
}

/// PostgreSQL text cannot hold NUL; refuse it everywhere so both backends agree.
fn check_text(what: &'static str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(
            what,
            format!("{text:?} contains a NUL character, which PostgreSQL text cannot hold"),
        ));
    }
    Ok(())
}

/// A key or name: text both databases hold, short enough for PostgreSQL's unique index.
fn check_key(what: &'static str, key: &str) -> Result<()> {
    check_text(what, key)?;
    if key.len() > MAX_KEY_BYTES {
        let start: String = key.chars().take(40).collect();
        return Err(Error::invalid(
            what,
            format!(
                "{start:?}... is {} bytes long; keys and names are at most {MAX_KEY_BYTES} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// PostgreSQL `jsonb` rejects `\u0000` in strings and keys.
fn check_metadata(metadata: &Metadata) -> Result<()> {
    fn walk(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(walk),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    if metadata.iter().any(|(k, v)| k.contains('\0') || walk(v)) {
        return Err(Error::invalid(
            "metadata",
            "a string in it contains a NUL character, which PostgreSQL jsonb cannot hold",
        ));
    }
    Ok(())
}

/// Checks that `vector` has 1 to [`MAX_DIMENSIONS`] finite numbers.
pub(crate) fn check_vector(what: &'static str, vector: &[f32]) -> Result<()> {
    if vector.is_empty() {
        return Err(Error::invalid(what, "it is empty"));
    }
    if vector.len() > MAX_DIMENSIONS {
        return Err(Error::invalid(
            what,
            format!(
                "it has {} dimensions; pgvector holds at most {MAX_DIMENSIONS}",
                vector.len()
            ),
        ));
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            what,
            format!(
                "element {i} is {}; only finite numbers can be stored",
                vector[i]
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_never_repeats_and_keeps_microseconds() {
        let times: Vec<_> = (0..10_000).map(|_| now()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(times.iter().all(|t| t.timestamp_subsec_nanos() % 1000 == 0));
    }

    #[test]
    fn agent_ids_that_cannot_be_folders_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "tab\there"] {
            let err = AgentId::new(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid agent name"), "{bad:?}: {err}");
        }
        assert!(AgentId::new("x".repeat(256)).is_err());
        for good in ["operational_crawler", "Agent 7", "агент", "a.b-c"] {
            assert_eq!(AgentId::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn values_postgres_cannot_hold_are_refused_up_front() {
        assert!(Memory::new("a\0", Value::Null).validate().is_err());
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let err = Memory::new(long.clone(), Value::Null)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("at most 1024 bytes"), "{err}");
        assert!(Tool::new(long, Value::Null).validate().is_err());
        assert!(
            Memory::new("é".repeat(MAX_KEY_BYTES / 2), Value::Null)
                .validate()
                .is_ok()
        );
        let mut meta = Metadata::new();
        meta.insert("k".into(), serde_json::json!(["ok", "n\0ul"]));
        assert!(
            Memory::new("k", Value::Null)
                .with_metadata(meta)
                .validate()
                .is_err()
        );
        assert!(
            Memory::new("k", Value::Null)
                .with_embedding(vec![])
                .validate()
                .is_err()
        );
        assert!(
            Memory::new("k", Value::Null)
                .with_embedding(vec![1.0, f32::NAN])
                .validate()
                .is_err()
        );
        assert!(Metric::new("m", Some(f64::NAN)).validate().is_err());
        assert!(Metric::new("m", Some(f64::INFINITY)).validate().is_ok());
        // NUL inside the stored value itself is fine: JSON text escapes it.
        assert!(
            Memory::new("k", Value::String("a\0b".into()))
                .validate()
                .is_ok()
        );
    }
}
