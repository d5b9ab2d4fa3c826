//! Moves every legacy SQLite database under an agents path into PostgreSQL.
//!
//! ```text
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --agents-path ./agents --dry-run
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --agents-path ./agents --backup
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --agents-path ./agents
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --agents-path ./agents --verify
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --rollback RUN_ID
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --fill-embeddings hash:384
//! cargo run --release --example backfill -- --postgres-url "$DATABASE_URL" --agents-path ./agents --follow
//! ```
//!
//! `--follow` keeps catching up, a round every `--interval` seconds (default 2), until
//! SIGINT or SIGTERM: the round in progress stops after its current file, is recorded as
//! `stopped`, the last round's report is written, and the program exits 0 (1 when that
//! round failed rows, 3 when it could not use some files); a second signal exits at once with 130, rolling back
//! the batch in flight. A report file is written for each round that moved something or
//! failed differently from the round before. A run without `--follow` stops the same
//! way on a signal, and then exits 1 (not every file was read). `--source NAME` names
//! the agents tree, kept apart from other trees with the same relative paths (ids and
//! `metadata.source`); `--verify` with it compares that tree's rows only.
//!
//! `--legacy-embeddings` decodes embeddings found in legacy memory tables (float32 BLOBs
//! or JSON arrays in a column `embedding`, `vector` or `embeddings`) instead of leaving
//! `embedding` null. `--fill-embeddings EMBEDDER` fills every null embedding in
//! PostgreSQL (of `--agent`, or all) and prints what it did as JSON; the built-in
//! embedder is `hash:DIMS`, a deterministic one for trials (a real model is an
//! `memshift::Embedder` of your own, passed to `memshift::vector::fill_embeddings`).
//!
//! Reads `DATABASE_URL` (for `--postgres-url`), `AGENTS_PATH` (for `--agents-path`,
//! default `./agents`, as the agents and memctl read it), `MIGRATION_BATCH_SIZE` (rows per
//! transaction, default 1000), `MIGRATION_TIMEOUT` (seconds per batch, default 300) and
//! `MIGRATION_BACKUP_PATH` (for `--backup`, default `./backups`);
//! `RUST_LOG` sets the log level (default `info,sqlx=warn`). Writes
//! `migration_report_<run id>.json` in `--report-dir` (default `.`), which is checked
//! (a writable folder) before anything is read or written.
//!
//! Exit status (also in `--help`):
//!
//! - 0: every readable row is in PostgreSQL and every file was read (a dry run: its
//!   report was written; it lists problem files, with the reason for each);
//! - 1: rows failed, a file's reading stopped part way (a signal too), `--verify` found
//!   differences, `--backup` could not copy a file, or `--strict` found tables neither
//!   mapped nor excluded (the report or the output says which);
//! - 2: an error stopped the run (arguments, the database, the report folder);
//! - 3: every readable row is in PostgreSQL, but some files could not be used at all
//!   (unreadable, corrupt, not SQLite, not a regular file, a symbolic link out of the
//!   agents path, no agent name): the report gives each one's reason. With `--backup`,
//!   such files were not backed up; with `--follow`, the last round had such files;
//! - 130: a second SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use memshift::backfill::{self, BackfillOptions, Progress, Report, Round, Stop, backup};
use memshift::{Chain, Error};

