//! The bulk backfill: every legacy SQLite database under an agents path into the
//! PostgreSQL contract tables, exactly per `docs/contract.md`.
//!
//! - [`run`] discovers the files (see [`crate::legacy`]), claims each for one worker (a
//!   PostgreSQL session lock, so several processes share the work and a dead worker's
//!   files are free again), reads them batch by batch without disturbing running
//!   agents, and loads each batch in one transaction: an array insert into a staging table, key and
//!   name conflicts settled, then an insert of the rows not there yet. Ids are
//!   deterministic, so a re-run, a concurrent run or lazy migration never makes a second
//!   copy; each inserted row records the run in `metadata.migration_run`. Tables a run
//!   finished are recorded in `agent_memory.backfill_progress` and skipped next time.
//!   A file another worker holds is left to it ([`FileReport::claimed_elsewhere`]). Each
//!   run is a row of `agent_memory.backfill_runs` and holds a session lock of its own
//!   while it lives: a run left `running` whose lock no one holds (its worker was
//!   killed) is marked `abandoned` by the next run ([`Report::abandoned`]).
//! - Files of the library's own layout move as themselves, over older versions only;
//!   a row whose id another agent holds (a copied agent folder) gets an id of its
//!   agent's own ([`copied_row_id`](crate::backend::postgres::copied_row_id)).
//! - [`dry_run`] reads everything and writes nothing to PostgreSQL.
//! - [`rollback`] deletes exactly one run's rows.
//! - [`follow`] runs catch-up runs one after another until its [`Stop`] is requested.

mod catchup;
mod engine;
mod follow;
mod load;
mod report;
mod sources;
mod verify;

/// The backup that `--backup` makes before a run, at its former place.
pub use crate::backup;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use engine::SECOND_CONNECTION;
pub use follow::{Following, Round, follow};
pub use report::{Failure, FileReport, Report, TableReport, Totals, check_report_dir};
pub use sources::check_source;
pub use verify::{TableCheck, Verification, verify};

pub use crate::progress::Progress;

use crate::backend::{PgTarget, PostgresBackend, PostgresOptions};
use crate::error::{Error, Result};
use crate::legacy::{ReadOptions, TableMap};

/// Why a table of another name is not migrated, and what to do about it.
pub(crate) const UNMAPPED: &str = "unmapped: not a contract table (map it with --map TABLE=TARGET)";

/// The warning of a run stopped on request.
pub(crate) const STOPPED: &str = "stopped on request: files after the last one listed were \
     not read; a later run (or --follow) moves them";

/// What a backfill reads and how it loads.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The folder of agent folders.
    pub agents_path: PathBuf,
    /// Legacy tables of other names to migrate, and where.
    pub map: TableMap,
    /// Rows per batch (one transaction each) and the busy timeout for reading.
    pub read: ReadOptions,
    /// Longest one batch may take before it counts as failed.
    pub timeout: Duration,
    /// Decode embeddings found in legacy memory tables (a column named `embedding`,
    /// `vector` or `embeddings` holding float32 BLOBs or JSON arrays) into the
    /// `embedding` column, instead of leaving it null for the fill pass. The column stays
    /// in `content` either way.
    pub legacy_embeddings: bool,
    /// The name of the agents tree being read (`--source`), recorded as
    /// `metadata.source` and part of every row's id; empty for the unnamed source.
    pub source: String,
    /// Set to end the run early: it stops between files (the file being read finishes,
    /// each batch commits or rolls back whole) and is recorded as `stopped`.
    pub stop: Stop,
}

/// A request to stop a backfill early, shared by its clones: a signal handler requests
/// it, the run checks it between files, and [`follow`] waits on it between rounds.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    requested: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Stop {
    /// A stop not requested yet.
    pub fn new() -> Self {
        Stop::default()
    }

    /// Requests the stop, for every clone.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.0.wake.notify_waiters();
    }

    /// True once the stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Returns when the stop is requested (at once if it already was).
    pub async fn requested(&self) {
        let wake = self.0.wake.notified();
        let mut wake = std::pin::pin!(wake);
        // Registered before the check, so a request between the two is not missed.
        wake.as_mut().enable();
        if !self.is_requested() {
            wake.await;
        }
    }
}

