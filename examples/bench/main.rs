//! Benchmarks of agent-memory on real, durable storage.
//!
//! ```text
//! scripts/bench dual [--ops N] [--concurrency C] [--value-bytes B] [--reps R] [--json PATH]
//! scripts/bench backfill [--rows N] [--batch-size B] [--try-batch-sizes B1,B2] [--json PATH]
//! scripts/bench vector [--memories N] [--dims D] [--queries Q] [--ef-search E1,E2] [--json PATH]
//! cargo run --release --example bench -- dual ...     # with DATABASE_URL set
//! ```
//!
//! `DATABASE_URL` must be a PostgreSQL superuser (or database owner) URL: the bench
//! creates a fresh database `agent_memory_bench_<random>`, applies the shipped
//! migrations, and drops it at the end (with any further database a suite makes). SQLite
//! files go to a fresh temporary folder.
//! `scripts/bench` starts a throwaway server with fsync and synchronous commits on, so
//! both sides are durable, runs this, and removes the server.
//!
//! Suites print a table and write their numbers, with the machine's facts, as JSON to
//! `--json PATH` (default `target/bench/<suite>.json`). `RUST_LOG` sets the log level
//! (default `warn`).

mod backfill;
mod dual;
mod harness;
mod vector;

use std::path::PathBuf;
use std::process::ExitCode;

use agent_memory::Chain;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks of agent-memory on durable storage"
)]
struct Cli {
    /// Where to write the results as JSON [default: target/bench/<suite>.json].
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
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
}

impl Suite {
    fn name(&self) -> &'static str {
        match self {
            Suite::Dual(_) => "dual",
            Suite::Backfill(_) => "backfill",
            Suite::Vector(_) => "vector",
        }
    }
}

async fn run(cli: Cli) -> harness::Result<()> {
    let name = cli.suite.name();
    let env = harness::Env::setup().await?;
    println!("{}", env.machine.header(name));
    let outcome = match &cli.suite {
        Suite::Dual(args) => dual::run(&env, args).await,
        Suite::Backfill(args) => backfill::run(&env, args).await,
        Suite::Vector(args) => vector::run(&env, args).await,
    };
    let machine = env.machine.clone();
    // The database goes whatever the outcome; a suite's failure is the one reported.
    let removed = env.teardown().await;
    let results = outcome?;
    removed?;
    let path = cli
        .json
        .unwrap_or_else(|| PathBuf::from(format!("target/bench/{name}.json")));
    let written = harness::write_json(&path, name, &machine, results)?;
    println!("\nresults written to {}", written.display());
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
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