#[derive(Debug, Parser)]
#[command(
    name = "backfill",
    about = "Move legacy agent SQLite databases into PostgreSQL",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Folder of agent folders to scan: the agents' own AGENTS_PATH unless given.
    #[arg(long, env = "AGENTS_PATH", default_value = memshift::config::DEFAULT_AGENTS_PATH)]
    agents_path: PathBuf,
    /// Read everything and report what would be migrated; write nothing to PostgreSQL.
    #[arg(long)]
    dry_run: bool,
    /// Back up every legacy file (SQLite's backup API, safe while agents run) with a
    /// manifest of checksums, backup_sqlite.sh and restore_sqlite.sh; migrate nothing.
    #[arg(long)]
    backup: bool,
    /// Where backups go.
    #[arg(long, env = "MIGRATION_BACKUP_PATH", default_value = "./backups")]
    backup_path: PathBuf,
    /// Apply the shipped PostgreSQL migrations first.
    #[arg(long)]
    migrate: bool,
    /// Rows per batch (one transaction each).
    #[arg(long, env = "MIGRATION_BATCH_SIZE", default_value_t = 1000)]
    batch_size: usize,
    /// Seconds one batch may take.
    #[arg(long, env = "MIGRATION_TIMEOUT", default_value_t = 300)]
    timeout: u64,
    /// Migrate a legacy table, and say how: TABLE=TARGET (memories, tools, metrics,
    /// executions), then options after `;`: key=COLUMN[+COLUMN...]|none (the memory key,
    /// tool or metric name, execution status; several joined with sep=TEXT, default /),
    /// time=COLUMN|none (the row's time; a UUID v1/v6/v7 holds one), json (BLOBs holding
    /// UTF-8 JSON move as JSON), files=GLOB (only files whose path, or name for a glob
    /// without /, matches; * within a folder, ** across). Table names match without regard
    /// to case; quote a name holding = ; + in "..." ("" for a quote). Example:
    /// --map 'store=memories;key=prefix+key;time=updated_at;json;files=graph.db'.
    /// Repeatable; the first that matches a table wins. Without --map or --exclude, a run
    /// or --verify reuses the maps of the latest run recorded for the same agents path.
    #[arg(long = "map", value_name = "TABLE=TARGET[;OPTION...]")]
    maps: Vec<String>,
    /// Leave out on purpose: TABLE, TABLE;files=GLOB, or files=GLOB (every table of those
    /// files). Wins over --map. Repeatable.
    #[arg(long = "exclude", value_name = "TABLE|files=GLOB")]
    excludes: Vec<String>,
    /// Fail, naming them, when any legacy table is neither mapped nor excluded (a dry run
    /// still reports, then exits 1; a run stops before loading anything).
    #[arg(long)]
    strict: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = ".")]
    report_dir: PathBuf,
    /// Compare every legacy table with PostgreSQL (row counts and content checksums), and
    /// every record of the library's own files (each looked up); exit 1 naming each
    /// difference, or when nothing was found to compare.
    #[arg(long)]
    verify: bool,
    /// Delete exactly the rows of one earlier run, by its id (from its report).
    #[arg(long, value_name = "RUN_ID")]
    rollback: Option<String>,
    /// Decode embeddings found in legacy memory tables into the embedding column.
    #[arg(long)]
    legacy_embeddings: bool,
    /// Fill every null embedding in PostgreSQL with this embedder (`hash:DIMS`), then exit.
    #[arg(long, value_name = "EMBEDDER")]
    fill_embeddings: Option<String>,
    /// With --fill-embeddings: only this agent's memories.
    #[arg(long, value_name = "NAME")]
    agent: Option<String>,
    /// With --fill-embeddings: memories per embedder call.
    #[arg(long, default_value_t = 256)]
    fill_batch_size: usize,
    /// The name of this agents tree (letters, digits, '.', '_', '-'): kept apart from
    /// other trees with the same relative paths (two hosts, say), in ids and
    /// metadata.source.
    #[arg(long, value_name = "NAME", default_value = "")]
    source: String,
    /// Keep catching up, a round every --interval seconds, until SIGINT or SIGTERM.
    #[arg(long, conflicts_with_all = ["dry_run", "backup", "verify", "rollback", "fill_embeddings"])]
    follow: bool,
    /// With --follow: seconds between rounds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "follow"
    )]
    interval: f64,
}

/// The exit statuses, as `--help` shows them.
const EXIT_STATUS: &str = "Exit status:
  0  every readable row is in PostgreSQL, every file was read (a dry run: report written)
  1  rows failed, a file's reading stopped part way (a signal too), --verify found
     differences, --backup could not copy a file, or --strict found unmapped tables
  2  an error stopped the run (arguments, the database, the report folder)
  3  every readable row is in, but some files could not be used at all (unreadable,
     corrupt, not SQLite, not a regular file, a link out of the agents path, no agent);
     the report gives each reason (with --backup: those files were not backed up)
  130  a second SIGINT or SIGTERM";

/// Exit status 3: files that could not be used at all.
const UNUSABLE_FILES: u8 = 3;

