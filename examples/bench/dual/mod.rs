//! Suite `dual`: what the dual backend costs over the backends it wraps.
//!
//! Four configurations share one SQLite agents folder and one PostgreSQL pool: `sqlite`,
//! `postgres`, and `DualBackend` at `dualwrite` and at `live`. Each repetition runs every
//! configuration once (the order rotated each time), on fresh agents, after a
//! warm-up round of a quarter the size that is not counted:
//!
//! 1. latency pass, one task: warm-up, then `--ops` stores (fresh keys and overwrites
//!    alternating), then `--ops` retrieves of stored keys; p50 and p99 per call. Keys of
//!    `live` are written under `live`, so its retrieves hit PostgreSQL (checked).
//! 2. throughput pass: `--concurrency` tasks on distinct agents, `--ops` calls in all,
//!    stores then retrieves; calls per second of wall time.
//!
//! 3. parts (each repetition, after the configurations): the two writes a `dualwrite`
//!    store makes, made by hand through the sides' `Replica` calls one after the other
//!    and each timed (`parts.rs`); and the disk alone: one small write with its
//!    `fdatasync`, two at once from two threads to two files, and two one after the
//!    other, in the agents folder (`disk.rs`).
//!
//! Every figure reported is the median over the repetitions.

mod disk;
mod parts;
mod saved;

use disk::Disk;
use parts::{Parts, StoreWire};

pub use saved::summary;

use std::sync::Arc;

use memshift::backend::DualBackend;
use memshift::backend::dual::DualStats;
use memshift::config::Stage;
use memshift::{MemoryBackend, PostgresBackend, PostgresOptions, SqliteBackend};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harness::{
    AgentLoad, Env, Latency, Result, Samples, concurrently, median, ms, settle, table,
};

/// Options of the `dual` suite.
/// (Read back from saved results too: an option added later needs `#[serde(default)]`,
/// since earlier files lack it.)
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Args {
    /// Stores, and as many retrieves, per pass, configuration and repetition.
    #[arg(long, default_value_t = 1000)]
    pub ops: usize,
    /// Concurrent tasks (each on its own agent) in the throughput pass.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Approximate size of each stored JSON value, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub value_bytes: usize,
    /// Repetitions of the whole set of configurations; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Sqlite,
    Postgres,
    DualWrite,
    Live,
}

impl Config {
    const ALL: [Config; 4] = [
        Config::Sqlite,
        Config::Postgres,
        Config::DualWrite,
        Config::Live,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Sqlite => "sqlite",
            Config::Postgres => "postgres",
            Config::DualWrite => "dualwrite",
            Config::Live => "live",
        }
    }

    fn stage(self) -> Option<Stage> {
        match self {
            Config::Sqlite | Config::Postgres => None,
            Config::DualWrite => Some(Stage::DualWrite),
            Config::Live => Some(Stage::Live),
        }
    }

    fn index(self) -> usize {
        Config::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The backend to measure, and the dual backend behind it for its statistics.
    fn build(self, sides: &Sides) -> (Arc<dyn MemoryBackend>, Option<DualBackend>) {
        let dual = self
            .stage()
            .map(|stage| DualBackend::new(sides.sqlite.clone(), sides.postgres.clone(), stage));
        let backend: Arc<dyn MemoryBackend> = match (&dual, self) {
            (Some(dual), _) => Arc::new(dual.clone()),
            (None, Config::Sqlite) => sides.sqlite.clone(),
            (None, _) => sides.postgres.clone(),
        };
        (backend, dual)
    }
}

/// The two backends every configuration is made of.
struct Sides {
    sqlite: Arc<SqliteBackend>,
    postgres: Arc<PostgresBackend>,
}

/// The figures of one configuration: latencies in microseconds, throughput in calls/s.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Figures {
    store_p50_us: f64,
    store_p99_us: f64,
    retrieve_p50_us: f64,
    retrieve_p99_us: f64,
    store_ops_per_s: f64,
    retrieve_ops_per_s: f64,
}

