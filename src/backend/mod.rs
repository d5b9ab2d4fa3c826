//! The one seam every storage implements: [`MemoryBackend`], and [`open`] to pick one
//! from configuration.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{AgentConfig, BackendKind};
use crate::error::Result;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool};
use crate::vector::{Neighbor, VectorQuery};

#[cfg(feature = "postgres")]
pub(crate) mod agent_rows;
pub(crate) mod codec;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "sqlite", feature = "postgres"))))]
pub mod dual;
pub(crate) mod listing;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod replica;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub use dual::DualBackend;
#[cfg(feature = "postgres")]
pub(crate) use postgres::PgTarget;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresOptions};
pub use replica::Replica;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteOptions};

/// Storage for the four kinds of agent data: memories, tools, metrics and executions.
///
/// Every operation is scoped to an agent id, so one backend value (one PostgreSQL
/// database, or one agents folder) serves many agents.
///
/// # Contract
///
/// Every implementation, and every wrapper around one, upholds these rules; the
/// scenarios in `memshift::testing` (feature `testing`) check them.
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
///   it is stored again; after `delete_tool`, the tool until it is registered again.
///   Both return whether there was one.
/// - **Isolation.** An operation for one agent never reads or changes another's data.
/// - **Orders.** Keys and tools are listed in byte order of key or name; metrics and
///   executions in order of `created_at`, then `id`.
/// - **Listings filter in the database.** A [`Listing`]'s prefix, `since` and limit
///   select the same records on every backend (see [`Listing`] for what each compares),
///   and its default lists everything.
/// - **Refusals, not corruption.** A value a database cannot hold exactly (see
///   [`Memory::validate`]) is refused with [`Error::InvalidInput`](crate::Error) before
///   anything is written. A failed call writes nothing.
/// - **Concurrency.** Calls may run concurrently from many tasks and processes; none is
///   lost, and none fails because another holds a lock.
/// - **Reads create nothing.** Reading an agent that has never written leaves no trace.
/// - **Search agrees.** An exact search returns the same memories in the same order, with
///   the same distances, on every backend holding the same data (ties by id).
#[async_trait]
pub trait MemoryBackend: Send + Sync + std::fmt::Debug {
    /// The backend's name in messages and statistics: `sqlite`, `postgres`, ...
    fn name(&self) -> &'static str;

    /// Checks that the backend can be reached now (one cheap round trip).
    ///
    /// # Errors
    /// The connection error.
    async fn ping(&self) -> Result<()>;

    /// Stores `memory` under its key, replacing the value of an existing key, and returns
    /// the memory as now stored. Its version (`updated_at`) is `memory.updated_at`, or,
    /// when the stored value or the key's last delete is as late or later (a clock that
    /// stepped back, a value dated in the future), one microsecond past it: versions only
    /// move forward.
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

    /// Deletes the memory under `key` now, whatever its version, and records the delete so
    /// that no older copy brings it back; returns whether there was one.
    ///
    /// # Errors
    /// Database errors.
    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool>;

    /// The keys the agent has stored that `listing` selects (prefix of the key, stored
    /// or replaced since), in byte order; all of them with [`Listing::default`].
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for a listing
    /// [`Listing::validate`] refuses; database errors.
    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>>;

    /// The `query.k` memories of `agent` whose embeddings are nearest to `query.vector`,
    /// nearest first, with their distances; only embeddings of the query's dimension
    /// that pass its filters are candidates (see [`crate::vector`] for the defined
    /// answers to edge cases). Exact on SQLite; on PostgreSQL through an HNSW index when
    /// one exists for the dimension and metric and `query.exact` is not set.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error) for an invalid query
    /// ([`VectorQuery::validate`]) or one whose dimension none of the agent's embeddings
    /// has; the database's error otherwise.
    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>>;

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

    /// Deletes the tool `name` now, whatever its version, and records the delete so that
    /// no older copy brings it back; returns whether there was one.
    ///
    /// # Errors
    /// Database errors.
    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool>;

    /// The registered tools `listing` selects (prefix of the name, registered or changed
    /// since), in byte order of name.
    ///
    /// # Errors
    /// As [`memory_keys`](Self::memory_keys).
    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>>;

    /// Records one measurement. Recording a metric whose id is already there does
    /// nothing, so a replayed write is never doubled.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values [`Metric::validate`]
    /// refuses; database errors otherwise.
    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()>;

    /// The recorded measurements `listing` selects (prefix of the name, recorded since),
    /// oldest first.
    ///
    /// # Errors
    /// As [`memory_keys`](Self::memory_keys).
    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>>;

