//! Reading a memory on the calling thread.
//!
//! A read through the pool goes to the connection's worker thread and back, with each
//! row handed over between threads: about three quarters of a cached read's time. A
//! quick read runs SQLite's own API on the caller's thread instead, on a read-only
//! connection of its own (WAL readers never wait for the writer) with the statement
//! prepared once, as SQLite's own bindings in other languages do.
//!
//! It only ever answers what the pool would: a value of a form the library does not
//! write (another column type, say, in a hand-edited file), a busy or failing file, or
//! a connection that cannot be opened, sends the read through the pool, which answers
//! or reports it as always. The connections are the backend's, closed with its pools.

use std::collections::HashMap;
use std::ffi::{CString, c_int};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;

use super::sql::GET_MEMORY;
use crate::record::AgentId;

/// A memory's columns as `GET_MEMORY` selects them, in the forms the library writes.
#[derive(Debug)]
pub(super) struct MemoryColumns {
    pub(super) id: String,
    pub(super) key: Option<String>,
    pub(super) content: String,
    pub(super) metadata: String,
    pub(super) embedding: Option<Vec<u8>>,
    pub(super) created_at: String,
    pub(super) updated_at: String,
}

/// How long a read connection stays open unused: as long as the pool's connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often idle connections are looked over for ones unused that long.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Idle read connections, per agent, each with when it was last used.
#[derive(Debug, Default)]
pub(super) struct QuickReads {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    conns: HashMap<AgentId, Vec<(ReadConn, Instant)>>,
    swept: Option<Instant>,
}

impl Idle {
    /// Puts `conn` back (unless `keep` are idle already), and closes the connections of
    /// every agent that went unused for `IDLE_TIMEOUT`, so that a process touching many
    /// agents once does not keep their files open.
    fn put_back(&mut self, agent: &AgentId, conn: ReadConn, keep: usize) {
        let now = Instant::now();
        let kept = self.conns.entry(agent.clone()).or_default();
        if kept.len() < keep {
            kept.push((conn, now));
        }
        if self
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            self.swept = Some(now);
            self.conns.retain(|_, conns| {
                conns.retain(|(_, used)| now.duration_since(*used) < IDLE_TIMEOUT);
                !conns.is_empty()
            });
        }
    }
}

impl QuickReads {
    /// The memory under `key` in the agent's file (at `path()`, asked only when a
    /// connection is to be opened): `Some(None)` when there is none, `None` when the pool
    /// must answer.
    pub(super) fn get_memory(
        &self,
        agent: &AgentId,
        path: impl FnOnce() -> PathBuf,
        mmap_size: u64,
        keep: usize,
        key: &str,
    ) -> Option<Option<MemoryColumns>> {
        let idle = self.lock().conns.get_mut(agent).and_then(Vec::pop);
        let conn = match idle {
            Some((conn, _)) => conn,
            None => ReadConn::open(&path(), mmap_size)?,
        };
        let found = conn.get_memory(key);
        if found.is_some() {
            self.lock().put_back(agent, conn, keep);
        }
        // A connection whose read failed is closed (dropped): the next one is new.
        found
    }

