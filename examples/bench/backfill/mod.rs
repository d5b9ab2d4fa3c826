//! Suite `backfill`: the bulk backfill against `pgloader` and `psql \copy`.
//!
//! 1. Builds a legacy SQLite file of `--rows` rows of `memory(id integer primary key, key
//!    text, content text, timestamp text)` (unique keys, ISO 8601 times, JSON contents of
//!    about `--content-bytes`) in agent folder `bench_agent`, and a second tree with a
//!    quarter of the rows, each in one transaction of multi-row prepared inserts.
//! 2. Reads the full file in-process with the backfill's own reader and conversion
//!    ([`Source::rows`], [`convert_row`]), timing each stage, and writes the rows the
//!    backfill would insert (`id, agent_id, key, content, metadata, created_at,
//!    updated_at`) as a COPY text file. Not a load: the client side's own ceiling.
//! 3. Times three loads of the same rows, each into a fresh database after a
//!    `CHECKPOINT`, each as the child process a user would run, start-up included:
//!    - `backfill`: the example binary (release build, next to this one) with
//!      `--postgres-url`, `--agents-path`, `--batch-size`, into the migrated contract
//!      tables; once with N rows (the timed run) and once with N/4 (memory flatness);
//!    - `pgloader sqlite:///FILE postgresql://...` into an empty database;
//!    - `psql -c "\copy agent_memories (...) from 'FILE'"` into a migrated database
//!      (indexed as the migration makes it) whose `agents` row is already there.
//! 4. Times catch-up runs (the backfill run again over the same file, unchanged and
//!    with 1% of its rows changed in place) against a first run into the same database.
//! 5. Checks every load (exit status, row count, the backfill's report, and that the
//!    `\copy`'d rows equal the backfill's: a checksum of every column, less the run's id
//!    and time in `metadata`), and prints rows/s, the ratios and their targets.
//!
//! Peak memory: the child's `VmHWM` (the kernel's resident-set high-water mark of the
//! process's own address space, all threads) read from `/proc/PID/status` every 10 ms
//! until it exits. It only grows, so the last reading is the peak, short of growth in
//! the final 10 ms. Why not `getrusage(RUSAGE_CHILDREN).ru_maxrss`: the standard
//! library does not expose it and `libc` is not a dependency; a wrapper that does
//! (python3, GNU time) adds its own pre-`exec` address space to the child's figure, a
//! floor of its own size (about 10 MB for python3). The readings over time go to the
//! JSON file, so a flat run shows its peak reached early and kept.

mod catchup;
mod client;
mod database;
mod legacy;
mod loads;
mod process;
mod profile;
mod report;
mod saved;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::harness::{Env, Result};

use client::write_copy_file;
use legacy::build_legacy;
use loads::{Backfill, Server, time_backfill, time_copy, time_pgloader};
use process::{find_program, sibling_binary};
use report::report;

pub use saved::summary;
/// The agent every generated row belongs to (its folder under the agents path).
const AGENT: &str = "bench_agent";

/// Options of the `backfill` suite.
/// (Read back from saved results too: an option added later needs `#[serde(default)]`,
/// since earlier files lack it.)
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Args {
    /// Legacy `memory` rows to generate and load.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Approximate size of each row's `content` (JSON text), in bytes.
    #[arg(long, default_value_t = 200)]
    pub content_bytes: usize,
    /// `--batch-size` of the timed backfill runs (the backfill's default is 1000).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Further batch sizes to time the backfill with, on all the rows, each into a fresh
    /// database (comma-separated; `--try-batch-sizes 0` for none).
    #[arg(long, value_delimiter = ',', default_value = "5000")]
    pub try_batch_sizes: Vec<usize>,
}

