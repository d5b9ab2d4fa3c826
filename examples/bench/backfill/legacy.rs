//! The generated legacy agents path: one SQLite file of `memory` rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{NaiveDate, TimeDelta};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use super::AGENT;
use crate::harness::{Result, Rng, memory_value};

/// Rows per generated `insert` statement (4 parameters each).
const ROWS_PER_INSERT: usize = 250;

/// A generated agents path holding one legacy file.
pub(super) struct Legacy {
    /// The agents path.
    pub(super) root: PathBuf,
    /// `<root>/bench_agent/memory.db`.
    pub(super) file: PathBuf,
    pub(super) rows: usize,
    pub(super) bytes: u64,
    pub(super) mean_content_bytes: f64,
    pub(super) seconds: f64,
}

/// Writes `<root>/bench_agent/memory.db` with `rows` rows, in one transaction.
pub(super) async fn build_legacy(
    root: &Path,
    rows: usize,
    content_bytes: usize,
    seed: u64,
) -> Result<Legacy> {
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
