//! Exact search in an agent's SQLite file.
//!
//! Each connection of the SQLite backend gets a SQL function,
//! `agent_memory_distance(metric, embedding, query)`, that computes a distance straight
//! from the two blobs SQLite hands it (little-endian f32), unpacked into buffers the
//! thread reuses. The search is then
//! one statement: SQLite scans the agent's embeddings of the query's dimension, keeps
//! the `k` nearest row ids in its top-k sorter, and only then reads those `k` memories.
//! Nothing is allocated per scanned row on either side of the driver.

use std::ffi::c_int;

use libsqlite3_sys as ffi;
use serde_json::Value;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool};
use sqlx::{Arguments, Row};

use super::distance::distance_bytes;
use super::{DistanceMetric, Neighbor, VectorQuery, dimension_mismatch};
use crate::backend::codec::embedding_bytes;
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory};

/// Registers `agent_memory_distance` on a new connection.
///
/// # Errors
/// SQLite's error when the function cannot be registered.
pub(crate) async fn register_functions(conn: &mut SqliteConnection) -> sqlx::Result<()> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, locked for the call; the name is a
    // static C string and the callback has the signature SQLite expects.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            c"agent_memory_distance".as_ptr(),
            3,
            ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_INNOCUOUS,
            std::ptr::null_mut(),
            Some(distance_function),
            None,
            None,
            None,
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("cannot register agent_memory_distance in SQLite (code {rc})").into(),
        ))
    }
}

/// The bytes of a BLOB argument, borrowed from SQLite; `None` for any other type.
///
/// # Safety
/// `value` must be a live argument of the current call; the slice must not outlive it.
unsafe fn blob_argument<'a>(value: *mut ffi::sqlite3_value) -> Option<&'a [u8]> {
    // SAFETY: per this function's contract.
    unsafe {
        if ffi::sqlite3_value_type(value) != ffi::SQLITE_BLOB {
            return None;
        }
        // sqlite3_value_blob first, then sqlite3_value_bytes, as SQLite advises.
        let data = ffi::sqlite3_value_blob(value).cast::<u8>();
        let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
        if data.is_null() || len == 0 {
            Some(&[])
        } else {
            Some(std::slice::from_raw_parts(data, len))
        }
    }
}

/// `agent_memory_distance(metric, a, b)`: the distance between two embedding blobs of
/// equal length; NULL when either is not such a blob or the distance is undefined (a
/// cosine distance with an all-zero vector).
unsafe extern "C" fn distance_function(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite passes `argc` live arguments in `argv` for the length of the call.
    unsafe {
        if argc != 3 || argv.is_null() {
            ffi::sqlite3_result_null(ctx);
            return;
        }
        let args = std::slice::from_raw_parts(argv, 3);
        let metric = match ffi::sqlite3_value_int64(args[0]) {
            0 => DistanceMetric::Cosine,
            1 => DistanceMetric::L2,
            2 => DistanceMetric::InnerProduct,
            _ => {
                ffi::sqlite3_result_error(
                    ctx,
                    c"agent_memory_distance: unknown metric".as_ptr(),
                    -1,
                );
                return;
            }
        };
        match (blob_argument(args[1]), blob_argument(args[2])) {
            (Some(a), Some(b)) if a.len() == b.len() && !a.is_empty() && a.len() % 4 == 0 => {
                let d = distance_bytes(metric, a, b);
                if d.is_nan() {
                    ffi::sqlite3_result_null(ctx);
                } else {
                    ffi::sqlite3_result_double(ctx, d);
                }
            }
            _ => ffi::sqlite3_result_null(ctx),
        }
    }
}

/// The filters of `query` as SQL over `agent_memories`, appending their values to `args`.
fn filters(query: &VectorQuery, args: &mut SqliteArguments) -> Result<String> {
    let mut sql = String::new();
    let bind_err = |e| Error::invalid("search filter", format!("cannot be bound: {e}"));
    if let Some(prefix) = &query.key_prefix {
        sql.push_str(" and substr(cast(key as blob), 1, ?) = ?");
        args.add(prefix.len() as i64).map_err(bind_err)?;
        args.add(prefix.as_bytes().to_vec()).map_err(bind_err)?;
    }
    for (field, value) in &query.metadata {
        sql.push_str(
            " and exists (select 1 from json_each(agent_memories.metadata) j where j.key = ?",
        );
        args.add(field.clone()).map_err(bind_err)?;
        match value {
            Value::Null => sql.push_str(" and j.type = 'null')"),
            Value::Bool(true) => sql.push_str(" and j.type = 'true')"),
            Value::Bool(false) => sql.push_str(" and j.type = 'false')"),
            Value::String(s) => {
                sql.push_str(" and j.type = 'text' and j.atom = ?)");
                args.add(s.clone()).map_err(bind_err)?;
            }
            Value::Number(n) => {
                sql.push_str(" and j.type in ('integer', 'real') and j.atom = ?)");
                match n.as_i64() {
                    Some(i) => args.add(i).map_err(bind_err)?,
                    None => args.add(n.as_f64().unwrap_or(f64::NAN)).map_err(bind_err)?,
                }
            }
            // `VectorQuery::validate` refuses these.
            Value::Array(_) | Value::Object(_) => sql.push_str(" and false)"),
        }
    }
    Ok(sql)
}

/// The `k` memories of `pool`'s agent nearest to `query`, exactly.
pub(crate) async fn search(
    pool: &SqlitePool,
    agent: &AgentId,
    query: &VectorQuery,
    decode: impl Fn(&sqlx::sqlite::SqliteRow) -> Result<Memory>,
    fail: impl Fn(sqlx::Error) -> Error,
) -> Result<Vec<Neighbor>> {
    let bytes = embedding_bytes(&query.vector);
    let mut args = SqliteArguments::default();
    let bind_err = |e| Error::invalid("query vector", format!("cannot be bound: {e}"));
    args.add(query.metric.code()).map_err(bind_err)?;
    args.add(bytes.clone()).map_err(bind_err)?;
    args.add(bytes.len() as i64).map_err(bind_err)?;
    let filter_sql = filters(query, &mut args)?;
    args.add(i64::try_from(query.k).unwrap_or(i64::MAX))
        .map_err(bind_err)?;
    let sql = format!(
        "select m.id, m.key, m.content, m.metadata, m.embedding, m.created_at, m.updated_at,
                t.d as distance
         from (select rowid as r, id, agent_memory_distance(?, embedding, ?) as d
               from agent_memories
               where embedding is not null and length(embedding) = ?{filter_sql}
               order by d is null, d, id
               limit ?) t
         join agent_memories m on m.rowid = t.r
         order by t.d is null, t.d, t.id"
    );
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .fetch_all(pool)
        .await
        .map_err(&fail)?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(distance) = row.get::<Option<f64>, _>("distance") else {
            continue; // no defined distance (cosine with a zero vector): never an answer
        };
        found.push(Neighbor {
            memory: decode(row)?,
            distance,
        });
    }
    if found.is_empty() {
        let dims: Vec<i64> = sqlx::query_scalar(
            "select distinct length(embedding) / 4 from agent_memories
             where embedding is not null order by 1 limit 16",
        )
        .fetch_all(pool)
        .await
        .map_err(&fail)?;
        if !dims.is_empty() && !dims.contains(&(query.dimensions() as i64)) {
            return Err(dimension_mismatch(query, agent.as_str(), &dims));
        }
    }
    Ok(found)
}
