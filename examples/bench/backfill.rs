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
//! 4. Checks every load (exit status, row count, the backfill's report, and that the
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

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use memshift::AgentId;
use memshift::legacy::{ContractRecord, ContractRow, ReadOptions, Source, Target, convert_row};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Env, Result, Rng, memory_value, table};

/// The agent every generated row belongs to (its folder under the agents path).
const AGENT: &str = "bench_agent";

/// Rows per generated `insert` statement (4 parameters each).
const ROWS_PER_INSERT: usize = 250;

/// A stand-in for the run id the backfill records in `metadata.migration_run` (same
/// length: `<UTC time>-<8 hex>`), so the `\copy`'d rows are as large as the backfill's.
const COPY_RUN_ID: &str = "20000101T000000Z-c0c0c0c0";

/// `peak(N) / peak(N/4)` at most this is flat; memory growing with the rows would be ~4.
const FLAT_LIMIT: f64 = 1.5;

/// Options of the `backfill` suite.
#[derive(Debug, Clone, clap::Args, Serialize)]
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

/// A generated agents path holding one legacy file.
struct Legacy {
    /// The agents path.
    root: PathBuf,
    /// `<root>/bench_agent/memory.db`.
    file: PathBuf,
    rows: usize,
    bytes: u64,
    mean_content_bytes: f64,
    seconds: f64,
}

/// How long each client-side stage of the backfill's pipeline took for the whole file.
#[derive(Debug, Serialize)]
struct Stages {
    rows: usize,
    read_seconds: f64,
    convert_seconds: f64,
    encode_seconds: f64,
    copy_file_bytes: u64,
}

impl Stages {
    fn rate(&self, seconds: f64) -> f64 {
        self.rows as f64 / seconds
    }
}

/// One timed child process.
#[derive(Debug, Serialize)]
struct Measured {
    seconds: f64,
    /// The last `VmHWM` read before it exited, in kB.
    peak_rss_kb: Option<u64>,
    /// `(seconds since start, VmHWM kB)`, about once a second.
    rss_timeline: Vec<(f64, u64)>,
    #[serde(skip)]
    success: bool,
    #[serde(skip)]
    log: PathBuf,
}

/// One load, timed and checked.
#[derive(Debug, Serialize)]
struct Load {
    name: String,
    rows: usize,
    rows_per_s: f64,
    #[serde(flatten)]
    measured: Measured,
    /// What the load says or the database shows about it.
    detail: Value,
    /// Server-side statement durations, when profiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    statements: Option<Vec<StatementKind>>,
}

/// Runs the suite, prints its tables, and returns its results for the JSON file.
pub async fn run(env: &Env, args: &Args) -> Result<(Value, Chart)> {
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
    Ok(report(
        args,
        &full,
        &stages,
        &backfill,
        &backfill_quarter,
        quarter_socket.as_ref(),
        &pgloader,
        &copy,
        &tries,
    ))
}

/// The file of another example built next to this binary (`target/release/examples/`).
fn sibling_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join(name);
    path.is_file().then_some(path)
}

