//! Suite `ops`: the library's everyday calls under an agent workload, on both backends,
//! against the same statements issued directly through sqlx.
//!
//! 1. Mixed workload, per number of concurrent agents (`--agents`, default 1, 4, 16 and
//!    64): each agent has its own memory (SQLite: its own file under the agents folder,
//!    as the library keeps it; PostgreSQL: the shared database, rows told apart by
//!    `agent_id`), is given `--preload` keys first (not counted), then makes its share of
//!    `--calls` calls one after another: 50% retrieve of a stored key, 20% store of a new
//!    key, 20% overwrite of a stored key, 10% list keys. Values are generated JSON of
//!    200 B to 20 KB (log-uniform, so most are small), built before the clock starts.
//!    Reported: calls/s of wall time, p50/p99 per kind of call and over all calls, and
//!    CPU time per call of this process and of the PostgreSQL server (when it runs on
//!    this machine); each the median over `--reps` repetitions on fresh agents.
//! 2. Floor: one task, a single store (new key) and a single retrieve of values of about
//!    2 KB, by the library and by the very statements the library issues, bound and
//!    decoded by hand through sqlx on a pool with the library's settings. The two
//!    alternate in blocks so drift affects both alike; the ratio of the p50s is the
//!    library's own cost.
//! 3. Scale: one agent holding `--scale-small` keys, then `--scale-keys` keys (loaded in
//!    bulk, inside the database); p50/p99 of retrieves of random keys at each size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use memshift::{
    AgentId, Listing, Memory, MemoryBackend, PostgresBackend, PostgresOptions, SqliteBackend,
    SqliteOptions,
};
use pgvector::Vector;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::chart::{Chart, Panel, Series};
use crate::harness::{
    Env, Latency, Result, Rng, Samples, concurrently, median, memory_value, ms, settle, table,
    timed,
};

/// Options of the `ops` suite.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Args {
    /// Numbers of concurrent agents to run the mixed workload at, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 4, 16, 64])]
    pub agents: Vec<usize>,
    /// Calls of the mixed workload per backend and number of agents, shared among them.
    #[arg(long, default_value_t = 8000)]
    pub calls: usize,
    /// Keys each agent stores before the mixed workload (not counted).
    #[arg(long, default_value_t = 50)]
    pub preload: usize,
    /// Smallest value, in bytes of JSON text.
    #[arg(long, default_value_t = 200)]
    pub min_bytes: usize,
    /// Largest value, in bytes of JSON text.
    #[arg(long, default_value_t = 20_000)]
    pub max_bytes: usize,
    /// Stores, and as many retrieves, per side (library, sqlx) in the floor comparison.
    #[arg(long, default_value_t = 5000)]
    pub floor_calls: usize,
    /// Keys of the agent in the first scale measurement.
    #[arg(long, default_value_t = 1000)]
    pub scale_small: usize,
    /// Keys of the agent in the second scale measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub scale_keys: usize,
    /// Retrieves timed at each scale.
    #[arg(long, default_value_t = 10_000)]
    pub scale_reads: usize,
    /// Repetitions of the mixed workload, each on fresh agents, the backends' order
    /// alternating; the median of each figure is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Connections of the PostgreSQL backend's pool [default: the library's default].
    #[arg(long)]
    pub pg_connections: Option<u32>,
    /// Store PostgreSQL memory contents uncompressed
    /// (`PostgresBackend::set_content_compression(false)`) [default: compressed, as
    /// PostgreSQL does].
    #[arg(long)]
    pub no_content_compression: bool,
}

/// The backends measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Sqlite, Kind::Postgres];

    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }
}

/// The kinds of call in the mixed workload, with their share of the calls in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Retrieve,
    Store,
    Overwrite,
    ListKeys,
}

impl Op {
    const ALL: [(Op, usize); 4] = [
        (Op::Retrieve, 50),
        (Op::Store, 20),
        (Op::Overwrite, 20),
        (Op::ListKeys, 10),
    ];

    fn index(self) -> usize {
        Op::ALL.iter().position(|(op, _)| *op == self).unwrap_or(0)
    }

    fn pick(rng: &mut Rng) -> Op {
        let mut roll = rng.below(100);
        for (op, share) in Op::ALL {
            if roll < share {
                return op;
            }
            roll -= share;
        }
        Op::Retrieve
    }
}

/// A value size in `min..=max`, log-uniform: as many values of 200-400 B as of 10-20 KB.
fn value_size(rng: &mut Rng, min: usize, max: usize) -> usize {
    let (lo, hi) = ((min.max(1)) as f64, (max.max(min).max(1)) as f64);
    let unit = rng.below(1 << 20) as f64 / f64::from(1 << 20);
    (lo * (hi / lo).powf(unit)).round() as usize
}

/// One agent of the mixed workload, with its own keys, generator and timings.
struct OpsAgent {
    backend: Arc<dyn MemoryBackend>,
    agent: AgentId,
    keys: Vec<String>,
    rng: Rng,
    min_bytes: usize,
    max_bytes: usize,
    samples: Vec<Samples>,
}

