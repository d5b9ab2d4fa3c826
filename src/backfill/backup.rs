//! `--backup`: a consistent copy of every legacy SQLite file, a manifest of checksums,
//! and the two shell scripts of the migration guide's backup and rollback steps.
//!
//! [`backup`] makes `<backup root>/sqlite_backup_<YYYYmmddTHHMMSSZ>/` and, for each
//! legacy file, a copy at the same path relative to the agents path. Then it writes:
//!
//! - `manifest.json`: the backup's id and time, and per file its relative path, sizes,
//!   the sha256 of the source as backed up and of the copy, page size and count, journal
//!   mode and time ([`BackedUpFile`]).
//! - `restore_sqlite.sh`: puts every copy back at its place under the agents path. It
//!   first checks every copy against the manifest's sha256 (the sums are written into the
//!   script) and refuses, before touching anything, while a `-wal` with content lies next
//!   to a target (an agent may still be running; `--force` overrides). Each file goes
//!   through a temporary file beside its target that is checked again and renamed into
//!   place; the target's stale `-wal`, `-shm` and `-journal` are removed just before
//!   (SQLite would otherwise replay an old `-wal` or hot journal onto the restored file).
//! - `backup_sqlite.sh`: makes the same backup again with the `sqlite3` command-line
//!   tool's `.backup` command, for teams that follow the guide (`bash backup_sqlite.sh
//!   [DEST]`, by default a new `sqlite_backup_<UTC time>` folder beside this one). It
//!   reads a WAL file that no process has open (no `-shm`) from a private copy, so that
//!   no `-wal`/`-shm` appear beside it, and every other file with `sqlite3 -readonly`.
//!
//! Both scripts are `bash` with `set -euo pipefail`, and every path in them is absolute
//! and single-quoted by [`shell_quote`], so names with spaces, quotes, `$(...)`,
//! backticks or newlines are data, never code.
//!
//! # How a copy is made, and when it is byte-identical
//!
//! Each source is opened the way [`Source::open`] reads legacy files (read-only, WAL-aware,
//! never checkpointed or modified; see [`crate::legacy`]), and a read transaction is
//! opened on it. Inside that one transaction:
//!
//! 1. SQLite's online backup API (`sqlite3_backup_init`/`step`/`finish`, through the
//!    sqlx connections' raw handles) copies every page of the transaction's snapshot into
//!    a new file. That is the consistent copy: it holds exactly the committed
//!    transactions, including those that live only in a running agent's `-wal`.
//! 2. The source's own bytes are read. In rollback-journal mode the transaction's shared
//!    lock keeps every writer from changing the file meanwhile; in WAL mode a checkpoint
//!    may still write to it, which the next step detects.
//!
//! The backup API writes the snapshot's pages unchanged, except for page 1's header
//! fields it maintains for the destination: the file change counter and the size in
//! pages (bytes 24..32), the schema cookie (40..44), which it sets to 1 in a new file,
//! and the "version valid for" number and the SQLite version (92..100). So when the
//! source's bytes equal the backup's on every byte outside those ranges, the source
//! file *is* that snapshot, and the copy is given the source's header fields back:
//! the copy is then byte-identical to the source ([`CopyDetails::byte_identical`]; its
//! sha256 equals `source_sha256`), and restoring it gives back the very file. That is
//! the case for every file that no process was writing (rollback journal, or WAL mode
//! with its `-wal` checkpointed).
//!
//! When they differ, the main file alone is not the database: committed rows lie in a
//! `-wal` (a running agent, or a crash), or a checkpoint wrote while the file was read.
//! The copy then stays as the backup API made it (with the snapshot's schema cookie put
//! back): a self-contained database holding exactly the rows committed at backup time,
//! and `byte_identical` is false. No byte copy of the main file could do better, as it
//! would miss the rows in the `-wal`.
//!
//! Before it is kept, every copy passes `PRAGMA quick_check`, and gets the source's
//! permissions and modification time.
//!
//! # Errors per file
//!
//! A file that cannot be backed up (unreadable, not SQLite, corrupt, a path outside the
//! agents path) does not stop the others: [`backup`] returns it as a
//! [`FileOutcome::Failed`] naming the file, it is listed so in the manifest, and the
//! scripts leave it out (the backfill never writes to legacy files, so a file that could
//! not be copied is still where it was). Only a backup folder that cannot be made or
//! written fails the whole call.

use std::ffi::{CStr, OsStr};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::error::{BoxError, Chain, Error, Result};
use crate::legacy::{ReadOptions, Source};