impl BackfillOptions {
    /// Defaults: batches of 1,000 rows, 300 s per batch, the contract's table names.
    pub fn new(agents_path: impl Into<PathBuf>) -> Self {
        BackfillOptions {
            agents_path: agents_path.into(),
            map: TableMap::new(),
            read: ReadOptions {
                batch_size: 1000,
                ..ReadOptions::default()
            },
            timeout: Duration::from_secs(300),
            legacy_embeddings: false,
            source: String::new(),
            stop: Stop::new(),
        }
    }
}

/// Reads every legacy file and reports what a run would migrate (agents, files, tables,
/// row counts, unmapped tables, rows whose time cannot be read or lies in the future):
/// the same pipeline as [`run`], reading and converting every row the same way, with a
/// loader that writes nothing. Touches no database.
pub async fn dry_run(options: &BackfillOptions) -> Report {
    let report = engine::empty_report(options, new_run_id("dry-run-"), None, true);
    let mut worker = engine::Run {
        options,
        db: None,
        report,
        progress: &(),
    };
    // Without a database nothing in a run can fail as a whole.
    let _ = worker.all().await;
    let mut report = worker.report;
    report.finish();
    report
}

/// The rows a run would read: every row of every mapped table and of every file of the
/// library's own layout, counted (SQLite's `count(*)`, no row read). What a progress bar
/// is sized by; files that cannot be read count as nothing.
pub async fn count_rows(options: &BackfillOptions) -> u64 {
    let mut total = 0;
    for found in crate::legacy::find(&options.agents_path) {
        if matches!(found.probe, crate::legacy::Probe::Problem(_)) {
            continue;
        }
        let Ok(mut source) = crate::legacy::Source::open(&found.path, &options.read).await else {
            continue;
        };
        let tables: Vec<String> = match source.probe().await {
            Err(_) | Ok(crate::legacy::Probe::Problem(_)) => continue,
            Ok(crate::legacy::Probe::Own) => crate::legacy::Target::ALL
                .iter()
                .map(|t| t.table().to_string())
                .collect(),
            Ok(crate::legacy::Probe::Legacy | crate::legacy::Probe::Unopened) => {
                match source.tables().await {
                    Ok(tables) => tables
                        .into_iter()
                        .filter(|t| t.skip_reason().is_none())
                        .filter(|t| options.map.spec(&found.source_db, &t.name).is_some())
                        .map(|t| t.name)
                        .collect(),
                    Err(_) => continue,
                }
            }
        };
        for table in tables {
            total += source.count(&table).await.unwrap_or(0);
        }
    }
    total
}