impl OpsAgent {
    fn new(backend: Arc<dyn MemoryBackend>, agent: &str, args: &Args, seed: u64) -> Result<Self> {
        Ok(OpsAgent {
            backend,
            agent: AgentId::new(agent)?,
            keys: Vec::new(),
            rng: Rng::new(seed),
            min_bytes: args.min_bytes,
            max_bytes: args.max_bytes,
            samples: Op::ALL.iter().map(|_| Samples::default()).collect(),
        })
    }

    fn value(&mut self) -> Value {
        let bytes = value_size(&mut self.rng, self.min_bytes, self.max_bytes);
        memory_value(bytes, &mut self.rng)
    }

    /// Stores a new key; returns how long the call took.
    async fn store_new(&mut self) -> Result<Duration> {
        let key = format!("conversation/{:06}", self.keys.len());
        let memory = Memory::new(key.clone(), self.value());
        let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
        stored?;
        self.keys.push(key);
        Ok(took)
    }

    /// One call of the workload, timed and recorded under its kind.
    async fn call(&mut self) -> Result<()> {
        let op = match Op::pick(&mut self.rng) {
            Op::Store => Op::Store,
            _ if self.keys.is_empty() => Op::Store,
            op => op,
        };
        let took = match op {
            Op::Store => self.store_new().await?,
            Op::Overwrite => {
                let key = self.keys[self.rng.below(self.keys.len())].clone();
                let memory = Memory::new(key, self.value());
                let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
                stored?;
                took
            }
            Op::Retrieve => {
                let key = &self.keys[self.rng.below(self.keys.len())];
                let (found, took) = timed(self.backend.get_memory(&self.agent, key)).await;
                if found?.is_none() {
                    return Err(format!("agent {} lost key {key:?}", self.agent).into());
                }
                took
            }
            Op::ListKeys => {
                let (listed, took) =
                    timed(self.backend.memory_keys(&self.agent, &Listing::default())).await;
                let listed = listed?;
                if listed.len() != self.keys.len() {
                    return Err(format!(
                        "agent {} lists {} keys, stored {}",
                        self.agent,
                        listed.len(),
                        self.keys.len()
                    )
                    .into());
                }
                took
            }
        };
        self.samples[op.index()].push(took);
        Ok(())
    }
}

/// The mixed workload of one backend at one number of agents.
#[derive(Debug, Clone, Serialize)]
struct Step {
    backend: Kind,
    agents: usize,
    calls: usize,
    seconds: f64,
    calls_per_s: f64,
    /// CPU time of this process per call, in microseconds.
    client_cpu_us_per_call: Option<f64>,
    /// CPU time of every `postgres` process on this machine per call (the server's
    /// share; 0 for sqlite), in microseconds; `None` when the server is elsewhere.
    server_cpu_us_per_call: Option<f64>,
    /// Over all calls.
    all: Latency,
    store: Latency,
    overwrite: Latency,
    retrieve: Latency,
    list_keys: Latency,
}

/// Runs the mixed workload of `agents` fresh agents on `backend`; `server` is the
/// postmaster whose CPU time counts as the server's.
async fn mixed(
    backend: Arc<dyn MemoryBackend>,
    kind: Kind,
    agents: usize,
    rep: usize,
    args: &Args,
    server: Option<u32>,
) -> Result<Step> {
    let per_agent = (args.calls / agents).max(10);
    let loads = (0..agents)
        .map(|a| {
            OpsAgent::new(
                backend.clone(),
                &format!("ops_{}_{agents}_r{rep}_{a}", kind.name()),
                args,
                (rep * 1_000_000 + agents * 1000 + a) as u64,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let preload = args.preload;
    let (loads, _) = concurrently(loads, move |mut load| async move {
        for _ in 0..preload {
            load.store_new().await?;
        }
        Ok(load)
    })
    .await?;
    settle().await;
    let cpu_before = (process_cpu(std::process::id()), server_cpu(server));
    let (loads, wall) = concurrently(loads, move |mut load| async move {
        for _ in 0..per_agent {
            load.call().await?;
        }
        Ok(load)
    })
    .await?;
    let cpu_after = (process_cpu(std::process::id()), server_cpu(server));
    let mut by_op: Vec<Samples> = Op::ALL.iter().map(|_| Samples::default()).collect();
    let mut all = Samples::default();
    for load in loads {
        for (i, samples) in load.samples.into_iter().enumerate() {
            all.extend(&samples);
            by_op[i].extend(&samples);
        }
    }
    let mut by_op = by_op.into_iter().map(Samples::summary);
    let mut next = || by_op.next().unwrap_or_default();
    let (retrieve, store, overwrite, list_keys) = (next(), next(), next(), next());
    let calls = per_agent * agents;
    let per_call = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) / calls as f64 * 1e6).filter(|us| *us >= 0.0)
    };
    Ok(Step {
        backend: kind,
        agents,
        calls,
        seconds: wall.as_secs_f64(),
        calls_per_s: calls as f64 / wall.as_secs_f64(),
        client_cpu_us_per_call: per_call(cpu_before.0, cpu_after.0),
        server_cpu_us_per_call: per_call(cpu_before.1, cpu_after.1),
        all: all.summary(),
        store,
        overwrite,
        retrieve,
        list_keys,
    })
}

