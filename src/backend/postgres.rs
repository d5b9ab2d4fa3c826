//! The shared backend: the contract tables in PostgreSQL (with pgvector), one database
//! for many agents.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgvector::Vector;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, Postgres, Row};
use tokio::sync::oneshot;

use super::MemoryBackend;
use super::agent_rows::{AgentRowError, agent_row_id};
use super::codec::parse_json;
use super::listing::{Kind, key_of};
use super::replica::{Change, Outcome};
use crate::error::{Error, Result, redact_url, scrub, url_secrets};
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metadata, Metric, Tool, now};
use crate::schema::{check_schema, ensure_bookkeeping};
use crate::vector::postgres::{IndexCache, IndexError};
use crate::vector::{DistanceMetric, IndexBuild, Neighbor, VectorIndex, VectorQuery};

mod deletes;
mod listing;
mod replica;

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
/// The tables come from the shipped migrations ([`crate::migrate`]) or from the admin
/// application's Prisma schema; this backend never creates them. [`connect`](Self::connect)
/// checks that they are there and names what is missing. An agent's `agents` row is made
/// on its first write.
pub struct PostgresBackend {
    pool: PgPool,
    health: Arc<PoolHealth>,
    stash: Stash,
    target: String,
    secrets: Vec<String>,
    known_agents: Mutex<HashMap<AgentId, String>>,
    indexes: IndexCache,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("target", &self.target)
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
        let health = Arc::new(PoolHealth::default());
        let pool = connect_pool_with(url, &options, health.clone()).await?;
        let backend = PostgresBackend {
            stash: Stash::new(options.max_connections),
            pool,
            health,
            target: redact_url(url),
            secrets: url_secrets(url),
            known_agents: Mutex::new(HashMap::new()),
            indexes: IndexCache::default(),
        };
        check_schema(&backend.pool, &backend.target).await?;
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
        let secrets = url_secrets(url);
        let connect = parse_url(url, &secrets)?;
        let health = Arc::new(PoolHealth::default());
        Ok(PostgresBackend {
            pool: pool_options(&options, health.clone()).connect_lazy_with(connect),
            health,
            stash: Stash::new(options.max_connections),
            target: redact_url(url),
            secrets,
            known_agents: Mutex::new(HashMap::new()),
            indexes: IndexCache::default(),
        })
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

    /// Builds the HNSW index for `index`'s dimension and metric with
    /// `CREATE INDEX CONCURRENTLY`, so agents keep writing meanwhile; searches of that
    /// dimension and metric use it from then on (this process at once, others within
    /// 30 s). A valid index of the same name is kept; an invalid one left by a failed
    /// build is replaced.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a dimension that cannot be indexed (over 4,000) or
    /// bad build settings; the database's error when the build fails (the failed index
    /// is replaced by the next call).
    pub async fn create_vector_index(&self, index: &VectorIndex) -> Result<IndexBuild> {
        crate::vector::postgres::create_index(&self.pool, &self.indexes, index)
            .await
            .map_err(|e| match e {
                IndexError::Input(e) => e,
                IndexError::Database(e) => {
                    self.fail(|| format!("build vector index {}", index.name()))(e)
                }
            })
    }

    /// Whether PostgreSQL compresses memory contents over about 2 KB before storing
    /// them (its default, `STORAGE EXTENDED` on `agent_memories.content`), or stores
    /// them out of line uncompressed (`STORAGE EXTERNAL`).
    ///
    /// # Errors
    /// The database's error.
    pub async fn content_compression(&self) -> Result<bool> {
        let storage: String = sqlx::query_scalar(
            "select attstorage::text from pg_attribute
             where attrelid = 'agent_memories'::regclass and attname = 'content'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.fail(|| "read the storage of agent_memories.content".to_string()))?;
        Ok(storage != "e")
    }