/// Name of the manifest written into the backup folder.
pub const MANIFEST: &str = "manifest.json";
/// Name of the script that re-creates the backup with the `sqlite3` tool.
pub const BACKUP_SCRIPT: &str = "backup_sqlite.sh";
/// Name of the script that puts the backed-up files back.
pub const RESTORE_SCRIPT: &str = "restore_sqlite.sh";

/// A finished backup.
#[derive(Debug, Serialize)]
pub struct Backup {
    /// The backup folder, `<backup root>/sqlite_backup_<YYYYmmddTHHMMSSZ>`.
    #[serde(serialize_with = "lossy")]
    pub dir: PathBuf,
    /// Every source asked for, in the order given, backed up or failed.
    pub files: Vec<BackedUpFile>,
    /// `backup_sqlite.sh` in the backup folder.
    #[serde(serialize_with = "lossy")]
    pub backup_script: PathBuf,
    /// `restore_sqlite.sh` in the backup folder.
    #[serde(serialize_with = "lossy")]
    pub restore_script: PathBuf,
}

impl Backup {
    /// The files that could not be backed up.
    pub fn failed(&self) -> impl Iterator<Item = &BackedUpFile> {
        self.files
            .iter()
            .filter(|f| matches!(f.outcome, FileOutcome::Failed { .. }))
    }

    /// The manifest's path.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }
}

/// One source file and what became of it.
#[derive(Debug, Serialize)]
pub struct BackedUpFile {
    /// Its path relative to the agents path, `/`-separated (as `metadata.source_db`).
    pub source_db: String,
    /// The source file.
    #[serde(serialize_with = "lossy")]
    pub source: PathBuf,
    /// Where its copy is (or would have been), under the backup folder.
    #[serde(serialize_with = "lossy")]
    pub copy: PathBuf,
    /// The copy's details, or why there is none.
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

impl BackedUpFile {
    /// The copy's details when the file was backed up.
    pub fn details(&self) -> Option<&CopyDetails> {
        match &self.outcome {
            FileOutcome::Copied(details) => Some(details),
            FileOutcome::Failed { .. } => None,
        }
    }
}

/// Whether a file was backed up.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Copied and checked.
    Copied(CopyDetails),
    /// Not copied; the other files were.
    Failed {
        /// What went wrong, naming the file.
        error: String,
    },
}

/// What the manifest records about one copy.
#[derive(Debug, Clone, Serialize)]
pub struct CopyDetails {
    /// Size of the source's main file as backed up, in bytes.
    pub source_size: u64,
    /// sha256 (lowercase hex) of the source's main file as read during the backup.
    pub source_sha256: String,
    /// Size of the copy, in bytes.
    pub copy_size: u64,
    /// sha256 (lowercase hex) of the copy; the restore script checks it.
    pub copy_sha256: String,
    /// True when the copy is the source's exact bytes (see the module docs).
    pub byte_identical: bool,
    /// Size of the source's `-wal` at backup time (0 when there is none).
    pub wal_size: u64,
    /// Page size of the database.
    pub page_size: u32,
    /// Pages in the copy.
    pub page_count: u64,
    /// The database's journal mode, from its header: `wal` or `rollback`.
    pub journal_mode: &'static str,
    /// When the copy was taken.
    pub backed_up_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: u32,
    id: String,
    name: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    #[serde(serialize_with = "lossy")]
    agents_path: &'a Path,
    #[serde(serialize_with = "lossy")]
    dir: &'a Path,
    files: &'a [BackedUpFile],
}

fn lossy<S: Serializer, P: AsRef<Path>>(path: &P, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.as_ref().to_string_lossy())
}