/// `name` in a folder of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Writes `<root>/bench_agent/memory.db` with `rows` rows, in one transaction.
async fn build_legacy(root: &Path, rows: usize, content_bytes: usize, seed: u64) -> Result<Legacy> {
    let started = Instant::now();
    let folder = root.join(AGENT);
    std::fs::create_dir_all(&folder)?;
    let file = folder.join("memory.db");
    // A rollback journal, as Python's sqlite3 leaves a file by default.
    let mut conn = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .disable_statement_logging()
        .connect()
        .await?;
    sqlx::raw_sql(
        "create table memory (id integer primary key, key text, content text, timestamp text)",
    )
    .execute(&mut conn)
    .await?;
    let epoch = NaiveDate::from_ymd_opt(2024, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or("bad epoch")?;
    let mut rng = Rng::new(seed);
    let mut content_total = 0usize;
    let mut tx = conn.begin().await?;
    let mut id = 0usize;
    while id < rows {
        let n = ROWS_PER_INSERT.min(rows - id);
        let sql = format!(
            "insert into memory (id, key, content, timestamp) values {}",
            vec!["(?, ?, ?, ?)"; n].join(", ")
        );
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for _ in 0..n {
            id += 1;
            let content = memory_value(content_bytes, &mut rng).to_string();
            content_total += content.len();
            // Python's datetime.isoformat(): a naive time with microseconds, every ~20 s.
            let at = epoch
                + TimeDelta::seconds(id as i64 * 20)
                + TimeDelta::microseconds(rng.below(20_000_000) as i64);
            insert = insert
                .bind(id as i64)
                .bind(format!("conversation/{:05}/turn-{id}", rng.below(100_000)))
                .bind(content)
                .bind(at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string());
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(Legacy {
        root: root.to_path_buf(),
        bytes: std::fs::metadata(&file)?.len(),
        file,
        rows,
        mean_content_bytes: content_total as f64 / rows.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads `legacy` with the backfill's reader and conversion and writes the rows it would
/// insert into `agent_memories` to `out` in COPY's text format; times each stage.
async fn write_copy_file(legacy: &Legacy, out: &Path, batch_size: usize) -> Result<Stages> {
    let options = ReadOptions {
        batch_size,
        ..ReadOptions::default()
    };
    let mut source = Source::open(&legacy.file, &options).await?;
    let table = source
        .tables()
        .await?
        .into_iter()
        .find(|t| t.name == "memory")
        .ok_or("the legacy file has no memory table")?;
    let agent = AgentId::new(AGENT)?;
    let source_db = format!("{AGENT}/memory.db");
    let migrated_at = Utc::now();
    let mut writer = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut stages = Stages {
        rows: 0,
        read_seconds: 0.0,
        convert_seconds: 0.0,
        encode_seconds: 0.0,
        copy_file_bytes: 0,
    };
    let mut text = Vec::new();
    let mut batches = source.rows(&table);
    loop {
        let started = Instant::now();
        let Some(batch) = batches.next_batch().await? else {
            break;
        };
        stages.read_seconds += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let rows = batch
            .iter()
            .map(|row| {
                convert_row(
                    &agent,
                    &source_db,
                    &table,
                    Target::Memories,
                    row,
                    migrated_at,
                )
            })
            .collect::<memshift::Result<Vec<_>>>()?;
        stages.convert_seconds += started.elapsed().as_secs_f64();
        if let Some(problem) = rows.iter().find_map(|r| r.time_problem.as_ref()) {
            return Err(format!("a generated time does not read as one: {problem}").into());
        }

        let started = Instant::now();
        text.clear();
        for row in &rows {
            copy_line(&mut text, row)?;
        }
        writer.write_all(&text)?;
        stages.encode_seconds += started.elapsed().as_secs_f64();
        stages.rows += rows.len();
    }
    writer.flush()?;
    drop(writer);
    if stages.rows != legacy.rows {
        return Err(format!("read {} rows of {}", stages.rows, legacy.rows).into());
    }
    stages.copy_file_bytes = std::fs::metadata(out)?.len();
    Ok(stages)
}

/// One `agent_memories` row as the backfill inserts it (`metadata.migration_run` added),
/// as a line of COPY's text format.
fn copy_line(out: &mut Vec<u8>, row: &ContractRow) -> Result<()> {
    let ContractRecord::Memory(memory) = &row.record else {
        return Err("not a memory row".into());
    };
    let mut metadata = memory.metadata.clone();
    metadata.insert("migration_run".into(), COPY_RUN_ID.into());
    let time = |at: &DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let fields = [
        Some(memory.id.to_string()),
        Some(row.source.agent.to_string()),
        memory.key.clone(),
        Some(memory.content.to_string()),
        Some(Value::Object(metadata).to_string()),
        Some(time(&memory.created_at)),
        Some(time(&memory.updated_at)),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let Some(text) = field else {
            out.extend_from_slice(b"\\N");
            continue;
        };
        for byte in text.bytes() {
            match byte {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                other => out.push(other),
            }
        }
    }
    out.push(b'\n');
    Ok(())
}

/// A connection to `url` that logs no statements (a checksum is slow on purpose).
async fn connect(url: &str) -> Result<PgConnection> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.disable_statement_logging().connect().await?)
}

/// Writes dirty buffers out, so one load's leftovers do not land in the next one's time.
async fn checkpoint(url: &str) -> Result<()> {
    let mut conn = connect(url).await?;
    sqlx::raw_sql("checkpoint").execute(&mut conn).await?;
    conn.close().await.ok();
    Ok(())
}

/// Runs `command` with its output in `log`, timing it and following its `VmHWM`.
async fn measure(mut command: tokio::process::Command, log: PathBuf) -> Result<Measured> {
    let out = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let status_path = child.id().map(|pid| format!("/proc/{pid}/status"));
    let (mut peak, mut timeline) = (None, Vec::new());
    let mut next_sample = Duration::ZERO;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                // A zombie has no VmHWM: keep the last reading.
                if let Some(hwm) = status_path.as_deref().and_then(vm_hwm_kb) {
                    peak = Some(hwm);
                    if started.elapsed() >= next_sample {
                        timeline.push((started.elapsed().as_secs_f64(), hwm));
                        next_sample += Duration::from_secs(1);
                    }
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(peak) = peak {
        timeline.push((seconds, peak));
    }
    Ok(Measured {
        seconds,
        peak_rss_kb: peak,
        rss_timeline: timeline,
        success: status.success(),
        log,
    })
}

/// `VmHWM` of `/proc/PID/status`, in kB.
fn vm_hwm_kb(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last lines of a child's output, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A single number from `database`.
async fn scalar(url: &str, sql: &'static str) -> Result<i64> {
    let mut conn = connect(url).await?;
    let value = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
    conn.close().await.ok();
    Ok(value)
}

/// The row count and a checksum of every column of `agent_memories`, less the run's id
/// and time in `metadata`, which differ between loads of the same rows.
async fn memories_checksum(url: &str) -> Result<(i64, String)> {
    let mut conn = connect(url).await?;
    let row: (i64, String) = sqlx::query_as(
        r"select count(*), coalesce(sum(hashtextextended(concat_ws('|', id::text, agent_id,
                 coalesce(key, '\N'), content, (metadata - 'migration_run' - 'migrated_at')::text,
                 created_at::text, updated_at::text, embedding is null), 0)::numeric), 0)::text
          from agent_memories",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await.ok();
    Ok(row)
}

/// How one backfill run is made.
#[derive(Clone, Copy)]
struct Backfill<'a> {
    binary: &'a Path,
    legacy: &'a Legacy,
    batch_size: usize,
    /// Names its database, log and reports.
    label: &'a str,
    /// Log the run's statements with their durations to this server's log, and profile
    /// them; connect over its Unix socket too when `socket`.
    profile: Option<&'a Server>,
    socket: bool,
}

/// The throwaway server `scripts/bench` made: its log and its Unix socket folder.
struct Server {
    log: PathBuf,
    socket: PathBuf,
}

impl Server {
    /// From `MEMSHIFT_TEST_PG_DIR` (set by scripts/pg); `None` elsewhere.
    fn find() -> Option<Server> {
        let dir = PathBuf::from(std::env::var_os("MEMSHIFT_TEST_PG_DIR")?);
        let server = Server {
            log: dir.join("log"),
            socket: dir.join("socket"),
        };
        (server.log.is_file() && server.socket.is_dir()).then_some(server)
    }
}

/// The backfill example into a fresh migrated database, checked.
async fn time_backfill(env: &Env, run: &Backfill<'_>) -> Result<Load> {
    let (legacy, label) = (run.legacy, run.label);
    let db = env.fresh_database(label, true).await?;
    let reports = env.agents_path().join(format!("reports_{label}"));
    std::fs::create_dir_all(&reports)?;
    let mut url = db.url.clone();
    let mut log_start = 0;
    if let Some(server) = run.profile {
        let mut conn = connect(&db.url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter database {} set log_min_duration_statement = 0",
            db.name
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await.ok();
        if run.socket {
            let socket = server.socket.to_str().ok_or("socket path is not UTF-8")?;
            let joint = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{joint}host={socket}");
        }
    }
    checkpoint(&db.url).await?;
    if let Some(server) = run.profile {
        log_start = std::fs::metadata(&server.log)?.len();
    }
    let mut command = tokio::process::Command::new(run.binary);
    command
        .arg("--postgres-url")
        .arg(&url)
        .arg("--agents-path")
        .arg(&legacy.root)
        .arg("--batch-size")
        .arg(run.batch_size.to_string())
        .arg("--report-dir")
        .arg(&reports)
        // The run a user makes: the binary's own log level and settings.
        .env_remove("RUST_LOG")
        .env_remove("MIGRATION_BATCH_SIZE")
        .env_remove("MIGRATION_TIMEOUT");
    let measured = measure(command, env.agents_path().join(format!("{label}.log"))).await?;
    if !measured.success {
        return Err(format!("{label}: the backfill failed:\n{}", log_tail(&measured.log)).into());
    }
    let statements = match run.profile {
        Some(server) => Some(statement_profile(&server.log, log_start)?),
        None => None,
    };
    let totals = read_report_totals(&reports)?;
    let (count, checksum) = memories_checksum(&db.url).await?;
    let inserted = totals["inserted"].as_u64().unwrap_or(0);
    if count != legacy.rows as i64 || inserted != legacy.rows as u64 {
        return Err(format!(
            "{label}: {count} rows in agent_memories, {inserted} inserted by the report, of {}",
            legacy.rows
        )
        .into());
    }
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    let name = format!(
        "backfill ({} rows, batch {}{})",
        legacy.rows,
        run.batch_size,
        if run.socket { ", Unix socket" } else { "" }
    );
    eprintln!("  {name}: {}", summary_line(legacy.rows, &measured));
    Ok(Load {
        name,
        rows: legacy.rows,
        rows_per_s: legacy.rows as f64 / measured.seconds,
        measured,
        detail: json!({
            "batch_size": run.batch_size,
            "unix_socket": run.socket,
            "report_totals": totals,
            "checksum": checksum,
        }),
        statements,
    })
}

/// Server-side time of one kind of statement over a run.
#[derive(Debug, Clone, Serialize)]
struct StatementKind {
    statement: String,
    count: usize,
    total_s: f64,
    /// Mean per execution over the first tenth of its executions, the slowest tenth and
    /// the last tenth, in ms: growth with the table shows here.
    first_tenth_ms: f64,
    peak_tenth_ms: f64,
    last_tenth_ms: f64,
}

/// The kinds of statement a backfill batch runs, by how their text starts.
const STATEMENT_KINDS: [(&str, &str); 8] = [
    ("copy am_stage", "COPY into the staging table"),
    ("insert into agents ", "agents row"),
    (
        "update am_stage s set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key) from",
        "settle keys within the batch",
    ),
    (
        "update agent_memories m",
        "demote older legacy keys (agent_memories)",
    ),
    (
        "update am_stage s set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key) where",
        "keep out keys held or deleted",
    ),
    ("insert into agent_memories", "insert from staging"),
    ("insert into agent_memory.backfill_progress", "progress row"),
    ("commit", "COMMIT"),
];

/// Durations of the statements logged in `log` from byte `start` on, by kind, in the
/// order of their total time. Parse, bind and execute of one prepared statement count
/// as one execution.
fn statement_profile(log: &Path, start: u64) -> Result<Vec<StatementKind>> {
    let bytes = std::fs::read(log)?;
    let text = String::from_utf8_lossy(&bytes[usize::try_from(start)?.min(bytes.len())..]);
    // (duration ms, phase, statement text)
    let mut entries: Vec<(f64, String, String)> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if let Some(rest) = line.split_once("LOG:  duration: ").map(|(_, r)| r) {
            let Some((ms, rest)) = rest.split_once(" ms  ") else {
                open = false;
                continue;
            };
            let Some((phase, statement)) = rest.split_once(": ") else {
                open = false;
                continue;
            };
            entries.push((
                ms.parse().unwrap_or(0.0),
                phase.split_whitespace().next().unwrap_or("").to_string(),
                statement.to_string(),
            ));
            open = true;
        } else if open && line.starts_with('\t') {
            if let Some(last) = entries.last_mut() {
                last.2.push(' ');
                last.2.push_str(line.trim());
            }
        } else {
            open = false;
        }
    }
    let mut kinds: Vec<(String, Vec<f64>, String)> = Vec::new();
    for (ms, phase, statement) in entries {
        let normal = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let label = STATEMENT_KINDS
            .iter()
            .find(|(prefix, _)| normal.to_ascii_lowercase().starts_with(prefix))
            .map_or_else(
                || format!("other: {}", normal.chars().take(40).collect::<String>()),
                |(_, label)| (*label).to_string(),
            );
        let at = match kinds.iter().position(|(l, _, _)| *l == label) {
            Some(at) => at,
            None => {
                kinds.push((label, Vec::new(), String::new()));
                kinds.len() - 1
            }
        };
        // A prepared statement logs (parse,) bind and execute: one execution.
        let (_, durations, last_phase) = &mut kinds[at];
        let continues = matches!(
            (last_phase.as_str(), phase.as_str()),
            ("parse", "bind") | ("bind", "execute")
        );
        match durations.last_mut() {
            Some(last) if continues => *last += ms,
            _ => durations.push(ms),
        }
        *last_phase = phase;
    }
    let mut out: Vec<StatementKind> = kinds
        .into_iter()
        .map(|(statement, d, _)| {
            let tenth = (d.len() / 10).max(1);
            let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
            StatementKind {
                statement,
                count: d.len(),
                total_s: d.iter().sum::<f64>() / 1000.0,
                first_tenth_ms: mean(&d[..tenth.min(d.len())]),
                peak_tenth_ms: d.chunks(tenth).map(mean).fold(0.0, f64::max),
                last_tenth_ms: mean(&d[d.len().saturating_sub(tenth)..]),
            }
        })
        .collect();
    out.sort_by(|a, b| b.total_s.total_cmp(&a.total_s));
    Ok(out)
}

/// `totals` of the one `migration_report_*.json` in `folder`.
fn read_report_totals(folder: &Path) -> Result<Value> {
    let mut reports = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"));
    let path = reports.next().ok_or("the backfill wrote no report")?;
    let report: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    Ok(report["totals"].clone())
}

fn summary_line(rows: usize, m: &Measured) -> String {
    format!(
        "{:.1}s, {:.0} rows/s, peak RSS {}",
        m.seconds,
        rows as f64 / m.seconds,
        m.peak_rss_kb.map_or("?".into(), mb)
    )
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// pgloader with the legacy file into a fresh empty database; why not, when it cannot.
async fn time_pgloader(env: &Env, legacy: &Legacy) -> Result<std::result::Result<Load, String>> {
    let Some(pgloader) = find_program("pgloader") else {
        return Ok(Err(
            "pgloader is not installed (scripts/bench installs Debian's package with apt-get)"
                .into(),
        ));
    };
    let db = env.fresh_database("pgloader", false).await?;
    checkpoint(&db.url).await?;
    // pgloader reads postgresql:// (or pgsql://) URLs; its logs go to our folder.
    let target = db
        .url
        .strip_prefix("postgres://")
        .map_or_else(|| db.url.clone(), |rest| format!("postgresql://{rest}"));
    let mut source = OsString::from("sqlite://");
    source.push(legacy.file.canonicalize()?);
    let mut command = tokio::process::Command::new(pgloader);
    command
        .arg("--root-dir")
        .arg(env.agents_path().join("pgloader"))
        .arg(source)
        .arg(target);
    let measured = measure(command, env.agents_path().join("pgloader.log")).await?;
    let count = scalar(&db.url, "select count(*) from memory").await;
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    match count {
        Ok(n) if measured.success && n == legacy.rows as i64 => {}
        other => {
            return Ok(Err(format!(
                "pgloader {} with {} rows loaded ({other:?}):\n{}",
                if measured.success {
                    "succeeded"
                } else {
                    "failed"
                },
                other.as_ref().map_or(-1, |n| *n),
                log_tail(&measured.log)
            )));
        }
    }
    eprintln!("  pgloader: {}", summary_line(legacy.rows, &measured));
    Ok(Ok(Load {
        name: "pgloader (into an empty database)".into(),
        rows: legacy.rows,
        rows_per_s: legacy.rows as f64 / measured.seconds,
        measured,
        detail: json!({"table": "public.memory, created by pgloader"}),
        statements: None,
    }))
}

/// `psql \copy` of the transformed rows into a fresh migrated database, checked.
async fn time_copy(env: &Env, psql: &Path, file: &Path, rows: usize) -> Result<Load> {
    let db = env.fresh_database("copy", true).await?;
    {
        let mut conn = connect(&db.url).await?;
        sqlx::query(
            "insert into agents (id, name, created_at, updated_at) values ($1, $1, now(), now())",
        )
        .bind(AGENT)
        .execute(&mut conn)
        .await?;
        conn.close().await.ok();
    }
    checkpoint(&db.url).await?;
    let path = file.to_str().ok_or("the COPY file's path is not UTF-8")?;
    let mut command = tokio::process::Command::new(psql);
    command.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &db.url,
        "-c",
        &format!(
            "\\copy agent_memories (id, agent_id, key, content, metadata, created_at, updated_at) from '{}'",
            path.replace('\'', "''")
        ),
    ]);
    let measured = measure(command, env.agents_path().join("copy.log")).await?;
    if !measured.success {
        return Err(format!("psql \\copy failed:\n{}", log_tail(&measured.log)).into());
    }
    let (count, checksum) = memories_checksum(&db.url).await?;
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    if count != rows as i64 {
        return Err(format!("\\copy loaded {count} rows of {rows}").into());
    }
    eprintln!("  psql \\copy: {}", summary_line(rows, &measured));
    Ok(Load {
        name: "psql \\copy (transformed rows)".into(),
        rows,
        rows_per_s: rows as f64 / measured.seconds,
        measured,
        detail: json!({"checksum": checksum}),
        statements: None,
    })
}

/// Prints the tables and ratios, and returns everything as JSON.
#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    legacy: &Legacy,
    stages: &Stages,
    backfill: &Load,
    quarter: &Load,
    quarter_socket: Option<&Load>,
    pgloader: &std::result::Result<Load, String>,
    copy: &Load,
    tries: &[Load],
) -> (Value, Chart) {
    let row = |load: &Load, what: &str| {
        vec![
            load.name.clone(),
            load.rows.to_string(),
            format!("{:.1}", load.measured.seconds),
            format!("{:.0}", load.rows_per_s),
            load.measured.peak_rss_kb.map_or("?".into(), mb),
            what.to_string(),
        ]
    };
    let mut rows = vec![row(backfill, "the timed run: contract tables, every check")];
    match pgloader {
        Ok(load) => rows.push(row(load, "raw rows, table made by pgloader")),
        Err(_) => rows.push(vec![
            "pgloader".into(),
            legacy.rows.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "did not run (see below)".into(),
        ]),
    }
    rows.push(row(copy, "rows already transformed, indexed table"));
    rows.push(row(quarter, "memory flatness; statements profiled"));
    if let Some(load) = quarter_socket {
        rows.push(row(load, "diagnosis: no TCP (Nagle) delay"));
    }
    for load in tries {
        rows.push(row(load, "batch size try"));
    }
    println!(
        "\nloads of the same {} legacy rows ({:.0} MB SQLite file), each a child process into a fresh database\n{}",
        legacy.rows,
        legacy.bytes as f64 / 1e6,
        table(
            &["load", "rows", "seconds", "rows/s", "peak RSS", "what"],
            &rows
        )
    );
    if let Err(why) = pgloader {
        println!("\npgloader did not run: {why}");
    }

    let client = stages.read_seconds + stages.convert_seconds + stages.encode_seconds;
    println!(
        "\nthe backfill's client side alone, in-process over the same file (batches of {}), rows/s\n{}",
        args.batch_size,
        table(
            &["stage", "seconds", "rows/s"],
            &[
                ("read (Source::rows)", stages.read_seconds),
                ("convert (convert_row)", stages.convert_seconds),
                ("encode (COPY text)", stages.encode_seconds),
                ("all three, one after another", client),
            ]
            .iter()
            .map(|(name, secs)| {
                vec![
                    name.to_string(),
                    format!("{secs:.1}"),
                    format!("{:.0}", stages.rate(*secs)),
                ]
            })
            .collect::<Vec<_>>()
        )
    );

    println!("\ntargets");
    let mut ratios = Vec::new();
    let mut target = |name: &str, formula: &str, value: Option<f64>, limit: f64, at_least: bool| {
        let pass = value.map(|v| if at_least { v >= limit } else { v <= limit });
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        println!(
            "  {formula:<58} {:>6}  target {} {limit:.1}  {verdict}",
            value.map_or("-".into(), |v| format!("{v:.2}")),
            if at_least { ">=" } else { "<=" },
        );
        ratios.push(json!({
            "name": name, "formula": formula, "value": value, "target": limit,
            "at_least": at_least, "pass": pass,
        }));
    };
    target(
        "backfill_vs_pgloader",
        "backfill rows/s / pgloader rows/s",
        pgloader
            .as_ref()
            .ok()
            .map(|p| backfill.rows_per_s / p.rows_per_s),
        1.0,
        true,
    );
    target(
        "backfill_vs_copy",
        "backfill rows/s / psql \\copy rows/s",
        Some(backfill.rows_per_s / copy.rows_per_s),
        1.0,
        true,
    );
    let memory_ratio = backfill
        .measured
        .peak_rss_kb
        .zip(quarter.measured.peak_rss_kb)
        .map(|(full, quarter)| full as f64 / quarter as f64);
    target(
        "memory_flat",
        &format!(
            "backfill peak RSS at {} rows / at {} rows",
            backfill.rows, quarter.rows
        ),
        memory_ratio,
        FLAT_LIMIT,
        false,
    );
    println!(
        "  backfill peak RSS: {} at {} rows, {} at {} rows (memory growing with the rows would be ~4x)",
        backfill.measured.peak_rss_kb.map_or("?".into(), mb),
        backfill.rows,
        quarter.measured.peak_rss_kb.map_or("?".into(), mb),
        quarter.rows,
    );

    if let Some(socket) = quarter_socket {
        print_profile(args, quarter, socket);
    }

    let mut loads: Vec<&Load> = vec![backfill];
    loads.extend(pgloader.as_ref().ok());
    loads.push(copy);
    let chart = Chart {
        title: format!(
            "backfill: {} legacy rows into PostgreSQL",
            thousands(legacy.rows as f64, 0)
        ),
        panels: vec![
            Panel {
                title: "rows/s (higher is better)".into(),
                categories: loads.iter().map(|l| short_name(&l.name)).collect(),
                series: vec![Series {
                    name: "rows/s".into(),
                    values: loads.iter().map(|l| Some(l.rows_per_s)).collect(),
                }],
            },
            Panel {
                title: "backfill peak RSS, MB (flat is better)".into(),
                categories: vec![
                    format!("{} rows", quarter.rows),
                    format!("{} rows", backfill.rows),
                ],
                series: vec![Series {
                    name: "peak RSS".into(),
                    values: [quarter, backfill]
                        .iter()
                        .map(|l| l.measured.peak_rss_kb.map(|kb| kb as f64 / 1024.0))
                        .collect(),
                }],
            },
        ],
    };
    let results = json!({
        "args": args,
        "legacy_file": {
            "rows": legacy.rows,
            "bytes": legacy.bytes,
            "mean_content_bytes": legacy.mean_content_bytes,
            "build_seconds": legacy.seconds,
        },
        "client_side": {
            "stages": stages,
            "read_rows_per_s": stages.rate(stages.read_seconds),
            "convert_rows_per_s": stages.rate(stages.convert_seconds),
            "encode_rows_per_s": stages.rate(stages.encode_seconds),
            "all_rows_per_s": stages.rate(client),
        },
        "loads": {
            "backfill": backfill,
            "backfill_quarter": quarter,
            "backfill_quarter_unix_socket": quarter_socket,
            "pgloader": match pgloader {
                Ok(load) => json!(load),
                Err(why) => json!({"did_not_run": why}),
            },
            "copy": copy,
            "batch_size_tries": tries,
        },
        "ratios": ratios,
    });
    (results, chart)
}