/// The embedder named on the command line.
fn embedder(spec: &str) -> Result<memshift::vector::HashEmbedder, Error> {
    let dims = spec
        .strip_prefix("hash:")
        .and_then(|d| d.parse::<usize>().ok())
        .ok_or_else(|| Error::InvalidInput {
            what: "--fill-embeddings",
            reason: format!(
                "{spec:?} is not an embedder; the built-in one is hash:DIMS, e.g. hash:384"
            ),
        })?;
    memshift::vector::HashEmbedder::new(dims)
}

/// Progress on standard error: a bar (rows and rows/s) on a terminal, a log line every
/// few seconds otherwise.
enum ShowProgress {
    Bar(indicatif::ProgressBar),
    Lines {
        rows: AtomicU64,
        started: Instant,
        last: std::sync::Mutex<Instant>,
    },
}

impl ShowProgress {
    async fn new(options: &BackfillOptions) -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // The bar's length comes from counting the rows (SQLite's count(*), no row
            // read); logs and benchmarks are spared even that.
            let total = backfill::count_rows(options).await;
            return Self::bar(total, "rows");
        }
        Self::lines()
    }

    fn bar(total: u64, unit: &str) -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    &format!("{{elapsed_precise}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit}, {{per_sec}}, eta {{eta}}"),
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            return ShowProgress::Bar(bar);
        }
        Self::lines()
    }

    fn lines() -> Self {
        ShowProgress::Lines {
            rows: AtomicU64::new(0),
            started: Instant::now(),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn finish(&self) {
        if let ShowProgress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Progress for ShowProgress {
    fn rows(&self, n: u64) {
        match self {
            ShowProgress::Bar(bar) => bar.inc(n),
            ShowProgress::Lines {
                rows,
                started,
                last,
            } => {
                let total = rows.fetch_add(n, Ordering::Relaxed) + n;
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "backfill: {total} rows read, {:.0} rows/s",
                        total as f64 / secs
                    );
                }
            }
        }
    }
}

fn options(cli: &Cli) -> Result<BackfillOptions, Error> {
    let mut options = BackfillOptions::new(&cli.agents_path);
    options.read.batch_size = cli.batch_size.max(1);
    options.timeout = Duration::from_secs(cli.timeout.max(1));
    options.legacy_embeddings = cli.legacy_embeddings;
    backfill::check_source(&cli.source)?;
    options.source = cli.source.clone();
    for map in &cli.maps {
        options.map = options.map.clone().with_map(map)?;
    }
    for exclude in &cli.excludes {
        options.map = options.map.clone().with_exclude(exclude)?;
    }
    Ok(options)
}

/// Checks the maps against the tables found, before anything is loaded: a map or
/// exclude that meets nothing stops the run; with --strict, so does a table neither
/// mapped nor excluded (in a dry run, the returned list is reported at its end).
async fn check_maps(cli: &Cli, options: &BackfillOptions) -> Result<Vec<String>, Error> {
    let files = memshift::legacy::survey(&options.agents_path, &options.read).await;
    let check = options.map.check(&files);
    if !check.problems.is_empty() {
        return Err(Error::InvalidInput {
            what: "--map",
            reason: check.problems.join("; "),
        });
    }
    let unmapped: Vec<String> = check
        .unmapped
        .iter()
        .map(|(file, table)| {
            let info = files
                .iter()
                .find(|f| &f.source_db == file)
                .and_then(|f| f.tables.iter().find(|t| &t.name == table));
            let hint = info
                .and_then(|t| memshift::legacy::suggest(file, t, None))
                .map(|s| format!(" (e.g. {})", s.argument()))
                .unwrap_or_default();
            format!("{file} table {table:?}{hint}")
        })
        .collect();
    if cli.strict && !unmapped.is_empty() && !cli.dry_run {
        return Err(Error::InvalidInput {
            what: "--strict",
            reason: format!(
                "{} tables are neither mapped nor excluded: {}",
                unmapped.len(),
                unmapped.join("; ")
            ),
        });
    }
    Ok(unmapped)
}

/// Without --map or --exclude, the maps of the latest run recorded for this agents path.
async fn reuse_maps(cli: &Cli, url: &str, options: &mut BackfillOptions) -> Result<(), Error> {
    if !cli.maps.is_empty() || !cli.excludes.is_empty() {
        return Ok(());
    }
    if let Some((run, map)) = backfill::recorded_map(url, options).await?
        && !map.is_empty()
    {
        let lines: Vec<String> = map
            .maps()
            .iter()
            .map(|m| format!("--map '{m}'"))
            .chain(map.excludes().iter().map(|e| format!("--exclude '{e}'")))
            .collect();
        eprintln!(
            "backfill: no --map or --exclude given: using those of run {run}: {}",
            lines.join(" ")
        );
        options.map = map;
    }
    Ok(())
}

fn summary(report: &Report) {
    let t = &report.totals;
    eprintln!(
        "backfill: {} files ({} unusable), {} tables ({} not migrated, {} unchanged since the last run), {} rows read, {} inserted, {} updated, {} deleted, {} already present, {} unchanged since the last run, {} outranked by the library, {} failed, {:.1} s ({:.0} rows/s)",
        t.files,
        t.problem_files,
        t.tables,
        t.skipped_tables,
        t.unchanged_tables,
        t.read,
        t.inserted,
        t.updated,
        t.deleted,
        t.already_present,
        t.unchanged_rows,
        t.outranked,
        t.failed,
        t.seconds,
        t.rows_per_second
    );
    for file in &report.files {
        if let Some(problem) = &file.problem {
            eprintln!("backfill: unusable: {}: {problem}", file.source_db);
        }
    }
    if t.claimed_elsewhere > 0 {
        eprintln!(
            "backfill: {} files left to a concurrent backfill worker that holds them",
            t.claimed_elsewhere
        );
    }
    for run in &report.abandoned {
        eprintln!(
            "backfill: earlier run {run} was left running by a worker that is gone: marked abandoned"
        );
    }
    for warning in &report.warnings {
        eprintln!("backfill: warning: {warning}");
    }
    for file in &report.files {
        for table in &file.tables {
            if let Some(map) = &table.suggested_map {
                let rows = match report.dry_run {
                    true => format!(" ({} rows)", table.read),
                    false => String::new(),
                };
                eprintln!(
                    "backfill: unmapped: {} table {:?}{rows}: {map}",
                    file.source_db, table.table
                );
            }
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Error> {
    let mut options = options(&cli)?;
    let writes_report =
        !cli.backup && cli.rollback.is_none() && !cli.verify && cli.fill_embeddings.is_none();
    if writes_report {
        // Before anything is read or written: a report that cannot be written would be
        // found only after every row was committed.
        backfill::check_report_dir(&cli.report_dir)?;
    }
    if cli.backup {
        let found = memshift::legacy::discover(&options.agents_path, &options.read).await;
        let mut unusable = 0;
        for file in &found {
            if let memshift::legacy::Probe::Problem(why) = &file.probe {
                eprintln!("backfill: not backed up: {}: {why}", file.source_db);
                unusable += 1;
            }
        }
        let sources: Vec<PathBuf> = found
            .iter()
            .filter(|f| !matches!(f.probe, memshift::legacy::Probe::Problem(_)))
            .map(|f| PathBuf::from(&f.source_db))
            .collect();
        std::fs::create_dir_all(&cli.backup_path).map_err(|e| Error::InvalidInput {
            what: "--backup-path",
            reason: format!("cannot create {}: {e}", cli.backup_path.display()),
        })?;
        let backup = backup::backup(
            &options.agents_path,
            &sources,
            &cli.backup_path,
            chrono::Utc::now(),
        )
        .await?;
        let failed: Vec<_> = backup.failed().collect();
        eprintln!(
            "backfill: backed up {} of {} files into {}; restore with: bash {}",
            backup.files.len() - failed.len(),
            backup.files.len(),
            backup.dir.display(),
            backup.restore_script.display()
        );
        for file in &failed {
            eprintln!("backfill: not backed up: {}", file.source_db);
        }
        println!("{}", backup.dir.display());
        return Ok(match (failed.is_empty(), unusable) {
            (false, _) => 1,
            (true, 0) => 0,
            (true, _) => UNUSABLE_FILES,
        });
    }
    if cli.dry_run {
        let unmapped = check_maps(&cli, &options).await?;
        let report = backfill::dry_run(&options).await;
        summary(&report);
        println!("{}", report.write(&cli.report_dir)?.display());
        if cli.strict && !unmapped.is_empty() {
            eprintln!(
                "backfill: --strict: {} tables are neither mapped nor excluded",
                unmapped.len()
            );
            return Ok(1);
        }
        return Ok(0);
    }
    let url = cli.postgres_url.as_deref().ok_or_else(|| Error::Config {
        message: "no PostgreSQL URL: pass --postgres-url or set DATABASE_URL".into(),
    })?;
    if let Some(run_id) = &cli.rollback {
        let deleted = backfill::rollback(url, run_id).await?;
        println!(
            "{}",
            serde_json::json!({ "rolled_back": run_id, "deleted": deleted })
        );
        return Ok(0);
    }
    if cli.fill_embeddings.is_none() {
        reuse_maps(&cli, url, &mut options).await?;
    }
    if cli.verify {
        check_maps(&cli, &options).await?;
        let verification = backfill::verify(url, &options).await?;
        for check in verification.tables.iter().filter(|c| !c.same) {
            eprintln!(
                "backfill: differs: agent {} file {} table {} -> {}: {}",
                check.agent,
                check.source_db,
                check.table,
                check.target,
                check.difference.as_deref().unwrap_or_default()
            );
        }
        for (file, why) in &verification.problems {
            eprintln!("backfill: cannot verify {file}: {why}");
        }
        if verification.tables.is_empty() {
            eprintln!(
                "backfill: nothing verified: no table to compare in any SQLite file under {}",
                options.agents_path.display()
            );
        } else {
            let differ = verification.tables.iter().filter(|t| !t.same).count();
            let newer: u64 = verification
                .tables
                .iter()
                .map(|t| t.newer_in_postgres)
                .sum();
            eprintln!(
                "backfill: compared {} rows in {} tables: {differ} tables differ, {} files \
                 not verified, {newer} rows have a later write in PostgreSQL",
                verification.rows(),
                verification.tables.len(),
                verification.problems.len(),
            );
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&verification).unwrap_or_default()
        );
        return Ok(if verification.passed() { 0 } else { 1 });
    }
    if cli.migrate {
        memshift::migrate_url(url).await?;
    }
    if let Some(spec) = &cli.fill_embeddings {
        let embedder = embedder(spec)?;
        let backend = memshift::PostgresBackend::connect(url).await?;
        let fill = memshift::vector::FillOptions {
            batch_size: cli.fill_batch_size.max(1),
            agent: cli
                .agent
                .as_deref()
                .map(memshift::AgentId::new)
                .transpose()?,
            ..Default::default()
        };
        let missing = memshift::vector::missing_embeddings(&backend, fill.agent.as_ref()).await?;
        let progress = ShowProgress::bar(missing, "memories");
        let report = memshift::vector::fill_embeddings(&backend, &embedder, &fill, &progress).await;
        progress.finish();
        let report = report?;
        eprintln!(
            "backfill: filled {} of {} embeddings missing ({} changed meanwhile, left for the next run) in {:.1} s",
            report.filled, missing, report.changed_meanwhile, report.seconds
        );
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(0);
    }
    check_maps(&cli, &options).await?;
    stop_on_signals(&options.stop);
    if cli.follow {
        return follow(url, &cli, &options).await;
    }
    let progress = ShowProgress::new(&options).await;
    let report = backfill::run(url, &options, &progress).await;
    progress.finish();
    let report = report?;
    summary(&report);
    println!("{}", report.write(&cli.report_dir)?.display());
    Ok(if !report.succeeded() || options.stop.is_requested() {
        1
    } else if report.unusable_files() {
        UNUSABLE_FILES
    } else {
        0
    })
}

/// On SIGINT or SIGTERM, requests `stop`; on a second one, exits at once with 130.
fn stop_on_signals(stop: &Stop) {
    let stop = stop.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let (mut interrupt, mut terminate) = {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
                _ => return,
            }
        };
        #[cfg(unix)]
        let mut signalled = async || {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        };
        #[cfg(not(unix))]
        let signalled = async || {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        };
        let first = signalled().await;
        eprintln!(
            "backfill: {first}: stopping after the current batch (a second signal stops at once)"
        );
        stop.request();
        let second = signalled().await;
        eprintln!("backfill: {second}: stopping at once; the batch in flight rolls back");
        std::process::exit(130);
    });
}