    /// Closes every idle connection.
    pub(super) fn clear(&self) {
        self.lock().conns.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A panic while holding this lock cannot leave the map half-changed.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A read-only connection to one agent's file with `GET_MEMORY` prepared.
#[derive(Debug)]
struct ReadConn {
    db: NonNull<ffi::sqlite3>,
    get_memory: NonNull<ffi::sqlite3_stmt>,
}

// SAFETY: the connection is opened with SQLITE_OPEN_NOMUTEX ("multi-thread" mode): it may
// move between threads as long as one thread at a time uses it, which ownership of a
// `ReadConn` ensures (it is `Send`, not `Sync`).
unsafe impl Send for ReadConn {}

impl ReadConn {
    /// Opens the (existing) file at `path`; `None` when it cannot.
    fn open(path: &Path, mmap_size: u64) -> Option<ReadConn> {
        let name = CString::new(path.to_str()?).ok()?;
        let mut db = ptr::null_mut();
        // Read-write without create: the file exists (its pool opened it) and SQLite
        // needs to write a WAL reader's marks; `query_only` refuses any change.
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: `name` is a NUL-terminated path; `db` receives a handle (or null) that is
        // closed below whatever happens.
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, ptr::null()) };
        let db = NonNull::new(db)?;
        let close = |db: NonNull<ffi::sqlite3>| {
            // SAFETY: `db` came from sqlite3_open_v2 and has no statement left.
            unsafe { ffi::sqlite3_close(db.as_ptr()) };
        };
        if rc != ffi::SQLITE_OK {
            close(db);
            return None;
        }
        let setup = CString::new(format!(
            "pragma query_only = 1; pragma mmap_size = {mmap_size};"
        ))
        .ok()?;
        // SAFETY: `db` is open; `setup` is NUL-terminated; no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(
                db.as_ptr(),
                setup.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            close(db);
            return None;
        }
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is open; the SQL and its length are those of a `&str`.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                GET_MEMORY.as_ptr().cast(),
                GET_MEMORY.len() as c_int,
                // The constant's integer type differs between libsqlite3-sys versions.
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(get_memory) if rc == ffi::SQLITE_OK => Some(ReadConn { db, get_memory }),
            stmt => {
                if let Some(stmt) = stmt {
                    // SAFETY: a statement of `db`, finalized once.
                    unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
                }
                close(db);
                None
            }
        }
    }

    /// `GET_MEMORY` for `key`; `None` for anything the pool must answer.
    fn get_memory(&self, key: &str) -> Option<Option<MemoryColumns>> {
        let stmt = self.get_memory.as_ptr();
        // SAFETY: `stmt` is this connection's, used by this thread alone (`&self` of a
        // `ReadConn` owned by the caller). `key` outlives the step: the statement is reset
        // and its binding cleared before this returns.
        unsafe {
            let bound = ffi::sqlite3_bind_text(
                stmt,
                1,
                key.as_ptr().cast(),
                c_int::try_from(key.len()).ok()?,
                ffi::SQLITE_STATIC(),
            );
            let found = match (bound, ffi::sqlite3_step(stmt)) {
                (ffi::SQLITE_OK, ffi::SQLITE_ROW) => memory_columns(stmt).map(Some),
                (ffi::SQLITE_OK, ffi::SQLITE_DONE) => Some(None),
                _ => None,
            };
            ffi::sqlite3_reset(stmt);
            ffi::sqlite3_clear_bindings(stmt);
            found
        }
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        // SAFETY: both came from this connection's open, and are released once, the
        // statement first.
        unsafe {
            ffi::sqlite3_finalize(self.get_memory.as_ptr());
            ffi::sqlite3_close(self.db.as_ptr());
        }
    }
}

/// The columns of the row `stmt` stands on; `None` when one is not of the form the
/// library writes (the pool then reads it, and says what is wrong).
///
/// # Safety
/// `stmt` must be a `GET_MEMORY` statement whose last step returned `SQLITE_ROW`.
unsafe fn memory_columns(stmt: *mut ffi::sqlite3_stmt) -> Option<MemoryColumns> {
    // SAFETY (of each call): column indexes are those of GET_MEMORY's select list; the
    // values are copied out before the statement moves.
    unsafe {
        Some(MemoryColumns {
            id: text(stmt, 0)?,
            key: optional(stmt, 1, text)?,
            content: text(stmt, 2)?,
            metadata: text(stmt, 3)?,
            embedding: optional(stmt, 4, blob)?,
            created_at: text(stmt, 5)?,
            updated_at: text(stmt, 6)?,
        })
    }
}

/// A TEXT column of valid UTF-8.
unsafe fn text(stmt: *mut ffi::sqlite3_stmt, column: c_int) -> Option<String> {
    // SAFETY: as `memory_columns`.
    let bytes = unsafe { bytes(stmt, column, ffi::SQLITE_TEXT)? };
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

/// A BLOB column.
unsafe fn blob(stmt: *mut ffi::sqlite3_stmt, column: c_int) -> Option<Vec<u8>> {
    // SAFETY: as `memory_columns`.
    unsafe { bytes(stmt, column, ffi::SQLITE_BLOB) }.map(<[u8]>::to_vec)
}

/// The bytes of a column of type `kind` (SQLITE_TEXT or SQLITE_BLOB), valid until the
/// next call on `stmt`; `None` for a column of another type.
unsafe fn bytes<'s>(stmt: *mut ffi::sqlite3_stmt, column: c_int, kind: c_int) -> Option<&'s [u8]> {
    // SAFETY: as `memory_columns`; the pointer is taken before its length, as SQLite
    // asks, and both before any other call on `stmt`.
    unsafe {
        if ffi::sqlite3_column_type(stmt, column) != kind {
            return None;
        }
        let ptr: *const u8 = if kind == ffi::SQLITE_TEXT {
            ffi::sqlite3_column_text(stmt, column)
        } else {
            ffi::sqlite3_column_blob(stmt, column).cast()
        };
        let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, column)).ok()?;
        if ptr.is_null() {
            return (len == 0).then_some(&[][..]);
        }
        Some(std::slice::from_raw_parts(ptr, len))
    }
}

/// A column that is NULL (`Some(None)`) or read by `read`.
unsafe fn optional<T>(
    stmt: *mut ffi::sqlite3_stmt,
    column: c_int,
    read: unsafe fn(*mut ffi::sqlite3_stmt, c_int) -> Option<T>,
) -> Option<Option<T>> {
    // SAFETY: as `text`.
    unsafe {
        if ffi::sqlite3_column_type(stmt, column) == ffi::SQLITE_NULL {
            return Some(None);
        }
        read(stmt, column).map(Some)
    }
}