/// Backs up `sources` (paths relative to `agents_path`, as [`crate::legacy::Found`]'s
/// `source_db` gives them) into `<backup_root>/sqlite_backup_<started as
/// YYYYmmddTHHMMSSZ>/`, and writes the manifest and both scripts there (see the module
/// docs).
///
/// # Errors
/// Only for the backup folder: [`Error::InvalidInput`] when it already exists or cannot
/// be made, [`Error::SqliteFile`] naming the manifest or script that cannot be written.
/// A source that cannot be backed up is a [`FileOutcome::Failed`] in the result, not an
/// error.
pub async fn backup(
    agents_path: &Path,
    sources: &[PathBuf],
    backup_root: &Path,
    started: DateTime<Utc>,
) -> Result<Backup> {
    let agents_path = absolute(agents_path, "agents path")?;
    let backup_root = absolute(backup_root, "backup path")?;
    let name = format!("sqlite_backup_{}", started.format("%Y%m%dT%H%M%SZ"));
    let dir = backup_root.join(&name);
    std::fs::create_dir_all(&backup_root).map_err(|e| {
        Error::invalid(
            "backup path",
            format!("{} cannot be created: {e}", backup_root.display()),
        )
    })?;
    std::fs::create_dir(&dir).map_err(|e| {
        Error::invalid(
            "backup path",
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "backup folder {} already exists (a backup started in the same second?); \
                     wait a second and retry",
                    dir.display()
                )
            } else {
                format!("backup folder {} cannot be created: {e}", dir.display())
            },
        )
    })?;

    let mut files: Vec<BackedUpFile> = Vec::with_capacity(sources.len());
    for relative in sources {
        if files.iter().any(|f| Path::new(&f.source_db) == relative) {
            continue;
        }
        files.push(backup_file(&agents_path, relative, &dir).await);
    }

    let backup = Backup {
        backup_script: dir.join(BACKUP_SCRIPT),
        restore_script: dir.join(RESTORE_SCRIPT),
        dir,
        files,
    };
    let manifest = Manifest {
        format: 1,
        id: uuid::Uuid::new_v4().to_string(),
        name,
        started_at: started,
        finished_at: Utc::now(),
        agents_path: &agents_path,
        dir: &backup.dir,
        files: &backup.files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Json {
        context: format!("backup manifest {}", backup.manifest().display()),
        source: e,
    })?;
    write_file(&backup.manifest(), &json, false)?;
    write_file(
        &backup.backup_script,
        &backup_script(&manifest, &backup_root),
        true,
    )?;
    write_file(&backup.restore_script, &restore_script(&manifest), true)?;
    Ok(backup)
}

fn absolute(path: &Path, what: &'static str) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::invalid(what, format!("{}: {e}", path.display())))
}

fn write_file(path: &Path, bytes: &[u8], executable: bool) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create_new(path)?;
        file.write_all(bytes)?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        file.sync_all()
    };
    write().map_err(|e| Error::SqliteFile {
        path: path.to_path_buf(),
        problem: "cannot be written into the backup folder".into(),
        source: Box::new(e),
    })
}

async fn backup_file(agents_path: &Path, relative: &Path, dir: &Path) -> BackedUpFile {
    let source = agents_path.join(relative);
    let copy = dir.join(relative);
    let source_db = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    let outcome = match copy_one(&source, relative, &copy).await {
        Ok(details) => FileOutcome::Copied(details),
        Err(e) => {
            tracing::warn!(file = %source.display(), error = %Chain(&e), "backup failed");
            // Leave no half-made copy for a restore to find.
            let _ = std::fs::remove_file(&copy);
            let _ = std::fs::remove_file(partial(&copy));
            FileOutcome::Failed {
                error: Chain(&e).to_string(),
            }
        }
    };
    BackedUpFile {
        source_db,
        source,
        copy,
        outcome,
    }
}

fn partial(copy: &Path) -> PathBuf {
    companion(copy, ".partial")
}