    /// Turns compression of memory contents on (PostgreSQL's default) or off, for
    /// values written from now on; stored values stay as they are.
    ///
    /// Compressing a value of 2-20 KB with PostgreSQL's `pglz` costs server CPU on every
    /// store: where the server's CPUs are what limits throughput, turning it off
    /// raised calls/s by 6-8% in the `ops` benchmark, at the price of storing
    /// large contents at full size (agent text compresses to about half). The setting
    /// is a storage attribute of the column, outside the contract's columns and types
    /// and invisible to the admin application's schema. Like the shipped migrations and
    /// [`create_vector_index`](Self::create_vector_index), this is DDL on a contract
    /// table that runs only when called; the library never calls it on its own. The
    /// change takes a brief
    /// exclusive lock on the table; it gives up after `lock_timeout` (5 s) rather than
    /// queue agents' calls behind a long-running statement.
    ///
    /// # Errors
    /// The database's error, e.g. a lock timeout (nothing changed; try again).
    pub async fn set_content_compression(&self, compress: bool) -> Result<()> {
        let storage = if compress { "extended" } else { "external" };
        let fail = || format!("set the storage of agent_memories.content to {storage}");
        let mut tx = self.pool.begin().await.map_err(self.fail(fail))?;
        sqlx::query("set local lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .map_err(self.fail(fail))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter table agent_memories alter column content set storage {storage}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(self.fail(fail))?;
        tx.commit().await.map_err(self.fail(fail))
    }

    /// Drops the HNSW index for `dimensions` and `metric` without blocking writers;
    /// returns whether there was one.
    ///
    /// # Errors
    /// The database's error.
    pub async fn drop_vector_index(
        &self,
        dimensions: usize,
        metric: DistanceMetric,
    ) -> Result<bool> {
        crate::vector::postgres::drop_index(&self.pool, &self.indexes, dimensions, metric)
            .await
            .map_err(self.fail(|| {
                format!(
                    "drop vector index {}",
                    crate::vector::index_name(dimensions, metric)
                )
            }))
    }

    fn fail<'a>(
        &'a self,
        operation: impl FnOnce() -> String + 'a,
    ) -> impl FnOnce(sqlx::Error) -> Error + 'a {
        move |e| {
            let err = Error::Database {
                backend: "postgres",
                operation: operation(),
                source: scrub(e, &self.secrets),
            };
            if err.is_connection() {
                self.health.lost_connection();
            }
            err
        }
    }

    /// The id of the agent's `agents` row, made when missing (see
    /// [`agent_rows`](super::agent_rows)); remembered for the process, since a row's id
    /// never changes.
    async fn agent_row(&self, agent: &AgentId) -> Result<String> {
        let id = self.find_agent_row(agent, true).await?;
        Ok(id.expect("agent_row_id creates the row when asked to"))
    }

    /// The id of the agent's `agents` row, if it has one (remembered once found): reads
    /// of an agent without one find nothing. Statements get the id itself rather than
    /// a lookup by name, so PostgreSQL plans them for that agent's rows.
    async fn agent_row_if_any(&self, agent: &AgentId) -> Result<Option<String>> {
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

    /// A connection for one call: handed over by the call before, idle in the stash,
    /// or from the pool, whichever comes first. Pass it on with [`Lease::keep`] after a
    /// call that succeeded.
    async fn lease(&self) -> std::result::Result<Lease<'_>, sqlx::Error> {
        let lease = |conn, counted| Lease {
            conn,
            circulation: Circulation {
                stash: &self.stash,
                counted,
            },
        };
        loop {
            match self.stash.take(&self.health) {
                Leased::Ready(conn) => return Ok(lease(conn, true)),
                Leased::Pool => return Ok(lease(self.pool.acquire().await?, false)),
                Leased::Check(mut conn) => {
                    if conn.ping().await.is_ok() {
                        return Ok(lease(conn, true));
                    }
                    // Dropped: the pool closes it.
                    self.stash.forget();
                }
                Leased::Wait(handed) => {
                    let mut waiting = Waiting {
                        handed,
                        stash: &self.stash,
                    };
                    return tokio::select! {
                        biased;
                        conn = &mut waiting.handed => match conn {
                            Ok(conn) => Ok(lease(conn, true)),
                            // The stash was drained (the backend is closing).
                            Err(_) => Ok(lease(self.pool.acquire().await?, false)),
                        },
                        conn = self.pool.acquire() => Ok(lease(conn?, false)),
                    };
                }
            }
        }
    }

    /// Runs `statement` on a leased connection (see [`Stash`]) and passes the
    /// connection on after it succeeds; a failure is reported as `operation`.
    async fn on_lease<T>(
        &self,
        operation: impl Fn() -> String,
        statement: impl AsyncFnOnce(&mut PgConnection) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        let mut conn = self.lease().await.map_err(self.fail(&operation))?;
        let out = statement(conn.as_mut())
            .await
            .map_err(self.fail(&operation))?;
        conn.keep();
        Ok(out)
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, String>> {
        // The set only caches inserts that already happened; a poisoned one is still valid.
        self.known_agents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Opens a pool to `url`, with errors that never show its password.
///
/// One connection is made first, outside the pool, so that a refused connection or a
/// failed login is reported at once with its real cause; a pool would retry until its
/// timeout and report only that it timed out.
pub(crate) async fn connect_pool(url: &str, options: &PostgresOptions) -> Result<PgPool> {
    connect_pool_with(url, options, Arc::new(PoolHealth::default())).await
}

/// [`connect_pool`], with the pool's connections checked as `health` asks.
async fn connect_pool_with(
    url: &str,
    options: &PostgresOptions,
    health: Arc<PoolHealth>,
) -> Result<PgPool> {
    let secrets = url_secrets(url);
    let connect = parse_url(url, &secrets)?;
    let failed = |source| Error::Connect {
        target: redact_url(url),
        source,
    };
    let probe = tokio::time::timeout(
        options.connect_timeout,
        PgConnection::connect_with(&connect),
    )
    .await
    .map_err(|_| {
        failed(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {:?}", options.connect_timeout),
        )))
    })?
    .map_err(|e| failed(scrub(e, &secrets)))?;
    // The probe only proves the server answers; closing it cleanly is a courtesy.
    let _ = probe.close().await;
    Ok(pool_options(options, health).connect_lazy_with(connect))
}

