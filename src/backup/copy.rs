//! One consistent copy of a SQLite file, through SQLite's online backup API, made
//! byte-identical to its source when the source file is that snapshot (see the module
//! docs of [`crate::backup`]).

use std::ffi::CStr;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::CopyDetails;
use crate::error::{BoxError, Error, Result};
use crate::legacy::{ReadOptions, Source};

pub(super) fn partial(copy: &Path) -> PathBuf {
    companion(copy, ".partial")
}

/// `path` with `suffix` appended to its file name (`x.db` -> `x.db-wal`).
pub(super) fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_error(path: &Path, problem: impl Into<String>, source: BoxError) -> Error {
    Error::SqliteFile {
        path: path.to_path_buf(),
        problem: problem.into(),
        source,
    }
}

pub(super) async fn copy_one(source: &Path, relative: &Path, copy: &Path) -> Result<CopyDetails> {
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Error::invalid(
            "source path",
            format!(
                "{} is not a plain path relative to the agents path; it is not backed up",
                relative.display()
            ),
        ));
    }
    let io = |problem: &'static str| move |e: std::io::Error| file_error(source, problem, e.into());
    let parent = copy.parent().unwrap_or(copy);
    std::fs::create_dir_all(parent).map_err(io(
        "cannot be backed up: its folder in the backup cannot be created",
    ))?;
    let metadata = std::fs::metadata(source).map_err(io("cannot be read"))?;

    let mut src = Source::open(source, &ReadOptions::default()).await?;
    let sql_error = |problem: &'static str| {
        move |e: sqlx::Error| file_error(source, problem, Box::new(e) as BoxError)
    };
    // One read transaction: the backup API and the byte read below see one snapshot.
    let mut tx = src
        .conn
        .begin()
        .await
        .map_err(sql_error("cannot be read"))?;
    sqlx::query_scalar::<_, i64>("select count(*) from sqlite_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(sql_error(
            "is corrupt or unreadable (its schema cannot be read); it is not backed up",
        ))?;
    let schema_cookie = sqlx::query_scalar::<_, i64>("pragma schema_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(sql_error("cannot be read"))?;
    let wal_size = std::fs::metadata(companion(source, "-wal")).map_or(0, |m| m.len());

    let staging = partial(copy);
    let mut dest = SqliteConnectOptions::new()
        .filename(&staging)
        .create_if_missing(true)
        .foreign_keys(false)
        .disable_statement_logging()
        .connect()
        .await
        .map_err(|e| {
            file_error(
                source,
                format!(
                    "cannot be backed up: {} cannot be created",
                    staging.display()
                ),
                Box::new(e),
            )
        })?;
    // The copy, the source's bytes and the copy's check; whatever comes of them, the
    // staging connection is closed before this returns, so a failed copy leaves no
    // connection that could still write its -journal after the caller removed it.
    let copied = async {
        {
            let mut src_handle = tx
                .lock_handle()
                .await
                .map_err(sql_error("cannot be read"))?;
            let mut dest_handle = dest
                .lock_handle()
                .await
                .map_err(sql_error("cannot be backed up"))?;
            let src_db = src_handle.as_raw_handle().as_ptr();
            let dest_db = dest_handle.as_raw_handle().as_ptr();
            // SAFETY: both handles are open connections, locked for our exclusive use by
            // the guards alive in this block; the backup object is finished before it ends.
            let step = || unsafe { run_backup_api(src_db, dest_db) };
            let result = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(step),
                _ => step(),
            };
            result.map_err(|message| {
                file_error(
                    source,
                    "cannot be backed up: SQLite's backup API failed",
                    message.into(),
                )
            })?;
        }
        // Still inside the read transaction: in rollback-journal mode no writer can change
        // the file now; in WAL mode a change shows up as a difference from the backup.
        let source_bytes = std::fs::read(source).map_err(io("cannot be read"))?;
        tx.rollback().await.map_err(sql_error("cannot be read"))?;
        let check: Vec<String> = sqlx::query_scalar("pragma quick_check")
            .fetch_all(&mut dest)
            .await
            .map_err(sql_error("cannot be checked after copying"))?;
        Ok::<_, Error>((source_bytes, check))
    }
    .await;
    let closed = dest.close().await;
    drop(src);
    let (source_bytes, check) = copied?;
    closed.map_err(sql_error("cannot be backed up"))?;
    if check != ["ok"] {
        return Err(file_error(
            source,
            format!(
                "is corrupt (quick_check of its copy: {}); it is not backed up",
                check.join("; ")
            ),
            Box::new(std::io::Error::from(std::io::ErrorKind::InvalidData)),
        ));
    }

    let mut copy_bytes = std::fs::read(&staging).map_err(io("cannot be backed up"))?;
    let byte_identical = same_database_bytes(&source_bytes, &copy_bytes);
    if byte_identical {
        copy_bytes = source_bytes.clone();
    } else if copy_bytes.len() >= 100 {
        // The backup API gave the new file schema cookie 1; the snapshot's own is the
        // faithful one.
        copy_bytes[40..44].copy_from_slice(&(schema_cookie as u32).to_be_bytes());
    }
    let page_size = match u16::from_be_bytes([copy_bytes[16], copy_bytes[17]]) {
        1 => 65536,
        n => u32::from(n),
    };
    let journal_mode = if copy_bytes[18] == 2 || copy_bytes[19] == 2 {
        "wal"
    } else {
        "rollback"
    };
    let store = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&staging)?;
        file.write_all(&copy_bytes)?;
        file.sync_all()?;
        if let Ok(modified) = metadata.modified() {
            file.set_modified(modified)?;
        }
        drop(file);
        std::fs::set_permissions(&staging, metadata.permissions())?;
        std::fs::rename(&staging, copy)
    };
    store().map_err(io("cannot be backed up: writing its copy failed"))?;

    Ok(CopyDetails {
        source_size: source_bytes.len() as u64,
        source_sha256: sha256_hex(&source_bytes),
        copy_size: copy_bytes.len() as u64,
        copy_sha256: sha256_hex(&copy_bytes),
        byte_identical,
        wal_size,
        page_size,
        page_count: copy_bytes.len() as u64 / u64::from(page_size.max(1)),
        journal_mode,
        backed_up_at: Utc::now(),
    })
}

