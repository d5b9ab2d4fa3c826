//! The bulk backfill's run: every legacy file found under the agents path, claimed by
//! one worker, read batch by batch and loaded into the contract tables.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, RetryableWithContext};
use chrono::Utc;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::catchup::{self, ChunkBuf};
use super::load::{Batch, ChunkRecord, Columns, Synced, TableKey, prepare, sync_batch};
use super::report::{Failure, FileReport, Report, TableReport, rate};
use super::{BackfillOptions, Progress};
use crate::backend::agent_rows::AgentRowError;
use crate::backend::{MemoryBackend, PgTarget, PostgresBackend, Replica};
use crate::error::{Chain, Error, Fault, Result};
use crate::json::Json;
use crate::legacy::{
    ContractRecord, ContractRow, Decision, Found, Observed, Probe, RowOrigin, Source, SourceRow,
    TableInfo, TableKind, TableSpec, Target, convert_row, find, read_own_records,
    read_own_tombstones, read_own_tool_tombstones, row_id, suggest,
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
    Fut: std::future::Future<Output = (&'a mut Run<'r>, std::result::Result<Synced, Attempt>)>,
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

/// The catch-up record of a file of the library's own layout, which moves whole.
const OWN_FILE: &str = "(library records)";

/// Whether a batch may load beside another: new rows only (of chunks no earlier run
/// loaded), no deletes, a map that did not change.
fn alongside(pending: &Pending, force: bool) -> bool {
    !force
        && !pending.known
        && !pending.rows.is_empty()
        && pending.deletes.is_empty()
        && pending.gone.is_empty()
}

/// Adds what a batch did to the table's report; a batch that conflicted takes the fast
/// path off for the rest of the table.
fn absorb_synced(done: Synced, out: &mut TableReport, direct: &mut bool) {
    *direct &= !done.fell_back;
    out.inserted += done.inserted;
    out.updated += done.updated;
    out.already_present += done.unchanged;
    out.outranked += done.outranked;
    out.deleted += done.deleted;
}

/// The `application_name` of the second loading connection, as `pg_stat_activity`
/// shows it.
pub const SECOND_CONNECTION: &str = "memshift backfill (second connection)";

/// The run's second loading connection, for batches of new rows loading beside the
/// batch on the run's own connection (which holds the claims). Made on first use.
#[derive(Default)]
pub(crate) struct Beside {
    conn: Option<PgConnection>,
    /// As [`Db::agent_ids`], of this connection's batches.
    agent_ids: std::collections::BTreeMap<String, String>,
    /// It could not be made: batches load one at a time.
    broken: bool,
}

impl Beside {
    /// One attempt at `batch`, without retries; `None` when it failed (nothing of it is
    /// written then), and the batch is to be loaded on the run's connection.
    async fn load(&mut self, target: &PgTarget, batch: &Batch<'_>) -> Option<Synced> {
        if self.conn.is_none() {
            let options = target.options.clone().application_name(SECOND_CONNECTION);
            match Run::connect_with(target, &options).await {
                Ok(conn) => self.conn = Some(conn),
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "could not open a second connection to load with; loading one batch at a time");
                    self.broken = true;
                    return None;
                }
            }
        }
        let conn = self.conn.as_mut()?;
        let loading = sync_batch(conn, batch, &mut self.agent_ids);
        match tokio::time::timeout(batch.timeout + CLIENT_GRACE, loading).await {
            Ok(Ok(done)) => Some(done),
            failed => {
                if let Ok(Err(err)) = failed {
                    tracing::debug!(error = %Chain(&err), "a batch loading beside another failed; loading it again on the run's connection");
                }
                // A fresh connection next time: this one may be mid-statement.
                self.conn = None;
                self.agent_ids.clear();
                None
            }
        }
    }
}

/// Rows converted between two yields of the reading side to the loading side.
const YIELD_EVERY: usize = 4;

/// What a table's loads share.
struct Sync<'a> {
    target: Target,
    key: TableKey<'a>,
    force: bool,
}