/// How long a pooled connection may have sat idle before the pool checks, with a round
/// trip, that the server still holds it up before handing it out.
///
/// sqlx checks every connection on every acquire by default, which costs each call a
/// second round trip: it doubled the time of a retrieve. A connection used within the
/// last second is handed out as it is. If the server dropped it meanwhile (a restart,
/// `pg_terminate_backend`), the call on it fails with a connection error
/// ([`Error::is_connection`]), and from then on every connection that was already idle
/// when that happened is checked before it is handed out, so the next call gets a live
/// one.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// When the backend last saw a call fail for a lost connection: the other connections
/// idle at that moment may have been dropped too (a restart drops them all).
#[derive(Debug)]
struct PoolHealth {
    start: Instant,
    /// Microseconds from `start` to the last lost connection; 0 when there was none.
    lost_at_us: AtomicU64,
}

impl Default for PoolHealth {
    fn default() -> Self {
        PoolHealth {
            start: Instant::now(),
            lost_at_us: AtomicU64::new(0),
        }
    }
}

impl PoolHealth {
    /// Records that a call just failed for a lost connection.
    fn lost_connection(&self) {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.lost_at_us.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a connection idle for `idle_for` must be checked before use: idle for
    /// over [`CHECK_IDLE_AFTER`], or idle since before the last lost connection.
    fn must_check(&self, idle_for: Duration) -> bool {
        if idle_for > CHECK_IDLE_AFTER {
            return true;
        }
        match self.lost_at_us.load(Ordering::Relaxed) {
            0 => false,
            lost => self.start.elapsed().saturating_sub(idle_for) <= Duration::from_micros(lost),
        }
    }
}

/// The backend's pool settings: size and acquire timeout from `options`, and a check of
/// only the connections `health` says may be gone.
fn pool_options(options: &PostgresOptions, health: Arc<PoolHealth>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let check = health.must_check(meta.idle_for);
            Box::pin(async move {
                if check {
                    // An error closes this connection; the pool tries another or a new one.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Connections passed from one call to the next without going back to the pool.
///
/// sqlx's pool pings every connection as it comes back, a round trip per call that
/// cannot be turned off and that costs the client and the server about as much CPU as a
/// short statement. A call that succeeded hands its connection straight to the call
/// that has waited longest, or keeps it here for the next one, skipping that round trip.
/// All but one of the pool's connections may circulate this way; the last always goes
/// back to the pool after its call, so statements that use the pool directly (searches,
/// index builds, callers of [`PostgresBackend::pool`]) keep getting turns in the pool's
/// own order.
#[derive(Debug)]
struct Stash {
    state: Mutex<StashState>,
    cap: usize,
}

#[derive(Debug, Default)]
struct StashState {
    /// Connections no call holds, most recently used last, with when they came back.
    idle: Vec<(PoolConnection<Postgres>, Instant)>,
    /// Calls waiting for a connection, longest first.
    waiters: VecDeque<oneshot::Sender<PoolConnection<Postgres>>>,
    /// Connections in circulation: idle here, or held by a call that took one from here.
    circulating: usize,
    /// Set by [`Stash::drain`] when the backend closes: from then on every connection
    /// goes back to the pool, so that closing the pool does not wait for one kept here.
    closed: bool,
}

/// Where a leased connection came from.
enum Leased {
    /// A connection that had a use within [`CHECK_IDLE_AFTER`] (or passed a check).
    Ready(PoolConnection<Postgres>),
    /// A stashed connection idle too long, or idle since a lost connection: check it.
    Check(PoolConnection<Postgres>),
    /// None to be had: wait for a hand-over or for the pool.
    Wait(oneshot::Receiver<PoolConnection<Postgres>>),
    /// The backend is closing: ask the pool.
    Pool,
}

impl Stash {
    fn new(max_connections: u32) -> Self {
        Stash {
            state: Mutex::new(StashState::default()),
            cap: usize::try_from(max_connections.saturating_sub(1)).unwrap_or(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StashState> {
        // Every change under this lock leaves the state whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection, or a place in the queue of waiting calls.
    fn take(&self, health: &PoolHealth) -> Leased {
        let mut state = self.lock();
        if state.closed {
            return Leased::Pool;
        }
        state.waiters.retain(|waiter| !waiter.is_closed());
        if state.waiters.is_empty()
            && let Some((conn, since)) = state.idle.pop()
        {
            return match health.must_check(since.elapsed()) {
                true => Leased::Check(conn),
                false => Leased::Ready(conn),
            };
        }
        let (sender, receiver) = oneshot::channel();
        state.waiters.push_back(sender);
        Leased::Wait(receiver)
    }

    /// Takes `conn`, after a call that succeeded, into circulation (when `circulating`,
    /// it already is): hands it to the longest waiting call, or keeps it idle. A
    /// connection from the pool beyond the stash's share goes back to the pool.
    fn put(&self, mut conn: PoolConnection<Postgres>, circulating: bool) {
        let mut state = self.lock();
        if state.closed {
            return; // dropped: back to the pool
        }
        if !circulating {
            if state.circulating >= self.cap {
                drop(state);
                return; // dropped: back to the pool
            }
            state.circulating += 1;
        }
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                // That call got one from the pool meanwhile, or gave up.
                Err(back) => conn = back,
            }
        }
        state.idle.push((conn, Instant::now()));
    }

    /// A circulating connection leaves circulation (its call failed, or its check).
    fn forget(&self) {
        let mut state = self.lock();
        state.circulating = state.circulating.saturating_sub(1);
    }

    /// Returns every idle connection to the pool, lets the waiting calls go to it, and
    /// sends every connection there from now on.
    fn drain(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.circulating = state.circulating.saturating_sub(state.idle.len());
        state.idle.clear();
        state.waiters.clear();
    }
}

/// A call's place in the stash's queue. Dropped (the call got a connection from the
/// pool, or was cancelled), it passes on a connection handed over meanwhile.
struct Waiting<'a> {
    handed: oneshot::Receiver<PoolConnection<Postgres>>,
    stash: &'a Stash,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.handed.close();
        if let Ok(conn) = self.handed.try_recv() {
            self.stash.put(conn, true);
        }
    }
}

/// A connection taken for one call. Dropped, it goes back to the pool (which checks
/// it); [`keep`](Lease::keep) passes it on to the next call instead.
struct Lease<'a> {
    conn: PoolConnection<Postgres>,
    circulation: Circulation<'a>,
}

/// Takes a dropped lease's connection out of the stash's circulation.
struct Circulation<'a> {
    stash: &'a Stash,
    /// Whether the connection counts in the stash's circulation.
    counted: bool,
}

impl Drop for Circulation<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.stash.forget();
        }
    }
}

