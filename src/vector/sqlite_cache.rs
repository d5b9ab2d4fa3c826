//! Exact search in an agent's SQLite file from a copy of its embeddings in memory.
//!
//! The first unfiltered search of an agent (per dimension) loads every embedding of that
//! dimension into one contiguous matrix; later searches compute the distances over it
//! instead of scanning the file, with the same distance function, and read only the `k`
//! memories found. The copy stays right:
//!
//! - SQLite's `PRAGMA data_version`, read on a connection kept for the purpose, changes
//!   whenever any other connection (of this process or another) commits to the file; a
//!   changed version reloads the matrix before the search;
//! - the `k` memories read at the end must still hold the embeddings the matrix has for
//!   them (a write may commit between the version check and that read); if one does not,
//!   the search runs as one statement over the file instead.
//!
//! Answers are exactly those of the statement (`search` in `sqlite.rs`): the same
//! distances bit for bit, rows without a defined distance left out, ties broken by id.
//! A search with a key prefix or metadata filters always runs as the statement. The
//! matrix of one agent and dimension holds at most
//! [`SqliteOptions::search_cache_bytes`](crate::SqliteOptions::search_cache_bytes); an
//! agent with more runs the statement.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Arguments, Connection, Row};

use super::distance::{PreparedQuery, row_norm};
use super::{Neighbor, VectorQuery};
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory};

/// The matrices of every agent and dimension searched.
#[derive(Debug, Default)]
pub(crate) struct SearchCache {
    slots: Mutex<HashMap<(AgentId, usize), SharedSlot>>,
}

/// One agent and dimension's slot, locked while its matrix is checked or loaded.
type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

#[derive(Debug, Default)]
struct Slot {
    /// The connection whose `data_version` tells whether the file changed.
    watch: Option<SqliteConnection>,
    /// The version the matrix was loaded at.
    version: Option<i64>,
    /// `None` when the agent's embeddings of this dimension exceed the limit.
    matrix: Option<Arc<Matrix>>,
}

#[derive(Debug)]
struct Matrix {
    rowids: Vec<i64>,
    ids: Vec<String>,
    /// Row `i` is `data[i * dims .. (i + 1) * dims]`.
    data: Vec<f32>,
    /// Row `i`'s own sum for cosine (`row_norm`), which no query changes.
    norms: Vec<f32>,
}

