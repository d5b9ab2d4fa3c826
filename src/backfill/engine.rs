//! The bulk backfill's run: every legacy file found under the agents path, claimed by
//! one worker, read batch by batch and loaded into the contract tables.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, RetryableWithContext};
use chrono::Utc;
use sqlx::{Connection, PgConnection};

use super::load::{load_batch, prepare};
use super::report::{Failure, FileReport, Report, TableReport, rate};
use super::{BackfillOptions, Progress};
use crate::backend::agent_rows::AgentRowError;
use crate::backend::{MemoryBackend, PgTarget, PostgresBackend, Replica};
use crate::error::{Chain, Error, Fault, Result};
use crate::legacy::{
    ContractRecord, ContractRow, Found, Probe, RowOrigin, Source, SourceRow, TableInfo, TableKind,
    TableSpec, Target, convert_row, discover, read_own_records, read_own_tombstones,
    read_own_tool_tombstones,
};
use crate::record::AgentId;

/// When a batch that failed for a transient reason is tried again: after 0.5, 1 and 2 s,
/// four attempts in all, then it is reported failed.
fn retry_schedule() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_max_times(3)
}

/// `attempt`, typed as a retried attempt that is lent the run and gives it back (a
/// closure's own signature would lend the run for each call alone, too short for the
/// future it returns).
fn attempts<'a, 'r: 'a, F, Fut>(attempt: F) -> F
where
    F: FnMut(&'a mut Run<'r>) -> Fut,
    Fut: std::future::Future<Output = (&'a mut Run<'r>, std::result::Result<u64, Attempt>)>,
{
    attempt
}

/// Why one attempt at a batch failed, and whether another may succeed.
struct Attempt {
    reason: String,
    retry: bool,
}

impl Attempt {
    fn again(reason: String) -> Self {
        Attempt {
            reason,
            retry: true,
        }
    }

    fn last(reason: String) -> Self {
        Attempt {
            reason,
            retry: false,
        }
    }
}

/// One worker's run: a backend for the library-layout files and one connection holding
/// the claims and the staging table.
pub(crate) struct Run<'a> {
    pub(crate) target: &'a PgTarget,
    pub(crate) options: &'a BackfillOptions,
    pub(crate) backend: &'a PostgresBackend,
    pub(crate) conn: PgConnection,
    pub(crate) report: Report,
    pub(crate) progress: &'a dyn Progress,
}

