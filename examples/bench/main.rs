//! Benchmarks of memshift on real, durable storage.
//!
//! ```text
//! scripts/bench ops [--agents 1,4,16,64] [--calls N] [--scale-keys K] ... [--out DIR]
//! scripts/bench dual [--ops N] [--concurrency C] [--value-bytes B] [--reps R] [--out DIR]
//! scripts/bench backfill [--rows N] [--batch-size B] [--try-batch-sizes B1,B2] [--out DIR]
//! scripts/bench vector [--memories N] [--dims D] [--queries Q] [--ef-search E1,E2] [--out DIR]
//! scripts/bench peers [--calls N] [--keys K] [--reps R] [--python PATH] [--out DIR]
//! scripts/bench all [--out DIR]        # every suite above with its defaults
//! scripts/bench report [--out DIR]     # RESULTS.md and the charts again, from the JSON
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
//! Then `DIR/RESULTS.md`, the page of measured figures (machine, dates, every target and
//! each suite's tables), is written again from all the `<suite>.json` files in `DIR`;
//! `report` writes that page and the charts from those files alone, measuring nothing
//! and needing no database.
//! The header warns when the machine was busy at the start. `RUST_LOG` sets the log
//! level (default `warn`, without sqlx's slow-statement warnings, which index builds
//! and exact scans would otherwise print between the tables).

mod backfill;
mod chart;
mod dual;
mod harness;
mod ops;
mod python;
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
    /// Folder for the results: `<suite>.json`, the chart `<suite>.svg`, and RESULTS.md.
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
    /// The store agent developers already use: the library's store and retrieve, from Rust
    /// and from the Python package, against LangGraph's SqliteStore and PostgresStore
    /// (async and sync) on the same values, settings and server: latency and the ratios.
    /// Needs a Python with the package and LangGraph's stores, which scripts/bench
    /// installs. (Formerly `python`, still accepted.)
    #[command(alias = "python")]
    Peers(python::Args),
    /// Every suite, one after another, each with its defaults and its own database.
    All,
    /// Writes RESULTS.md and each suite's chart again from the `<suite>.json` files in
    /// --out, without running anything.
    Report,
}

/// The suites `all` runs, in order, as the saved results know them: the order of the
/// results page too.
const ALL: [results::Suite; 5] = [
    results::Suite {
        name: "ops",
        heading: "Everyday calls",
        summary: ops::summary,
    },
    results::Suite {
        name: "dual",
        heading: "Dual backend",
        summary: dual::summary,
    },
    results::Suite {
        name: "backfill",
        heading: "Backfill",
        summary: backfill::summary,
    },
    results::Suite {
        name: "vector",
        heading: "Vector search",
        summary: vector::summary,
    },
    results::Suite {
        name: "peers",
        heading: "Against LangGraph's stores",
        summary: python::summary,
    },
];

impl Suite {
    fn name(&self) -> &'static str {
        match self {
            Suite::Ops(_) => "ops",
            Suite::Dual(_) => "dual",
            Suite::Backfill(_) => "backfill",
            Suite::Vector(_) => "vector",
            Suite::Peers(_) => "peers",
            Suite::All => "all",
            Suite::Report => "report",
        }
    }
}

/// Runs one suite on a fresh database and writes its results to `out`: its JSON file and
/// chart, then the results page.
async fn run_suite(suite: &Suite, out: &Path) -> harness::Result<()> {
    let name = suite.name();
    let env = harness::Env::setup().await?;
    println!("{}", env.machine.header(name));
    let outcome = match suite {
        Suite::Ops(args) => ops::run(&env, args).await,
        Suite::Dual(args) => dual::run(&env, args).await,
        Suite::Backfill(args) => backfill::run(&env, args).await,
        Suite::Vector(args) => vector::run(&env, args).await,
        Suite::Peers(args) => python::run(&env, args).await,
        Suite::All | Suite::Report => Err(format!("`{name}` is not a single suite").into()),
    };
    let machine = env.machine.clone();
    // The database goes whatever the outcome; a suite's failure is the one reported.
    let removed = env.teardown().await;
    let results = outcome?;
    removed?;
    let json = results::write_results(out, name, &machine, results)?;
    println!("\nresults written to {}", json.display());
    let entry = ALL
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("suite {name} is missing from ALL"))?;
    if let Some(svg) = results::write_chart(out, entry)? {
        println!("chart written to {}", svg.display());
    }
    let page = results::write_page(out, &ALL)?;
    println!("results page written to {}", page.display());
    Ok(())
}

/// Writes every saved suite's chart and the results page again from the JSON files in
/// `out`.
fn report(out: &Path) -> harness::Result<()> {
    for suite in &ALL {
        match results::write_chart(out, suite)? {
            Some(svg) => println!("chart written to {}", svg.display()),
            None => println!("no results of {} in {}", suite.name, out.display()),
        }
    }
    let page = results::write_page(out, &ALL)?;
    println!("results page written to {}", page.display());
    Ok(())
}

async fn run(cli: Cli) -> harness::Result<()> {
    match cli.suite {
        Suite::Report => return report(&cli.out),
        Suite::All => {}
        _ => return run_suite(&cli.suite, &cli.out).await,
    }
    let mut failed = Vec::new();
    for (i, name) in ALL.iter().map(|s| s.name).enumerate() {
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
            failed.push(name);
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
