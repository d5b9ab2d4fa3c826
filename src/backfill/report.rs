//! The backfill's report: what was read, inserted, already there, failed or left aside,
//! per agent, file and table; written as `migration_report_<run id>.json`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

/// One run's report. It never holds a password.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run's id, recorded on every row it inserted (`metadata.migration_run`).
    pub run_id: String,
    /// True for a dry run, which wrote nothing to PostgreSQL.
    pub dry_run: bool,
    /// The database, with its password replaced by `***` (none in a dry run).
    pub database: Option<String>,
    /// The agents path scanned.
    pub agents_path: PathBuf,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every file found, in path order.
    pub files: Vec<FileReport>,
    /// Totals over all files.
    pub totals: Totals,
    /// Things an operator should look at although nothing failed, one line each: tables
    /// with rows whose time lies in the future ([`TableReport::future_times`]).
    pub warnings: Vec<String>,
    /// Earlier runs this run found still `running` in `agent_memory.backfill_runs` with
    /// no live worker (killed, or their connection lost for good), and marked
    /// `abandoned`.
    pub abandoned: Vec<String>,
}

/// One file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The path relative to the agents path, `/`-separated.
    pub source_db: String,
    /// The agent it belongs to (or why there is none).
    pub agent: std::result::Result<String, String>,
    /// `legacy`, `library` (the library's own layout) or `problem`.
    pub kind: &'static str,
    /// Why the file could not be used.
    pub problem: Option<String>,
    /// True when a concurrent backfill worker held the file, so this run left it to
    /// that worker: not a problem, and no reason for the run to be incomplete.
    pub claimed_elsewhere: bool,
    /// Its tables.
    pub tables: Vec<TableReport>,
}

/// One table of a file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    /// The legacy table's name.
    pub table: String,
    /// The contract table it goes to, if mapped.
    pub target: Option<String>,
    /// Why it is not migrated (unmapped, a view, a virtual table, ...).
    pub skipped: Option<String>,
    /// For a table nothing maps: the `--map` argument that would move it, suggested from
    /// its columns (and, in a dry run, from its rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_map: Option<String>,
    /// Rows read.
    pub read: u64,
    /// Rows inserted by this run.
    pub inserted: u64,
    /// Rows whose copy in PostgreSQL held other data (changed at the source since an
    /// earlier run, or a rowid reused for another row), replaced under the same id.
    pub updated: u64,
    /// Rows that were already in PostgreSQL with the same data (an earlier run, lazy
    /// migration, dual writes), compared there.
    pub already_present: u64,
    /// Rows the source holds as it did when an earlier run loaded them (their digests
    /// match the catch-up record): not sent again. What PostgreSQL holds of them is that
    /// load, or what an agent wrote or deleted through the library since.
    pub unchanged_rows: u64,
    /// Rows PostgreSQL holds a later write of, made through the library (which wins), or
    /// whose memory key or tool name was deleted through the library (a deleted key never
    /// comes back); also rows deleted at the source that an agent has written since.
    pub outranked: u64,
    /// Rows deleted from PostgreSQL because the source deleted them since an earlier run.
    pub deleted: u64,
    /// Rows that could not be migrated, with why and where.
    pub failed: Vec<Failure>,
    /// Rows whose time column could not be read (their `created_at` is the migration's).
    pub unreadable_times: u64,
    /// The first of them: `rowid N: column C: why`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_example: Option<String>,
    /// Rows whose own time lies after their migration (`metadata.migrated_at`; in a dry
    /// run, after the moment it read them): a clock that was ahead, or a number in a unit
    /// the contract does not expect. They arrive all the same, with `created_at` = that
    /// time, but with `updated_at` (their version) = `migrated_at`, so writes agents make
    /// after the migration still replace and delete them. Each table with such rows also
    /// gets a line in [`Report::warnings`].
    pub future_times: u64,
    /// The first row with a time in the future: `rowid N: <time>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub future_example: Option<String>,
    /// With `legacy_embeddings`: rows whose embedding column was decoded into
    /// `embedding`.
    pub embeddings_decoded: u64,
    /// With `legacy_embeddings`: rows whose embedding column held something that is not
    /// an embedding (they arrive with `embedding` null), and the first reason.
    pub embeddings_undecodable: u64,
    /// Why the first undecodable embedding was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_problem: Option<String>,
    /// Time spent on the table, in seconds.
    pub seconds: f64,
    /// Rows read per second.
    pub rows_per_second: f64,
    /// True when the table was not read: its file and its map are as they were when an
    /// earlier run brought PostgreSQL up to date with it.
    pub unchanged: bool,
    /// The contract table its rows were in before this run moved them (its map changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
}

impl TableReport {
    /// Adds what the loading side of a table did (`loaded`) to what its reading side
    /// counted.
    pub(crate) fn absorb(&mut self, loaded: TableReport) {
        self.inserted += loaded.inserted;
        self.updated += loaded.updated;
        self.already_present += loaded.already_present;
        self.outranked += loaded.outranked;
        self.deleted += loaded.deleted;
        self.failed.extend(loaded.failed);
    }
}

/// Rows that could not be migrated.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// First and last rowid of the rows concerned (`None` without rowids).
    pub rowids: Option<(i64, i64)>,
    /// How many rows.
    pub rows: u64,
    /// Why.
    pub reason: String,
}