impl Run<'_> {
    /// Connects the worker's own connection, with its staging table.
    pub(crate) async fn connect(target: &PgTarget) -> Result<PgConnection> {
        let mut conn = connect_to(target).await?;
        prepare(&mut conn)
            .await
            .map_err(|e| db(target, "prepare the staging table", e))?;
        Ok(conn)
    }

    pub(crate) async fn all(&mut self) -> Result<()> {
        let found = discover(&self.options.agents_path, &self.options.read).await;
        for file in found {
            let report = self.file(&file).await;
            self.report.files.push(report);
        }
        Ok(())
    }

    async fn file(&mut self, found: &Found) -> FileReport {
        let mut report = FileReport {
            source_db: found.source_db.clone(),
            agent: found
                .agent
                .as_ref()
                .map(|a| a.to_string())
                .map_err(Clone::clone),
            kind: found.probe.kind(),
            problem: None,
            tables: Vec::new(),
        };
        let agent = match (&found.agent, &found.probe) {
            (_, Probe::Problem(problem)) => {
                report.problem = Some(problem.clone());
                return report;
            }
            (Err(why), _) => {
                report.problem = Some(why.clone());
                return report;
            }
            (Ok(agent), _) => agent.clone(),
        };
        // One worker per file: the claim is a session lock, released if the worker dies.
        match self.claim(&found.source_db, true).await {
            Ok(true) => {}
            Ok(false) => {
                report.problem = Some("claimed by another backfill worker".into());
                return report;
            }
            Err(err) => {
                report.problem = Some(Chain(&err).to_string());
                return report;
            }
        }
        let outcome = match Source::open(&found.path, &self.options.read).await {
            Ok(mut source) => match found.probe {
                Probe::Own => self.own_file(&mut source, &agent, found, &mut report).await,
                _ => {
                    self.legacy_file(&mut source, &agent, found, &mut report)
                        .await
                }
            },
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            report.problem = Some(Chain(&err).to_string());
        }
        let _ = self.claim(&found.source_db, false).await;
        report
    }

    /// Takes (`true`) or releases (`false`) the claim on one source file.
    async fn claim(&mut self, source_db: &str, take: bool) -> Result<bool> {
        let sql = if take {
            "select pg_try_advisory_lock(hashtextextended('agent_memory.backfill:' || $1, 0))"
        } else {
            "select pg_advisory_unlock(hashtextextended('agent_memory.backfill:' || $1, 0))"
        };
        sqlx::query_scalar(sql)
            .bind(source_db)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| db(self.target, "claim a source file", e))
    }

    async fn legacy_file(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        report: &mut FileReport,
    ) -> Result<()> {
        for table in source.tables().await? {
            let mut out = TableReport {
                table: table.name.clone(),
                ..TableReport::default()
            };
            let spec = match (
                &table.kind,
                self.options.map.spec(&found.source_db, &table.name),
            ) {
                (TableKind::Skipped { reason }, _) => {
                    out.skipped = Some(reason.clone());
                    None
                }
                (_, None) => {
                    out.skipped = Some(super::UNMAPPED.into());
                    None
                }
                (_, Some(spec)) => Some(spec),
            };
            if let Some(spec) = spec {
                out.target = Some(spec.target.table().to_string());
                self.legacy_table(source, agent, found, &table, &spec, &mut out)
                    .await;
            }
            report.tables.push(out);
        }
        Ok(())
    }

    async fn legacy_table(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        table: &TableInfo,
        spec: &TableSpec,
        out: &mut TableReport,
    ) {
        let started = Instant::now();
        let target = spec.target;
        let origin = RowOrigin {
            agent,
            source: &self.options.source,
            source_db: &found.source_db,
        };
        if self.finished_earlier(&found.source_db, &table.name).await {
            out.done_earlier = true;
            return;
        }
        let migrated_at = crate::record::now();
        let mut batches = source.rows(table);
        loop {
            let batch = match batches.next_batch().await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(err) => {
                    out.failed.push(Failure {
                        rowids: None,
                        rows: 0,
                        reason: format!("reading stopped: {}", Chain(&err)),
                    });
                    break;
                }
            };
            let mut rows = Vec::with_capacity(batch.len());
            for row in &batch {
                match convert_row(&origin, table, spec, row, migrated_at) {
                    Ok(mut converted) => {
                        out.unreadable_times += u64::from(converted.time_problem.is_some());
                        count_future(&converted, converted.record.created_at(), out);
                        if self.options.legacy_embeddings {
                            take_embedding(table, row, &mut converted, out);
                        }
                        rows.push(converted);
                    }
                    Err(err) => out.failed.push(Failure {
                        rowids: row.rowid.map(|r| (r, r)),
                        rows: 1,
                        reason: Chain(&err).to_string(),
                    }),
                }
            }
            out.read += batch.len() as u64;
            self.load(target, &rows, (&found.source_db, &table.name), out)
                .await;
            self.progress.rows(batch.len() as u64);
        }
        if out.failed.is_empty() {
            self.mark_finished(&found.source_db, &table.name).await;
        }
        out.seconds = started.elapsed().as_secs_f64();
        out.rows_per_second = rate(out.read, out.seconds);
    }

    /// Loads a batch with retries on transient errors; reports it failed otherwise.
    async fn load(
        &mut self,
        target: Target,
        rows: &[ContractRow],
        source: (&str, &str),
        out: &mut TableReport,
    ) {
        if rows.is_empty() {
            return;
        }
        let run = self.report.run_id.clone();
        let mut tried = false;
        let attempt = attempts(|this| {
            let retrying = std::mem::replace(&mut tried, true);
            let run = &run;
            async move {
                let loaded = this.load_once(target, rows, run, source, retrying).await;
                (this, loaded)
            }
        });
        let (_, loaded) = attempt
            .retry(retry_schedule())
            .sleep(tokio::time::sleep)
            .context(self)
            .when(|failed: &Attempt| failed.retry)
            .await;
        match loaded {
            Ok(inserted) => {
                out.inserted += inserted;
                out.already_present += rows.len() as u64 - inserted;
            }
            Err(failed) => {
                let first = rows.first().and_then(|r| r.source.rowid);
                let end = rows.last().and_then(|r| r.source.rowid);
                out.failed.push(Failure {
                    rowids: first.zip(end),
                    rows: rows.len() as u64,
                    reason: failed.reason,
                });
            }
        }
    }

    /// One attempt at a batch; a `retrying` one first checks the connection, and makes
    /// a new one (taking the file's claim again) when the old one is gone.
    async fn load_once(
        &mut self,
        target: Target,
        rows: &[ContractRow],
        run: &str,
        source: (&str, &str),
        retrying: bool,
    ) -> std::result::Result<u64, Attempt> {
        if retrying && self.conn.ping().await.is_err() {
            self.conn = Run::connect(self.target)
                .await
                .map_err(|err| Attempt::again(Chain(&err).to_string()))?;
            // The claim died with the old session; take it again or stop.
            if !matches!(self.claim(source.0, true).await, Ok(true)) {
                return Err(Attempt::last(
                    "lost the claim on the file after reconnecting".into(),
                ));
            }
        }
        let loading = load_batch(&mut self.conn, target, rows, run, source);
        match tokio::time::timeout(self.options.timeout, loading).await {
            Ok(Ok(inserted)) => Ok(inserted),
            Ok(Err(AgentRowError::Database(err))) => {
                let transient = is_transient(&err);
                let hint = permission_hint(&err, target);
                let reason = format!("{}{hint}", self.target.url.scrub(err));
                Err(Attempt {
                    reason,
                    retry: transient,
                })
            }
            // The agent's name is free but its id is another agent's: only an
            // operator can settle that.
            Ok(Err(err @ AgentRowError::IdTaken { .. })) => Err(Attempt::last(err.to_string())),
            Err(_) => Err(Attempt::again(format!(
                "batch took longer than {:?}",
                self.options.timeout
            ))),
        }
    }

    async fn finished_earlier(&mut self, source_db: &str, table: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from agent_memory.backfill_progress
             where source_db = $1 and source_table = $2 and finished_at is not null)",
        )
        .bind(source_db)
        .bind(table)
        .fetch_one(&mut self.conn)
        .await
        .unwrap_or(false)
    }

    async fn mark_finished(&mut self, source_db: &str, table: &str) {
        let marked = sqlx::query(
            "insert into agent_memory.backfill_progress (source_db, source_table, finished_at)
             values ($1, $2, now())
             on conflict (source_db, source_table) do update set finished_at = now()",
        )
        .bind(source_db)
        .bind(table)
        .execute(&mut self.conn)
        .await;
        if let Err(err) = marked {
            tracing::warn!(source_db, table, error = %err, "could not record the table as finished; a re-run reads it again");
        }
    }

    /// A file of the library's own layout: its records move as themselves, over older
    /// versions only, and its deletes move as tombstones.
    async fn own_file(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        report: &mut FileReport,
    ) -> Result<()> {
        for target in [
            Target::Memories,
            Target::Tools,
            Target::Metrics,
            Target::Executions,
        ] {
            let started = Instant::now();
            let mut out = TableReport {
                table: target.table().to_string(),
                target: Some(target.table().to_string()),
                ..TableReport::default()
            };
            let mut after = 0;
            let migrated_at = crate::record::now();
            loop {
                let mut rows =
                    read_own_records(source, agent, &found.source_db, target, after).await?;
                let Some(last) = rows.last().and_then(|r| r.source.rowid) else {
                    break;
                };
                after = last;
                for row in &mut rows {
                    let own_time = row
                        .record
                        .updated_at()
                        .into_iter()
                        .fold(row.record.created_at(), chrono::DateTime::max);
                    row.cap_version(migrated_at);
                    count_future(row, own_time, &mut out);
                }
                for row in &rows {
                    let applied = match &row.record {
                        ContractRecord::Memory(m) => self
                            .backend
                            .apply_memory(agent, m)
                            .await
                            .map(|s| s.is_some()),
                        ContractRecord::Tool(t) => {
                            self.backend.apply_tool(agent, t).await.map(|s| s.is_some())
                        }
                        ContractRecord::Metric(m) => {
                            self.backend.record_metric(agent, m).await.map(|()| true)
                        }
                        ContractRecord::Execution(e) => {
                            self.backend.log_execution(agent, e).await.map(|()| true)
                        }
                    };
                    out.read += 1;
                    match applied {
                        Ok(true) => out.inserted += 1,
                        Ok(false) => out.already_present += 1,
                        Err(err) => out.failed.push(Failure {
                            rowids: row.source.rowid.map(|r| (r, r)),
                            rows: 1,
                            reason: Chain(&err).to_string(),
                        }),
                    }
                }
                self.progress.rows(rows.len() as u64);
            }
            out.seconds = started.elapsed().as_secs_f64();
            out.rows_per_second = rate(out.read, out.seconds);
            report.tables.push(out);
        }
        // Deletes the agent made move too, so no older copy of a deleted key or tool
        // (from a legacy table, a replay or a lazy copy) comes back in PostgreSQL.
        for tools in [false, true] {
            let (table, target) = match tools {
                false => ("agent_memory_tombstones", "agent_memory.memory_tombstones"),
                true => ("agent_tool_tombstones", "agent_memory.tool_tombstones"),
            };
            let mut out = TableReport {
                table: table.into(),
                target: Some(target.into()),
                ..TableReport::default()
            };
            let deletes = match tools {
                false => read_own_tombstones(source).await?,
                true => read_own_tool_tombstones(source).await?,
            };
            for (name, at) in deletes {
                out.read += 1;
                let applied = match tools {
                    false => self.backend.apply_memory_delete(agent, &name, at).await,
                    true => self.backend.apply_tool_delete(agent, &name, at).await,
                };
                match applied {
                    Ok(_) => out.inserted += 1,
                    Err(err) => out.failed.push(Failure {
                        rowids: None,
                        rows: 1,
                        reason: format!("delete of {name:?}: {}", Chain(&err)),
                    }),
                }
            }
            report.tables.push(out);
        }
        Ok(())
    }
}

