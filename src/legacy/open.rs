//! Opening a legacy SQLite file without disturbing it: read-only, WAL-aware, never creating files beside it when that can be avoided.
//!
//! An agent may be writing the file while it is read, and the file's folder may be
//! read-only. The strategy is chosen from the file's header (byte 18/19: 1 = rollback
//! journal, 2 = WAL) and the companion files present:
//!
//! | journal | `-shm` | `-wal` | strategy | why |
//! |---|---|---|---|---|
//! | rollback | any | any | [`OpenStrategy::ReadOnly`] (`mode=ro`) | a read-only connection creates no file; it takes a shared lock only while a statement runs |
//! | WAL | present | any | [`OpenStrategy::ReadOnly`] (`mode=ro`) | a live writer may exist; sharing its `-shm` index shows exactly the committed transactions, also those only in `-wal`, and never an open one |
//! | WAL | absent | absent or empty | [`OpenStrategy::Immutable`] (`immutable=1`) | no process has the file open (every WAL connection keeps a `-shm`), and all committed data is in the main file; `mode=ro` would create `-shm` and `-wal` beside it, or fail in a read-only folder |
//! | WAL | absent | non-empty | [`OpenStrategy::Copy`] | committed rows lie in `-wal` but no one holds it (a crash, or files copied without `-shm`); reading it needs a writable `-shm`, so the file and its `-wal` are copied into a private temporary folder and read there |
//!
//! A read-only connection never checkpoints, so the source's `-wal` is left as it is. A
//! busy timeout ([`ReadOptions::busy_timeout`]) rides out a writer's brief exclusive
//! moments (WAL recovery, a rollback-journal commit). Rows are read in key order in
//! batches, each batch its own statement ([`Source::rows`]): in rollback-journal mode
//! a writer waits at most for one batch, never for a whole table.
//!
//! By SQLite's documentation (3.22+), `mode=ro` on a WAL file whose `-shm` and `-wal`
//! exist also works in a read-only folder, opening the `-shm` read-only; the tests run
//! as root, which ignores folder permissions, so that case is not tested here. The one
//! side effect left is SQLite's own: a `mode=ro` reader of a live WAL file shares the
//! writer's `-shm`, as every reader does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::error::{Error, Result};

/// How a legacy file was opened; see the module docs for when each is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenStrategy {
    /// `mode=ro`: a read-only connection, WAL-aware through the existing `-shm`.
    ReadOnly,
    /// `immutable=1`: no locks, no companion files; only when nothing else has the file.
    Immutable,
    /// A private copy of the file and its `-wal`, read in a temporary folder.
    Copy,
}

/// Settings for reading legacy files.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// How long a statement waits for a writer's lock before failing.
    pub busy_timeout: Duration,
    /// Rows per batch read from a table.
    pub batch_size: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            busy_timeout: Duration::from_secs(30),
            batch_size: 1000,
        }
    }
}

/// One legacy SQLite file, open for reading.
#[derive(Debug)]
pub struct Source {
    pub(crate) conn: SqliteConnection,
    pub(crate) path: PathBuf,
    pub(crate) options: ReadOptions,
    strategy: OpenStrategy,
    // Removed when the source is dropped; holds the copy for OpenStrategy::Copy.
    _scratch: Option<Scratch>,
}

impl Source {
    /// Opens `path` for reading by the strategy its journal mode and companion files call
    /// for (see the module docs).
    ///
    /// # Errors
    /// [`Error::SqliteFile`] naming the file: it cannot be read, is not a SQLite
    /// database, or the copy could not be made.
    pub async fn open(path: &Path, options: &ReadOptions) -> Result<Source> {
        let header = read_header(path)?;
        let strategy = choose_strategy(path, &header);
        let (target, scratch) = match strategy {
            OpenStrategy::Copy => {
                let scratch = Scratch::copy_of(path)?;
                (scratch.db.clone(), Some(scratch))
            }
            _ => (path.to_path_buf(), None),
        };
        let connect = SqliteConnectOptions::new()
            .filename(&target)
            // The copy is ours and must replay its -wal, which needs a writable file.
            .read_only(strategy != OpenStrategy::Copy)
            .immutable(strategy == OpenStrategy::Immutable)
            .create_if_missing(false)
            .foreign_keys(false)
            .busy_timeout(options.busy_timeout)
            .disable_statement_logging();
        let conn = connect
            .connect()
            .await
            .map_err(|e| file_error(path, open_problem(&e), Box::new(e)))?;
        let mut source = Source {
            conn,
            path: path.to_path_buf(),
            options: options.clone(),
            strategy,
            _scratch: scratch,
        };
        // Opening is lazy in SQLite: reading the schema is what finds a corrupt file.
        source.schema_version().await?;
        Ok(source)
    }