/// Runs the suite, prints its tables, and returns its results for the JSON file.
pub async fn run(env: &Env, args: &Args) -> Result<Value> {
    if args.rows < 4 || args.batch_size == 0 {
        return Err("--rows must be at least 4, --batch-size at least 1".into());
    }
    let backfill_bin = sibling_binary("backfill").ok_or(
        "the backfill example is not built next to this one: run \
         `cargo build --release --example backfill` (scripts/bench does)",
    )?;
    // A copy, so every run times the same build even if the example is rebuilt meanwhile.
    let backfill_bin = {
        let copy = env.agents_path().join("backfill-under-test");
        std::fs::copy(&backfill_bin, &copy)?;
        copy
    };
    let psql = std::env::var_os("MEMSHIFT_TEST_PG_BIN")
        .map(|bin| PathBuf::from(bin).join("psql"))
        .filter(|p| p.is_file())
        .or_else(|| find_program("psql"))
        .ok_or("psql not found: set MEMSHIFT_TEST_PG_BIN (scripts/bench does) or PATH")?;
    println!(
        "plan:       {} legacy memory rows (and {} for memory flatness), contents ~{} B; \
         backfill --batch-size {}; each load a child process into a fresh database after a CHECKPOINT",
        args.rows,
        args.rows / 4,
        args.content_bytes,
        args.batch_size
    );

    let work = env.agents_path();
    let full = build_legacy(&work.join("full"), args.rows, args.content_bytes, 1).await?;
    let quarter = build_legacy(&work.join("quarter"), args.rows / 4, args.content_bytes, 1).await?;
    eprintln!(
        "  legacy file: {} rows, {:.0} MB, contents {:.0} B on average, built in {:.1}s ({} rows: {:.1}s)",
        full.rows,
        full.bytes as f64 / 1e6,
        full.mean_content_bytes,
        full.seconds,
        quarter.rows,
        quarter.seconds
    );

    let copy_file = work.join("agent_memories.copy");
    let stages = write_copy_file(&full, &copy_file, args.batch_size).await?;
    eprintln!(
        "  COPY file: {:.0} MB; in-process read {:.1}s, convert {:.1}s, encode {:.1}s",
        stages.copy_file_bytes as f64 / 1e6,
        stages.read_seconds,
        stages.convert_seconds,
        stages.encode_seconds
    );

    let server = Server::find();
    let timed = Backfill {
        binary: &backfill_bin,
        legacy: &full,
        batch_size: args.batch_size,
        label: "backfill",
        profile: None,
        socket: false,
    };
    let backfill = time_backfill(env, &timed).await?;
    // The N/4 runs: memory flatness, and where the time goes (statement durations from
    // the server's log), over TCP as above and over the Unix socket (no Nagle delay).
    let quarter_run = Backfill {
        legacy: &quarter,
        label: "quarter",
        profile: server.as_ref(),
        ..timed
    };
    let backfill_quarter = time_backfill(env, &quarter_run).await?;
    let quarter_socket = match &server {
        Some(_) => Some(
            time_backfill(
                env,
                &Backfill {
                    label: "quarter_socket",
                    socket: true,
                    ..quarter_run
                },
            )
            .await?,
        ),
        None => None,
    };
    let pgloader = time_pgloader(env, &full).await?;
    let copy = time_copy(env, &psql, &copy_file, args.rows).await?;
    if copy.detail["checksum"] != backfill.detail["checksum"] {
        return Err(format!(
            "the \\copy'd rows differ from the backfill's: {} vs {}",
            copy.detail["checksum"], backfill.detail["checksum"]
        )
        .into());
    }
    let mut tries = Vec::new();
    for &size in args.try_batch_sizes.iter().filter(|s| **s > 0) {
        let label = format!("batch_{size}");
        let run = Backfill {
            batch_size: size,
            label: &label,
            ..timed
        };
        tries.push(time_backfill(env, &run).await?);
    }
    // Last: it changes the legacy file the loads above read.
    let (catch_up, catch_up_ratios) =
        catchup::time_catch_ups(env, &backfill_bin, &full, args.batch_size).await?;
    let mut results = report(
        args,
        &full,
        &stages,
        &backfill,
        &backfill_quarter,
        quarter_socket.as_ref(),
        &pgloader,
        &copy,
        &tries,
    );
    results["catch_up"] = catch_up;
    if let Some(ratios) = results["ratios"].as_array_mut() {
        ratios.extend(catch_up_ratios.iter().map(|r| serde_json::json!(r)));
    }
    Ok(results)
}
