//! Opening an agent's file: created when missing, in WAL mode with a busy timeout and
//! `synchronous = FULL`, its schema brought up to date; and what a failed open means.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::SqliteOptions;
use crate::error::{Error, Result};
use crate::schema::migrate_sqlite;

/// Opens (creating if needed) one agent file and brings its schema up to date.
pub(super) async fn open_file(path: PathBuf, options: &SqliteOptions) -> Result<SqlitePool> {
    let file_error = |problem: &str, source: crate::error::BoxError| Error::SqliteFile {
        path: path.clone(),
        problem: problem.to_string(),
        source,
    };
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| {
            file_error(
                "cannot create the agent's folder; check that the agents path is a writable folder",
                Box::new(e),
            )
        })?;
    }
    if path.is_dir() {
        return Err(file_error(
            "is a directory; the agent's database must be a SQLite file",
            Box::new(std::io::Error::from(std::io::ErrorKind::IsADirectory)),
        ));
    }
    let connect = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(options.busy_timeout)
        .pragma("mmap_size", options.mmap_size.to_string());
    let opened = async {
        let pool = SqlitePoolOptions::new()
            .after_connect(|conn, _| Box::pin(crate::vector::sqlite::register_functions(conn)))
            .max_connections(options.max_connections.max(1))
            // A file cannot drop the connection the way a server can, so checking it
            // on every acquire (sqlx's default) would only cost a trip to its thread.
            .test_before_acquire(false)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            .connect_with(connect)
            .await?;
        let mut conn = pool.acquire().await?;
        migrate_sqlite(&mut conn).await?;
        drop(conn);
        Ok::<_, sqlx::Error>(pool)
    };
    let pool = opened
        .await
        .map_err(|e| file_error(open_problem(&e), Box::new(e)))?;
    tracing::debug!(path = %path.display(), "opened agent SQLite file");
    Ok(pool)
}

/// Says, for a failed open, what is wrong with the file and what to do.
fn open_problem(err: &sqlx::Error) -> &'static str {
    let code = match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff),
        _ => None,
    };
    match code {
        Some(11) | Some(26) => {
            "is not a SQLite database or is corrupt; move it aside or restore it from a backup"
        }
        Some(8) => "is read-only; make the file and its folder writable",
        Some(14) => "cannot be opened; check that its folder exists and is writable",
        Some(5) | Some(6) => "stayed locked by another process past the busy timeout",
        _ => "cannot be opened as an agent database",
    }
}