impl SearchCache {
    /// Forgets every matrix and closes the connections kept for them.
    pub(crate) async fn clear(&self) {
        let slots: Vec<_> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Some(conn) = slot.lock().await.watch.take() {
                conn.close().await.ok();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map only holds whole slots; a poisoned lock still holds a usable map.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `k` memories nearest to `query` from the agent's matrix, or `None` when the
/// statement has to answer instead (filters, too many embeddings, none of this
/// dimension, or a row that changed under the search).
pub(crate) async fn search(
    cache: &SearchCache,
    limit_bytes: u64,
    pool: &SqlitePool,
    agent: &AgentId,
    query: &VectorQuery,
    decode: impl Fn(&SqliteRow) -> Result<Memory>,
    fail: impl Fn(sqlx::Error) -> Error,
) -> Result<Option<Vec<Neighbor>>> {
    if limit_bytes == 0 || query.key_prefix.is_some() || !query.metadata.is_empty() {
        return Ok(None);
    }
    let dims = query.dimensions();
    let slot = lock(&cache.slots)
        .entry((agent.clone(), dims))
        .or_default()
        .clone();
    let matrix = {
        // Held while the version is checked and the matrix loaded, not while searched.
        let mut guard = slot.lock().await;
        let slot = &mut *guard;
        if slot.watch.is_none() {
            slot.watch = Some(pool.acquire().await.map_err(&fail)?.detach());
        }
        let Some(watch) = slot.watch.as_mut() else {
            return Ok(None);
        };
        let version: i64 = sqlx::query_scalar("pragma data_version")
            .fetch_one(&mut *watch)
            .await
            .map_err(&fail)?;
        if slot.version != Some(version) {
            // Read before loading: a commit during the load makes the next search reload.
            slot.matrix = load(watch, dims, limit_bytes)
                .await
                .map_err(&fail)?
                .map(Arc::new);
            slot.version = Some(version);
        }
        match slot.matrix.clone().filter(|m| !m.rowids.is_empty()) {
            Some(matrix) => matrix,
            None => return Ok(None),
        }
    };
    // Tens of milliseconds of arithmetic for a large agent: off the runtime's threads,
    // as the statement's scan runs on SQLite's.
    let nearest = {
        let (matrix, query) = (matrix.clone(), query.clone());
        tokio::task::spawn_blocking(move || nearest(&matrix, dims, &query))
            .await
            .map_err(|e| Error::invalid("search", format!("the distance task failed: {e}")))?
    };
    if nearest.is_empty() {
        return Ok(None);
    }

    let marks = vec!["?"; nearest.len()].join(", ");
    let sql = format!(
        "select rowid, id, key, content, metadata, embedding, created_at, updated_at
         from agent_memories where rowid in ({marks})"
    );
    let mut args = sqlx::sqlite::SqliteArguments::default();
    for (_, i) in &nearest {
        args.add(matrix.rowids[*i])
            .map_err(|e| Error::invalid("search", format!("cannot bind a row id: {e}")))?;
    }
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(pool)
        .await
        .map_err(&fail)?;
    let by_rowid: HashMap<i64, &SqliteRow> = rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>(0).ok().map(|rowid| (rowid, r)))
        .collect();
    let mut found = Vec::with_capacity(nearest.len());
    for (d, i) in nearest {
        let row = by_rowid.get(&matrix.rowids[i]);
        let same = row.is_some_and(|row| {
            row.try_get::<String, _>("id").ok().as_ref() == Some(&matrix.ids[i])
                && row
                    .try_get::<Option<Vec<u8>>, _>("embedding")
                    .ok()
                    .flatten()
                    .is_some_and(|b| same_embedding(&b, &matrix.data[i * dims..(i + 1) * dims]))
        });
        let Some(row) = row.filter(|_| same) else {
            // Changed since the version was read: the statement answers.
            return Ok(None);
        };
        found.push(Neighbor {
            memory: decode(row)?,
            distance: d,
        });
    }
    Ok(Some(found))
}

/// The agent's embeddings of `dims` dimensions in row order, or `None` when they take
/// more than `limit_bytes` (read as a stream: at most the limit is ever held, and an
/// agent over it costs one partial read per change of its file).
async fn load(
    conn: &mut SqliteConnection,
    dims: usize,
    limit_bytes: u64,
) -> sqlx::Result<Option<Matrix>> {
    use futures_util::TryStreamExt;
    let width = dims * 4;
    let mut matrix = Matrix {
        rowids: Vec::new(),
        ids: Vec::new(),
        data: Vec::new(),
        norms: Vec::new(),
    };
    let mut rows = sqlx::query(
        "select rowid, id, embedding from agent_memories
         where embedding is not null and length(embedding) = ? order by rowid",
    )
    .bind(width as i64)
    .fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        if ((matrix.rowids.len() + 1) * width) as u64 > limit_bytes {
            return Ok(None);
        }
        // An id that is not text (a file written by something else) orders otherwise
        // in SQLite: such a file is searched by the statement.
        let (Ok(rowid), Ok(id), Ok(bytes)) = (
            row.try_get::<i64, _>(0),
            row.try_get::<String, _>(1),
            row.try_get::<Vec<u8>, _>(2),
        ) else {
            return Ok(None);
        };
        if bytes.len() != width {
            continue;
        }
        matrix.rowids.push(rowid);
        matrix.ids.push(id);
        matrix.data.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    matrix.norms = matrix.data.chunks_exact(dims).map(row_norm).collect();
    Ok(Some(matrix))
}

fn same_embedding(bytes: &[u8], row: &[f32]) -> bool {
    bytes.len() == row.len() * 4
        && bytes
            .chunks_exact(4)
            .zip(row)
            .all(|(b, x)| b == x.to_le_bytes())
}

/// The `k` rows nearest to `query`, nearest first, ties by id, with their distances;
/// rows without a defined distance are never among them.
fn nearest(matrix: &Matrix, dims: usize, query: &VectorQuery) -> Vec<(f64, usize)> {
    // As SQLite compares: a number by value (so 0.0 and -0.0 tie), then the id's bytes.
    let order = |a: &(f64, usize), b: &(f64, usize)| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(Ordering::Equal)
            .then_with(|| matrix.ids[a.1].cmp(&matrix.ids[b.1]))
    };
    let k = query.k;
    let prepared = PreparedQuery::new(query.metric, &query.vector);
    let mut best: Vec<(f64, usize)> = Vec::with_capacity(k + 1);
    let mut offer = |candidate: (f64, usize)| {
        if candidate.0.is_nan() {
            return; // no defined distance: never an answer
        }
        if best.len() == k
            && best
                .last()
                .is_some_and(|worst| order(&candidate, worst) != Ordering::Less)
        {
            return;
        }
        let at = best.partition_point(|b| order(b, &candidate) == Ordering::Less);
        best.insert(at, candidate);
        best.truncate(k);
    };
    // Four rows at a time (the same bits as one at a time, in less time); the
    // statement's argument order: the stored embedding, then the query.
    const BLOCK: usize = 4;
    let rows = matrix.rowids.len();
    let blocked = rows / BLOCK * BLOCK;
    for first in (0..blocked).step_by(BLOCK) {
        let block: [&[f32]; BLOCK] =
            std::array::from_fn(|r| &matrix.data[(first + r) * dims..(first + r + 1) * dims]);
        let norms: [f32; BLOCK] = std::array::from_fn(|r| matrix.norms[first + r]);
        for (r, d) in prepared.distances(block, norms).into_iter().enumerate() {
            offer((d, first + r));
        }
    }
    for i in blocked..rows {
        let row = &matrix.data[i * dims..(i + 1) * dims];
        offer((prepared.distances([row], [matrix.norms[i]])[0], i));
    }
    best
}