/// One connection to `url`, with errors that never show its password.
pub(crate) async fn connect(url: &str) -> Result<PgConnection> {
    connect_to(&PgTarget::parse(url)?).await
}

/// One connection to `target`, with errors that never show its password.
async fn connect_to(target: &PgTarget) -> Result<PgConnection> {
    PgConnection::connect_with(&target.options)
        .await
        .map_err(|e| Error::connect(&target.url, e))
}

/// Worth retrying: a lost connection, a deadlock or a serialization failure (the
/// library's one rule, [`Fault::of`]), or a unique key taken by a concurrent run between
/// the batch's conflict check and its insert (SQLSTATE `23505`, which elsewhere is a
/// lasting refusal).
fn is_transient(err: &sqlx::Error) -> bool {
    let taken = matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"));
    taken || matches!(Fault::of(err), Fault::Connection | Fault::Collision)
}

/// For a refused privilege, which privileges on which tables a backfill needs.
fn permission_hint(err: &sqlx::Error, target: Target) -> String {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => format!(
            "; the backfill's role needs SELECT, INSERT and UPDATE on {} and agents, \
             and SELECT, INSERT, UPDATE and DELETE on the tables of schema agent_memory \
             (e.g. grant select, insert, update on {}, agents to <role>)",
            target.table(),
            target.table()
        ),
        _ => String::new(),
    }
}

