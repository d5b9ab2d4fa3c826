//! The embedded backend: one SQLite file per agent at `<agents path>/<agent>/memory.db`.
//!
//! - this file: the backend, its settings and its pools, one per agent file;
//! - `open.rs`: opening a file (WAL, `synchronous = FULL`, the schema) and what a
//!   failed open means;
//! - `sql.rs`: the statements; `rows.rs`: the one decoder of the library's own rows;
//! - `calls.rs`: [`MemoryBackend`](super::MemoryBackend) for the backend; `replica.rs`:
//!   [`Replica`](super::Replica);
//! - `listing.rs`: the listings with a [`Listing`](crate::Listing)'s bounds; `deletes.rs`:
//!   deletes of memories and tools, and their tombstones.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::sync::OnceCell;

use self::open::open_file;
use crate::error::{Error, Result};
use crate::record::AgentId;

mod calls;
mod deletes;
mod listing;
mod open;
mod quick;
mod replica;
mod rows;
mod sql;

pub(crate) use self::rows::{execution_from_row, memory_from_row, metric_from_row, tool_from_row};
// For `testing::statements`.
#[cfg(all(feature = "testing", feature = "postgres"))]
pub(crate) use self::sql::{GET_MEMORY, PUT_MEMORY};

/// The file name of an agent's database inside its folder.
pub const MEMORY_FILE: &str = "memory.db";

/// Settings of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a statement waits for another connection's lock before failing.
    pub busy_timeout: Duration,
    /// Connections per agent file (one writer at a time; the rest read concurrently).
    pub max_connections: u32,
    /// Bytes of each file SQLite reads through a memory map (`PRAGMA mmap_size`); 0, the
    /// default, reads with system calls. A map makes scans such as an exact vector
    /// search of a large agent faster, but SQLite cannot catch an I/O error on mapped
    /// memory: a failing disk or a file cut short by another program ends the process
    /// with a signal instead of returning an error.
    pub mmap_size: u64,
    /// Most bytes of embeddings of one agent and dimension kept in memory for exact
    /// vector search (a copy, checked against the file before every search, so every
    /// answer is that of a scan of the file); an agent with more is searched by scanning
    /// its file. 256 MiB by default, about 170,000 embeddings of 384 dimensions; 0 keeps
    /// none.
    pub search_cache_bytes: u64,
    /// Read a memory by key on the calling thread, through SQLite's own API on a
    /// read-only connection of the backend's, instead of on a pool connection's worker
    /// thread: a cached read takes a fraction of the time. On by default. Like any
    /// SQLite call, a read that has to wait for the disk holds the thread while it
    /// does (an async runtime's worker too); `false` sends every read through the pool.
    pub quick_reads: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(30),
            max_connections: 4,
            mmap_size: 0,
            search_cache_bytes: 256 << 20,
            quick_reads: true,
        }
    }
}

/// Agent memory in SQLite files: `<agents path>/<agent>/memory.db`, one per agent.
///
/// Files are opened on first use, in WAL mode with a busy timeout so concurrent agents,
/// readers and a running backfill wait for each other instead of failing with "database
/// is locked", and with `synchronous = FULL` so an acknowledged write survives a power
/// loss. The schema of `migrations/sqlite` is applied when a file is opened. Reading an
/// agent that has no file yet finds nothing and creates nothing.
#[derive(Debug)]
pub struct SqliteBackend {
    root: PathBuf,
    options: SqliteOptions,
    pools: Mutex<HashMap<AgentId, Arc<OnceCell<SqlitePool>>>>,
    search_cache: crate::vector::sqlite_cache::SearchCache,
    quick: quick::QuickReads,
}

impl SqliteBackend {
    /// A backend keeping agent folders under `agents_path`. Nothing is opened until an
    /// agent is used.
    pub fn new(agents_path: impl AsRef<Path>) -> Self {
        Self::with_options(agents_path, SqliteOptions::default())
    }

    /// Like [`new`](Self::new), with explicit settings.
    pub fn with_options(agents_path: impl AsRef<Path>, options: SqliteOptions) -> Self {
        SqliteBackend {
            root: agents_path.as_ref().to_path_buf(),
            options,
            pools: Mutex::new(HashMap::new()),
            search_cache: Default::default(),
            quick: Default::default(),
        }
    }

    /// The folder holding the agent folders.
    pub fn agents_path(&self) -> &Path {
        &self.root
    }

    /// The database file of `agent`.
    pub fn file_of(&self, agent: &AgentId) -> PathBuf {
        self.root.join(agent.as_str()).join(MEMORY_FILE)
    }

    /// Every agent with a database file under the agents path, in name order.
    ///
    /// # Errors
    /// [`Error::SqliteFile`] when the agents path cannot be listed.
    pub fn agents(&self) -> Result<Vec<AgentId>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::SqliteFile {
                    path: self.root.clone(),
                    problem: "cannot list the agents path".into(),
                    source: Box::new(e),
                });
            }
        };
        let mut agents: Vec<AgentId> = entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.path().join(MEMORY_FILE).is_file())
            .filter_map(|entry| AgentId::new(entry.file_name().to_string_lossy()).ok())
            .collect();
        agents.sort();
        Ok(agents)
    }

    /// Closes every open file, waiting for running statements to finish.
    pub async fn close(&self) {
        self.search_cache.clear().await;
        self.quick.clear();
        let cells: Vec<_> = self.lock_pools().drain().map(|(_, cell)| cell).collect();
        for cell in cells {
            if let Some(pool) = cell.get() {
                pool.close().await;
            }
        }
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Arc<OnceCell<SqlitePool>>>> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The agent's pool for writing, opening (and creating) its file on first use.
    async fn writer(&self, agent: &AgentId) -> Result<SqlitePool> {
        let cell = self.lock_pools().entry(agent.clone()).or_default().clone();
        let path = self.file_of(agent);
        cell.get_or_try_init(|| open_file(path, &self.options))
            .await
            .cloned()
    }

    /// The agent's pool for reading, or `None` when the agent has no file yet.
    async fn reader(&self, agent: &AgentId) -> Result<Option<SqlitePool>> {
        let open = self.lock_pools().get(agent).and_then(|c| c.get().cloned());
        if open.is_some() {
            return Ok(open);
        }
        if !self.file_of(agent).exists() {
            return Ok(None);
        }
        self.writer(agent).await.map(Some)
    }
}

impl SqliteBackend {
    /// The error of a statement run for `operation`.
    pub(super) fn fail<'a>(
        &'a self,
        operation: impl FnOnce() -> String + 'a,
    ) -> impl FnOnce(sqlx::Error) -> Error + 'a {
        move |e| Error::database("sqlite", operation(), e, None)
    }
}