impl Lease<'_> {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Passes the connection on: only after a call that succeeded, so a connection in
    /// doubt always goes back through the pool's check.
    fn keep(self) {
        let Lease {
            conn,
            mut circulation,
        } = self;
        let counted = std::mem::replace(&mut circulation.counted, false);
        circulation.stash.put(conn, counted);
    }
}

/// Reads one memory of an agent by key.
pub(crate) const GET_MEMORY: &str =
    "select id, key, content, metadata, embedding, created_at, updated_at
     from agent_memories where agent_id = $1 and key = $2";

// The authoritative side's writes (see `replica::Replica::commit`): the change, its
// journal record ($10, none when null) and the removal of replayed records ($11) are one
// statement, so one transaction. A key's new version is past the one it replaces and
// past its last delete. $9 is the agent's name, which the bookkeeping is keyed by.

/// The upsert of [`PUT_MEMORY`], which also runs alone when there is no journal record
/// to write and none to clear.
macro_rules! put_memory_upsert {
    () => {
        "insert into agent_memories
            (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, $7, greatest($8,
            (select deleted_at + interval '1 microsecond' from agent_memory.memory_tombstones
             where agent_id = $9 and key = $3)))
        on conflict (agent_id, key) do update set
            content = excluded.content, metadata = excluded.metadata,
            embedding = excluded.embedding,
            updated_at = greatest(excluded.updated_at,
                                  agent_memories.updated_at + interval '1 microsecond')
        returning id, created_at, updated_at"
    };
}

