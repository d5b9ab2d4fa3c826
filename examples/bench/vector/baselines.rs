//! What SQLite exact search is held against, on the same vectors in the same run:
//!
//! - `sqlite-vec brute force`: sqlite-vec's `vec0` table (the `sqlite-vec` crate, built
//!   into this process), cosine, `k` nearest by a full scan, in a file of its own;
//! - `in-memory floor`: every embedding in one contiguous f32 matrix in this process,
//!   one matrix-vector product per query (the embeddings are unit length, so the
//!   cosine distance is 1 minus the dot product) and a top-k pass. Nothing a search
//!   that reads its vectors from anywhere can beat by much.

use std::path::Path;
use std::sync::Once;
use std::time::Instant;

use sqlx::{Connection, Row};

use super::{Measured, key, recall_keys};
use crate::harness::{Result, Samples};

/// Makes every SQLite connection opened from now on in this process know sqlite-vec's
/// functions and `vec0` tables (it only adds them).
fn register_sqlite_vec() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vec_init is the extension's entry point, with the signature
        // sqlite3_auto_extension expects (it is declared without arguments in the crate).
        unsafe {
            let entry = sqlite_vec::sqlite3_vec_init as *const ();
            libsqlite3_sys::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut libsqlite3_sys::sqlite3,
                    *mut *mut std::ffi::c_char,
                    *const libsqlite3_sys::sqlite3_api_routines,
                ) -> std::ffi::c_int,
            >(entry)));
        }
    });
}

/// Loads `vectors` into a `vec0` table in `dir`, then times `queries` (the `k` nearest
/// of each), with their recall against `truths`. Returns the measure and the load time.
pub async fn sqlite_vec(
    dir: &Path,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<String>],
    k: usize,
) -> Result<(Measured, f64)> {
    register_sqlite_vec();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("sqlite-vec.db"))
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let dims = vectors.first().map_or(0, Vec::len);
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create virtual table v using vec0(embedding float[{dims}] distance_metric=cosine)"
    )))
    .execute(&mut conn)
    .await?;
    let mut tx = conn.begin().await?;
    for (i, v) in vectors.iter().enumerate() {
        sqlx::query("insert into v (rowid, embedding) values (?, ?)")
            .bind(i as i64)
            .bind(bytes(v))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let load_s = started.elapsed().as_secs_f64();

    let search = "select rowid from v where embedding match ? and k = ? order by distance";
    // Warm-up: the table's pages into memory, as for the other searches.
    sqlx::query(search)
        .bind(bytes(&queries[0]))
        .bind(k as i64)
        .fetch_all(&mut conn)
        .await?;
    let mut samples = Samples::default();
    let mut recall_sum = 0.0;
    let started = Instant::now();
    for (query, truth) in queries.iter().zip(truths) {
        let t = Instant::now();
        let rows = sqlx::query(search)
            .bind(bytes(query))
            .bind(k as i64)
            .fetch_all(&mut conn)
            .await?;
        samples.push(t.elapsed());
        let found: Vec<String> = rows
            .iter()
            .map(|r| key(r.get::<i64, _>(0) as usize))
            .collect();
        recall_sum += recall_keys(&found, truth);
    }
    Ok((
        measured(
            "sqlite-vec brute force",
            queries.len(),
            samples,
            started,
            recall_sum,
        ),
        load_s,
    ))
}

/// Times `queries` over `vectors` held as one contiguous matrix in memory.
pub fn in_memory_floor(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<String>],
    k: usize,
) -> Measured {
    let dims = vectors.first().map_or(0, Vec::len);
    let matrix: Vec<f32> = vectors.iter().flatten().copied().collect();
    let mut samples = Samples::default();
    let mut recall_sum = 0.0;
    let mut scores = vec![0f32; vectors.len()];
    let started = Instant::now();
    for (query, truth) in queries.iter().zip(truths) {
        let t = Instant::now();
        products(&matrix, dims, query, &mut scores);
        let nearest = top_k(&scores, k);
        samples.push(t.elapsed());
        let found: Vec<String> = nearest.into_iter().map(key).collect();
        recall_sum += recall_keys(&found, truth);
    }
    measured(
        "in-memory floor",
        queries.len(),
        samples,
        started,
        recall_sum,
    )
}

/// `scores[i] = row i of matrix . query`, with the widest vector instructions this CPU
/// has (AVX2 and FMA where present, as BLAS libraries pick at run time).
fn products(matrix: &[f32], dims: usize, query: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features, checked just above.
        unsafe { products_avx2(matrix, dims, query, scores) };
        return;
    }
    products_portable(matrix, dims, query, scores);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn products_avx2(matrix: &[f32], dims: usize, query: &[f32], scores: &mut [f32]) {
    for (score, row) in scores.iter_mut().zip(matrix.chunks_exact(dims)) {
        *score = dot::<true>(row, query);
    }
}

fn products_portable(matrix: &[f32], dims: usize, query: &[f32], scores: &mut [f32]) {
    for (score, row) in scores.iter_mut().zip(matrix.chunks_exact(dims)) {
        *score = dot::<false>(row, query);
    }
}

/// `a . b` in sixteen lanes, which the compiler keeps in vector registers; `FUSED`
/// multiplies and adds in one instruction (only where the CPU has FMA: elsewhere
/// `mul_add` is a slow library call).
#[inline(always)]
fn dot<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] = match FUSED {
                true => x[l].mul_add(y[l], lanes[l]),
                false => lanes[l] + x[l] * y[l],
            };
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The indexes of the `k` highest scores (the nearest by cosine), best first.
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, &s) in scores.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|(low, _)| s <= *low) {
            continue;
        }
        let at = best.partition_point(|(b, _)| *b >= s);
        best.insert(at, (s, i));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn measured(
    name: &str,
    queries: usize,
    samples: Samples,
    started: Instant,
    recall_sum: f64,
) -> Measured {
    let seconds = started.elapsed().as_secs_f64();
    Measured {
        name: name.to_string(),
        ef_search: None,
        queries,
        latency: samples.summary(),
        queries_per_s: queries as f64 / seconds,
        recall_at_k: recall_sum / queries.max(1) as f64,
    }
}