impl Step {
    /// Each figure's median over `reps` (all of one backend and number of agents).
    fn median(reps: &[&Step]) -> Step {
        let m = |f: &dyn Fn(&Step) -> f64| median(reps.iter().map(|s| f(s)).collect());
        let opt = |f: &dyn Fn(&Step) -> Option<f64>| {
            let values: Vec<f64> = reps.iter().filter_map(|s| f(s)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let latency = |f: &dyn Fn(&Step) -> Latency| Latency {
            count: reps.iter().map(|s| f(s).count).sum(),
            p50_us: m(&|s| f(s).p50_us),
            p99_us: m(&|s| f(s).p99_us),
            mean_us: m(&|s| f(s).mean_us),
        };
        Step {
            backend: reps.first().map_or(Kind::Sqlite, |s| s.backend),
            agents: reps.first().map_or(0, |s| s.agents),
            calls: reps.iter().map(|s| s.calls).sum(),
            seconds: reps.iter().map(|s| s.seconds).sum(),
            calls_per_s: m(&|s| s.calls_per_s),
            client_cpu_us_per_call: opt(&|s| s.client_cpu_us_per_call),
            server_cpu_us_per_call: opt(&|s| s.server_cpu_us_per_call),
            all: latency(&|s| s.all),
            store: latency(&|s| s.store),
            overwrite: latency(&|s| s.overwrite),
            retrieve: latency(&|s| s.retrieve),
            list_keys: latency(&|s| s.list_keys),
        }
    }
}

/// Clock ticks per second of /proc/<pid>/stat times (`CLK_TCK`, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// Fields of /proc/<pid>/stat after the command name (which may hold spaces).
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// CPU seconds (user and system) process `pid` has used so far.
fn process_cpu(pid: u32) -> Option<f64> {
    let fields = proc_stat(pid)?;
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / CLOCK_TICKS)
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    proc_stat(pid)?.get(1)?.parse().ok()
}

/// CPU seconds used so far by the PostgreSQL server whose postmaster is `postmaster`
/// and all its processes (backends, WAL writer, checkpointer, ...); `None` when the
/// server is not on this machine.
fn server_cpu(postmaster: Option<u32>) -> Option<f64> {
    let postmaster = postmaster?;
    let mut total = process_cpu(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(postmaster) {
            total += process_cpu(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The postmaster of the server behind `pool`, when it runs on this machine.
async fn postmaster_of(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let postmaster = parent_of(u32::try_from(backend).ok()?)?;
    // Only a server on this machine has that backend as its child here.
    (std::fs::read_to_string(format!("/proc/{postmaster}/comm"))
        .ok()?
        .trim_end()
        == "postgres")
        .then_some(postmaster)
}

/// A hand-written client of the same tables: the library's statements, bound and
/// decoded directly through sqlx.
enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

// The statements the backends issue, so that the floor times exactly those.
use memshift::testing::statements::{
    POSTGRES_GET_MEMORY as POSTGRES_GET, POSTGRES_PUT_MEMORY as POSTGRES_PUT,
    SQLITE_GET_MEMORY as SQLITE_GET, SQLITE_PUT_MEMORY as SQLITE_PUT,
};

/// Times as the SQLite backend writes them.
fn time_text(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Raw {
    /// Opens the agent's SQLite file as the library does (WAL, `synchronous = FULL`, the
    /// default busy timeout and pool size); the library has created it already.
    async fn sqlite(file: &std::path::Path) -> Result<Raw> {
        let defaults = memshift::SqliteOptions::default();
        let connect = SqliteConnectOptions::new()
            .filename(file)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(defaults.busy_timeout)
            .pragma("mmap_size", defaults.mmap_size.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(defaults.max_connections)
            .test_before_acquire(false)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            .connect_with(connect)
            .await?;
        Ok(Raw::Sqlite(pool))
    }

    /// Stores `memory` under the agent; returns how long it took.
    async fn store(&self, agent: &AgentId, memory: &Memory) -> Result<Duration> {
        let key = memory.key.as_deref().unwrap_or_default();
        let started = Instant::now();
        let row = match self {
            Raw::Sqlite(pool) => sqlx::query(SQLITE_PUT)
                .bind(memory.id.to_string())
                .bind(key)
                .bind(memory.content.to_string())
                .bind(serde_json::to_string(&memory.metadata)?)
                .bind(None::<Vec<u8>>)
                .bind(time_text(&memory.created_at))
                .bind(time_text(&memory.updated_at))
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<String, _>("id").map(|_| ())),
            Raw::Postgres(pool) => sqlx::query(POSTGRES_PUT)
                .bind(memory.id)
                .bind(agent.as_str())
                .bind(key)
                .bind(memory.content.to_string())
                .bind(Json(&memory.metadata))
                .bind(None::<Vector>)
                .bind(memory.created_at)
                .bind(memory.updated_at)
                // The agent's name (its row's id here), no journal record, none to clear.
                .bind(agent.as_str())
                .bind(None::<String>)
                .bind(Vec::<i64>::new())
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<uuid::Uuid, _>("id").map(|_| ())),
        };
        row.ok_or("the upsert returned no row")??;
        Ok(started.elapsed())
    }

    /// Retrieves `key` of the agent and parses its value; returns how long it took.
    async fn retrieve(&self, agent: &AgentId, key: &str) -> Result<Duration> {
        let started = Instant::now();
        let content: Value = match self {
            Raw::Sqlite(pool) => {
                let row = sqlx::query(SQLITE_GET)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
                    .ok_or("key not found")?;
                let _: (String, Option<Vec<u8>>, String, String) = (
                    row.try_get("metadata")?,
                    row.try_get("embedding")?,
                    row.try_get("created_at")?,
                    row.try_get("updated_at")?,
                );
                serde_json::from_str(row.try_get("content")?)?
            }
            Raw::Postgres(pool) => {
                let row = sqlx::query(POSTGRES_GET)
                    .bind(agent.as_str())
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
                    .ok_or("key not found")?;
                let _: (uuid::Uuid, Json<Value>, Option<Vector>, DateTime<Utc>) = (
                    row.try_get("id")?,
                    row.try_get("metadata")?,
                    row.try_get("embedding")?,
                    row.try_get("updated_at")?,
                );
                serde_json::from_str(row.try_get("content")?)?
            }
        };
        if content.is_null() {
            return Err(format!("{key:?} holds null").into());
        }
        Ok(started.elapsed())
    }
}

/// Library and sqlx latencies of a single store and a single retrieve on one backend.
#[derive(Debug, Serialize)]
struct Floor {
    backend: Kind,
    library_store: Latency,
    sqlx_store: Latency,
    library_retrieve: Latency,
    sqlx_retrieve: Latency,
}

impl Floor {
    fn store_ratio(&self) -> f64 {
        self.library_store.p50_us / self.sqlx_store.p50_us
    }

    fn retrieve_ratio(&self) -> f64 {
        self.library_retrieve.p50_us / self.sqlx_retrieve.p50_us
    }
}

/// Blocks the floor's calls are cut into; the library and sqlx take turns going first.
const FLOOR_BLOCKS: usize = 10;
/// Approximate size of the floor's values.
const FLOOR_BYTES: usize = 2000;

async fn floor(
    backend: &dyn MemoryBackend,
    raw: &Raw,
    kind: Kind,
    agent: &AgentId,
    args: &Args,
) -> Result<Floor> {
    let mut rng = Rng::new(7);
    let per_block = (args.floor_calls / FLOOR_BLOCKS).max(1);
    let (mut lib_store, mut raw_store) = (Samples::default(), Samples::default());
    let (mut lib_get, mut raw_get) = (Samples::default(), Samples::default());
    let mut keys: Vec<String> = Vec::new();
    // Warm-up, not counted: statements prepared on every pooled connection, pages cached.
    for i in 0..per_block.min(50) {
        let memory = Memory::new(format!("warm/{i}"), memory_value(FLOOR_BYTES, &mut rng));
        backend.put_memory(agent, &memory).await?;
        let raw_memory = Memory::new(format!("warm/raw/{i}"), memory_value(FLOOR_BYTES, &mut rng));
        raw.store(agent, &raw_memory).await?;
        backend.get_memory(agent, &format!("warm/{i}")).await?;
        raw.retrieve(agent, &format!("warm/raw/{i}")).await?;
    }
    for block in 0..FLOOR_BLOCKS {
        for turn in 0..2 {
            let library = (block + turn) % 2 == 0;
            for _ in 0..per_block {
                let key = format!("floor/{:06}", keys.len());
                let memory = Memory::new(key.clone(), memory_value(FLOOR_BYTES, &mut rng));
                if library {
                    let (stored, took) = timed(backend.put_memory(agent, &memory)).await;
                    stored?;
                    lib_store.push(took);
                } else {
                    raw_store.push(raw.store(agent, &memory).await?);
                }
                keys.push(key);
            }
        }
        for turn in 0..2 {
            let library = (block + turn) % 2 == 0;
            for _ in 0..per_block {
                let key = &keys[rng.below(keys.len())];
                if library {
                    let (found, took) = timed(backend.get_memory(agent, key)).await;
                    found?.ok_or_else(|| format!("library lost {key:?}"))?;
                    lib_get.push(took);
                } else {
                    raw_get.push(raw.retrieve(agent, key).await?);
                }
            }
        }
    }
    Ok(Floor {
        backend: kind,
        library_store: lib_store.summary(),
        sqlx_store: raw_store.summary(),
        library_retrieve: lib_get.summary(),
        sqlx_retrieve: raw_get.summary(),
    })
}

/// Retrieve latency of one agent at two sizes.
#[derive(Debug, Serialize)]
struct Scale {
    backend: Kind,
    /// How the reads were made, when not with the backend's defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    small_keys: usize,
    /// Retrieves of random keys of all `small_keys`.
    small: Latency,
    large_keys: usize,
    /// Retrieves of random keys of all `large_keys`.
    large: Latency,
    /// Retrieves at `large_keys`, of [`HOT_KEYS`] keys spread over them: a B-tree as
    /// deep as in `large`, with pages that stay in SQLite's page cache.
    large_hot: Latency,
    /// Seconds the bulk load to the large size took.
    load_seconds: f64,
}

impl Scale {
    /// The backend's name, with the variant.
    fn label(&self) -> String {
        match self.variant {
            Some(variant) => format!("{}, {variant}", self.backend.name()),
            None => self.backend.name().to_string(),
        }
    }

    fn ratio(&self) -> f64 {
        self.large.p50_us / self.small.p50_us
    }
}

/// Adds keys `scale/<from>` up to `scale/<to - 1>` to the agent in one statement, copies
/// of its key `seed` (so every column is in the backend's own format).
async fn bulk_keys(raw: &Raw, agent: &AgentId, from: usize, to: usize) -> Result<()> {
    let (from, to) = (i64::try_from(from)?, i64::try_from(to)? - 1);
    match raw {
        Raw::Sqlite(pool) => {
            sqlx::query(
                "insert into agent_memories
                     (id, key, content, metadata, embedding, created_at, updated_at)
                 with recursive g(i) as (select ?1 union all select i + 1 from g where i < ?2)
                 select printf('00000000-0000-4000-8000-%012d', g.i), printf('scale/%08d', g.i),
                        m.content, m.metadata, null, m.created_at, m.updated_at
                 from g, agent_memories m where m.key = 'seed'",
            )
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?;
        }
        Raw::Postgres(pool) => {
            sqlx::query(
                "insert into agent_memories
                     (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
                 select gen_random_uuid(), m.agent_id, 'scale/' || lpad(g::text, 8, '0'),
                        m.content, m.metadata, null, m.created_at, m.updated_at
                 from generate_series($2::bigint, $3::bigint) g, agent_memories m
                 where m.agent_id = $1 and m.key = 'seed'",
            )
            .bind(agent.as_str())
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?;
            sqlx::query("analyze agent_memories").execute(pool).await?;
        }
    }
    Ok(())
}

/// Times `reads` retrieves of random keys among `sample` keys spread evenly over the
/// agent's first `keys`, after as many uncounted ones.
async fn scale_reads(
    backend: &dyn MemoryBackend,
    agent: &AgentId,
    keys: usize,
    sample: usize,
    reads: usize,
) -> Result<Latency> {
    let mut rng = Rng::new(keys as u64);
    let mut samples = Samples::default();
    let stride = (keys / sample.max(1)).max(1);
    for i in 0..reads * 2 {
        let key = format!("scale/{:08}", rng.below(keys.min(sample)) * stride);
        let (found, took) = timed(backend.get_memory(agent, &key)).await;
        found?.ok_or_else(|| format!("{key:?} missing"))?;
        if i >= reads {
            samples.push(took);
        }
    }
    Ok(samples.summary())
}

/// Retrieve latency of one agent at `--scale-small` and at `--scale-keys` keys, read
/// through `backend` and through each of `variants` (other backends over the same
/// data); the first result is `backend`'s.
async fn scale(
    backend: &dyn MemoryBackend,
    variants: &[(&'static str, &dyn MemoryBackend)],
    raw: &Raw,
    kind: Kind,
    agent: &AgentId,
    args: &Args,
) -> Result<Vec<Scale>> {
    backend
        .put_memory(
            agent,
            &Memory::new("seed", memory_value(200, &mut Rng::new(1))),
        )
        .await?;
    let readers: Vec<(Option<&'static str>, &dyn MemoryBackend)> = std::iter::once((None, backend))
        .chain(variants.iter().map(|(name, b)| (Some(*name), *b)))
        .collect();
    bulk_keys(raw, agent, 0, args.scale_small).await?;
    let mut small = Vec::new();
    for (_, reader) in &readers {
        small.push(
            scale_reads(
                *reader,
                agent,
                args.scale_small,
                args.scale_small,
                args.scale_reads,
            )
            .await?,
        );
    }
    let started = Instant::now();
    bulk_keys(raw, agent, args.scale_small, args.scale_keys).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {:<8} scale: {} keys loaded in {load_seconds:.1} s",
        kind.name(),
        args.scale_keys
    );
    let mut scales = Vec::new();
    for ((variant, reader), small) in readers.into_iter().zip(small) {
        scales.push(Scale {
            backend: kind,
            variant,
            small_keys: args.scale_small,
            small,
            large_keys: args.scale_keys,
            large: scale_reads(
                reader,
                agent,
                args.scale_keys,
                args.scale_keys,
                args.scale_reads,
            )
            .await?,
            large_hot: scale_reads(reader, agent, args.scale_keys, HOT_KEYS, args.scale_reads)
                .await?,
            load_seconds,
        });
    }
    Ok(scales)
}

/// Keys the last scale measurement reads over and over: their pages (about 4 per
/// key) fit in SQLite's default 2 MB page cache.
const HOT_KEYS: usize = 100;

/// The memory map of the SQLite scale variant: larger than the file at 10^6 keys.
const MMAP_SIZE: u64 = 1 << 30;

/// Runs the suite, prints its tables and targets, and returns its results and chart.
pub async fn run(env: &Env, args: &Args) -> Result<(Value, Chart)> {
    if args.agents.is_empty() || args.agents.contains(&0) || args.calls == 0 || args.reps == 0 {
        return Err("--agents needs numbers of at least 1, --calls and --reps at least 1".into());
    }
    if args.min_bytes == 0 || args.min_bytes > args.max_bytes {
        return Err("--min-bytes must be at least 1 and at most --max-bytes".into());
    }
    if args.floor_calls < FLOOR_BLOCKS
        || args.scale_small == 0
        || args.scale_keys <= args.scale_small
        || args.scale_reads == 0
    {
        return Err(format!(
            "--floor-calls must be at least {FLOOR_BLOCKS}, --scale-small at least 1 and \
             below --scale-keys, --scale-reads at least 1"
        )
        .into());
    }
    let pg_options = PostgresOptions {
        max_connections: args
            .pg_connections
            .unwrap_or(PostgresOptions::default().max_connections),
        ..PostgresOptions::default()
    };
    println!(
        "plan:       mixed workload (50% retrieve, 20% store, 20% overwrite, 10% list keys; \
         values {}..{} B) at {:?} concurrent agents, {} calls each step after {} stored keys \
         per agent, {} repetitions; floor: {} stores + {} retrieves each by the library and by sqlx; scale: \
         retrieves at {} and {} keys; PostgreSQL pool of {} connections",
        args.min_bytes,
        args.max_bytes,
        args.agents,
        args.calls,
        args.preload,
        args.reps,
        args.floor_calls,
        args.floor_calls,
        args.scale_small,
        args.scale_keys,
        pg_options.max_connections,
    );
    let sqlite = Arc::new(SqliteBackend::new(env.agents_path()));
    let postgres = Arc::new(PostgresBackend::connect_with(&env.url, pg_options).await?);
    if args.no_content_compression {
        postgres.set_content_compression(false).await?;
        println!(
            "            PostgreSQL memory contents stored uncompressed (--no-content-compression)"
        );
    }
    let backend = |kind: Kind| -> Arc<dyn MemoryBackend> {
        match kind {
            Kind::Sqlite => sqlite.clone(),
            Kind::Postgres => postgres.clone(),
        }
    };

    // CPU per call is measured only when the server runs here (as with scripts/bench).
    let server = postmaster_of(postgres.pool()).await;
    let mut runs: Vec<Step> = Vec::new();
    for rep in 0..args.reps {
        for (i, &agents) in args.agents.iter().enumerate() {
            // The order alternates, so neither backend always runs on a warmer machine.
            for k in 0..Kind::ALL.len() {
                let kind = Kind::ALL[(i + k + rep) % Kind::ALL.len()];
                let step = mixed(backend(kind), kind, agents, rep, args, server).await?;
                eprintln!(
                    "  rep {}/{} {:<8} {agents:>3} agents: {:>8.0} calls/s in {:.1} s, \
                     p50 {} ms, p99 {} ms",
                    rep + 1,
                    args.reps,
                    kind.name(),
                    step.calls_per_s,
                    step.seconds,
                    ms(step.all.p50_us),
                    ms(step.all.p99_us),
                );
                runs.push(step);
                sqlite.close().await;
                settle().await;
            }
        }
    }
    let steps: Vec<Step> = args
        .agents
        .iter()
        .flat_map(|&agents| Kind::ALL.map(|kind| (kind, agents)))
        .map(|(kind, agents)| {
            let reps: Vec<&Step> = runs
                .iter()
                .filter(|s| s.backend == kind && s.agents == agents)
                .collect();
            Step::median(&reps)
        })
        .collect();

    let mut floors = Vec::new();
    let mut scales = Vec::new();
    // An agent the library has made (its file, or its `agents` row, on the first
    // store), and the hand-written client of its tables.
    let agent_with_raw = async |kind: Kind, purpose: &str| -> Result<(AgentId, Raw)> {
        let agent = AgentId::new(format!("{purpose}_{}", kind.name()))?;
        backend(kind)
            .put_memory(&agent, &Memory::new("first", json!("makes the agent")))
            .await?;
        let raw = match kind {
            Kind::Sqlite => Raw::sqlite(&sqlite.file_of(&agent)).await?,
            Kind::Postgres => Raw::Postgres(postgres.pool().clone()),
        };
        Ok((agent, raw))
    };
    for kind in Kind::ALL {
        let (agent, raw) = agent_with_raw(kind, "floor").await?;
        let measured = floor(&*backend(kind), &raw, kind, &agent, args).await?;
        eprintln!(
            "  {:<8} floor: store p50 {} / {} ms, retrieve p50 {} / {} ms (library / sqlx)",
            kind.name(),
            ms(measured.library_store.p50_us),
            ms(measured.sqlx_store.p50_us),
            ms(measured.library_retrieve.p50_us),
            ms(measured.sqlx_retrieve.p50_us),
        );
        floors.push(measured);
        if let Raw::Sqlite(pool) = &raw {
            pool.close().await;
        }

        let (agent, raw) = agent_with_raw(kind, "scale").await?;
        // SQLite reads again through a memory map (SqliteOptions::mmap_size, off by
        // default): how much of a large agent's cost is the page cache.
        let mapped = SqliteBackend::with_options(
            env.agents_path(),
            SqliteOptions {
                mmap_size: MMAP_SIZE,
                ..SqliteOptions::default()
            },
        );
        let variants: Vec<(&'static str, &dyn MemoryBackend)> = match kind {
            Kind::Sqlite => vec![("mmap_size 1 GiB", &mapped)],
            Kind::Postgres => Vec::new(),
        };
        scales.extend(scale(&*backend(kind), &variants, &raw, kind, &agent, args).await?);
        mapped.close().await;
        if let Raw::Sqlite(pool) = &raw {
            pool.close().await;
        }
        sqlite.close().await;
    }
    postgres.close().await;
    Ok(report(args, &steps, &runs, &floors, &scales))
}

/// A target of the issue, its measured value and verdict.
#[derive(Debug, Serialize)]
struct Target {
    name: String,
    formula: String,
    value: Option<f64>,
    target: f64,
    at_least: bool,
    pass: Option<bool>,
}

impl Target {
    fn new(
        name: String,
        formula: String,
        value: Option<f64>,
        target: f64,
        at_least: bool,
    ) -> Target {
        let pass = value.map(|v| if at_least { v >= target } else { v <= target });
        Target {
            name,
            formula,
            value,
            target,
            at_least,
            pass,
        }
    }

    fn line(&self) -> String {
        format!(
            "  {:<62} {:>6}  target {} {:.2}  {}",
            self.formula,
            self.value.map_or("-".into(), |v| format!("{v:.3}")),
            if self.at_least { ">=" } else { "<=" },
            self.target,
            match self.pass {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a",
            }
        )
    }
}

/// How much slower the library may be than the same statements through sqlx.
const LIBRARY_OVERHEAD_LIMIT: f64 = 1.10;
/// How much slower a retrieve may be at the large scale than at the small one and still
/// count as flat (a B-tree one level deeper and colder pages, not a scan).
const FLAT_LIMIT: f64 = 1.5;

/// Prints the tables and targets; returns the results (`steps`: medians of `runs`) and
/// the chart.
fn report(
    args: &Args,
    steps: &[Step],
    runs: &[Step],
    floors: &[Floor],
    scales: &[Scale],
) -> (Value, Chart) {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.backend.name().to_string(),
                s.agents.to_string(),
                s.calls.to_string(),
                format!("{:.0}", s.calls_per_s),
                ms(s.all.p50_us),
                ms(s.all.p99_us),
                ms(s.store.p50_us),
                ms(s.overwrite.p50_us),
                ms(s.retrieve.p50_us),
                ms(s.list_keys.p50_us),
                ms(s.store.p99_us.max(s.overwrite.p99_us)),
                ms(s.retrieve.p99_us),
                s.client_cpu_us_per_call
                    .map_or("-".into(), |us| format!("{us:.0}")),
                s.server_cpu_us_per_call
                    .map_or("-".into(), |us| format!("{us:.0}")),
            ]
        })
        .collect();
    println!(
        "\nmixed workload, median of {} repetitions: calls/s of wall time, latency in ms, \
         CPU time per call in µs (this process; the PostgreSQL server's processes)\n{}",
        args.reps,
        table(
            &[
                "backend",
                "agents",
                "calls",
                "calls/s",
                "p50",
                "p99",
                "store p50",
                "overwrite p50",
                "retrieve p50",
                "list p50",
                "write p99",
                "retrieve p99",
                "client µs/call",
                "server µs/call",
            ],
            &rows
        )
    );

    let floor_rows: Vec<Vec<String>> = floors
        .iter()
        .flat_map(|f| {
            [
                ("store", &f.library_store, &f.sqlx_store, f.store_ratio()),
                (
                    "retrieve",
                    &f.library_retrieve,
                    &f.sqlx_retrieve,
                    f.retrieve_ratio(),
                ),
            ]
            .map(|(call, lib, raw, ratio)| {
                vec![
                    format!("{} {call}", f.backend.name()),
                    ms(lib.p50_us),
                    ms(raw.p50_us),
                    format!("{ratio:.2}"),
                    ms(lib.p99_us),
                    ms(raw.p99_us),
                ]
            })
        })
        .collect();
    println!(
        "\nthe library against the same statements through sqlx, one task, values ~{FLOOR_BYTES} B, ms\n{}",
        table(
            &[
                "call",
                "library p50",
                "sqlx p50",
                "ratio",
                "library p99",
                "sqlx p99"
            ],
            &floor_rows
        )
    );

    let scale_rows: Vec<Vec<String>> = scales
        .iter()
        .map(|s| {
            vec![
                s.label(),
                ms(s.small.p50_us),
                ms(s.small.p99_us),
                ms(s.large.p50_us),
                ms(s.large.p99_us),
                format!("{:.2}", s.ratio()),
                ms(s.large_hot.p50_us),
                format!("{:.1}", s.load_seconds),
            ]
        })
        .collect();
    let (small, large) = (args.scale_small, args.scale_keys);
    println!(
        "\nretrieve of one agent's random keys at {small} and at {large} keys, ms\n{}",
        table(
            &[
                "backend",
                &format!("p50 @{small}"),
                &format!("p99 @{small}"),
                &format!("p50 @{large}"),
                &format!("p99 @{large}"),
                "p50 ratio",
                &format!("p50 @{large}, {HOT_KEYS} keys read"),
                "load s",
            ],
            &scale_rows
        )
    );

    let step = |kind: Kind, agents: usize| {
        steps
            .iter()
            .find(|s| s.backend == kind && s.agents == agents)
    };
    let mut targets = Vec::new();
    for agents in [16, 64] {
        let (lite, pg) = (step(Kind::Sqlite, agents), step(Kind::Postgres, agents));
        targets.push(Target::new(
            format!("postgres_vs_sqlite_{agents}"),
            format!("postgres calls/s / sqlite calls/s, {agents} agents"),
            lite.zip(pg).map(|(l, p)| p.calls_per_s / l.calls_per_s),
            1.0,
            true,
        ));
    }
    for f in floors {
        let name = f.backend.name();
        targets.push(Target::new(
            format!("{name}_store_overhead"),
            format!("{name} store p50, library / sqlx"),
            Some(f.store_ratio()),
            LIBRARY_OVERHEAD_LIMIT,
            false,
        ));
        targets.push(Target::new(
            format!("{name}_retrieve_overhead"),
            format!("{name} retrieve p50, library / sqlx"),
            Some(f.retrieve_ratio()),
            LIBRARY_OVERHEAD_LIMIT,
            false,
        ));
    }
    for s in scales.iter().filter(|s| s.variant.is_none()) {
        let name = s.backend.name();
        targets.push(Target::new(
            format!("{name}_retrieve_flat"),
            format!("{name} retrieve p50 @{large} keys / @{small} keys"),
            Some(s.ratio()),
            FLAT_LIMIT,
            false,
        ));
    }
    println!("\ntargets");
    for target in &targets {
        println!("{}", target.line());
    }
    for agents in [16, 64] {
        if let (Some(l), Some(p)) = (step(Kind::Sqlite, agents), step(Kind::Postgres, agents)) {
            println!(
                "  p99 at {agents} agents: sqlite {} ms, postgres {} ms",
                ms(l.all.p99_us),
                ms(p.all.p99_us)
            );
        }
    }

    let categories: Vec<String> = args
        .agents
        .iter()
        .map(|&a| match a {
            1 => "1 agent".to_string(),
            _ => format!("{a} agents"),
        })
        .collect();
    let series = |value: fn(&Step) -> f64| -> Vec<Series> {
        Kind::ALL
            .iter()
            .map(|&kind| Series {
                name: kind.name().to_string(),
                values: args
                    .agents
                    .iter()
                    .map(|&a| step(kind, a).map(value))
                    .collect(),
            })
            .collect()
    };
    let chart = Chart {
        title: "ops: mixed agent workload (store, retrieve, overwrite, list keys)".into(),
        panels: vec![
            Panel {
                title: "throughput, calls/s (higher is better)".into(),
                categories: categories.clone(),
                series: series(|s| s.calls_per_s),
            },
            Panel {
                title: "p50 latency, ms (lower is better)".into(),
                categories: categories.clone(),
                series: series(|s| s.all.p50_us / 1000.0),
            },
            Panel {
                title: "p99 latency, ms (lower is better)".into(),
                categories,
                series: series(|s| s.all.p99_us / 1000.0),
            },
        ],
    };
    let results = json!({
        "args": args,
        "mixed": steps,
        "mixed_repetitions": runs,
        "floor": floors,
        "scale": scales,
        "ratios": targets,
    });
    (results, chart)
}
