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
//! and single-quoted, so names with spaces, quotes, `$(...)`, backticks or newlines are
//! data, never code.
//!
//! # How a copy is made, and when it is byte-identical
//!
//! Each source is opened the way [`Source::open`](crate::legacy::Source::open) reads
//! legacy files (read-only, WAL-aware, never checkpointed or modified; see
//! [`crate::legacy`]), and a read transaction is opened on it. Inside that one transaction:
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
//! A file that cannot be backed up (unreadable, not SQLite, corrupt, not a regular file,
//! a path or a symbolic link leading outside the agents path, no space left for its
//! copy) does not stop the others: [`backup`] returns it as a
//! [`FileOutcome::Failed`] naming the file, it is listed so in the manifest, and the
//! scripts leave it out (the backfill never writes to legacy files, so a file that could
//! not be copied is still where it was). Its half-made copy and the staging file's
//! SQLite companions (`*.partial`, `*.partial-journal`) are removed. Only a backup
//! folder that cannot be made or written fails the whole call, and then the backup
//! folder is removed, as a backup without its manifest and scripts cannot be used.

mod copy;
mod script;

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use self::copy::{companion, copy_one, partial};
use self::script::{backup_script, restore_script};
use crate::error::{Chain, Error, Result};

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
pub(crate) struct Manifest<'a> {
    format: u32,
    id: String,
    name: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    #[serde(serialize_with = "lossy")]
    pub(crate) agents_path: &'a Path,
    #[serde(serialize_with = "lossy")]
    pub(crate) dir: &'a Path,
    pub(crate) files: &'a [BackedUpFile],
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
    let written = write_file(&backup.manifest(), &json, false)
        .and_then(|()| {
            let script = backup_script(&manifest, &backup_root);
            write_file(&backup.backup_script, &script, true)
        })
        .and_then(|()| write_file(&backup.restore_script, &restore_script(&manifest), true));
    if let Err(mut err) = written {
        // A backup without its manifest or scripts cannot be checked or restored: none
        // is left behind, rather than half of one (a full disk is the usual cause).
        let _ = std::fs::remove_dir_all(&backup.dir);
        if let Error::SqliteFile { problem, .. } = &mut err {
            problem.push_str(&format!(
                "; the incomplete backup folder {} was removed: free space and back up again",
                backup.dir.display()
            ));
        }
        return Err(err);
    }
    Ok(backup)
}

/// Checks that `source` (after symbolic links) lies inside `agents_path`: a link out of
/// it is refused, so the backup copies nothing the agents path does not hold (as the
/// backfill refuses to read it; see [`crate::legacy::discover`]).
fn inside(agents_path: &Path, source: &Path) -> Result<()> {
    let real = |path: &Path| {
        std::fs::canonicalize(path).map_err(|e| Error::SqliteFile {
            path: source.to_path_buf(),
            problem: "cannot be backed up: its real path cannot be found".into(),
            source: Box::new(e),
        })
    };
    let (root, target) = (real(agents_path)?, real(source)?);
    if target.starts_with(&root) {
        return Ok(());
    }
    Err(Error::SqliteFile {
        path: source.to_path_buf(),
        problem: format!(
            "is a symbolic link out of the agents path (to {}); it is not backed up",
            target.display()
        ),
        source: Box::new(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
    })
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
    let copied = match inside(agents_path, &source) {
        Ok(()) => copy_one(&source, relative, &copy).await,
        Err(e) => Err(e),
    };
    let outcome = match copied {
        Ok(details) => FileOutcome::Copied(details),
        Err(e) => {
            tracing::warn!(file = %source.display(), error = %Chain(&e), "backup failed");
            // Leave no half-made copy for a restore to find, nor SQLite's companions of
            // the staging file (a full disk leaves its -journal behind).
            let _ = std::fs::remove_file(&copy);
            let staging = partial(&copy);
            for suffix in ["-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(companion(&staging, suffix));
            }
            let _ = std::fs::remove_file(staging);
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