/// Rows, deletes and chunk records waiting to be loaded in one transaction.
#[derive(Debug, Default)]
struct Pending {
    rows: Vec<ContractRow>,
    deletes: Vec<uuid::Uuid>,
    chunks: Vec<ChunkRecord>,
    gone: Vec<i64>,
    /// Some rows come from chunks an earlier run loaded: they are likely there already.
    known: bool,
    /// The rows as the loading statements take them, made on the reading side.
    columns: Option<Columns>,
}

impl Pending {
    /// The rows as column arrays: the ones the reading side made, or made now.
    fn columns(&mut self, run: &str) -> Columns {
        self.columns
            .take()
            .unwrap_or_else(|| Columns::new(&self.rows, run))
    }

    /// The batch that loads these rows, laid out as `columns`; `direct` tries the fast
    /// path first.
    fn batch<'b>(
        &'b self,
        sync: &Sync<'b>,
        columns: &'b Columns,
        timeout: Duration,
        direct: bool,
    ) -> Batch<'b> {
        Batch {
            target: sync.target,
            table: sync.key,
            rows: &self.rows,
            columns,
            deletes: &self.deletes,
            chunks: &self.chunks,
            gone: &self.gone,
            force: sync.force,
            timeout,
            direct,
        }
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.deletes.is_empty()
            && self.chunks.is_empty()
            && self.gone.is_empty()
    }

    /// Takes a chunk read whole: its rows that changed since it was last loaded (all
    /// with `force`), the rows it no longer has, and its record.
    fn chunk(
        &mut self,
        done: ChunkBuf,
        recorded: Option<ChunkRecord>,
        id_of: impl Fn(i64) -> uuid::Uuid,
        force: bool,
        out: &mut TableReport,
    ) {
        self.known |= recorded.is_some();
        let settled = done.settle(recorded.as_ref(), force, id_of);
        out.unchanged_rows += settled.unchanged;
        self.deletes.extend(settled.deletes);
        self.chunks.extend(settled.record);
        self.rows.extend(settled.rows);
    }
}

/// What a table's catch-up record holds of its map: the spec, and the options that
/// change how its rows convert.
fn spec_record(spec: &TableSpec, legacy_embeddings: bool) -> serde_json::Value {
    serde_json::json!({ "spec": spec, "legacy_embeddings": legacy_embeddings })
}

/// One worker's run: what it reads and reports, and the database it loads into (none
/// in a dry run, which reads and converts every row the same way and writes nothing).
pub(crate) struct Run<'a> {
    pub(crate) options: &'a BackfillOptions,
    pub(crate) db: Option<Db<'a>>,
    pub(crate) report: Report,
    pub(crate) progress: &'a dyn Progress,
}

/// Where a run loads: a backend for the library-layout files and one connection holding
/// the claims and the staging table.
pub(crate) struct Db<'a> {
    pub(crate) target: &'a PgTarget,
    pub(crate) backend: &'a PostgresBackend,
    pub(crate) conn: PgConnection,
    /// Agents' row ids by name, of rows a committed batch found or made.
    pub(crate) agent_ids: std::collections::BTreeMap<String, String>,
    /// The second loading connection.
    pub(crate) beside: Beside,
}