/// A load's name up to its first space or parenthesis, for a chart's axis.
fn short_name(name: &str) -> String {
    name.split(" (").next().unwrap_or(name).to_string()
}

/// Where the time of the N/4 runs went, statement by statement, over TCP and over the
/// Unix socket.
fn print_profile(args: &Args, tcp: &Load, socket: &Load) {
    let (over_tcp, over_socket) = (
        tcp.statements.as_deref().unwrap_or_default(),
        socket.statements.as_deref().unwrap_or_default(),
    );
    let rows: Vec<Vec<String>> = over_tcp
        .iter()
        .filter(|k| k.total_s >= 0.05)
        .map(|k| {
            let other = over_socket.iter().find(|o| o.statement == k.statement);
            let cell = |f: fn(&StatementKind) -> f64, digits: usize| {
                other.map_or("-".into(), |o| format!("{:.*}", digits, f(o)))
            };
            vec![
                k.statement.clone(),
                k.count.to_string(),
                format!("{:.1}", k.total_s),
                format!("{:.1}", k.first_tenth_ms),
                format!("{:.1}", k.peak_tenth_ms),
                format!("{:.1}", k.last_tenth_ms),
                cell(|o| o.total_s, 1),
                cell(|o| o.first_tenth_ms, 1),
                cell(|o| o.peak_tenth_ms, 1),
                cell(|o| o.last_tenth_ms, 1),
            ]
        })
        .collect();
    let sum = |p: &[StatementKind]| p.iter().map(|k| k.total_s).sum::<f64>();
    println!(
        "\nwhere the backfill's time goes: server-side durations of its statements \
         (log_min_duration_statement = 0), {} rows in batches of {}, over TCP (as timed above) \
         and over the server's Unix socket (same binary, same rows; no Nagle delay); \
         ms per execution in the first, the slowest and the last tenth of the run\n{}",
        tcp.rows,
        args.batch_size,
        table(
            &[
                "statement",
                "count",
                "TCP s",
                "TCP ms first",
                "peak",
                "last",
                "socket s",
                "socket ms first",
                "peak",
                "last",
            ],
            &rows
        )
    );
    println!(
        "  wall time: TCP {:.1}s ({:.0} rows/s), of which statements {:.1}s; \
         Unix socket {:.1}s ({:.0} rows/s), of which statements {:.1}s; \
         the rest is the client (read, convert, encode) and round trips",
        tcp.measured.seconds,
        tcp.rows_per_s,
        sum(over_tcp),
        socket.measured.seconds,
        socket.rows_per_s,
        sum(over_socket),
    );
}
