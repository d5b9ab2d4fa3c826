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

mod cpu;
mod floor;
mod raw;
mod report;
mod saved;
mod scale;
mod workload;

use std::sync::Arc;

use memshift::{
    AgentId, Memory, MemoryBackend, PostgresBackend, PostgresOptions, SqliteBackend, SqliteOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harness::{Env, Result, ms, settle};

use cpu::postmaster_of;
use floor::{FLOOR_BLOCKS, floor};
use raw::Raw;
use report::report;
use scale::scale;
use workload::{Step, mixed};

pub use saved::summary;

/// Options of the `ops` suite.
/// (Read back from saved results too: an option added later needs `#[serde(default)]`,
/// since earlier files lack it.)
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
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
    #[serde(default)]
    pub no_content_compression: bool,
}

/// The backends measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// The memory map of the SQLite scale variant: larger than the file at 10^6 keys.
const MMAP_SIZE: u64 = 1 << 30;

/// Runs the suite, prints its tables and targets, and returns its results.
pub async fn run(env: &Env, args: &Args) -> Result<Value> {
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