impl Run<'_> {
    /// Connects the worker's own connection, with its staging table.
    pub(crate) async fn connect(target: &PgTarget) -> Result<PgConnection> {
        Self::connect_with(target, &target.options).await
    }

    /// [`Run::connect`] with other connect options for the same target.
    async fn connect_with(target: &PgTarget, options: &PgConnectOptions) -> Result<PgConnection> {
        let mut conn = connect_as(target, options).await?;
        prepare(&mut conn)
            .await
            .map_err(|e| db_error(target, "prepare the staging table", e))?;
        Ok(conn)
    }

    pub(crate) async fn all(&mut self) -> Result<()> {
        let found = find(&self.options.agents_path);
        for file in &found {
            // A stop requested ends the run between files; the files left are not listed.
            if self.options.stop.is_requested() {
                break;
            }
            let report = self.file(file).await;
            self.report.files.push(report);
        }
        self.files_gone(&found).await;
        Ok(())
    }

    /// Files an earlier run moved tables from that are no longer under the agents path.
    /// Their rows stay in PostgreSQL (an agent's legacy folder is often removed once the
    /// agent has moved); a warning names them.
    async fn files_gone(&mut self, found: &[Found]) {
        let present: Vec<&str> = found.iter().map(|f| f.source_db.as_str()).collect();
        let source = self.options.source.clone();
        let gone: Vec<(String, i64)> = self
            .with_db(|conn| {
                sqlx::query_as(
                    "select source_db, sum(rows)::int8 from agent_memory.backfill_tables
                     where source = $1 and source_db <> all($2)
                     group by source_db order by source_db",
                )
                .bind(source)
                .bind(present)
                .fetch_all(conn)
            })
            .await
            .unwrap_or_default();
        for (source_db, rows) in gone {
            self.report.warnings.push(format!(
                "{source_db} is no longer under the agents path; the {rows} rows earlier runs \
                 moved from it stay in PostgreSQL (roll back those runs to remove them)"
            ));
        }
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
            claimed_elsewhere: false,
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
            // Another worker is moving it: its run reports it.
            Ok(false) => {
                report.claimed_elsewhere = true;
                return report;
            }
            Err(err) => {
                report.problem = Some(Chain(&err).to_string());
                return report;
            }
        }
        // Taken before the file is read, so a write during the read changes it.
        let stamp = catchup::file_stamp(&found.path);
        // Each file is opened once, and probed then.
        let opened = match Source::open(&found.path, &self.options.read).await {
            Ok(mut source) => source.probe().await.map(|probe| (source, probe)),
            Err(err) => Err(err),
        };
        let (mut source, probe) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                report.kind = Probe::Problem(String::new()).kind();
                report.problem = Some(Chain(&err).to_string());
                let _ = self.claim(&found.source_db, false).await;
                return report;
            }
        };
        report.kind = probe.kind();
        let outcome = {
            match probe {
                Probe::Own => {
                    self.own_file_if_changed(
                        &mut source,
                        &agent,
                        found,
                        stamp.as_deref(),
                        &mut report,
                    )
                    .await
                }
                _ => {
                    self.legacy_file(&mut source, &agent, found, stamp.as_deref(), &mut report)
                        .await
                }
            }
        };
        if let Err(err) = outcome {
            report.problem = Some(Chain(&err).to_string());
        }
        let _ = self.claim(&found.source_db, false).await;
        report
    }

    /// Tables an earlier run moved from this file that the file no longer has: their
    /// rows were deleted with them, so the backfill's copies go too (rows agents wrote
    /// since through the library stay). Each is reported as a table with its deletes.
    async fn tables_gone(&mut self, found: &Found, tables: &[TableInfo], report: &mut FileReport) {
        let Some(db) = self.db.as_mut() else {
            return;
        };
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let gone: std::result::Result<Vec<(String, String)>, _> = sqlx::query_as(
            "select source_table, target from agent_memory.backfill_tables
             where source = $1 and source_db = $2 and source_table <> all($3)",
        )
        .bind(&self.options.source)
        .bind(&found.source_db)
        .bind(&names)
        .fetch_all(&mut db.conn)
        .await;
        for (table, target) in gone.unwrap_or_default() {
            let key = TableKey {
                source: &self.options.source,
                source_db: &found.source_db,
                source_table: &table,
            };
            let mut out = TableReport {
                table: table.clone(),
                target: Some(target.clone()),
                skipped: Some("gone from the file since an earlier run".into()),
                ..TableReport::default()
            };
            match catchup::forget(&mut db.conn, key, &target).await {
                Ok(deleted) => out.deleted = deleted,
                Err(err) => out.failed.push(Failure::table(format!(
                    "deleting the rows of a table gone from the file: {}",
                    db.target.url.scrub(err)
                ))),
            }
            report.tables.push(out);
        }
    }

    /// Takes (`true`) or releases (`false`) the claim on one source file.
    async fn claim(&mut self, source_db: &str, take: bool) -> Result<bool> {
        let sql = if take {
            "select pg_try_advisory_lock(hashtextextended('agent_memory.backfill:' || $1, 0))"
        } else {
            "select pg_advisory_unlock(hashtextextended('agent_memory.backfill:' || $1, 0))"
        };
        let Some(db) = self.db.as_mut() else {
            return Ok(true);
        };
        sqlx::query_scalar(sql)
            .bind(source_db)
            .fetch_one(&mut db.conn)
            .await
            .map_err(|e| db_error(db.target, "claim a source file", e))
    }

    async fn legacy_file(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        stamp: Option<&str>,
        report: &mut FileReport,
    ) -> Result<()> {
        let tables = source.tables().await?;
        self.tables_gone(found, &tables, report).await;
        for table in tables {
            let mut out = TableReport {
                table: table.name.clone(),
                ..TableReport::default()
            };
            let spec = match (
                &table.kind,
                self.options.map.decide(&found.source_db, &table.name),
            ) {
                (TableKind::Skipped { reason }, _) => {
                    out.skipped = Some(reason.clone());
                    None
                }
                (_, Decision::Excluded(rule)) => {
                    out.skipped = Some(format!("excluded (--exclude {rule:?})"));
                    None
                }
                (_, Decision::Unmapped) => {
                    out.skipped = Some(super::UNMAPPED.into());
                    // Counted, so the operator sees what leaving it out leaves behind,
                    // with the map that would move it (a dry run reads its rows for it).
                    let read = self.db.is_none();
                    unmapped_table(source, &found.source_db, &table, read, &mut out).await;
                    None
                }
                (_, Decision::Mapped(spec)) => Some(spec),
            };
            if let Some(spec) = spec {
                out.target = Some(spec.target.table().to_string());
                self.legacy_table(source, agent, found, &table, &spec, stamp, &mut out)
                    .await;
            }
            report.tables.push(out);
        }
        Ok(())
    }

    /// Brings PostgreSQL's copy of one legacy table to the table's current state (see
    /// [`super::catchup`]): nothing read when its file and map are as when it was last
    /// caught up; else every row read, and the chunks that changed loaded again.
    #[allow(clippy::too_many_arguments)]
    async fn legacy_table(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        table: &TableInfo,
        spec: &TableSpec,
        stamp: Option<&str>,
        out: &mut TableReport,
    ) {
        let started = Instant::now();
        let options = self.options;
        let key = TableKey {
            source: &options.source,
            source_db: &found.source_db,
            source_table: &table.name,
        };
        let spec_json = spec_record(spec, options.legacy_embeddings);
        let target = spec.target;
        let recorded = match self.with_db(|conn| catchup::recorded(conn, key)).await {
            Ok(recorded) => recorded,
            Err(err) => {
                out.failed.push(Failure::table(format!(
                    "reading the table's catch-up record: {}",
                    self.scrub(err)
                )));
                return;
            }
        };
        if let Some(recorded) = &recorded
            && recorded.spec == spec_json
            && stamp.is_some()
            && recorded.file_stamp.as_deref() == stamp
        {
            out.unchanged = true;
            // Its rows count as done for a progress bar sized by counting them.
            self.progress.rows(recorded.rows);
            return;
        }
        let force = recorded.as_ref().is_some_and(|r| r.spec != spec_json);
        if let Some(recorded) = recorded.as_ref().filter(|r| r.target != target.table()) {
            match self
                .with_db(|conn| catchup::forget(conn, key, &recorded.target))
                .await
            {
                Ok(_) => out.moved_from = Some(recorded.target.clone()),
                Err(err) => {
                    out.failed.push(Failure::table(format!(
                        "moving the table's rows out of {}: {}",
                        recorded.target,
                        self.scrub(err)
                    )));
                    return;
                }
            }
        }
        let mut chunks = match self.with_db(|conn| catchup::chunks(conn, key)).await {
            Ok(chunks) => chunks,
            Err(err) => {
                out.failed.push(Failure::table(format!(
                    "reading the table's chunks: {}",
                    self.scrub(err)
                )));
                return;
            }
        };
        let origin = RowOrigin {
            agent,
            source: &options.source,
            source_db: &found.source_db,
        };
        let id_of = |rowid: i64| {
            row_id(
                &origin,
                &table.name,
                &Json::from(serde_json::Value::from(rowid)),
            )
        };
        let migrated_at = crate::record::now();
        let sync = Sync { target, key, force };
        let progress = self.progress;
        let run = self.report.run_id.clone();
        // Reading and converting go on while batches before load: the reader hands over
        // one batch at a time, so at most four are held (one being read, one waiting,
        // two loading) and memory stays flat.
        let (handover, mut handed) = tokio::sync::mpsc::channel::<Pending>(1);
        let read = async {
            let mut pending = Pending::default();
            let mut current: Option<ChunkBuf> = None;
            let mut read_all = true;
            let mut batches = source.rows(table);
            loop {
                // A stop requested ends the table between batches: what was read is
                // loaded, and the table is read whole again next time.
                if options.stop.is_requested() {
                    read_all = false;
                    break;
                }
                let batch = match batches.next_batch().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(err) => {
                        out.failed
                            .push(Failure::table(format!("reading stopped: {}", Chain(&err))));
                        read_all = false;
                        break;
                    }
                };
                for (n, row) in batch.iter().enumerate() {
                    let chunk = catchup::chunk_of(row.rowid);
                    if current.as_ref().is_some_and(|c| c.chunk != chunk)
                        && let Some(done) = current.take()
                    {
                        let recorded = chunks.remove(&done.chunk);
                        pending.chunk(done, recorded, id_of, force, out);
                    }
                    let buf = current.get_or_insert_with(|| ChunkBuf::new(chunk));
                    match convert_row(&origin, table, spec, row, migrated_at) {
                        Ok(mut converted) => {
                            if let Some(problem) = &converted.time_problem {
                                out.unreadable_times += 1;
                                if out.unreadable_example.is_none() {
                                    out.unreadable_example =
                                        Some(format!("{}: {problem}", place(row.rowid)));
                                }
                            }
                            count_future(&converted, converted.record.created_at(), out);
                            if options.legacy_embeddings {
                                take_embedding(table, row, &mut converted, out);
                            }
                            buf.push(row.rowid, converted);
                        }
                        Err(err) => {
                            buf.push_failed(row.rowid);
                            out.failed.push(Failure {
                                rowids: row.rowid.map(|r| (r, r)),
                                rows: 1,
                                reason: Chain(&err).to_string(),
                            });
                        }
                    }
                    // A WITHOUT ROWID table is one chunk: its rows load as they come.
                    if buf.chunk == catchup::WHOLE_TABLE
                        && buf.pending_rows() >= options.read.batch_size.max(1)
                    {
                        pending.known |= chunks.contains_key(&buf.chunk);
                        pending.rows.extend(buf.spill());
                    }
                    if pending.rows.len() >= options.read.batch_size.max(1) {
                        pending.columns = Some(Columns::new(&pending.rows, &run));
                        let _ = handover.send(std::mem::take(&mut pending)).await;
                    }
                    // Lets the loading side go on with its next statement as soon as the
                    // server answers, instead of after the whole batch's conversion.
                    if n % YIELD_EVERY == YIELD_EVERY - 1 {
                        tokio::task::yield_now().await;
                    }
                }
                out.read += batch.len() as u64;
                progress.rows(batch.len() as u64);
            }
            if let Some(mut done) = current.take() {
                if read_all {
                    let recorded = chunks.remove(&done.chunk);
                    pending.chunk(done, recorded, id_of, force, out);
                } else {
                    // Reading stopped inside this chunk: what was read loads, but the rows
                    // after it are unknown, so nothing is deleted and the chunk's record
                    // stays as it was (the next run loads the chunk again).
                    pending.known |= chunks.contains_key(&done.chunk);
                    pending.rows.extend(done.spill());
                }
            }
            if read_all {
                // Chunks the source no longer has at all: every row of theirs was
                // deleted.
                for (chunk, recorded) in std::mem::take(&mut chunks) {
                    pending.deletes.extend(catchup::all_ids(&recorded, id_of));
                    pending.gone.push(chunk);
                }
            }
            pending.columns = Some(Columns::new(&pending.rows, &run));
            let _ = handover.send(pending).await;
            drop(handover);
            read_all
        };
        let load = async {
            let mut loaded = TableReport::default();
            // The fast path stays on until a batch of the table conflicts.
            let mut direct = true;
            let mut next: Option<Pending> = None;
            loop {
                let first = match next.take() {
                    Some(pending) => Some(pending),
                    None => handed.recv().await,
                };
                let Some(mut first) = first else { break };
                if !(direct && alongside(&first, force)) {
                    self.sync(&sync, &mut first, &mut loaded, &mut direct).await;
                    continue;
                }
                // Two batches of new rows load at once, the second on a connection of
                // its own, so that the server works on one while the client sends the
                // other, and commits overlap.
                let second = handed.recv().await;
                let beside = self
                    .db
                    .as_mut()
                    .map(|db| (db.target, std::mem::take(&mut db.beside)));
                let (Some(mut second), Some((target, mut beside))) = (second, beside) else {
                    self.sync(&sync, &mut first, &mut loaded, &mut direct).await;
                    continue;
                };
                if !alongside(&second, force) || beside.broken {
                    self.put_beside(beside);
                    self.sync(&sync, &mut first, &mut loaded, &mut direct).await;
                    next = Some(second);
                    continue;
                }
                let columns = second.columns(&run);
                let batch = second.batch(&sync, &columns, options.timeout, true);
                let (_, done) = tokio::join!(
                    self.sync(&sync, &mut first, &mut loaded, &mut direct),
                    beside.load(target, &batch)
                );
                self.put_beside(beside);
                match done {
                    Some(done) => absorb_synced(done, &mut loaded, &mut direct),
                    // Loaded on the run's connection instead, with its retries.
                    None => {
                        second.columns = Some(columns);
                        self.sync(&sync, &mut second, &mut loaded, &mut direct)
                            .await;
                    }
                }
            }
            loaded
        };
        let (read_all, loaded) = tokio::join!(read, load);
        out.absorb(loaded);
        if read_all && out.failed.is_empty() {
            let run = self.report.run_id.clone();
            let (spec_json, rows) = (&spec_json, out.read);
            let recorded = self
                .with_db(|conn| {
                    catchup::record_table(conn, key, target.table(), spec_json, stamp, rows, &run)
                })
                .await;
            if let Err(err) = recorded {
                tracing::warn!(source_db = key.source_db, table = key.source_table, error = %self.scrub(err), "could not record the table as caught up; the next run reads it whole");
            }
        }
        out.seconds = started.elapsed().as_secs_f64();
        out.rows_per_second = rate(out.read, out.seconds);
    }

    fn scrub(&self, err: sqlx::Error) -> String {
        match &self.db {
            Some(db) => db.target.url.scrub(err).to_string(),
            None => err.to_string(),
        }
    }

    /// Runs `work` on the run's connection; in a dry run, which has none, gives the
    /// default (nothing recorded, nothing done).
    async fn with_db<'c, T: Default, F, Fut>(
        &'c mut self,
        work: F,
    ) -> std::result::Result<T, sqlx::Error>
    where
        F: FnOnce(&'c mut PgConnection) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        match self.db.as_mut() {
            Some(db) => work(&mut db.conn).await,
            None => Ok(T::default()),
        }
    }

    /// Loads what `pending` holds, with retries on transient errors; reports it failed
    /// otherwise. Empties `pending` either way.
    async fn sync(
        &mut self,
        sync: &Sync<'_>,
        pending: &mut Pending,
        out: &mut TableReport,
        direct: &mut bool,
    ) {
        let mut taken = std::mem::take(pending);
        if taken.is_empty() || self.db.is_none() {
            return;
        }
        let columns = taken.columns(&self.report.run_id);
        let fast = *direct && !sync.force && !taken.known;
        let batch = taken.batch(sync, &columns, self.options.timeout, fast);
        let mut tried = false;
        let attempt = attempts(|this| {
            let retrying = std::mem::replace(&mut tried, true);
            let batch = &batch;
            async move {
                let loaded = this.sync_once(batch, retrying).await;
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
            Ok(done) => absorb_synced(done, out, direct),
            Err(failed) => {
                let first = taken.rows.first().and_then(|r| r.source.rowid);
                let end = taken.rows.last().and_then(|r| r.source.rowid);
                out.failed.push(Failure {
                    rowids: first.zip(end),
                    rows: (taken.rows.len() + taken.deletes.len()) as u64,
                    reason: failed.reason,
                });
            }
        }
    }

    /// Gives the second loading connection back to the run.
    fn put_beside(&mut self, beside: Beside) {
        if let Some(db) = self.db.as_mut() {
            db.beside = beside;
        }
    }

    /// One attempt at a batch; a `retrying` one first checks the connection, and makes
    /// a new one (taking the file's claim again) when the old one is gone.
    async fn sync_once(
        &mut self,
        batch: &Batch<'_>,
        retrying: bool,
    ) -> std::result::Result<Synced, Attempt> {
        let Some(db) = self.db.as_mut() else {
            return Ok(Synced::default());
        };
        if retrying && db.conn.ping().await.is_err() {
            db.conn = Run::connect(db.target)
                .await
                .map_err(|err| Attempt::again(Chain(&err).to_string()))?;
            // The claim dies with the old session, which the server ends once it sees
            // the connection gone (at once when idle, or after its statement stops);
            // take it again, waiting a little for that, or stop.
            let mut claimed = false;
            for _ in 0..RECLAIM_TRIES {
                claimed = matches!(self.claim(batch.table.source_db, true).await, Ok(true));
                if claimed {
                    break;
                }
                tokio::time::sleep(RECLAIM_WAIT).await;
            }
            if !claimed {
                return Err(Attempt::last(
                    "lost the claim on the file after reconnecting".into(),
                ));
            }
        }
        let Some(db) = self.db.as_mut() else {
            return Ok(Synced::default());
        };
        let target = batch.target;
        let loading = sync_batch(&mut db.conn, batch, &mut db.agent_ids);
        // The server stops a statement at the timeout itself (see `Batch::timeout`) and
        // says so on the connection, which stays usable; the client gives up a moment
        // later, for a batch whose statements are each quick but together too slow.
        let loaded = tokio::time::timeout(self.options.timeout + CLIENT_GRACE, loading).await;
        if !matches!(loaded, Ok(Ok(_))) {
            db.agent_ids.clear();
        }
        match loaded {
            Ok(Ok(done)) => Ok(done),
            // The server stopped a statement at the batch's timeout (a lock held
            // elsewhere, say): tried again like a batch the client gave up on.
            Ok(Err(AgentRowError::Database(err))) if is_statement_timeout(&err) => {
                Err(Attempt::again(format!(
                    "batch took longer than {:?} (MIGRATION_TIMEOUT): {}",
                    self.options.timeout,
                    db.target.url.scrub(err)
                )))
            }
            Ok(Err(AgentRowError::Database(err))) => {
                let transient = is_transient(&err);
                let hint = permission_hint(&err, target);
                let reason = format!("{}{hint}", db.target.url.scrub(err));
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

    /// A file of the library's own layout: its records move as themselves, over older
    /// versions only, and its deletes move as tombstones.
    /// A file of the library's own layout, unless its stamp is the one recorded when an
    /// earlier run moved it whole (then nothing in it changed, and it is not read).
    async fn own_file_if_changed(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        stamp: Option<&str>,
        report: &mut FileReport,
    ) -> Result<()> {
        let key = TableKey {
            source: &self.options.source,
            source_db: &found.source_db,
            source_table: OWN_FILE,
        };
        let spec = serde_json::json!({ "layout": "library" });
        if let Ok(Some(recorded)) = self.with_db(|conn| catchup::recorded(conn, key)).await
            && stamp.is_some()
            && recorded.file_stamp.as_deref() == stamp
        {
            self.progress.rows(recorded.rows);
            report.tables.push(TableReport {
                table: OWN_FILE.into(),
                unchanged: true,
                ..TableReport::default()
            });
            return Ok(());
        }
        self.own_file(source, agent, found, report).await?;
        let read: u64 = report.tables.iter().map(|t| t.read).sum();
        if report.tables.iter().all(|t| t.failed.is_empty()) {
            let run = self.report.run_id.clone();
            let spec = &spec;
            let recorded = self
                .with_db(|conn| {
                    catchup::record_table(conn, key, "library", spec, stamp, read, &run)
                })
                .await;
            if let Err(err) = recorded {
                tracing::warn!(source_db = key.source_db, error = %self.scrub(err), "could not record the file as moved; the next run reads it whole");
            }
        }
        Ok(())
    }

    async fn own_file(
        &mut self,
        source: &mut Source,
        agent: &AgentId,
        found: &Found,
        report: &mut FileReport,
    ) -> Result<()> {
        let backend = self.db.as_ref().map(|db| db.backend);
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
                    // A dry run reads and counts.
                    let Some(backend) = backend else {
                        out.read += 1;
                        continue;
                    };
                    let applied = match &row.record {
                        ContractRecord::Memory(m) => {
                            backend.apply_memory(agent, m).await.map(|s| s.is_some())
                        }
                        ContractRecord::Tool(t) => {
                            backend.apply_tool(agent, t).await.map(|s| s.is_some())
                        }
                        ContractRecord::Metric(m) => {
                            backend.record_metric(agent, m).await.map(|()| true)
                        }
                        ContractRecord::Execution(e) => {
                            backend.log_execution(agent, e).await.map(|()| true)
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
                let Some(backend) = backend else {
                    continue;
                };
                let applied = match tools {
                    false => backend.apply_memory_delete(agent, &name, at).await,
                    true => backend.apply_tool_delete(agent, &name, at).await,
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
pub(crate) async fn connect_to(target: &PgTarget) -> Result<PgConnection> {
    connect_as(target, &target.options).await
}

/// A connection to `target` made with `options` (its own, or those with a change).
async fn connect_as(target: &PgTarget, options: &PgConnectOptions) -> Result<PgConnection> {
    PgConnection::connect_with(options)
        .await
        .map_err(|e| Error::connect(&target.url, e))
}

/// Worth retrying: a lost connection, a deadlock or a serialization failure (the
/// library's one rule, [`Fault::of`]), or a unique key taken by a concurrent run between
/// the batch's conflict check and its insert (SQLSTATE `23505`, which elsewhere is a
/// lasting refusal).
/// How much longer than `MIGRATION_TIMEOUT` the client waits for a batch, so that a
/// statement the server stops at the timeout is reported by the server.
const CLIENT_GRACE: Duration = Duration::from_secs(1);
/// Taking a file's claim again after reconnecting: tries, and the wait between them.
const RECLAIM_TRIES: u32 = 20;
const RECLAIM_WAIT: Duration = Duration::from_millis(250);

/// SQLSTATE 57014 from `statement_timeout` (a batch's statements are held to its
/// timeout by the server too, so a statement waiting on a lock does not outlive it).
fn is_statement_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

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

fn db_error(target: &PgTarget, operation: &str, e: sqlx::Error) -> Error {
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
        abandoned: Vec::new(),
    }
}

/// A row as a report names it: `rowid N`, or `row` in a `WITHOUT ROWID` table.
fn place(rowid: Option<i64>) -> String {
    rowid.map_or_else(|| "row".to_string(), |r| format!("rowid {r}"))
}

/// An unmapped table's rows, counted (or, with `read`, read, for a suggestion that
/// looks at its values), and the map suggested for it.
async fn unmapped_table(
    source: &mut Source,
    source_db: &str,
    table: &TableInfo,
    read: bool,
    out: &mut TableReport,
) {
    let counted = match read {
        true => {
            let mut seen = Observed::new(table);
            let mut batches = source.rows(table);
            let mut outcome = Ok(());
            loop {
                match batches.next_batch().await {
                    Ok(Some(batch)) => batch.iter().for_each(|row| seen.see(row)),
                    Ok(None) => break,
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            out.suggested_map = suggest(source_db, table, Some(&seen)).map(|s| s.argument());
            outcome.map(|()| seen.rows())
        }
        false => {
            out.suggested_map = suggest(source_db, table, None).map(|s| s.argument());
            source.count(&table.name).await
        }
    };
    match counted {
        Ok(rows) => out.read = rows,
        Err(err) => out.failed.push(Failure::table(format!(
            "counting its rows: {}",
            Chain(&err)
        ))),
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
        let at = place(row.source.rowid);
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
