//! The embedded backend: one SQLite file per agent at `<agents path>/<agent>/memory.db`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio::sync::OnceCell;

use super::MemoryBackend;
use super::codec::{
    bytes_embedding, embedding_bytes, json_text, metadata_text, parse_json, parse_metadata,
    parse_time, time_text,
};
use super::listing::{Kind, key_of};
use super::replica::{Change, Outcome, Replica};
use crate::error::{Error, Result};
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool, now};
use crate::schema::migrate_sqlite;
use crate::vector::{Neighbor, VectorQuery};

mod deletes;
mod listing;
mod replica;

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
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(30),
            max_connections: 4,
            mmap_size: 0,
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

/// Opens (creating if needed) one agent file and brings its schema up to date.
async fn open_file(path: PathBuf, options: &SqliteOptions) -> Result<SqlitePool> {
    let file_error = |problem: &str, source: crate::error::BoxError| Error::SqliteFile {
        path: path.clone(),
        problem: problem.to_string(),
        source,
    };
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| {
            file_error(
                "cannot create the agent's folder; check that the agents path is a writable folder",
                Box::new(e),
            )
        })?;
    }
    if path.is_dir() {
        return Err(file_error(
            "is a directory; the agent's database must be a SQLite file",
            Box::new(std::io::Error::from(std::io::ErrorKind::IsADirectory)),
        ));
    }
    let connect = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(options.busy_timeout)
        .pragma("mmap_size", options.mmap_size.to_string());
    let opened = async {
        let pool = SqlitePoolOptions::new()
            .after_connect(|conn, _| Box::pin(crate::vector::sqlite::register_functions(conn)))
            .max_connections(options.max_connections.max(1))
            // A file cannot drop the connection the way a server can, so checking it
            // on every acquire (sqlx's default) would only cost a trip to its thread.
            .test_before_acquire(false)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            .connect_with(connect)
            .await?;
        let mut conn = pool.acquire().await?;
        migrate_sqlite(&mut conn).await?;
        drop(conn);
        Ok::<_, sqlx::Error>(pool)
    };
    let pool = opened
        .await
        .map_err(|e| file_error(open_problem(&e), Box::new(e)))?;
    tracing::debug!(path = %path.display(), "opened agent SQLite file");
    Ok(pool)
}

/// Says, for a failed open, what is wrong with the file and what to do.
fn open_problem(err: &sqlx::Error) -> &'static str {
    let code = match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff),
        _ => None,
    };
    match code {
        Some(11) | Some(26) => {
            "is not a SQLite database or is corrupt; move it aside or restore it from a backup"
        }
        Some(8) => "is read-only; make the file and its folder writable",
        Some(14) => "cannot be opened; check that its folder exists and is writable",
        Some(5) | Some(6) => "stayed locked by another process past the busy timeout",
        _ => "cannot be opened as an agent database",
    }
}

// A write of the authoritative side is one `begin immediate` transaction (it takes the
// write lock at once, so reading the replaced version first never fails on an upgrade
// to a write lock); a copy from the other side is one statement. Statements with
// `returning` are stepped to their end (`fetch_all`): SQLite finishes, and in autocommit
// commits, a statement only then, and an error there (a full disk) must reach the
// caller. Times are fixed-width text, so text order is time order.

/// Reads one memory by key.
pub(crate) const GET_MEMORY: &str =
    "select id, key, content, metadata, embedding, created_at, updated_at
     from agent_memories where key = ?";

