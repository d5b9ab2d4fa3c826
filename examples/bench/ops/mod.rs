//! Suite `ops`: the library's everyday calls under an agent workload, on both backends,
//! against the same statements issued directly through sqlx.
//!
//! 1. Mixed workload, per number of concurrent agents (`--agents`, default 1, 4, 16 and
//!    64): each agent has its own memory (SQLite: its own file under the agents folder,
//!    as the library keeps it; PostgreSQL: the shared database, rows told apart by
//!    `agent_id`), is given `--preload` keys first (not counted), then makes its share of
//!    `--calls` calls one after another: 50% retrieve of a stored key, 20% store of a new
//!    key, 20% overwrite of a stored key, 10% list keys. Values are generated JSON of
//!    200 B to 20 KB (log-uniform, so most are small), built before the clock starts;
//!    `--values` says what text they hold (by default text that compresses like agents'
//!    own). Reported: calls/s of wall time, p50/p99 per kind of call and over all calls,
//!    and CPU time per call of this process and of the PostgreSQL server (when it runs on
//!    this machine); each the median over `--reps` repetitions on fresh agents. The
//!    target, PostgreSQL's calls/s at least SQLite's, is judged at every number of agents
//!    on the lowest repetition. Afterwards: how much PostgreSQL compressed the stored
//!    values (`octet_length` over `pg_column_size`), and a pass of the mix through a relay
//!    that counts statements, round trips and bytes per call (not timed).
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

use crate::harness::{Env, Result, Values, ms, relay, settle, through_relay};

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
    /// The values stored: `text` compresses like agents' real text (pglz about 2x),
    /// `vocab` (the values of results saved before this option) 4-5x.
    #[arg(long, value_enum, default_value_t = Values::Text)]
    #[serde(default = "vocab")]
    pub values: Values,
    /// Agents of the pass that counts statements, round trips and bytes per PostgreSQL
    /// call through a relay (0: no such pass).
    #[arg(long, default_value_t = 4)]
    #[serde(default)]
    pub wire_agents: usize,
}

/// The values of results saved before `--values`.
fn vocab() -> Values {
    Values::Vocab
}

/// How much PostgreSQL compressed the values the mixed workload stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Compression {
    /// Values stored (the last version of each key, over every repetition).
    rows: i64,
    /// Their JSON text over what PostgreSQL stores of them (`pg_column_size`).
    ratio: f64,
    /// Values of 2,048 bytes and more, which PostgreSQL compresses (smaller ones stay
    /// inline as they are).
    rows_2k: i64,
    ratio_2k: Option<f64>,
}

/// The compression of the PostgreSQL rows of the mixed workload.
async fn compression(pool: &sqlx::PgPool) -> Result<Compression> {
    let (rows, text, stored, rows_2k, text_2k, stored_2k): (
        i64,
        f64,
        f64,
        i64,
        Option<f64>,
        Option<f64>,
    ) = sqlx::query_as(
        "select count(*), sum(octet_length(content))::float8, sum(pg_column_size(content))::float8,
                count(*) filter (where octet_length(content) >= 2048),
                sum(octet_length(content)) filter (where octet_length(content) >= 2048)::float8,
                sum(pg_column_size(content)) filter (where octet_length(content) >= 2048)::float8
           from agent_memories where agent_id like 'ops\\_postgres\\_%'",
    )
    .fetch_one(pool)
    .await?;
    Ok(Compression {
        rows,
        ratio: text / stored,
        rows_2k,
        ratio_2k: text_2k.zip(stored_2k).map(|(t, s)| t / s),
    })
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
         retrieves at {} and {} keys; PostgreSQL pool of {} connections; values: {}",
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
        args.values.name(),
    );
    let sqlite = Arc::new(SqliteBackend::new(env.agents_path()));
    let postgres = Arc::new(PostgresBackend::connect_with(&env.url, pg_options.clone()).await?);
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
                let step = mixed(backend(kind), kind, agents, rep, args, server, None).await?;
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

    let compressed = compression(postgres.pool()).await?;
    eprintln!(
        "  postgres compression: {:.2}x over {} values, {}x over the {} of 2 KB and more",
        compressed.ratio,
        compressed.rows,
        compressed
            .ratio_2k
            .map_or("-".into(), |r| format!("{r:.2}")),
        compressed.rows_2k,
    );
    let wire = match (args.wire_agents, through_relay(&env.url)) {
        (0, _) => None,
        (_, None) => {
            eprintln!("  postgres wire counts: not measured (the server's URL is not host:port)");
            None
        }
        (agents, Some((server_addr, url_to))) => {
            let (port, counters) = relay(server_addr).await?;
            let relayed = Arc::new(PostgresBackend::connect_with(&url_to(port), pg_options).await?);
            // Fresh agents (a repetition number past the timed ones), as in a timed step.
            let step = mixed(
                relayed.clone(),
                Kind::Postgres,
                agents,
                args.reps,
                args,
                None,
                Some(&counters),
            )
            .await?;
            relayed.close().await;
            step.wire
        }
    };
    if let Some(w) = &wire {
        eprintln!(
            "  postgres wire, per call: {:.2} statements, {:.2} round trips, {:.0} B sent, {:.0} B received",
            w.statements_per_call,
            w.round_trips_per_call,
            w.bytes_to_server_per_call,
            w.bytes_to_client_per_call,
        );
    }

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
    Ok(report(
        args,
        &steps,
        &runs,
        &floors,
        &scales,
        Some(&compressed),
        wire.as_ref(),
    ))
}