    /// The strategy the file was opened with.
    pub fn strategy(&self) -> OpenStrategy {
        self.strategy
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn schema_version(&mut self) -> Result<i64> {
        sqlx::query_scalar::<_, i64>("pragma schema_version")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| file_error(&self.path, open_problem(&e), Box::new(e)))
    }
}

/// The 100-byte header, checked for SQLite's magic string. Only a regular file is
/// opened, and without blocking: a FIFO with a database's name is refused, never waited
/// on (see [`regular_file`]).
fn read_header(path: &Path) -> Result<[u8; 100]> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let mut file = regular_file(path)?;
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(file_error(path, "cannot be read", Box::new(e))),
        }
    }
    let problem = if filled == 0 {
        Some("is empty, not a SQLite database")
    } else if !header.starts_with(b"SQLite format 3\0") {
        Some("is not a SQLite database (no SQLite header)")
    } else if filled < header.len() {
        Some("is truncated: shorter than a SQLite header")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(file_error(
            path,
            problem,
            Box::new(std::io::Error::from(std::io::ErrorKind::InvalidData)),
        )),
        None => Ok(header),
    }
}

/// `path` opened for reading, when it is a regular file (after symbolic links).
///
/// Its type is checked before the open, which a FIFO, socket or device fails; the open
/// itself does not block (`O_NONBLOCK`), and the opened file's type is checked again,
/// so a file swapped for a FIFO in between is refused too rather than waited on. SQLite
/// opens the path once more after this check: a FIFO put in its place in that instant
/// is the one case left.
pub(crate) fn regular_file(path: &Path) -> Result<std::fs::File> {
    let unreadable =
        |e: std::io::Error| file_error(path, "cannot be read; check its permissions", Box::new(e));
    let refuse = |kind: std::fs::FileType| {
        let what = file_kind(kind);
        Err(file_error(
            path,
            &format!("is not a regular file but {what}; only regular files are read"),
            Box::new(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        ))
    };
    let kind = std::fs::metadata(path).map_err(unreadable)?.file_type();
    if !kind.is_file() {
        return refuse(kind);
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NONBLOCK);
    }
    let file = open.open(path).map_err(unreadable)?;
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        return refuse(kind);
    }
    Ok(file)
}

/// What a file that is not a regular file is, for a report.
fn file_kind(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else {
        "neither a file nor a folder"
    }
}

fn choose_strategy(path: &Path, header: &[u8; 100]) -> OpenStrategy {
    let wal_mode = header[18] == 2 || header[19] == 2;
    if !wal_mode || companion(path, "-shm").exists() {
        return OpenStrategy::ReadOnly;
    }
    let wal_len = std::fs::metadata(companion(path, "-wal")).map_or(0, |m| m.len());
    if wal_len == 0 {
        OpenStrategy::Immutable
    } else {
        OpenStrategy::Copy
    }
}

/// `path` with `suffix` appended to its file name (`x.db` -> `x.db-wal`).
pub(crate) fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

pub(crate) fn file_error(path: &Path, problem: &str, source: crate::error::BoxError) -> Error {
    Error::SqliteFile {
        path: path.to_path_buf(),
        problem: problem.to_string(),
        source,
    }
}

/// What a failed open or first read says about the file.
fn open_problem(err: &sqlx::Error) -> &'static str {
    let code = match err {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()),
        _ => None,
    };
    match code.map(|c| c & 0xff) {
        Some(11) => "is corrupt or truncated; restore it from a backup or leave it out",
        Some(26) => "is not a SQLite database",
        Some(5) | Some(6) => "stayed locked by a writer past the busy timeout; retry later",
        Some(14) | Some(8) | Some(23) => {
            "cannot be opened read-only; check the permissions of the file, its -wal and -shm"
        }
        _ => "cannot be read as a SQLite database",
    }
}

/// A private temporary folder holding a copy of a WAL file and its `-wal`.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
    db: PathBuf,
}

impl Scratch {
    fn copy_of(path: &Path) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("memshift-legacy-{}", uuid::Uuid::new_v4()));
        let scratch = Scratch {
            db: dir.join("source.db"),
            dir,
        };
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir(&scratch.dir)?;
            std::fs::copy(path, &scratch.db)?;
            std::fs::copy(companion(path, "-wal"), companion(&scratch.db, "-wal"))?;
            Ok(())
        };
        copy().map_err(|e| {
            file_error(
                path,
                "has committed rows only in its -wal and no -shm; copying both to a temporary folder failed",
                Box::new(e),
            )
        })?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
