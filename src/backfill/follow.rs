//! Follow mode: catch-up runs one after another, every `interval`, until a stop is
//! requested, so the gap between an agent's last legacy write and PostgreSQL stays a
//! few seconds while agents are moved one at a time.
//!
//! Each round is a [`run`](super::run). Rounds that find nothing to do must not fill
//! `agent_memory.backfill_runs` with a row every few seconds for weeks, so:
//!
//! - the follow has one row of its own there (`follow-<time>-<hex>`, status
//!   `following`, then `stopped` or `failed`) whose `report` counts its rounds and names
//!   the last one and the last one recorded;
//! - a round that moved nothing and failed the way the round before it did is *idle*:
//!   its run row is kept only until the next round ends (so the latest round is always
//!   there), then deleted; no rows carry its id, and tables it read again name the
//!   follow's row as the run that caught them up;
//! - every other round keeps its run row, and is the one worth a report file.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::report::Report;
use super::sources::Tree;
use super::{BackfillOptions, Progress, run};
use crate::backend::{PgTarget, PostgresOptions};
use crate::error::{Error, Result};

/// One round of a follow, as it ended.
#[derive(Debug)]
pub struct Round {
    /// 1 for the first round.
    pub number: u64,
    /// Its report, or why it could not run (PostgreSQL down, say: the follow tries
    /// again next round, except after a first round that failed).
    pub outcome: Result<Report>,
    /// False for an idle round (it moved nothing, and failed as the round before it
    /// did): it needs no report file, and its run row goes when the next round ends.
    pub recorded: bool,
}

/// What a follow did, once stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Following {
    /// Its row in `agent_memory.backfill_runs`.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seconds between the end of a round and the start of the next.
    pub interval_seconds: f64,
    /// Rounds run.
    pub rounds: u64,
    /// Rounds recorded (not idle).
    pub recorded_rounds: u64,
    /// Rounds that could not run.
    pub failed_rounds: u64,
    /// The last round's run id.
    pub last_round: Option<String>,
    /// The last recorded round's run id.
    pub last_recorded_round: Option<String>,
    /// When the last round ended.
    pub last_round_at: Option<DateTime<Utc>>,
}

/// Runs catch-up rounds every `interval` until `options.stop` is requested; calls
/// `each` after every round (to show it, or write its report). A stop requested during
/// a round ends that round between files, recorded as `stopped`; during the wait, it
/// ends the wait.
///
/// # Errors
/// When the first round cannot run (a wrong URL, missing tables: the same error every
/// round), or when `each` fails; the follow is then recorded as `failed`.
pub async fn follow<F>(
    url: &str,
    options: &BackfillOptions,
    interval: Duration,
    progress: &dyn Progress,
    mut each: F,
) -> Result<Following>
where
    F: FnMut(&Round) -> Result<()>,
{
    let target = PgTarget::parse(url)?;
    let mut following = Following {
        id: super::new_run_id("follow-"),
        started_at: Utc::now(),
        interval_seconds: interval.as_secs_f64(),
        rounds: 0,
        recorded_rounds: 0,
        failed_rounds: 0,
        last_round: None,
        last_recorded_round: None,
        last_round_at: None,
    };
    let mut record: Option<Record> = None;
    // The run row of the last idle round, deleted when the next round ends.
    let mut idle_row: Option<String> = None;
    // What the last round failed at, to tell a new failure from the same one again.
    let mut last_failures: Option<Vec<String>> = None;
    loop {
        following.rounds += 1;
        let outcome = run(url, options, progress).await;
        let failures = outcome.as_ref().ok().map(failures);
        let idle = match &outcome {
            Ok(report) => {
                moved(report) == 0
                    && !options.stop.is_requested()
                    && failures.as_ref() == last_failures.as_ref()
                    && last_failures.is_some()
            }
            Err(_) => false,
        };
        following.last_round_at = Some(Utc::now());
        match &outcome {
            Ok(report) => {
                following.last_round = Some(report.run_id.clone());
                if !idle {
                    following.recorded_rounds += 1;
                    following.last_recorded_round = Some(report.run_id.clone());
                }
                last_failures = failures;
            }
            Err(_) => following.failed_rounds += 1,
        }
        // The first round made the bookkeeping when it was missing; from here on
        // the follow keeps its row.
        if record.is_none() && outcome.is_ok() {
            record = Record::start(&target, options, &following).await;
        }
        if let Some(record) = &record {
            if let Some(id) = idle_row.take() {
                record.forget(&id).await;
            }
            record.update(&following, "following").await;
        }
        if idle && let Ok(report) = &outcome {
            idle_row = Some(report.run_id.clone());
        }
        let first_failed = following.rounds == 1 && outcome.is_err();
        let round = Round {
            number: following.rounds,
            outcome,
            recorded: !idle,
        };
        let shown = each(&round);
        let ended = match (round.outcome, shown) {
            (Err(err), _) if first_failed => Some(Err(err)),
            (_, Err(err)) => Some(Err(err)),
            _ if options.stop.is_requested() => Some(Ok(())),
            _ => None,
        };
        if let Some(ended) = ended {
            return finish(record, following, ended).await;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = options.stop.requested() => {
                return finish(record, following, Ok(())).await;
            }
        }
    }
}