/// The version a write as the authoritative side takes (SQL for `Replica::commit`): the
/// writer's clock `?7` (`?6` for tools), or one microsecond past `r`, the later of the
/// replaced version and the key's last delete, when `r` is as late or later. Times are
/// fixed-width text (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), so text order is time order and the
/// microseconds are characters 21-26.
macro_rules! next_version_sql {
    ($clock:literal, $replaced:literal) => {
        concat!(
            "(select case
                when r is null or r < ",
            $clock,
            " then ",
            $clock,
            "
                when substr(r, 21, 6) = '999999'
                    then strftime('%Y-%m-%dT%H:%M:%S', substr(r, 1, 19), '+1 seconds')
                         || '.000000Z'
                else substr(r, 1, 20) || printf('%06d', substr(r, 21, 6) + 1) || 'Z'
              end
              from (select nullif(max(",
            $replaced,
            "), '') as r))"
        )
    };
}

use next_version_sql;

/// Stores a memory as the authoritative side: its version moves past the replaced one
/// and the key's last delete (see `next_version_sql`); returns the id, `created_at` and
/// version now stored.
pub(crate) const PUT_MEMORY: &str = concat!(
    "insert into agent_memories
        (id, key, content, metadata, embedding, created_at, updated_at)
    values (?1, ?2, ?3, ?4, ?5, ?6, ",
    next_version_sql!(
        "?7",
        "coalesce((select updated_at from agent_memories where key = ?2), ''),
         coalesce((select deleted_at from agent_memory_tombstones where key = ?2), '')"
    ),
    ")
    on conflict (key) do update set
        content = excluded.content, metadata = excluded.metadata,
        embedding = excluded.embedding, updated_at = excluded.updated_at
    returning id, created_at, updated_at"
);

/// Stores a memory over older versions only: the select's WHERE skips keys deleted at
/// or after this version, the upsert's WHERE skips newer values; of two values with the
/// same version, the one whose content sorts later (by bytes) wins, as in PostgreSQL.
const APPLY_MEMORY: &str = "insert into agent_memories
        (id, key, content, metadata, embedding, created_at, updated_at)
    select ?1, ?2, ?3, ?4, ?5, ?6, ?7
    where not exists (select 1 from agent_memory_tombstones
                      where key = ?2 and deleted_at >= ?7)
    on conflict (key) do update set
        content = excluded.content, metadata = excluded.metadata,
        embedding = excluded.embedding, updated_at = excluded.updated_at
    where agent_memories.updated_at < excluded.updated_at
       or (agent_memories.updated_at = excluded.updated_at
           and agent_memories.content < excluded.content)
    returning id, created_at";

/// Registers a tool as the authoritative side, its version moving past the replaced
/// one and the name's last delete; returns the id, `created_at` and version now stored.
const PUT_TOOL: &str = concat!(
    "insert into agent_tools (id, name, content, metadata, created_at, updated_at)
    values (?1, ?2, ?3, ?4, ?5, ",
    next_version_sql!(
        "?6",
        "coalesce((select updated_at from agent_tools where name = ?2), ''),
         coalesce((select deleted_at from agent_tool_tombstones where name = ?2), '')"
    ),
    ")
    on conflict (name) do update set
        content = excluded.content, metadata = excluded.metadata,
        updated_at = excluded.updated_at
    returning id, created_at, updated_at"
);

/// Registers a tool over older versions only, and not over a delete at or after it.
const APPLY_TOOL: &str =
    "insert into agent_tools (id, name, content, metadata, created_at, updated_at)
    select ?1, ?2, ?3, ?4, ?5, ?6
    where not exists (select 1 from agent_tool_tombstones
                      where name = ?2 and deleted_at >= ?6)
    on conflict (name) do update set
        content = excluded.content, metadata = excluded.metadata,
        updated_at = excluded.updated_at
    where agent_tools.updated_at < excluded.updated_at
       or (agent_tools.updated_at = excluded.updated_at
           and agent_tools.content < excluded.content)
    returning id, created_at";

/// Records a delete as the authoritative side ($1 key, $2 the writer's clock): a
/// tombstone past the value it deletes (and never earlier than one already there);
/// returns its time. The rows go in a second statement of the same transaction.
const DELETE_MEMORY: &str = concat!(
    "insert into agent_memory_tombstones (key, deleted_at) values (?1, ",
    next_version_sql!(
        "?2",
        "coalesce((select updated_at from agent_memories where key = ?1), ''), ''"
    ),
    ")
    on conflict (key) do update set deleted_at = max(deleted_at, excluded.deleted_at)
    returning deleted_at"
);

/// Records a metric; its id makes a second record of it a no-op.
const RECORD_METRIC: &str = "insert into agent_metrics
        (id, name, value, content, metadata, created_at)
    values (?, ?, ?, ?, ?, ?) on conflict (id) do nothing";

/// Logs an execution; its id makes a second log of it a no-op.
const LOG_EXECUTION: &str = "insert into agent_executions
        (id, status, content, metadata, created_at)
    values (?, ?, ?, ?, ?) on conflict (id) do nothing";

impl SqliteBackend {
    /// Copies `memory` over older versions only ([`APPLY_MEMORY`]); returns the memory
    /// as stored (with the id and `created_at` of an existing key), or `None` when a
    /// newer version kept it out.
    async fn apply_memory_row(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        memory.validate()?;
        let pool = self.writer(agent).await?;
        let key = memory.key.as_deref().unwrap_or_default();
        let row = sqlx::query(APPLY_MEMORY)
            .bind(memory.id.to_string())
            .bind(key)
            .bind(json_text(&memory.content))
            .bind(metadata_text(&memory.metadata))
            .bind(memory.embedding.as_deref().map(embedding_bytes))
            .bind(time_text(&memory.created_at))
            .bind(time_text(&memory.updated_at))
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("apply memory {key:?} of agent {agent:?}")))?;
        row.first()
            .map(|row| stored_identity(row, memory, agent))
            .transpose()
    }

    /// Copies `tool` over older versions only ([`APPLY_TOOL`]); returns the tool as
    /// registered, or `None` when a newer version kept it out.
    async fn apply_tool_row(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>> {
        tool.validate()?;
        let pool = self.writer(agent).await?;
        let row = sqlx::query(APPLY_TOOL)
            .bind(tool.id.to_string())
            .bind(&tool.name)
            .bind(json_text(&tool.content))
            .bind(metadata_text(&tool.metadata))
            .bind(time_text(&tool.created_at))
            .bind(time_text(&tool.updated_at))
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("apply tool {:?} of agent {agent:?}", tool.name)))?;
        let what = || format!("tool {:?} of agent {agent:?}", tool.name);
        row.first()
            .map(|row| {
                Ok(Tool {
                    id: parse_id(row.get("id"), what)?,
                    created_at: parse_time(row.get("created_at"), what)?,
                    ..tool.clone()
                })
            })
            .transpose()
    }

    fn fail<'a>(
        &'a self,
        operation: impl FnOnce() -> String + 'a,
    ) -> impl FnOnce(sqlx::Error) -> Error + 'a {
        move |e| Error::Database {
            backend: "sqlite",
            operation: operation(),
            source: Box::new(e),
        }
    }
}