    /// Logs one execution. Logging an execution whose id is already there does nothing.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::Error::InvalidInput) for values
    /// [`Execution::validate`] refuses; database errors otherwise.
    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()>;

    /// The logged executions `listing` selects (prefix of the status, logged since),
    /// oldest first.
    ///
    /// # Errors
    /// As [`memory_keys`](Self::memory_keys).
    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>>;

    /// Finishes background bookkeeping now (the dual backend clears the journal records
    /// of writes that reached both sides); call it before a short-lived process exits.
    /// Nothing is lost without it: left records are only replayed again.
    ///
    /// # Errors
    /// When the bookkeeping cannot be written.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Finishes background bookkeeping as [`flush`](Self::flush) does, then closes the
    /// connections the backend holds once the statements running on them finish: the
    /// clean end of a process. Call it last: afterwards PostgreSQL calls fail, and SQLite
    /// calls open their files again.
    ///
    /// # Errors
    /// As [`flush`](Self::flush); the connections are closed all the same.
    async fn close(&self) -> Result<()> {
        self.flush().await
    }
}

/// Opens the backend `config` selects.
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) when the backend is not in this build (the
/// message names the cargo feature that adds it) or `postgres` has no URL; connection
/// and schema errors from `PostgresBackend::connect`.
pub async fn open(config: &AgentConfig) -> Result<Arc<dyn MemoryBackend>> {
    config.memory_backend.check_compiled()?;
    Ok(match config.memory_backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Sqlite => Arc::new(SqliteBackend::new(&config.agents_path)),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => {
            Arc::new(connect_postgres(config, "memory_backend = postgres").await?)
        }
        #[cfg(all(feature = "sqlite", feature = "postgres"))]
        BackendKind::Dual => Arc::new(open_dual(config).await?),
        // Kinds this build leaves out, which `check_compiled` has refused.
        #[cfg(not(all(feature = "sqlite", feature = "postgres")))]
        kind => unreachable!("{kind} is not compiled in and was refused above"),
    })
}

/// Opens the dual backend over `config`'s agents path and database, at its stage.
///
/// An unreachable PostgreSQL does not stop the agent from starting: the backend starts
/// with PostgreSQL marked down and pings it in the background. Until it answers, the
/// stage's rules decide: while SQLite is authoritative the agent works and PostgreSQL's
/// writes are journaled for repair; in `live` reads fall back to SQLite and writes fail.
///
/// Unless [`AgentConfig::stage_poll`] is zero, the backend follows the stages held
/// centrally in PostgreSQL (see [`DualBackend::follow_central_stages`]).
///
/// # Errors
/// [`Error::Config`](crate::Error::Config) without a URL or with a malformed one; a
/// refused login; schema errors when PostgreSQL answers.
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "sqlite", feature = "postgres"))))]
pub async fn open_dual(config: &AgentConfig) -> Result<DualBackend> {
    let target = PgTarget::parse(config.require_database_url("memory_backend = dual")?)?;
    let sqlite = Arc::new(SqliteBackend::new(&config.agents_path));
    let (postgres, reachable) =
        match PostgresBackend::connect_to(target.clone(), postgres_options(config)).await {
            Ok(postgres) => (postgres, true),
            Err(err) if err.is_connection() => {
                tracing::warn!(
                    error = %crate::Chain(&err),
                    stage = %config.memory_stage,
                    "PostgreSQL unreachable; starting without it until it answers"
                );
                (
                    PostgresBackend::lazy_to(target, postgres_options(config)),
                    false,
                )
            }
            Err(err) => return Err(err),
        };
    let pool = postgres.pool().clone();
    let dual = DualBackend::new(sqlite, Arc::new(postgres), config.memory_stage);
    if !reachable {
        dual.start_without(dual::Side::Postgres);
    }
    if !config.stage_poll.is_zero() {
        let agents_path = Some(config.agents_path.clone());
        dual.follow_central_stages(pool, config.stage_poll, agents_path, reachable)
            .await;
    }
    Ok(dual)
}

#[cfg(feature = "postgres")]
fn postgres_options(config: &AgentConfig) -> PostgresOptions {
    PostgresOptions {
        max_connections: config.max_connections,
        connect_timeout: config.connect_timeout,
    }
}

#[cfg(feature = "postgres")]
async fn connect_postgres(config: &AgentConfig, purpose: &str) -> Result<PostgresBackend> {
    let target = PgTarget::parse(config.require_database_url(purpose)?)?;
    PostgresBackend::connect_to(target, postgres_options(config)).await
}