impl Figures {
    /// The median of each figure over `runs`.
    fn median(runs: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        Figures {
            store_p50_us: m(|f| f.store_p50_us),
            store_p99_us: m(|f| f.store_p99_us),
            retrieve_p50_us: m(|f| f.retrieve_p50_us),
            retrieve_p99_us: m(|f| f.retrieve_p99_us),
            store_ops_per_s: m(|f| f.store_ops_per_s),
            retrieve_ops_per_s: m(|f| f.retrieve_ops_per_s),
        }
    }
}

/// One configuration in one repetition.
#[derive(Debug, Serialize)]
struct Run {
    figures: Figures,
    store: Latency,
    retrieve: Latency,
    /// The dual backend's own counters after the latency pass (warm-up included).
    dual: Option<DualStats>,
}

/// The store p50s of `sqlite`, `postgres` and `dualwrite` among the `medians`.
fn medians_of(medians: &[Figures]) -> [f64; 3] {
    [Config::Sqlite, Config::Postgres, Config::DualWrite].map(|c| medians[c.index()].store_p50_us)
}

/// A ratio the project targets.
struct Target {
    name: &'static str,
    formula: &'static str,
    limit: f64,
    ratio: fn(&dyn Fn(Config) -> Figures) -> f64,
}

const TARGETS: [Target; 2] = [
    Target {
        name: "dualwrite_store_overhead",
        formula: "dualwrite store p50 / max(sqlite store p50, postgres store p50)",
        limit: 1.2,
        ratio: |of| {
            of(Config::DualWrite).store_p50_us
                / of(Config::Sqlite)
                    .store_p50_us
                    .max(of(Config::Postgres).store_p50_us)
        },
    },
    Target {
        name: "live_retrieve_overhead",
        formula: "live retrieve p50 / postgres retrieve p50",
        limit: 1.1,
        ratio: |of| of(Config::Live).retrieve_p50_us / of(Config::Postgres).retrieve_p50_us,
    },
];

/// Runs the suite, prints its tables, and returns its results for the JSON file.
pub async fn run(env: &Env, args: &Args) -> Result<Value> {
    if args.ops == 0 || args.concurrency == 0 || args.reps == 0 {
        return Err("--ops, --concurrency and --reps must be at least 1".into());
    }
    println!(
        "plan:       {} stores + {} retrieves per pass, values ~{} B, throughput with {} tasks, \
         {} repetitions after an uncounted warm-up round (order rotated), medians shown",
        args.ops, args.ops, args.value_bytes, args.concurrency, args.reps
    );
    let sides = Sides {
        sqlite: Arc::new(SqliteBackend::new(env.agents_path())),
        postgres: Arc::new(
            PostgresBackend::connect_with(
                &env.url,
                PostgresOptions {
                    max_connections: u32::try_from(args.concurrency * 2 + 4)?,
                    ..PostgresOptions::default()
                },
            )
            .await?,
        ),
    };
    let mut runs: Vec<Vec<Run>> = Config::ALL.iter().map(|_| Vec::new()).collect();
    let (mut parts, mut disks) = (Vec::new(), Vec::new());
    // Round 0, a quarter the size, only warms the server, the disk and the caches.
    let warm_up = Args {
        ops: (args.ops / 4).max(1),
        ..args.clone()
    };
    for round in 0..=args.reps {
        let (round_args, label) = match round {
            0 => (&warm_up, "warm-up".to_string()),
            _ => (args, format!("rep {round}/{}", args.reps)),
        };
        for i in 0..Config::ALL.len() {
            let config = Config::ALL[(i + round) % Config::ALL.len()];
            let started = std::time::Instant::now();
            let run = measure(config, &sides, round_args, round).await?;
            eprintln!(
                "  {label:<8} {:<9} {:>5.1}s  store p50 {} ms, retrieve p50 {} ms",
                config.name(),
                started.elapsed().as_secs_f64(),
                ms(run.figures.store_p50_us),
                ms(run.figures.retrieve_p50_us),
            );
            if round > 0 {
                runs[config.index()].push(run);
            }
        }
        if round == 0 {
            continue;
        }
        let part = parts::measure(
            &sides.sqlite,
            &sides.postgres,
            &format!("bench-parts-r{round}"),
            args.ops,
            args.value_bytes,
            round as u64 * 1000,
        )
        .await?;
        sides.sqlite.close().await;
        settle().await;
        let disk = disk::measure(env.agents_path(), args.ops).await?;
        eprintln!(
            "  {label:<8} parts: sqlite outbox {} + postgres apply {} = {} ms; disk: sync alone \
             {} ms, two at once {} ms each, two in a row {} ms",
            ms(part.sqlite_outbox_p50_us),
            ms(part.postgres_apply_p50_us),
            ms(part.both_p50_us),
            ms(disk.alone_p50_us),
            ms(disk.concurrent_each_p50_us),
            ms(disk.sequential_both_p50_us),
        );
        parts.push(part);
        disks.push(disk);
        settle().await;
    }
    let wire = parts::store_wire(
        &sides.sqlite,
        &env.url,
        PostgresOptions {
            max_connections: u32::try_from(args.concurrency * 2 + 4)?,
            ..PostgresOptions::default()
        },
        args.ops.min(500),
        args.value_bytes,
    )
    .await?;
    sides.postgres.close().await;
    sides.sqlite.close().await;
    let same_disk = env.machine.postgres_filesystem == env.machine.sqlite_filesystem;
    Ok(report(
        args,
        &runs,
        &parts,
        &disks,
        same_disk,
        wire.as_ref(),
    ))
}

