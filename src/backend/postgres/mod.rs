//! The shared backend: the contract tables in PostgreSQL (with pgvector), one database
//! for many agents.
//!
//! - this file: the backend, its settings and the lookup of an agent's `agents` row;
//! - `connect.rs`: reading the URL once, the first connection and the pool;
//! - `recycle.rs`: the connections passed from call to call, and which to check first;
//! - `admin.rs`: DDL that runs only when called (vector indexes, compression);
//! - `sql.rs`: the statements; `rows.rs`: decoding their rows;
//! - `calls.rs`: [`MemoryBackend`](super::MemoryBackend) for the backend; `replica.rs`:
//!   [`Replica`](super::Replica);
//! - `listing.rs`: the listings with a [`Listing`](crate::Listing)'s bounds; `deletes.rs`:
//!   deletes of memories and tools, and their tombstones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgPool;

use self::connect::{connect_pool_with, pool_options};
use self::recycle::{PoolHealth, Stash};
use super::agent_rows::{AgentRowError, agent_row_id};
use crate::error::{Error, Result};
use crate::record::AgentId;
use crate::redact::ConnectionString;
use crate::schema::{check_schema, ensure_bookkeeping};
use crate::vector::postgres::IndexCache;

mod admin;
mod calls;
mod connect;
mod deletes;
mod listing;
mod recycle;
mod replica;
mod rows;
mod sql;

pub(crate) use self::connect::{PgTarget, connect_pool};
pub use self::recycle::CHECK_IDLE_AFTER;
pub use self::replica::{COPIED_ROW_NAMESPACE, copied_row_id};
// For `testing::statements`.
#[cfg(all(feature = "testing", feature = "sqlite"))]
pub(crate) use self::sql::{GET_MEMORY, PUT_MEMORY};

/// Settings of the PostgreSQL backend's connection pool.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Agent memory in the PostgreSQL contract tables (`agents`, `agent_memories`,
/// `agent_tools`, `agent_metrics`, `agent_executions`).
///
/// The tables come from the shipped migrations ([`crate::migrate_url`]) or from the admin
/// application's Prisma schema; this backend never creates them. [`connect`](Self::connect)
/// checks that they are there and names what is missing. An agent's `agents` row is made
/// on its first write.
pub struct PostgresBackend {
    pool: PgPool,
    health: Arc<PoolHealth>,
    stash: Stash,
    target: ConnectionString,
    known_agents: Mutex<HashMap<AgentId, String>>,
    indexes: IndexCache,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("target", &self.target.shown())
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects to `url` with default pool settings and checks the schema.
    ///
    /// # Errors
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url`, then checks that the contract tables and the `vector`
    /// extension are there.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL, [`Error::Connect`] when the server cannot
    /// be reached or refuses the login, [`Error::SchemaMissing`] naming every missing
    /// table, column, key or extension. No message shows the URL's password.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        Self::connect_to(PgTarget::parse(url)?, options).await
    }

    /// [`connect_with`](Self::connect_with) to a URL already read.
    pub(crate) async fn connect_to(target: PgTarget, options: PostgresOptions) -> Result<Self> {
        let health = Arc::new(PoolHealth::default());
        let pool = connect_pool_with(&target, &options, health.clone()).await?;
        let backend = PostgresBackend {
            stash: Stash::new(options.max_connections),
            pool,
            health,
            target: target.url,
            known_agents: Mutex::new(HashMap::new()),
            indexes: IndexCache::default(),
        };
        check_schema(&backend.pool, backend.target.shown()).await?;
        ensure_bookkeeping(&backend.pool).await?;
        Ok(backend)
    }

    /// A backend whose pool connects on first use, for when the server may be down at
    /// start (the dual backend's SQLite-authoritative stages keep working then). The
    /// schema is not checked; a missing table shows as an error on first use.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL.
    pub fn connect_lazy(url: &str, options: PostgresOptions) -> Result<Self> {
        Ok(Self::lazy_to(PgTarget::parse(url)?, options))
    }

    /// [`connect_lazy`](Self::connect_lazy) to a URL already read.
    pub(crate) fn lazy_to(target: PgTarget, options: PostgresOptions) -> Self {
        let health = Arc::new(PoolHealth::default());
        PostgresBackend {
            pool: pool_options(&options, health.clone()).connect_lazy_with(target.options),
            health,
            stash: Stash::new(options.max_connections),
            target: target.url,
            known_agents: Mutex::new(HashMap::new()),
            indexes: IndexCache::default(),
        }
    }

    /// The error of a statement run for `operation` that failed with `e`, which shows no
    /// password.
    pub(crate) fn error(&self, operation: impl Into<String>, e: sqlx::Error) -> Error {
        Error::database("postgres", operation, e, Some(&self.target))
    }

    /// The connection pool, for callers that run their own statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for running statements to finish.
    pub async fn close(&self) {
        self.stash.drain();
        self.pool.close().await;
    }

    pub(super) fn fail<'a>(
        &'a self,
        operation: impl FnOnce() -> String + 'a,
    ) -> impl FnOnce(sqlx::Error) -> Error + 'a {
        move |e| {
            let err = self.error(operation(), e);
            if err.is_connection() {
                self.health.lost_connection();
            }
            err
        }
    }

    /// The id of the agent's `agents` row, made when missing (see
    /// [`agent_rows`](super::agent_rows)); remembered for the process, since a row's id
    /// never changes.
    pub(super) async fn agent_row(&self, agent: &AgentId) -> Result<String> {
        let id = self.find_agent_row(agent, true).await?;
        Ok(id.expect("agent_row_id creates the row when asked to"))
    }

    /// The id of the agent's `agents` row, if it has one (remembered once found): reads
    /// of an agent without one find nothing. Statements get the id itself rather than
    /// a lookup by name, so PostgreSQL plans them for that agent's rows.
    pub(super) async fn agent_row_if_any(&self, agent: &AgentId) -> Result<Option<String>> {
        self.find_agent_row(agent, false).await
    }

    /// [`agent_row`](Self::agent_row) with `create`, else
    /// [`agent_row_if_any`](Self::agent_row_if_any).
    async fn find_agent_row(&self, agent: &AgentId, create: bool) -> Result<Option<String>> {
        if let Some(id) = self.lock_known().get(agent) {
            return Ok(Some(id.clone()));
        }
        let operation = || format!("find agent {agent:?}");
        // Straight from the pool, not through the stash: leasing here, in the first
        // call of many agents at once and before the call's own lease, left the stash
        // in a state that cost every later call about a third of its throughput
        // (`scripts/bench ops`, 16 agents: 2,000-3,300 calls/s in most runs instead of
        // 5,200-7,300). A lookup happens once per agent and process.
        let mut conn = self.pool.acquire().await.map_err(self.fail(operation))?;
        let id = match agent_row_id(&mut conn, agent, create).await {
            Ok(id) => id,
            Err(AgentRowError::Database(e)) => return Err(self.fail(operation)(e)),
            Err(taken @ AgentRowError::IdTaken { .. }) => {
                return Err(Error::invalid("agent", taken.to_string()));
            }
        };
        drop(conn);
        if let Some(id) = &id {
            self.lock_known().insert(agent.clone(), id.clone());
        }
        Ok(id)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, String>> {
        // The set only caches inserts that already happened; a poisoned one is still valid.
        self.known_agents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