fn db(target: &PgTarget, operation: &str, e: sqlx::Error) -> Error {
    Error::database("postgres", operation, e, Some(&target.url))
}

/// The report of a run that has not started loading.
pub(crate) fn empty_report(
    options: &BackfillOptions,
    run_id: String,
    database: Option<String>,
    dry_run: bool,
) -> Report {
    Report {
        run_id,
        dry_run,
        database,
        agents_path: options.agents_path.clone(),
        started_at: Utc::now(),
        finished_at: None,
        files: Vec::new(),
        totals: Default::default(),
        warnings: Vec::new(),
    }
}

/// Counts a row whose time (`time`, its latest own time) lies after its migration,
/// keeping the first as an example.
fn count_future(row: &ContractRow, time: chrono::DateTime<Utc>, out: &mut TableReport) {
    if !row.future_time {
        return;
    }
    out.future_times += 1;
    if out.future_example.is_none() {
        let at = row
            .source
            .rowid
            .map_or_else(|| "row".to_string(), |r| format!("rowid {r}"));
        out.future_example = Some(format!("{at}: {}", crate::backend::codec::time_text(&time)));
    }
}

/// Decodes the embedding column of a legacy memory row into its `embedding`, counting
/// what could and could not be decoded.
fn take_embedding(
    table: &TableInfo,
    row: &SourceRow,
    converted: &mut ContractRow,
    out: &mut TableReport,
) {
    let ContractRecord::Memory(memory) = &mut converted.record else {
        return;
    };
    match crate::legacy::embedding_of(table, row) {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(embedding))) => {
            memory.embedding = Some(embedding);
            out.embeddings_decoded += 1;
        }
        Some(Err(reason)) => {
            out.embeddings_undecodable += 1;
            if out.embedding_problem.is_none() {
                let at = row
                    .rowid
                    .map_or_else(String::new, |r| format!(" (rowid {r})"));
                out.embedding_problem = Some(format!("{reason}{at}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn a_batch_is_tried_four_times_over_three_and_a_half_seconds() {
        let waits: Vec<Duration> = retry_schedule().build().collect();
        assert_eq!(
            waits,
            [500, 1000, 2000].map(Duration::from_millis),
            "no jitter, no fourth wait"
        );
    }
}