/// Stores a memory: $1 id, $2 the agent's row id, $3 key, $4 content, $5 metadata, $6
/// embedding, $7 created_at, $8 the writer's clock; returns the id, `created_at` and
/// version now stored, and the journal record's sequence number.
pub(crate) const PUT_MEMORY: &str = concat!(
    "with stored as (",
    put_memory_upsert!(),
    "),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 from stored where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select id, created_at, updated_at, (select seq from owed) as seq from stored"
);

/// [`PUT_MEMORY`] without a journal record or records to clear ($10 and $11 unused).
pub(crate) const PUT_MEMORY_PLAIN: &str = concat!(put_memory_upsert!(), ", null::bigint as seq");

/// Registers a tool ($1 id, $2 row id, $3 name, $4 content, $5 metadata, $6 created_at,
/// $7 the writer's clock); its version is past the one it replaces and the name's last
/// delete.
const PUT_TOOL: &str = "with stored as (
        insert into agent_tools
            (id, agent_id, name, content, metadata, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, greatest($7,
            (select deleted_at + interval '1 microsecond' from agent_memory.tool_tombstones
             where agent_id = $9 and name = $3)))
        on conflict (agent_id, name) do update set
            content = excluded.content, metadata = excluded.metadata,
            updated_at = greatest(excluded.updated_at,
                                  agent_tools.updated_at + interval '1 microsecond')
        returning id, created_at, updated_at),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 from stored where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select id, created_at, updated_at, (select seq from owed) as seq from stored";