fn memory_from_row(row: &SqliteRow, agent: &AgentId) -> Result<Memory> {
    let key: Option<String> = row.get("key");
    let what = || format!("memory {key:?} of agent {agent:?}");
    Ok(Memory {
        id: parse_id(row.get("id"), what)?,
        content: parse_json(row.get("content"), what)?,
        metadata: parse_metadata(row.get("metadata"), what)?,
        embedding: row
            .get::<Option<Vec<u8>>, _>("embedding")
            .map(|b| bytes_embedding(&b, what))
            .transpose()?,
        created_at: parse_time(row.get("created_at"), what)?,
        updated_at: parse_time(row.get("updated_at"), what)?,
        key,
    })
}

/// `memory` with the id and `created_at` an upsert returned: those of the existing key.
fn stored_identity(row: &SqliteRow, memory: &Memory, agent: &AgentId) -> Result<Memory> {
    let what = || format!("memory {:?} of agent {agent:?}", memory.key);
    Ok(Memory {
        id: parse_id(row.get("id"), what)?,
        created_at: parse_time(row.get("created_at"), what)?,
        ..memory.clone()
    })
}

fn parse_id(text: &str, what: impl FnOnce() -> String) -> Result<uuid::Uuid> {
    text.parse()
        .map_err(|e| Error::invalid("stored id", format!("{}: {e}", what())))
}