/// Migrates every legacy file under the agents path into the database at `url`.
///
/// The contract tables must exist (see [`crate::migrate_url`]); the library's bookkeeping
/// is created when missing. Problems with one file, table or batch are reported in the
/// [`Report`] and the rest carries on; transient database errors are retried with
/// backoff first.
///
/// # Errors
/// When the database cannot be reached, lacks the contract tables, or the run cannot be
/// recorded.
pub async fn run(url: &str, options: &BackfillOptions, progress: &dyn Progress) -> Result<Report> {
    let target = PgTarget::parse(url)?;
    let backend = PostgresBackend::connect_to(
        target.clone(),
        PostgresOptions {
            max_connections: 2,
            ..PostgresOptions::default()
        },
    )
    .await?;
    let run_id = new_run_id("");
    // The run's own session lock, held on a connection of its own for the run's life:
    // taken before the run is recorded as `running`, so a later run that can take it
    // knows this one's worker is gone.
    let mut alive = engine::connect(url).await?;
    let mut abandoned = Vec::new();
    let record = |e: sqlx::Error| backend.error("record the backfill run", e);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "select pg_advisory_lock({RUN_KEY})"
    )))
    .bind(&run_id)
    .execute(&mut alive)
    .await
    .map_err(record)?;
    let tree = sources::Tree::of(options)?;
    sqlx::query(
        "insert into agent_memory.backfill_runs (id, status, source, host, agents_path)
         values ($1, 'running', $2, $3, $4)",
    )
    .bind(&run_id)
    .bind(&options.source)
    .bind(&tree.host)
    .bind(&tree.agents_path)
    .execute(backend.pool())
    .await
    .map_err(record)?;
    // Which files other trees moved last, read before this run moves them itself.
    let earlier = tree.earlier(backend.pool()).await;
    // What the run was asked, so --verify and later runs can reuse its maps.
    sqlx::query("update agent_memory.backfill_runs set options = $2 where id = $1")
        .bind(&run_id)
        .bind(sqlx::types::Json(recorded_options(options)))
        .execute(backend.pool())
        .await
        .map_err(record)?;
    let running: Vec<String> = sqlx::query_scalar(
        "select id from agent_memory.backfill_runs
         where status in ('running', 'following') and id <> $1 order by started_at",
    )
    .bind(&run_id)
    .fetch_all(&mut alive)
    .await
    .map_err(record)?;
    for other in running {
        if mark_abandoned(&mut alive, &other).await.map_err(record)? {
            tracing::warn!(run = %other, "an earlier backfill run was left running by a worker that is gone; marked abandoned");
            abandoned.push(other);
        }
    }
    let shown = Some(target.url.shown().to_string());
    let mut report = engine::empty_report(options, run_id.clone(), shown, false);
    report.abandoned = abandoned;
    let mut worker = engine::Run {
        options,
        db: Some(engine::Db {
            target: &target,
            backend: &backend,
            conn: engine::Run::connect(&target).await?,
            agent_ids: Default::default(),
            beside: Default::default(),
        }),
        report,
        progress,
    };
    let outcome = worker.all().await;
    let mut report = worker.report;
    report.finish();
    report.warnings.extend(earlier.warnings(&report));
    let stopped = options.stop.is_requested();
    if stopped {
        report.warnings.push(STOPPED.into());
    }
    let status = match (&outcome, report.succeeded()) {
        (Err(_), _) => "failed",
        (Ok(()), _) if stopped => "stopped",
        (Ok(()), true) => "succeeded",
        (Ok(()), false) => "incomplete",
    };
    sqlx::query(
        "update agent_memory.backfill_runs set status = $2, finished_at = now(), report = $3
         where id = $1",
    )
    .bind(&run_id)
    .bind(status)
    .bind(sqlx::types::Json(&report))
    .execute(backend.pool())
    .await
    .map_err(record)?;
    let _ = sqlx::Connection::close(alive).await;
    backend.close().await;
    outcome.map(|()| report)
}

/// A new run id: `prefix`, the UTC time to the second, and 8 random hex digits.
pub(crate) fn new_run_id(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// What a run records of its options (`agent_memory.backfill_runs.options`): its maps
/// and excludes as text, and the options that change what rows become.
fn recorded_options(options: &BackfillOptions) -> serde_json::Value {
    serde_json::json!({
        "map": options.map,
        "legacy_embeddings": options.legacy_embeddings,
        "source": options.source,
        "batch_size": options.read.batch_size,
    })
}

/// The maps of the latest run recorded for this agents path, host and source (`--verify` and
/// a later run given no `--map` or `--exclude` reuse them): that run's id and its map,
/// or `None` when no run recorded one.
///
/// # Errors
/// When the database cannot be read, or the recorded map no longer parses.
pub async fn recorded_map(
    url: &str,
    options: &BackfillOptions,
) -> Result<Option<(String, TableMap)>> {
    let tree = sources::Tree::of(options)?;
    let mut conn = engine::connect(url).await?;
    let target = PgTarget::parse(url)?;
    let row = sqlx::query_as::<_, (String, sqlx::types::Json<serde_json::Value>)>(
        "select id, options from agent_memory.backfill_runs
         where options->'map' is not null and agents_path = $1 and source = $2
           and host is not distinct from $3
         order by started_at desc, id desc limit 1",
    )
    .bind(&tree.agents_path)
    .bind(&tree.source)
    .bind(&tree.host)
    .fetch_optional(&mut conn)
    .await;
    let row = match row {
        // No bookkeeping yet: no run recorded anything.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => None,
        row => row.map_err(|e| {
            Error::database(
                "postgres",
                "read the maps of earlier runs",
                e,
                Some(&target.url),
            )
        })?,
    };
    let Some((run, sqlx::types::Json(recorded))) = row else {
        return Ok(None);
    };
    let map = serde_json::from_value(recorded["map"].clone()).map_err(|e| {
        Error::invalid(
            "recorded map",
            format!("run {run}'s maps no longer read: {e}"),
        )
    })?;
    Ok(Some((run, map)))
}

/// The key of run `$1`'s session lock, held while its worker lives.
pub(crate) const RUN_KEY: &str = "hashtextextended('agent_memory.backfill-run:' || $1, 0)";

/// Marks run `run`, recorded as `running` (or a follow, `following`), `abandoned` when no
/// session holds its lock (its worker was killed, or lost its connection for good);
/// returns whether it did.
/// A run whose lock is held is alive, however long it takes.
async fn mark_abandoned(conn: &mut sqlx::PgConnection, run: &str) -> sqlx::Result<bool> {
    let free: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select pg_try_advisory_lock({RUN_KEY})"
    )))
    .bind(run)
    .fetch_one(&mut *conn)
    .await?;
    if !free {
        return Ok(false);
    }
    let marked = sqlx::query(
        "update agent_memory.backfill_runs set status = 'abandoned',
         finished_at = coalesce(finished_at, now())
         where id = $1 and status in ('running', 'following')",
    )
    .bind(run)
    .execute(&mut *conn)
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "select pg_advisory_unlock({RUN_KEY})"
    )))
    .bind(run)
    .execute(&mut *conn)
    .await?;
    Ok(marked?.rows_affected() > 0)
}