/// Copies every page of `src`'s main database into `dest`'s in one step.
///
/// # Safety
/// `src` and `dest` must be open connections that nothing else uses meanwhile.
unsafe fn run_backup_api(
    src: *mut libsqlite3_sys::sqlite3,
    dest: *mut libsqlite3_sys::sqlite3,
) -> std::result::Result<(), String> {
    use libsqlite3_sys as ffi;
    let main = c"main".as_ptr();
    let message = |db: *mut ffi::sqlite3| {
        // SAFETY: `db` is an open connection; sqlite3_errmsg never returns null for one.
        unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: per this function's contract.
    let backup = unsafe { ffi::sqlite3_backup_init(dest, main, src, main) };
    if backup.is_null() {
        return Err(message(dest));
    }
    // SAFETY: `backup` is live until sqlite3_backup_finish below.
    let step = unsafe { ffi::sqlite3_backup_step(backup, -1) };
    // SAFETY: finishing releases `backup`, which is not used again.
    let finish = unsafe { ffi::sqlite3_backup_finish(backup) };
    if step != ffi::SQLITE_DONE {
        // SAFETY: sqlite3_errstr returns a static string for any code.
        let text = unsafe { CStr::from_ptr(ffi::sqlite3_errstr(step)) };
        return Err(format!("step: {} ({step})", text.to_string_lossy()));
    }
    if finish != ffi::SQLITE_OK {
        return Err(format!("finish: {}", message(dest)));
    }
    Ok(())
}

/// Header bytes that the backup API sets for the destination rather than copying:
/// change counter and size in pages, schema cookie, version-valid-for and SQLite version.
const REWRITTEN_HEADER: [std::ops::Range<usize>; 3] = [24..32, 40..44, 92..100];

/// True when `source` holds the same pages as the backup API's `copy`, apart from the
/// header fields the backup API rewrites.
fn same_database_bytes(source: &[u8], copy: &[u8]) -> bool {
    if source.len() != copy.len() || source.len() < 100 {
        return false;
    }
    let rewritten = |i: usize| REWRITTEN_HEADER.iter().any(|r| r.contains(&i));
    source
        .iter()
        .zip(copy)
        .enumerate()
        .all(|(i, (a, b))| a == b || rewritten(i))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_header_bytes_only() {
        let mut a = vec![7u8; 4096];
        let mut b = a.clone();
        b[24] = 1;
        b[43] = 9;
        b[99] = 3;
        assert!(same_database_bytes(&a, &b));
        b[18] = 2;
        assert!(!same_database_bytes(&a, &b));
        a.push(0);
        assert!(!same_database_bytes(&a, &b));
    }
}