/// Records how the follow ended.
async fn finish(
    record: Option<Record>,
    following: Following,
    ended: Result<()>,
) -> Result<Following> {
    if let Some(record) = record {
        let status = if ended.is_ok() { "stopped" } else { "failed" };
        record.update(&following, status).await;
        record.pool.close().await;
    }
    ended.map(|()| following)
}

/// Rows a round changed in PostgreSQL: inserted, updated or deleted.
fn moved(report: &Report) -> u64 {
    let t = &report.totals;
    t.inserted + t.updated + t.deleted
}

/// What a round failed at: files it could not use and tables with failed rows, so a
/// failure that repeats round after round is recorded once, and a new one again.
fn failures(report: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    for file in &report.files {
        if let Some(problem) = &file.problem {
            failures.push(format!("{}: {problem}", file.source_db));
        }
        for table in file.tables.iter().filter(|t| !t.failed.is_empty()) {
            let rows: u64 = table.failed.iter().map(|f| f.rows).sum();
            failures.push(format!("{} {}: {rows}", file.source_db, table.table));
        }
    }
    failures
}

/// The follow's own row in `agent_memory.backfill_runs`. Failing to write it never
/// stops the rounds: it is logged.
struct Record {
    pool: PgPool,
    id: String,
    /// Holds the follow's session lock for its life, as a run holds its own: a later run
    /// that can take it knows the follow's process is gone and marks it abandoned.
    _alive: sqlx::PgConnection,
}

impl Record {
    async fn start(
        target: &PgTarget,
        options: &BackfillOptions,
        following: &Following,
    ) -> Option<Record> {
        let pool = crate::backend::postgres::connect_pool(
            target,
            &PostgresOptions {
                max_connections: 1,
                ..PostgresOptions::default()
            },
        )
        .await
        .inspect_err(|err| tracing::warn!(error = %crate::Chain(err), "cannot record the follow"))
        .ok()?;
        let tree = Tree::of(options).ok()?;
        let mut alive = super::engine::connect_to(target)
            .await
            .inspect_err(
                |err| tracing::warn!(error = %crate::Chain(err), "cannot record the follow"),
            )
            .ok()?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select pg_advisory_lock({})",
            super::RUN_KEY
        )))
        .bind(&following.id)
        .execute(&mut alive)
        .await
        .inspect_err(|err| tracing::warn!(error = %err, "cannot record the follow"))
        .ok()?;
        let started = sqlx::query(
            "insert into agent_memory.backfill_runs
               (id, started_at, status, source, host, agents_path, report)
             values ($1, $2, 'following', $3, $4, $5, $6)",
        )
        .bind(&following.id)
        .bind(following.started_at)
        .bind(&tree.source)
        .bind(&tree.host)
        .bind(&tree.agents_path)
        .bind(sqlx::types::Json(following))
        .execute(&pool)
        .await;
        if let Err(err) = started {
            let err = Error::database("postgres", "record the follow", err, Some(&target.url));
            tracing::warn!(error = %crate::Chain(&err), "cannot record the follow");
            pool.close().await;
            return None;
        }
        Some(Record {
            pool,
            id: following.id.clone(),
            _alive: alive,
        })
    }

    async fn update(&self, following: &Following, status: &str) {
        let done = if status == "following" {
            "null"
        } else {
            "now()"
        };
        let sql = format!(
            "update agent_memory.backfill_runs set status = $2, report = $3, finished_at = {done}
             where id = $1"
        );
        let updated = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.id)
            .bind(status)
            .bind(sqlx::types::Json(following))
            .execute(&self.pool)
            .await;
        if let Err(err) = updated {
            tracing::warn!(id = %self.id, error = %err, "cannot record the follow's rounds");
        }
    }

    /// Deletes an idle round's run row. Tables it read again (a file written too
    /// recently to trust its stamp) without finding anything to move name the follow
    /// as the run that caught them up instead, so where they were moved from stays
    /// known (same host, path and source).
    async fn forget(&self, run_id: &str) {
        let forgotten = sqlx::query(
            "with handed as (update agent_memory.backfill_tables set run_id = $2
                             where run_id = $1)
             delete from agent_memory.backfill_runs where id = $1",
        )
        .bind(run_id)
        .bind(&self.id)
        .execute(&self.pool)
        .await;
        if let Err(err) = forgotten {
            tracing::warn!(run_id, error = %err, "cannot fold an idle round into the follow's record");
        }
    }
}