impl Failure {
    /// A failure of the table as a whole (reading it, or its bookkeeping), naming no row.
    pub(crate) fn table(reason: String) -> Self {
        Failure {
            rowids: None,
            rows: 0,
            reason,
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Files found.
    pub files: u64,
    /// Files that could not be used (unreadable, corrupt, not SQLite, not a regular
    /// file, a refused link, no agent): each has its reason in [`FileReport::problem`].
    pub problem_files: u64,
    /// Files left to a concurrent worker ([`FileReport::claimed_elsewhere`]).
    pub claimed_elsewhere: u64,
    /// Tables migrated.
    pub tables: u64,
    /// Tables found but not migrated (unmapped or not data).
    pub skipped_tables: u64,
    /// Rows read.
    pub read: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows already present.
    pub already_present: u64,
    /// Rows unchanged at the source since an earlier run loaded them.
    pub unchanged_rows: u64,
    /// Rows outranked by a later write or delete through the library.
    pub outranked: u64,
    /// Rows deleted because the source deleted them.
    pub deleted: u64,
    /// Tables not read because nothing changed since an earlier run.
    pub unchanged_tables: u64,
    /// Rows failed.
    pub failed: u64,
    /// Rows whose time lies in the future (see [`TableReport::future_times`]).
    pub future_times: u64,
    /// Seconds the run took.
    pub seconds: f64,
    /// Rows read per second over the run.
    pub rows_per_second: f64,
}

impl Report {
    /// Adds up the totals, and lists the warnings.
    pub fn finish(&mut self) {
        let finished = Utc::now();
        let mut totals = Totals {
            files: self.files.len() as u64,
            ..Totals::default()
        };
        for file in &self.files {
            totals.problem_files += u64::from(file.problem.is_some() && file.tables.is_empty());
            totals.claimed_elsewhere += u64::from(file.claimed_elsewhere);
            for table in &file.tables {
                totals.deleted += table.deleted;
                if table.skipped.is_some() {
                    totals.skipped_tables += 1;
                    continue;
                }
                totals.unchanged_tables += u64::from(table.unchanged);
                totals.updated += table.updated;
                totals.outranked += table.outranked;
                totals.tables += 1;
                totals.read += table.read;
                totals.inserted += table.inserted;
                totals.already_present += table.already_present;
                totals.unchanged_rows += table.unchanged_rows;
                totals.failed += table.failed.iter().map(|f| f.rows).sum::<u64>();
                totals.future_times += table.future_times;
            }
        }
        let future: Vec<String> = self
            .files
            .iter()
            .flat_map(|f| f.tables.iter().map(move |t| (f, t)))
            .filter(|(_, t)| t.future_times > 0)
            .map(|(f, t)| {
                format!(
                    "{} table {}: {} rows have a time later than their migration (first: {}); \
                     they keep it as created_at, but their updated_at is the migration time \
                     (a clock that was ahead, or numbers in an unexpected unit?)",
                    f.source_db,
                    t.table,
                    t.future_times,
                    t.future_example.as_deref().unwrap_or("?")
                )
            })
            .collect();
        // Warnings the run added itself (files gone since an earlier run, say) stay.
        self.warnings.extend(future);
        totals.seconds = (finished - self.started_at).num_milliseconds() as f64 / 1000.0;
        totals.rows_per_second = rate(totals.read, totals.seconds);
        self.totals = totals;
        self.finished_at = Some(finished);
    }

    /// True when every readable row of every mapped table is in PostgreSQL: no row
    /// failed, and no file's reading stopped part way. Files that could not be used at
    /// all ([`Totals::problem_files`]) do not count against it; an operator tells them
    /// apart by [`Report::unusable_files`] (the backfill program's exit status 3).
    pub fn succeeded(&self) -> bool {
        self.totals.failed == 0
            && self
                .files
                .iter()
                .all(|f| f.problem.is_none() || f.tables.is_empty())
    }

    /// True when some files could not be used at all (see [`Totals::problem_files`]).
    pub fn unusable_files(&self) -> bool {
        self.totals.problem_files > 0
    }

    /// Writes the report as `migration_report_<run id>.json` in `dir`. Run ids are
    /// unique (dry runs have their own), so no run's report replaces another's; a file
    /// of that name already there is an error, never overwritten.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("migration_report_{}.json", self.run_id));
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            context: "the migration report".into(),
            source,
        })?;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create_new(&path)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| {
            Error::invalid(
                "report path",
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
        Ok(path)
    }
}

/// Checks that `dir` can take a report: it exists, is a folder, and a file can be made
/// in it (made and removed again). A run checks this before it reads or writes
/// anything, so its report cannot be lost after its rows were committed.
///
/// # Errors
/// [`Error::InvalidInput`] (`--report-dir`) saying what is wrong.
pub fn check_report_dir(dir: &Path) -> Result<()> {
    let refuse = |why: String| Err(Error::invalid("--report-dir", why));
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse(format!("{} does not exist; create it first", dir.display()));
        }
        Err(e) => return refuse(format!("{} cannot be read: {e}", dir.display())),
        Ok(meta) if !meta.is_dir() => {
            return refuse(format!("{} is not a folder", dir.display()));
        }
        Ok(_) => {}
    }
    let probe = dir.join(format!(
        ".migration_report_check_{}",
        uuid::Uuid::new_v4().simple()
    ));
    match std::fs::File::create_new(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => refuse(format!(
            "{} is not writable: {e}; check its permissions",
            dir.display()
        )),
    }
}

/// `rows` per `seconds`, 0 for no time.
pub(crate) fn rate(rows: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        rows as f64 / seconds
    } else {
        0.0
    }
}