/// `path` with `suffix` appended to its file name (`x.db` -> `x.db-wal`).
fn companion(path: &Path, suffix: &str) -> PathBuf {
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

async fn copy_one(source: &Path, relative: &Path, copy: &Path) -> Result<CopyDetails> {
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
    drop(src);

    let check: Vec<String> = sqlx::query_scalar("pragma quick_check")
        .fetch_all(&mut dest)
        .await
        .map_err(sql_error("cannot be checked after copying"))?;
    dest.close()
        .await
        .map_err(sql_error("cannot be backed up"))?;
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

/// `text` as one single-quoted shell word: every `'` becomes `'\''`, nothing else is
/// special inside single quotes (not `$`, backticks, `\`, `"` or a newline), so the shell
/// reads back exactly these bytes. The empty string becomes `''`.
///
/// ```
/// use memshift::backfill::backup::shell_quote;
/// assert_eq!(shell_quote("it's $(x).db".as_ref()), b"'it'\\''s $(x).db'".to_vec());
/// ```
pub fn shell_quote(text: &OsStr) -> Vec<u8> {
    let bytes = os_bytes(text);
    let mut quoted = Vec::with_capacity(bytes.len() + 2);
    quoted.push(b'\'');
    for &b in bytes.iter() {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
}

#[cfg(unix)]
fn os_bytes(text: &OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(text.as_bytes())
}

#[cfg(not(unix))]
fn os_bytes(text: &OsStr) -> std::borrow::Cow<'_, [u8]> {
    match text.to_string_lossy() {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
    }
}

/// A script under construction: text and quoted paths.
struct Script(Vec<u8>);

impl Script {
    fn text(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn path(&mut self, path: impl AsRef<OsStr>) -> &mut Self {
        self.0.extend_from_slice(&shell_quote(path.as_ref()));
        self
    }
}

fn copied<'a>(
    manifest: &'a Manifest<'_>,
) -> impl Iterator<Item = (&'a BackedUpFile, &'a CopyDetails)> {
    manifest
        .files
        .iter()
        .filter_map(|f| f.details().map(|d| (f, d)))
}

fn backup_script(manifest: &Manifest<'_>, backup_root: &Path) -> Vec<u8> {
    let mut s = Script(Vec::new());
    s.text("#!/usr/bin/env bash\n")
        .text("# Makes again the backup ")
        .text(&manifest.name)
        .text(" of the legacy SQLite files, with the sqlite3\n")
        .text("# command-line tool's .backup command (safe while agents run; sources are only read).\n")
        .text("# Usage: bash backup_sqlite.sh [DEST]   (DEST defaults to a new sqlite_backup_<UTC time>\n")
        .text("# folder beside this backup). Written by memshift's backfill --backup.\n")
        .text("set -euo pipefail\n\n")
        .text("command -v sqlite3 >/dev/null 2>&1 || { echo 'backup_sqlite.sh: the sqlite3 command-line tool is needed' >&2; exit 1; }\n\n")
        .text("agents=")
        .path(manifest.agents_path)
        .text("\nif [ \"$#\" -ge 1 ]; then\n  dest=$1\nelse\n  dest=")
        .path(backup_root)
        .text("/sqlite_backup_$(date -u +%Y%m%dT%H%M%SZ)\nfi\n")
        .text("case $dest in /*) ;; *) dest=$PWD/$dest ;; esac\n")
        .text("mkdir -p -- \"$dest\"\n")
        .text("scratch=$(mktemp -d)\ntrap 'rm -rf -- \"$scratch\"' EXIT\n\n")
        .text(BACKUP_ONE)
        .text("\nfailed=0\n");
    if copied(manifest).next().is_none() {
        s.text("echo 'backup_sqlite.sh: this backup holds no files'\n");
    }
    for (file, _) in copied(manifest) {
        let relative = file.copy.strip_prefix(manifest.dir).unwrap_or(&file.copy);
        s.text("backup_one \"$agents\"/")
            .path(relative)
            .text(" \"$dest\"/")
            .path(relative)
            .text(" || failed=1\n");
    }
    s.text(
        "\nif [ \"$failed\" -ne 0 ]; then\n  echo 'backup_sqlite.sh: some files were not backed up (see above)' >&2\n  exit 1\nfi\n\
         printf 'backed up to %s\\n' \"$dest\"\n",
    );
    s.0
}

/// The backup script's per-file function: no `set -e` inside a function called with
/// `||`, so every step checks itself.
const BACKUP_ONE: &str = r#"# backup_one SOURCE COPY: a consistent copy of SOURCE at COPY, by sqlite3's .backup.
backup_one() {
  local src=$1 dst=$2 work
  work=$(mktemp -d "$scratch/f.XXXXXX") || return 1
  mkdir -p -- "${dst%/*}" || return 1
  if [ "$(od -An -tu1 -j18 -N1 -- "$src" | tr -d ' \n')" = 2 ] && [ ! -e "$src-shm" ]; then
    # A WAL file that no process has open: read a private copy (with its -wal), so
    # that no -wal or -shm appear beside the source.
    cp -- "$src" "$work/db" || return 1
    if [ -e "$src-wal" ]; then cp -- "$src-wal" "$work/db-wal" || return 1; fi
    (cd "$work" && sqlite3 -cmd '.timeout 30000' db '.backup out.db') || { printf 'cannot back up %s\n' "$src" >&2; return 1; }
  else
    (cd "$work" && sqlite3 -readonly -cmd '.timeout 30000' "$src" '.backup out.db') || { printf 'cannot back up %s\n' "$src" >&2; return 1; }
  fi
  mv -f -- "$work/out.db" "$dst" || return 1
  rm -rf -- "$work"
}
"#;

fn restore_script(manifest: &Manifest<'_>) -> Vec<u8> {
    let mut s = Script(Vec::new());
    s.text("#!/usr/bin/env bash\n")
        .text("# Puts the legacy SQLite files of backup ")
        .text(&manifest.name)
        .text(" (id ")
        .text(&manifest.id)
        .text(") back in place.\n")
        .text("# Stop every agent first. Usage: bash restore_sqlite.sh [--force]\n")
        .text("#   --force  restore even where a -wal with content lies next to a target\n")
        .text("# Every copy is checked against the manifest's sha256 (below) before anything is touched.\n")
        .text("# Written by memshift's backfill --backup.\n")
        .text("set -euo pipefail\n\n")
        .text(RESTORE_HEAD);
    if copied(manifest).next().is_none() {
        // Also spares old bash versions an empty array under `set -u`.
        s.text("\necho 'restore_sqlite.sh: this backup holds no files'\nexit 0\n");
        return s.0;
    }
    s.text("\ncopies=(\n");
    for (file, _) in copied(manifest) {
        s.text("  ").path(&file.copy).text("\n");
    }
    s.text(")\ntargets=(\n");
    for (file, _) in copied(manifest) {
        s.text("  ").path(&file.source).text("\n");
    }
    s.text(")\nsums=(\n");
    for (_, details) in copied(manifest) {
        s.text("  ").path(&details.copy_sha256).text("\n");
    }
    s.text(")\n\n").text(RESTORE_BODY);
    s.0
}

const RESTORE_HEAD: &str = r#"force=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    *) printf 'usage: %s [--force]\n' "$0" >&2; exit 2 ;;
  esac
done

sha256_of() {
  local sum
  if command -v sha256sum >/dev/null 2>&1; then
    sum=$(sha256sum < "$1")
  else
    sum=$(shasum -a 256 < "$1")
  fi
  printf '%s' "${sum%% *}"
}
"#;

const RESTORE_BODY: &str = r#"# 1. Check everything before touching anything.
problems=0
for i in "${!copies[@]}"; do
  copy=${copies[$i]}
  target=${targets[$i]}
  if [ ! -f "$copy" ]; then
    printf 'backup copy missing: %s\n' "$copy" >&2
    problems=1
    continue
  fi
  if [ "$(sha256_of "$copy")" != "${sums[$i]}" ]; then
    printf 'backup copy damaged (sha256 differs from the manifest): %s\n' "$copy" >&2
    problems=1
  fi
  if [ -s "$target-wal" ] && [ "$force" -eq 0 ]; then
    printf '%s-wal has content: an agent may still be using %s; stop it first, or pass --force\n' "$target" "$target" >&2
    problems=1
  fi
done
if [ "$problems" -ne 0 ]; then
  echo 'restore_sqlite.sh: nothing was restored' >&2
  exit 1
fi

# 2. Put each file back: a checked temporary copy beside the target, renamed into place
#    once the target's stale -wal, -shm and -journal are gone (SQLite would replay them).
for i in "${!copies[@]}"; do
  copy=${copies[$i]}
  target=${targets[$i]}
  tmp="$target.restore-$$"
  mkdir -p -- "${target%/*}"
  cp -p -- "$copy" "$tmp"
  if [ "$(sha256_of "$tmp")" != "${sums[$i]}" ]; then
    rm -f -- "$tmp"
    printf 'copying %s to %s failed its sha256 check\n' "$copy" "$target" >&2
    exit 1
  fi
  rm -f -- "$target-wal" "$target-shm" "$target-journal"
  mv -f -- "$tmp" "$target"
  printf 'restored %s\n' "$target"
done
printf 'restore_sqlite.sh: %d file(s) restored\n' "${#copies[@]}"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &[u8]) -> Vec<u8> {
        #[cfg(unix)]
        let os: &OsStr = std::os::unix::ffi::OsStrExt::from_bytes(text);
        #[cfg(not(unix))]
        let os: &OsStr = std::str::from_utf8(text).unwrap().as_ref();
        let mut script = b"printf '%s' ".to_vec();
        script.extend_from_slice(&shell_quote(os));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.sh");
        std::fs::write(&file, &script).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "side effects"
        );
        out.stdout
    }

    #[test]
    fn quoting_is_exact() {
        assert_eq!(shell_quote("".as_ref()), b"''");
        assert_eq!(shell_quote("a b".as_ref()), b"'a b'");
        assert_eq!(shell_quote("it's".as_ref()), b"'it'\\''s'");
        let nasty: &[&[u8]] = &[
            b"my db.sqlite",
            b"it's.db",
            b"''",
            b"say \"hi\".db",
            b"$(touch pwned).db",
            b"`touch pwned`.db",
            b"${HOME}$HOME\\n\\",
            b"line\nbreak\n",
            "caf\u{e9} \u{1f600} \u{41c}\u{438}\u{440}.db".as_bytes(),
            b"-rf *",
            b"a;b|c&d>e<f",
            b"!!",
            b"\xff\xfe not utf-8",
            b"",
        ];
        for text in nasty {
            assert_eq!(round_trip(text), *text, "{}", String::from_utf8_lossy(text));
        }
    }

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