/// Records a metric; its id makes a second record of it a no-op.
const RECORD_METRIC: &str = "with recorded as (
        insert into agent_metrics (id, agent_id, name, value, content, metadata, created_at)
        values ($1, $2, $3, $4, $5, $6, $7) on conflict (id) do nothing),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select (select seq from owed) as seq";

/// Logs an execution; its id makes a second log of it a no-op.
const LOG_EXECUTION: &str = "with logged as (
        insert into agent_executions (id, agent_id, status, content, metadata, created_at)
        values ($1, $2, $3, $4, $5, $6) on conflict (id) do nothing),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select (select seq from owed) as seq";

fn parse_url(url: &str, secrets: &[String]) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| {
        Error::config(format!(
            "{} is not a valid PostgreSQL URL: {}",
            redact_url(url),
            scrub(e, secrets)
        ))
    })
}

fn metadata_of(row: &PgRow) -> Metadata {
    row.get::<Json<Metadata>, _>("metadata").0
}

fn memory_from_row(row: &PgRow, agent: &AgentId) -> Result<Memory> {
    let key: Option<String> = row.get("key");
    Ok(Memory {
        id: row.get("id"),
        content: parse_json(row.get("content"), || {
            format!("memory {key:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        embedding: row
            .get::<Option<Vector>, _>("embedding")
            .map(|v| v.to_vec()),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        key,
    })
}

fn tool_from_row(row: &PgRow, agent: &AgentId) -> Result<Tool> {
    let name: String = row.get("name");
    Ok(Tool {
        id: row.get("id"),
        content: parse_json(row.get("content"), || {
            format!("tool {name:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        name,
    })
}

fn metric_from_row(row: &PgRow, agent: &AgentId) -> Result<Metric> {
    let name: String = row.get("name");
    Ok(Metric {
        id: row.get("id"),
        value: row.get("value"),
        content: parse_json(row.get("content"), || {
            format!("metric {name:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
        name,
    })
}

fn execution_from_row(row: &PgRow, agent: &AgentId) -> Result<Execution> {
    let id: uuid::Uuid = row.get("id");
    Ok(Execution {
        id,
        status: row.get("status"),
        content: parse_json(row.get("content"), || {
            format!("execution {id} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
    })
}

#[async_trait]
impl MemoryBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map_err(self.fail(|| "ping".to_string()))?;
        Ok(())
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        match self
            .commit_change(agent, Change::PutMemory(memory), None, &[])
            .await?
            .outcome
        {
            Outcome::Memory(stored) => Ok(stored),
            other => unreachable!("a store commits a memory, not {other:?}"),
        }
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(None);
        };
        let fail = || format!("retrieve memory {key:?} of agent {agent:?}");
        let row = self
            .on_lease(fail, async |c| {
                sqlx::query(GET_MEMORY)
                    .bind(&row_id)
                    .bind(key)
                    .fetch_optional(c)
                    .await
            })
            .await?;
        row.map(|row| memory_from_row(&row, agent)).transpose()
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        query.validate()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(Vec::new());
        };
        crate::vector::postgres::search(
            &self.pool,
            &self.indexes,
            agent,
            &row_id,
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
            .commit_change(agent, Change::PutTool(tool), None, &[])
            .await?
            .outcome
        {
            Outcome::Tool(stored) => Ok(stored),
            other => unreachable!("a registration commits a tool, not {other:?}"),
        }
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(None);
        };
        self.on_lease(
            || format!("get tool {name:?} of agent {agent:?}"),
            async |c| {
                sqlx::query(
                    "select id, name, content, metadata, created_at, updated_at
                     from agent_tools where agent_id = $1 and name = $2",
                )
                .bind(&row_id)
                .bind(name)
                .fetch_optional(c)
                .await
            },
        )
        .await?
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
        self.commit_change(agent, Change::Metric(metric), None, &[])
            .await
            .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        self.list(agent, Kind::Metrics, listing, metric_from_row)
            .await
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        self.commit_change(agent, Change::Execution(execution), None, &[])
            .await
            .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        self.list(agent, Kind::Executions, listing, execution_from_row)
            .await
    }
}
