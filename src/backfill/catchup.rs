//! What a later run needs to bring PostgreSQL to a legacy table's current state without
//! reading or loading what did not change: a stamp of each file, and per table a record
//! of the map it moved with and of its rows in chunks (`agent_memory.backfill_tables`
//! and `backfill_chunks`).
//!
//! - A table whose file has the stamp it had when the table was last caught up, and
//!   whose map is the same, is not read at all.
//! - Otherwise every row is read and converted, and its chunk (1,024 consecutive rowids;
//!   a `WITHOUT ROWID` table is one chunk) digested. A chunk with the recorded digest and
//!   row count is already in PostgreSQL as it is; any other chunk is loaded again:
//!   new rows inserted, changed rows replaced, and rows of its recorded members the
//!   source no longer has deleted. Chunks the source no longer has are deleted whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use super::load::{ChunkRecord, TableKey};
use crate::legacy::ContractRow;

/// The chunk of every row of a `WITHOUT ROWID` table.
pub(crate) const WHOLE_TABLE: i64 = i64::MIN;

/// Rowids per chunk, as a shift.
const CHUNK_BITS: u32 = 10;

/// A stamp younger than this is not trusted: a write in the same tick of the file's
/// clock would leave it unchanged.
const SETTLED: Duration = Duration::from_secs(2);

/// The chunk of a row: its rowid's, or [`WHOLE_TABLE`].
pub(crate) fn chunk_of(rowid: Option<i64>) -> i64 {
    rowid.map_or(WHOLE_TABLE, |r| r >> CHUNK_BITS)
}

/// A file's size, modification time and SQLite change counter, and those of its `-wal`:
/// what changes whenever anything writes it. `None` when it cannot be read or was
/// written too recently to tell a later write in the same clock tick apart.
pub(crate) fn file_stamp(path: &Path) -> Option<String> {
    let now = SystemTime::now();
    let part = |path: &Path| -> Option<String> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("-".into()),
            Err(_) => return None,
        };
        let modified = meta.modified().ok()?;
        if now.duration_since(modified).unwrap_or_default() < SETTLED {
            return None;
        }
        let at = modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        Some(format!("{}:{}", meta.len(), at.as_nanos()))
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let counter = header_counter(path)?;
    Some(format!(
        "{}:{counter}/{}",
        part(path)?,
        part(Path::new(&wal))?
    ))
}

/// Bytes 24..28 of the header: the change counter, bumped by every rollback-journal
/// commit. Only a regular file is opened, never waiting (a FIFO gives no stamp).
fn header_counter(path: &Path) -> Option<u32> {
    use std::io::Read;
    let mut header = [0u8; 28];
    crate::legacy::regular_file(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    Some(u32::from_be_bytes([
        header[24], header[25], header[26], header[27],
    ]))
}

/// What the bookkeeping holds about a table.
#[derive(Debug)]
pub(crate) struct Recorded {
    pub(crate) target: String,
    pub(crate) spec: serde_json::Value,
    pub(crate) file_stamp: Option<String>,
    /// Rows it had when it was last caught up.
    pub(crate) rows: u64,
}

/// The record of `table`, if it was caught up before.
pub(crate) async fn recorded(
    conn: &mut PgConnection,
    table: TableKey<'_>,
) -> Result<Option<Recorded>, sqlx::Error> {
    let row: Option<(String, serde_json::Value, Option<String>, i64)> = sqlx::query_as(
        "select target, spec, file_stamp, rows from agent_memory.backfill_tables
         where source = $1 and source_db = $2 and source_table = $3",
    )
    .bind(table.source)
    .bind(table.source_db)
    .bind(table.source_table)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(target, spec, file_stamp, rows)| Recorded {
        target,
        spec,
        file_stamp,
        rows: rows.unsigned_abs(),
    }))
}

/// Records `table` as caught up by `run` with `spec`, under the stamp its file had
/// before it was read.
pub(crate) async fn record_table(
    conn: &mut PgConnection,
    table: TableKey<'_>,
    target: &str,
    spec: &serde_json::Value,
    stamp: Option<&str>,
    rows: u64,
    run: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into agent_memory.backfill_tables
             (source, source_db, source_table, target, spec, file_stamp, rows, run_id, caught_up_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, now())
         on conflict (source, source_db, source_table) do update
         set target = excluded.target, spec = excluded.spec, file_stamp = excluded.file_stamp,
             rows = excluded.rows, run_id = excluded.run_id, caught_up_at = now()",
    )
    .bind(table.source)
    .bind(table.source_db)
    .bind(table.source_table)
    .bind(target)
    .bind(spec)
    .bind(stamp)
    .bind(i64::try_from(rows).unwrap_or(i64::MAX))
    .bind(run)
    .execute(conn)
    .await
    .map(drop)
}