/// One round of one configuration, on agents of its own.
async fn measure(config: Config, sides: &Sides, args: &Args, round: usize) -> Result<Run> {
    let (backend, dual) = config.build(sides);
    let agent = |suffix: &str| format!("bench-{}-r{round}-{suffix}", config.name());
    // The same seeds for every configuration: the same keys and values.
    let seed = |task: usize| (round * 1000 + task) as u64;

    let mut load = AgentLoad::new(
        backend.clone(),
        &agent("latency"),
        args.value_bytes,
        seed(0),
    )?;
    load.warm_up((args.ops / 10).clamp(5, 100)).await?;
    let (mut store, mut retrieve) = (Samples::default(), Samples::default());
    for _ in 0..args.ops {
        store.push(load.store().await?);
    }
    for _ in 0..args.ops {
        retrieve.push(load.retrieve().await?);
    }
    settle().await;
    let latency_stats = dual.as_ref().map(DualBackend::stats);

    let per_task = (args.ops / args.concurrency).max(1);
    let loads = (0..args.concurrency)
        .map(|t| {
            AgentLoad::new(
                backend.clone(),
                &agent(&format!("t{t}")),
                args.value_bytes,
                seed(t + 1),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let warm = (per_task / 10).clamp(2, 20);
    let (loads, _) = concurrently(loads, move |mut load| async move {
        load.warm_up(warm).await?;
        Ok(load)
    })
    .await?;
    let (loads, store_wall) = concurrently(loads, move |mut load| async move {
        for _ in 0..per_task {
            load.store().await?;
        }
        Ok(load)
    })
    .await?;
    let (_, retrieve_wall) = concurrently(loads, move |mut load| async move {
        for _ in 0..per_task {
            load.retrieve().await?;
        }
        Ok(load)
    })
    .await?;
    settle().await;
    if let Some(dual) = &dual {
        check_dual(config, &dual.stats())?;
    }
    // Every configuration starts with closed SQLite files, as on its first call.
    sides.sqlite.close().await;

    let calls = (per_task * args.concurrency) as f64;
    let (store, retrieve) = (store.summary(), retrieve.summary());
    Ok(Run {
        figures: Figures {
            store_p50_us: store.p50_us,
            store_p99_us: store.p99_us,
            retrieve_p50_us: retrieve.p50_us,
            retrieve_p99_us: retrieve.p99_us,
            store_ops_per_s: calls / store_wall.as_secs_f64(),
            retrieve_ops_per_s: calls / retrieve_wall.as_secs_f64(),
        },
        store,
        retrieve,
        dual: latency_stats,
    })
}

/// Refuses a run that did not measure what it claims: a dual write that missed a side,
/// or (in `live`) a read that PostgreSQL did not answer.
fn check_dual(config: Config, stats: &DualStats) -> Result<()> {
    let problem = if stats.owed_recorded
        + stats.owed_parked
        + stats.sqlite.errors
        + stats.postgres.errors
        > 0
    {
        Some("some calls failed or missed a side")
    } else if config == Config::Live
        && (stats.fallback_hits + stats.fallback_on_error + stats.lazy_copies > 0)
    {
        Some("some reads were not answered by PostgreSQL")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!("{}: {problem}; counters: {stats:?}", config.name()).into()),
        None => Ok(()),
    }
}

/// Figures derived from the medians, beside the targets: how far the `dualwrite` store
/// is from the two writes it makes, and from the slower side once the disk's own time
/// is taken out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Derived {
    /// dualwrite store p50 / (sqlite store p50 + postgres store p50).
    dualwrite_vs_sum_of_sides: f64,
    /// dualwrite store p50 / the p50 of its two writes made by hand one after the other.
    dualwrite_vs_parts: f64,
    /// (dualwrite store p50 - two syncs in a row) / (slower side's store p50 - one sync):
    /// the target's ratio with the disk's time taken out of both.
    dualwrite_vs_slower_without_disk: f64,
    /// (dualwrite store p50 - two syncs at once, both done) / (slower side's store p50 -
    /// one sync): the same, were the two syncs issued together.
    dualwrite_vs_slower_without_concurrent_disk: f64,
}

impl Derived {
    fn of(of: &dyn Fn(Config) -> Figures, parts: &Parts, disk: &Disk) -> Derived {
        let dual = of(Config::DualWrite).store_p50_us;
        let (lite, pg) = (
            of(Config::Sqlite).store_p50_us,
            of(Config::Postgres).store_p50_us,
        );
        let slower = lite.max(pg);
        Derived {
            dualwrite_vs_sum_of_sides: dual / (lite + pg),
            dualwrite_vs_parts: dual / parts.both_p50_us,
            dualwrite_vs_slower_without_disk: (dual - disk.sequential_both_p50_us)
                / (slower - disk.alone_p50_us),
            dualwrite_vs_slower_without_concurrent_disk: (dual - disk.concurrent_both_p50_us)
                / (slower - disk.alone_p50_us),
        }
    }
}

/// Prints the tables and ratios, and returns everything as JSON.
fn report(
    args: &Args,
    runs: &[Vec<Run>],
    parts: &[Parts],
    disks: &[Disk],
    same_disk: bool,
    wire: Option<&StoreWire>,
) -> Value {
    let medians: Vec<Figures> = runs
        .iter()
        .map(|r| Figures::median(&r.iter().map(|run| run.figures).collect::<Vec<_>>()))
        .collect();
    let rows: Vec<Vec<String>> = Config::ALL
        .iter()
        .map(|c| {
            let f = medians[c.index()];
            vec![
                c.name().to_string(),
                ms(f.store_p50_us),
                ms(f.store_p99_us),
                ms(f.retrieve_p50_us),
                ms(f.retrieve_p99_us),
                format!("{:.0}", f.store_ops_per_s),
                format!("{:.0}", f.retrieve_ops_per_s),
            ]
        })
        .collect();
    let threads = format!("ops/s x{}", args.concurrency);
    println!(
        "\nlatency in ms (one task), throughput in calls/s ({} tasks, distinct agents); median of {} repetitions\n{}",
        args.concurrency,
        args.reps,
        table(
            &[
                "config",
                "store p50",
                "store p99",
                "retrieve p50",
                "retrieve p99",
                &format!("store {threads}"),
                &format!("retrieve {threads}"),
            ],
            &rows,
        )
    );

    let configs: serde_json::Map<String, Value> = Config::ALL
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                json!({"median": medians[c.index()], "repetitions": runs[c.index()]}),
            )
        })
        .collect();
    // Printed from the results as saved, as the results page shows it.
    let configs = Value::Object(configs);
    println!(
        "\ndual backend per side, from DualBackend::stats() over the latency pass (histogram, within 9%), ms p50\n{}",
        saved::breakdown(&configs).map_or_else(|e| format!("(not shown: {e})"), |t| t.text())
    );

    println!("\ntargets");
    let ratios: Vec<Value> = TARGETS
        .iter()
        .map(|target| {
            let value = (target.ratio)(&|c| medians[c.index()]);
            let per_rep: Vec<f64> = (0..args.reps)
                .map(|rep| (target.ratio)(&|c| runs[c.index()][rep].figures))
                .collect();
            let pass = value <= target.limit;
            let reps: Vec<String> = per_rep.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "  {:<64} {value:>5.2}  target <= {:.1}  {}   (per repetition: {})",
                target.formula,
                target.limit,
                if pass { "PASS" } else { "MISS" },
                reps.join(" "),
            );
            json!({
                "name": target.name,
                "formula": target.formula,
                "value": value,
                "target": target.limit,
                "pass": pass,
                "per_repetition": per_rep,
            })
        })
        .collect();

    let (part, disk) = (Parts::median(parts), Disk::median(disks));
    let derived = Derived::of(&|c| medians[c.index()], &part, &disk);
    let per_rep_derived: Vec<Derived> = (0..args.reps.min(parts.len()).min(disks.len()))
        .map(|rep| Derived::of(&|c| runs[c.index()][rep].figures, &parts[rep], &disks[rep]))
        .collect();
    println!(
        "\n{}",
        saved::parts_text(&part, &disk, &medians_of(&medians), &derived, same_disk)
    );
    if let Some(w) = wire {
        println!("{}", saved::wire_text(w));
    }
    let range = |f: fn(&Derived) -> f64| {
        let values: Vec<f64> = per_rep_derived.iter().map(f).collect();
        match (
            values.iter().copied().reduce(f64::min),
            values.iter().copied().reduce(f64::max),
        ) {
            (Some(low), Some(high)) => format!("(repetitions {low:.2}-{high:.2})"),
            _ => String::new(),
        }
    };
    println!(
        "  dualwrite store p50 / slower side's, the disk's time taken out of both      {:>5.2}  {}",
        derived.dualwrite_vs_slower_without_disk,
        range(|d| d.dualwrite_vs_slower_without_disk),
    );
    let each: Vec<String> = disks
        .iter()
        .map(|d| format!("{:.2}", d.concurrency_ratio()))
        .collect();
    println!(
        "  two syncs at once, each / one alone, per repetition                         {}",
        each.join(" ")
    );
    println!(
        "  dualwrite store p50 / the same two writes made by hand one after the other  {:>5.2}  {}",
        derived.dualwrite_vs_parts,
        range(|d| d.dualwrite_vs_parts),
    );

    json!({
        "args": args,
        "configs": configs,
        "ratios": ratios,
        "parts": {"median": part, "repetitions": parts},
        "disk": {
            "median": disk,
            "repetitions": disks,
            "concurrency_ratio": disk.concurrency_ratio(),
            "concurrency_ratio_per_repetition":
                disks.iter().map(Disk::concurrency_ratio).collect::<Vec<_>>(),
            "same_filesystem_as_postgres": same_disk,
        },
        "derived": {"median": derived, "repetitions": per_rep_derived},
        "wire": wire,
    })
}