/// Rows one rollback deleted, per contract table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rollback {
    /// From `agent_memories`.
    pub memories: u64,
    /// From `agent_tools`.
    pub tools: u64,
    /// From `agent_metrics`.
    pub metrics: u64,
    /// From `agent_executions`.
    pub executions: u64,
}

/// Deletes, in one transaction, exactly the rows run `run_id` wrote (those whose
/// `metadata.migration_run` is the run's id: rows it inserted, and rows changed at the
/// source that it replaced). Rows agents wrote, and migrated rows an agent has since
/// overwritten, do not carry it and stay. The catch-up record of every table those rows
/// came from is cleared, so a later run reads those tables whole again and brings back
/// what the sources still hold, except memory keys and tool names deleted through the
/// library since, which never come back.
///
/// # Errors
/// [`Error::InvalidInput`] when no run has the id; connection and database errors.
/// Nothing is deleted then.
pub async fn rollback(url: &str, run_id: &str) -> Result<Rollback> {
    let target = PgTarget::parse(url)?;
    let fail = |e: sqlx::Error| {
        let operation = format!("roll back backfill run {run_id:?}");
        Error::database("postgres", operation, e, Some(&target.url))
    };
    let pool = crate::backend::postgres::connect_pool(&target, &PostgresOptions::default()).await?;
    let mut tx = pool.begin().await.map_err(fail)?;
    let known: Option<String> = sqlx::query_scalar(
        "select status from agent_memory.backfill_runs where id = $1 for update",
    )
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(fail)?;
    if known.is_none() {
        return Err(Error::invalid(
            "run id",
            format!(
                "no backfill run has the id {run_id:?}; a run's id is in its report \
                 (run_id) and in agent_memory.backfill_runs"
            ),
        ));
    }
    let mut deleted = [0u64; 4];
    for (i, table) in [
        "agent_memories",
        "agent_tools",
        "agent_metrics",
        "agent_executions",
    ]
    .into_iter()
    .enumerate()
    {
        // The tables the rows came from lose their catch-up record with them.
        let sql = format!(
            "with gone as (delete from {table} where metadata->>'migration_run' = $1
                           returning coalesce(metadata->>'source', '') as source,
                                     metadata->>'source_db' as source_db,
                                     metadata->>'source_table' as source_table),
                  tables as (select source, source_db, source_table, count(*) as n
                             from gone group by 1, 2, 3),
                  chunks as (delete from agent_memory.backfill_chunks c using tables t
                             where (c.source, c.source_db, c.source_table)
                                 = (t.source, t.source_db, t.source_table)),
                  records as (delete from agent_memory.backfill_tables b using tables t
                              where (b.source, b.source_db, b.source_table)
                                  = (t.source, t.source_db, t.source_table))
             select coalesce(sum(n), 0)::int8 from tables"
        );
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
        deleted[i] = n.unsigned_abs();
    }
    sqlx::query("update agent_memory.backfill_runs set status = 'rolled back' where id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    pool.close().await;
    let [memories, tools, metrics, executions] = deleted;
    Ok(Rollback {
        memories,
        tools,
        metrics,
        executions,
    })
}