/// The recorded chunks of `table`, by chunk.
pub(crate) async fn chunks(
    conn: &mut PgConnection,
    table: TableKey<'_>,
) -> Result<BTreeMap<i64, ChunkRecord>, sqlx::Error> {
    let rows: Vec<(i64, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "select chunk, rows, digest, members from agent_memory.backfill_chunks
         where source = $1 and source_db = $2 and source_table = $3",
    )
    .bind(table.source)
    .bind(table.source_db)
    .bind(table.source_table)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(chunk, rows, digest, members)| {
            let mut d = [0u8; 16];
            if digest.len() == 16 {
                d.copy_from_slice(&digest);
            }
            let record = ChunkRecord {
                chunk,
                rows,
                digest: d,
                members,
            };
            (chunk, record)
        })
        .collect())
}

/// Forgets every record of `table`, and deletes the backfill's copies of its rows from
/// `target` (a contract table's name): its map now sends them elsewhere. Rows agents
/// wrote since through the library stay. Returns the rows deleted.
pub(crate) async fn forget(
    conn: &mut PgConnection,
    table: TableKey<'_>,
    target: &str,
) -> Result<u64, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // `target` comes from the bookkeeping; only the four contract tables are accepted.
    let deleted = match crate::legacy::Target::parse(target) {
        Some(target) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "delete from {} where metadata ? 'migration_run'
               and metadata->>'source_db' = $2 and metadata->>'source_table' = $3
               and coalesce(metadata->>'source', '') = $1",
            target.table()
        )))
        .bind(table.source)
        .bind(table.source_db)
        .bind(table.source_table)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        None => 0,
    };
    for sql in [
        "delete from agent_memory.backfill_chunks
         where source = $1 and source_db = $2 and source_table = $3",
        "delete from agent_memory.backfill_tables
         where source = $1 and source_db = $2 and source_table = $3",
    ] {
        sqlx::query(sql)
            .bind(table.source)
            .bind(table.source_db)
            .bind(table.source_table)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// One chunk of rows as read now.
#[derive(Debug)]
pub(crate) struct ChunkBuf {
    pub(crate) chunk: i64,
    /// Rows converted and not yet loaded, each with its member and row digest.
    rows: Vec<(ContractRow, Member, u64)>,
    /// Every row read, as recorded: its rowid (or, in a `WITHOUT ROWID` table, its id)
    /// and its row digest (0 for a row that did not convert).
    members: Vec<u8>,
    count: u32,
    digest: u128,
    /// Some rows were loaded before the chunk ended (a `WITHOUT ROWID` table's).
    spilled: bool,
    /// Every row read converted; only then is the chunk recorded.
    complete: bool,
}

impl ChunkBuf {
    pub(crate) fn new(chunk: i64) -> Self {
        ChunkBuf {
            chunk,
            rows: Vec::new(),
            members: Vec::new(),
            count: 0,
            digest: 0,
            spilled: false,
            complete: true,
        }
    }

    fn member_of(&self, rowid: Option<i64>, id: Uuid) -> Member {
        match (self.chunk, rowid) {
            (WHOLE_TABLE, _) | (_, None) => Member::Id(id),
            (_, Some(rowid)) => Member::Rowid(rowid),
        }
    }

    fn note(&mut self, member: Member, digest: u64) {
        match member {
            Member::Rowid(rowid) => self.members.extend_from_slice(&rowid.to_le_bytes()),
            Member::Id(id) => self.members.extend_from_slice(id.as_bytes()),
        }
        self.members.extend_from_slice(&digest.to_le_bytes());
    }

    /// Adds a converted row (its rowid as read).
    pub(crate) fn push(&mut self, rowid: Option<i64>, row: ContractRow) {
        let sha = Sha256::new()
            .chain_update(row.record.id().as_bytes())
            .chain_update(row.record.content().as_str().as_bytes())
            .finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&sha[..16]);
        let digest = u128::from_le_bytes(first);
        self.digest = self.digest.wrapping_add(digest);
        self.count += 1;
        // The low half is the row's own digest: enough to tell a changed row.
        let own = digest as u64;
        let member = self.member_of(rowid, row.record.id());
        self.note(member, own);
        self.rows.push((row, member, own));
    }

    /// Notes a row that did not convert: it is there (never deleted for it), but the
    /// chunk is not recorded, so the next run reads it again.
    pub(crate) fn push_failed(&mut self, rowid: Option<i64>) {
        self.complete = false;
        if let Some(rowid) = rowid.filter(|_| self.chunk != WHOLE_TABLE) {
            self.note(Member::Rowid(rowid), 0);
        }
    }

    /// Rows converted and not yet loaded.
    pub(crate) fn pending_rows(&self) -> usize {
        self.rows.len()
    }

    /// Hands over the rows converted so far (a `WITHOUT ROWID` table's, loaded as they
    /// come): the chunk is then loaded whole, never skipped.
    pub(crate) fn spill(&mut self) -> Vec<ContractRow> {
        self.spilled = true;
        self.rows.drain(..).map(|(row, _, _)| row).collect()
    }

    /// True when the chunk holds exactly what `recorded` says was loaded.
    fn same_as(&self, recorded: Option<&ChunkRecord>) -> bool {
        recorded.is_some_and(|r| {
            self.complete
                && !self.spilled
                && i64::from(r.rows) == i64::from(self.count)
                && r.digest == self.digest.to_le_bytes()
                && r.members == self.members
        })
    }

    /// Settles the chunk against what was loaded before (`recorded`, unless `force`):
    /// rows whose own digest is the recorded one did not change at the source and are
    /// not sent again; the others are to load; the rows `recorded` had that the chunk no longer has are to delete (their
    /// ids from `id_of`).
    pub(crate) fn settle(
        self,
        recorded: Option<&ChunkRecord>,
        force: bool,
        id_of: impl Fn(i64) -> Uuid,
    ) -> Settled {
        if !force && self.same_as(recorded) {
            return Settled {
                rows: Vec::new(),
                deletes: Vec::new(),
                unchanged: u64::from(self.count),
                record: None,
            };
        }
        let old: BTreeMap<Member, u64> = recorded
            .map(|r| members(r.chunk, &r.members).collect())
            .unwrap_or_default();
        let now: BTreeSet<Member> = members(self.chunk, &self.members).map(|(m, _)| m).collect();
        let deletes = old
            .keys()
            .filter(|m| !now.contains(m))
            .map(|m| m.id(&id_of))
            .collect();
        let record = self.complete.then(|| ChunkRecord {
            chunk: self.chunk,
            rows: i32::try_from(self.count).unwrap_or(i32::MAX),
            digest: self.digest.to_le_bytes(),
            members: self.members.clone(),
        });
        let mut unchanged = 0;
        let mut rows = Vec::with_capacity(self.rows.len());
        for (row, member, own) in self.rows {
            if !force && old.get(&member) == Some(&own) {
                unchanged += 1;
            } else {
                rows.push(row);
            }
        }
        Settled {
            rows,
            deletes,
            unchanged,
            record,
        }
    }
}

