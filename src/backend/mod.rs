//! The one seam every storage implements: [`MemoryBackend`], and [`open`] to pick one
//! from configuration.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{AgentConfig, BackendKind};
use crate::error::Result;
use crate::record::{AgentId, Execution, Memory, Metric, Tool};

mod codec;
pub mod postgres;
pub mod sqlite;

pub use postgres::{PostgresBackend, PostgresOptions};
pub use sqlite::{SqliteBackend, SqliteOptions};

/// Storage for the four kinds of agent data: memories, tools, metrics and executions.
///
/// Every operation is scoped to an agent id, so one backend value (one PostgreSQL
/// database, or one agents folder) serves many agents.
///
/// # Contract
///
/// Every implementation, and every wrapper around one, upholds these rules; the
/// scenarios in `agent_memory::testing` (feature `testing`) check them.
///
/// - **Exact values.** What [`put_memory`](Self::put_memory) stores,
///   [`get_memory`](Self::get_memory) returns unchanged: the same JSON text (key order and
///   number forms included), metadata, embedding and times (microsecond precision).
/// - **One value per key.** `put_memory` on an existing key replaces its content,
///   metadata, embedding and `updated_at`, and keeps its `id` and `created_at`; the
///   returned [`Memory`] is what is now stored. The same holds for tools by name.
/// - **Acknowledged means stored.** Once a write returns `Ok`, every later read sees it
///   (or a newer write), also after a restart.
/// - **Deletes are final.** After `delete_memory` returns, the key reads as absent until
///   it is stored again. It returns whether the key existed.
/// - **Isolation.** An operation for one agent never reads or changes another's data.
/// - **Orders.** Keys and tools are listed in byte order of key or name; metrics and
///   executions in order of `created_at`, then `id`.
/// - **Refusals, not corruption.** A value a database cannot hold exactly (see
///   [`Memory::validate`]) is refused with [`Error::InvalidInput`](crate::Error) before
///   anything is written. A failed call writes nothing.
/// - **Concurrency.** Calls may run concurrently from many tasks and processes; none is
///   lost, and none fails because another holds a lock.
/// - **Reads create nothing.** Reading an agent that has never written leaves no trace.
#[async_trait]
pub trait MemoryBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name in messages and statistics: `sqlite`, `postgres`, ...
    fn name(&self) -> &'static str;

    /// Stores `memory` under its key, replacing the value of an existing key, and returns
    /// the memory as now stored.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values [`Memory::validate`]
    /// refuses; database errors otherwise.
    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory>;

    /// The memory stored under `key`, if any.
    ///
    /// # Errors
    /// Database errors, or a stored value that is not valid JSON.
    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>>;

    /// Deletes the memory under `key`; returns whether there was one.
    ///
    /// # Errors
    /// Database errors.
    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool>;

    /// Every key the agent has stored, in byte order.
    ///
    /// # Errors
    /// Database errors.
    async fn memory_keys(&self, agent: &AgentId) -> Result<Vec<String>>;

    /// Registers `tool`, replacing the definition of a tool of the same name, and returns
    /// the tool as now stored.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values [`Tool::validate`]
    /// refuses; database errors otherwise.
    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool>;

    /// The tool registered under `name`, if any.
    ///
    /// # Errors
    /// Database errors.
    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>>;

    /// Every registered tool, in byte order of name.
    ///
    /// # Errors
    /// Database errors.
    async fn list_tools(&self, agent: &AgentId) -> Result<Vec<Tool>>;

    /// Records one measurement.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values [`Metric::validate`]
    /// refuses; database errors otherwise.
    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()>;

    /// Every recorded measurement, oldest first.
    ///
    /// # Errors
    /// Database errors.
    async fn list_metrics(&self, agent: &AgentId) -> Result<Vec<Metric>>;

    /// Logs one execution.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values
    /// [`Execution::validate`] refuses; database errors otherwise.
    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()>;

    /// Every logged execution, oldest first.
    ///
    /// # Errors
    /// Database errors.
    async fn list_executions(&self, agent: &AgentId) -> Result<Vec<Execution>>;
}

/// Opens the backend `config` selects.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) when `postgres` has no URL; connection and
/// schema errors from [`PostgresBackend::connect`].
pub async fn open(config: &AgentConfig) -> Result<Arc<dyn MemoryBackend>> {
    Ok(match config.memory_backend {
        BackendKind::Sqlite => Arc::new(SqliteBackend::new(&config.agents_path)),
        BackendKind::Postgres => {
            let options = PostgresOptions {
                max_connections: config.max_connections,
                connect_timeout: config.connect_timeout,
            };
            Arc::new(
                PostgresBackend::connect_with(
                    config.require_database_url("memory_backend = postgres")?,
                    options,
                )
                .await?,
            )
        }
    })
}