fn tool_from_row(row: &SqliteRow, agent: &AgentId) -> Result<Tool> {
    let name: String = row.get("name");
    let what = || format!("tool {name:?} of agent {agent:?}");
    Ok(Tool {
        id: parse_id(row.get("id"), what)?,
        content: parse_json(row.get("content"), what)?,
        metadata: parse_metadata(row.get("metadata"), what)?,
        created_at: parse_time(row.get("created_at"), what)?,
        updated_at: parse_time(row.get("updated_at"), what)?,
        name,
    })
}

fn metric_from_row(row: &SqliteRow, agent: &AgentId) -> Result<Metric> {
    let name: String = row.get("name");
    let what = || format!("metric {name:?} of agent {agent:?}");
    Ok(Metric {
        id: parse_id(row.get("id"), what)?,
        value: row.get("value"),
        content: parse_json(row.get("content"), what)?,
        metadata: parse_metadata(row.get("metadata"), what)?,
        created_at: parse_time(row.get("created_at"), what)?,
        name,
    })
}

fn execution_from_row(row: &SqliteRow, agent: &AgentId) -> Result<Execution> {
    let id: String = row.get("id");
    let what = || format!("execution {id} of agent {agent:?}");
    Ok(Execution {
        id: parse_id(&id, what)?,
        status: row.get("status"),
        content: parse_json(row.get("content"), what)?,
        metadata: parse_metadata(row.get("metadata"), what)?,
        created_at: parse_time(row.get("created_at"), what)?,
    })
}

#[async_trait]
impl MemoryBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        // Embedded: reachable whenever the process runs; a bad file shows on its agent.
        Ok(())
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        match self
            .commit(agent, Change::PutMemory(memory), false, &[])
            .await?
            .outcome
        {
            Outcome::Memory(stored) => Ok(stored),
            other => unreachable!("a store commits a memory, not {other:?}"),
        }
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(None);
        };
        sqlx::query(GET_MEMORY)
            .bind(key)
            .fetch_optional(&pool)
            .await
            .map_err(self.fail(|| format!("retrieve memory {key:?} of agent {agent:?}")))?
            .map(|row| memory_from_row(&row, agent))
            .transpose()
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        query.validate()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        crate::vector::sqlite::search(
            &pool,
            agent,
            query,
            |row| memory_from_row(row, agent),
            |e| self.fail(|| format!("search memories of agent {agent:?}"))(e),
        )
        .await
    }

    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        self.delete_own(agent, Change::DeleteMemory { key, at: now() })
            .await
    }

    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>> {
        self.list(agent, Kind::MemoryKeys, listing, key_of).await
    }

    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        match self
            .commit(agent, Change::PutTool(tool), false, &[])
            .await?
            .outcome
        {
            Outcome::Tool(stored) => Ok(stored),
            other => unreachable!("a registration commits a tool, not {other:?}"),
        }
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(None);
        };
        sqlx::query(
            "select id, name, content, metadata, created_at, updated_at
             from agent_tools where name = ?",
        )
        .bind(name)
        .fetch_optional(&pool)
        .await
        .map_err(self.fail(|| format!("get tool {name:?} of agent {agent:?}")))?
        .map(|row| tool_from_row(&row, agent))
        .transpose()
    }

    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>> {
        self.list(agent, Kind::Tools, listing, tool_from_row).await
    }

    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool> {
        self.delete_own(agent, Change::DeleteTool { name, at: now() })
            .await
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        self.commit(agent, Change::Metric(metric), false, &[])
            .await
            .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        self.list(agent, Kind::Metrics, listing, metric_from_row)
            .await
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        self.commit(agent, Change::Execution(execution), false, &[])
            .await
            .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        self.list(agent, Kind::Executions, listing, execution_from_row)
            .await
    }
}