/// `--follow`: rounds until a signal, a line per round that moved something (idle rounds
/// a line a minute), a report file per recorded round and for the last one.
async fn follow(url: &str, cli: &Cli, options: &BackfillOptions) -> Result<u8, Error> {
    let interval = Duration::try_from_secs_f64(cli.interval)
        .ok()
        .filter(|i| !i.is_zero())
        .ok_or_else(|| Error::InvalidInput {
            what: "--interval",
            reason: format!("{} is not a number of seconds above 0", cli.interval),
        })?;
    eprintln!(
        "backfill: following {} every {:.1} s until SIGINT or SIGTERM",
        options.agents_path.display(),
        interval.as_secs_f64()
    );
    let progress = ShowProgress::lines();
    // The last round's report, and whether its file was written.
    let mut last: Option<(Report, bool)> = None;
    let mut idle = Idle::default();
    let following = backfill::follow(url, options, interval, &progress, |round: &Round| {
        let report = match &round.outcome {
            Ok(report) => report,
            Err(err) => {
                eprintln!(
                    "backfill: round {} did not run: {}",
                    round.number,
                    Chain(err)
                );
                return Ok(());
            }
        };
        let written = if round.recorded {
            idle.reset();
            round_summary(round.number, report);
            let path = report.write(&cli.report_dir)?;
            println!("{}", path.display());
            true
        } else {
            idle.tick(report);
            false
        };
        last = Some((report.clone(), written));
        Ok(())
    })
    .await?;
    let mut code: u8 = 0;
    if let Some((report, written)) = last {
        if !written {
            println!("{}", report.write(&cli.report_dir)?.display());
        }
        if !report.succeeded() {
            code = 1;
        } else if report.unusable_files() {
            code = UNUSABLE_FILES;
        }
    }
    eprintln!(
        "backfill: follow {} stopped after {} rounds ({} recorded, {} could not run)",
        following.id, following.rounds, following.recorded_rounds, following.failed_rounds
    );
    Ok(code)
}

