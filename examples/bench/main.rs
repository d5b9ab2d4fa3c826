//! Benchmarks of memshift on real, durable storage.
//!
//! ```text
//! scripts/bench ops [--agents 1,4,16,64] [--calls N] [--scale-keys K] ... [--out DIR]
//! scripts/bench dual [--ops N] [--concurrency C] [--value-bytes B] [--reps R] [--out DIR]
//! scripts/bench backfill [--rows N] [--batch-size B] [--try-batch-sizes B1,B2] [--out DIR]
//! scripts/bench vector [--memories N] [--dims D] [--queries Q] [--ef-search E1,E2] [--out DIR]
//! scripts/bench all [--out DIR]        # every suite above with its defaults
//! cargo run --release --example bench -- ops ...     # with DATABASE_URL set
//! ```
//!
//! `DATABASE_URL` must be a PostgreSQL superuser (or database owner) URL: each suite
//! creates a fresh database `agent_memory_bench_<random>`, applies the shipped
//! migrations, and drops it at the end (with any further database it makes). SQLite
//! files go to a fresh temporary folder.
//! `scripts/bench` starts a throwaway server with fsync and synchronous commits on, so
//! both sides are durable, runs this, and removes the server.
//!
//! Each suite runs its baselines in the same invocation, prints a table with its target
//! ratios, and writes its numbers, with the machine's facts, to `DIR/<suite>.json` and a
//! chart of its main numbers to `DIR/<suite>.svg` (`--out DIR`, default `target/bench`).
//! The header warns when the machine was busy at the start. `RUST_LOG` sets the log
//! level (default `warn`, without sqlx's slow-statement warnings, which index builds
//! and exact scans would otherwise print between the tables).

mod backfill;
mod chart;
mod dual;
mod harness;
mod ops;
mod results;
mod vector;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use memshift::Chain;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Benchmarks of memshift on durable storage")]
struct Cli {
    /// Folder for the results: `<suite>.json` and the chart `<suite>.svg`.
    #[arg(long, global = true, default_value = "target/bench")]
    out: PathBuf,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// The everyday calls under an agent workload (store, retrieve, overwrite, list keys)
    /// at 1 to 64 concurrent agents on sqlite and postgres, the library against the same
    /// statements through sqlx, and retrieves at 10^3 and 10^6 keys per agent.
    Ops(ops::Args),
    /// What the dual backend costs over SQLite and PostgreSQL alone: store and retrieve
    /// latency and throughput of sqlite, postgres, dualwrite and live.
    Dual(dual::Args),
    /// The bulk backfill of a generated legacy database against pgloader and psql \copy
    /// of the same rows: rows/s, ratios, and the backfill's peak memory.
    Backfill(backfill::Args),
    /// Vector search on 100,000 memories of 384 dimensions: recall@10 of the HNSW index
    /// against exact search, and queries/s and latency of HNSW, PostgreSQL exact and
    /// SQLite exact, with the index's build time.
    Vector(vector::Args),
    /// Every suite, one after another, each with its defaults and its own database.
    All,
}

/// The suites `all` runs, in order.
const ALL: [&str; 4] = ["ops", "dual", "backfill", "vector"];

impl Suite {
    fn name(&self) -> &'static str {
        match self {
            Suite::Ops(_) => "ops",
            Suite::Dual(_) => "dual",
            Suite::Backfill(_) => "backfill",
            Suite::Vector(_) => "vector",
            Suite::All => "all",
        }
    }
}

/// Runs one suite on a fresh database and writes its results to `out`.
async fn run_suite(suite: &Suite, out: &Path) -> harness::Result<()> {
    let name = suite.name();
    let env = harness::Env::setup().await?;
    println!("{}", env.machine.header(name));
    let outcome = match suite {
        Suite::Ops(args) => ops::run(&env, args).await,
        Suite::Dual(args) => dual::run(&env, args).await,
        Suite::Backfill(args) => backfill::run(&env, args).await,
        Suite::Vector(args) => vector::run(&env, args).await,
        Suite::All => Err("`all` is not a single suite".into()),
    };
    let machine = env.machine.clone();
    // The database goes whatever the outcome; a suite's failure is the one reported.
    let removed = env.teardown().await;
    let (results, chart) = outcome?;
    removed?;
    let (json, svg) = results::write_results(out, name, &machine, results, &chart)?;
    println!(
        "\nresults written to {} and {}",
        json.display(),
        svg.display()
    );
    Ok(())
}

async fn run(cli: Cli) -> harness::Result<()> {
    if !matches!(cli.suite, Suite::All) {
        return run_suite(&cli.suite, &cli.out).await;
    }
    let mut failed = Vec::new();
    for (i, name) in ALL.iter().enumerate() {
        // Each suite's defaults, exactly as `bench <suite>` would take them.
        let suite = Cli::try_parse_from(["bench", name])?.suite;
        if i > 0 {
            println!("\n{}\n", "=".repeat(88));
            // The previous suite's own load is not "other work": let it decay first.
            let started = std::time::Instant::now();
            if let Some(load) = harness::quiet_down(Duration::from_secs(180)).await {
                println!(
                    "(waited {:.0} s for the previous suite's load to decay: load average {load:.2})\n",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        // One suite failing (pgloader missing, a full disk) does not stop the others.
        if let Err(err) = run_suite(&suite, &cli.out).await {
            eprintln!("bench: suite {name} failed: {}", Chain(&*err));
            failed.push(*name);
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!("suites that failed: {}", failed.join(", ")).into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {}", Chain(&*err));
            ExitCode::from(2)
        }
    }
}