/// What a chunk read now needs loaded; see [`ChunkBuf::settle`].
#[derive(Debug)]
pub(crate) struct Settled {
    pub(crate) rows: Vec<ContractRow>,
    pub(crate) deletes: Vec<Uuid>,
    pub(crate) unchanged: u64,
    pub(crate) record: Option<ChunkRecord>,
}

/// Every member of a recorded chunk, as ids (`id_of` makes a rowid's).
pub(crate) fn all_ids(recorded: &ChunkRecord, id_of: impl Fn(i64) -> Uuid) -> Vec<Uuid> {
    members(recorded.chunk, &recorded.members)
        .map(|(m, _)| m.id(&id_of))
        .collect()
}

/// A row of a chunk: its rowid, or in a `WITHOUT ROWID` table its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Member {
    Rowid(i64),
    Id(Uuid),
}

impl Member {
    fn id(self, id_of: impl Fn(i64) -> Uuid) -> Uuid {
        match self {
            Member::Rowid(rowid) => id_of(rowid),
            Member::Id(id) => id,
        }
    }
}

/// The members of a recorded chunk with their row digests: 8-byte rowids (16-byte ids
/// in a `WITHOUT ROWID` table), each followed by an 8-byte digest, little-endian.
fn members(chunk: i64, bytes: &[u8]) -> impl Iterator<Item = (Member, u64)> + '_ {
    let key = if chunk == WHOLE_TABLE { 16 } else { 8 };
    bytes.chunks_exact(key + 8).map(move |entry| {
        let (head, digest) = entry.split_at(key);
        let member = match key {
            8 => Member::Rowid(i64::from_le_bytes(head.try_into().unwrap_or([0; 8]))),
            _ => Member::Id(Uuid::from_slice(head).unwrap_or_default()),
        };
        (
            member,
            u64::from_le_bytes(digest.try_into().unwrap_or([0; 8])),
        )
    })
}