/// One line for a round that moved something, then its problems and warnings.
fn round_summary(number: u64, report: &Report) {
    let t = &report.totals;
    eprintln!(
        "backfill: round {number} ({}): {} files, {} rows read, {} inserted, {} updated, {} deleted, {} failed, {:.2} s",
        report.run_id, t.files, t.read, t.inserted, t.updated, t.deleted, t.failed, t.seconds
    );
    for file in &report.files {
        if let Some(problem) = &file.problem {
            eprintln!("backfill: unusable: {} {problem}", file.source_db);
        }
    }
    for warning in &report.warnings {
        eprintln!("backfill: warning: {warning}");
    }
}

/// Idle rounds in a row: shown once when they start, then once a minute.
#[derive(Default)]
struct Idle {
    rounds: u64,
    shown: Option<Instant>,
}

impl Idle {
    fn reset(&mut self) {
        *self = Idle::default();
    }

    fn tick(&mut self, report: &Report) {
        self.rounds += 1;
        if self
            .shown
            .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.shown = Some(Instant::now());
        eprintln!(
            "backfill: {} idle rounds: nothing new in {} files (last round {:.2} s)",
            self.rounds, report.totals.files, report.totals.seconds
        );
    }
}

// `pub(crate)`: src/bin/backfill.rs runs it as the installed program.
pub(crate) fn main() -> ExitCode {
    ExitCode::from(run_program("backfill", std::env::args_os()))
}

/// Runs the program as `name` on `args` (the first being the program's own name, as in
/// `std::env::args_os`) and returns its exit status; the Python package's
/// `python -m memshift.migrate` runs it this way. Logs go to stderr (`RUST_LOG`), unless
/// the process already set up its own.
pub(crate) fn run_program(
    name: &'static str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> u8 {
    use clap::{CommandFactory, FromArgMatches};

    // A second run in the same process keeps the first run's subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::command()
        .name(name)
        .bin_name(name)
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version print to stdout and succeed; the rest are usage errors.
            let _ = err.print();
            return u8::try_from(err.exit_code()).unwrap_or(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the async runtime: {err}");
            return 2;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("backfill: {}", Chain(&err));
            2
        }
    }
}
