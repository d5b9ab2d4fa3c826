//! Search and HNSW indexes in PostgreSQL with pgvector.
//!
//! A search with an index for its dimension and metric orders by the indexed expression
//! (`embedding::vector(D) <=> $q::vector(D)`, or `halfvec(D)`) under the index's
//! partial predicate `vector_dims(embedding) = D`, in a transaction that sets
//! `hnsw.ef_search` from `k` and `hnsw.iterative_scan = strict_order` (so filters by
//! agent, key prefix or metadata still give `k` answers in order). Without an index, or
//! when asked, it orders by the plain distance (`embedding <=> $q`), which no index
//! serves: an exact scan of the agent's embeddings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgvector::Vector;
use serde::Serialize;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{Arguments, Row};

use super::{DistanceMetric, IndexType, Neighbor, VectorIndex, VectorQuery, dimension_mismatch};
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory};

/// How long what is known about an index (there or not) is trusted.
const INDEX_CHECK_EVERY: Duration = Duration::from_secs(30);

/// Which HNSW indexes exist, looked up at most every 30 s per index.
#[derive(Debug, Default)]
pub(crate) struct IndexCache(Mutex<HashMap<String, (bool, Instant)>>);

impl IndexCache {
    fn known(&self, name: &str) -> Option<bool> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .filter(|(_, at)| at.elapsed() < INDEX_CHECK_EVERY)
            .map(|(valid, _)| *valid)
    }

    fn set(&self, name: &str, valid: bool) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(name.to_string(), (valid, Instant::now()));
    }

    /// Forgets what is known, after this process built or dropped an index.
    pub(crate) fn forget(&self, name: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }
}

/// Whether the index `name` exists and is valid (a failed concurrent build leaves an
/// invalid one behind).
async fn index_state(pool: &PgPool, name: &str) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar("select indisvalid from pg_index where indexrelid = to_regclass($1)")
        .bind(name)
        .fetch_optional(pool)
        .await
}

async fn has_index(pool: &PgPool, cache: &IndexCache, name: &str) -> sqlx::Result<bool> {
    if let Some(valid) = cache.known(name) {
        return Ok(valid);
    }
    let valid = index_state(pool, name).await?.unwrap_or(false);
    cache.set(name, valid);
    Ok(valid)
}

/// The filters of `query` as SQL, appending their values to `args` (`next` is the next
/// parameter number).
fn filters(query: &VectorQuery, args: &mut PgArguments, mut next: usize) -> Result<String> {
    let bind_err = |e| Error::invalid("search filter", format!("cannot be bound: {e}"));
    let mut sql = String::new();
    if let Some(prefix) = &query.key_prefix {
        sql.push_str(&format!(" and starts_with(key, ${next})"));
        args.add(prefix.clone()).map_err(bind_err)?;
        next += 1;
    }
    for (field, value) in &query.metadata {
        sql.push_str(&format!(
            " and metadata -> ${} = ${}::jsonb",
            next,
            next + 1
        ));
        args.add(field.clone()).map_err(bind_err)?;
        args.add(Json(value.clone())).map_err(bind_err)?;
        next += 2;
    }
    Ok(sql)
}

/// The `k` memories of `agent` nearest to `query`: through the HNSW index of its
/// dimension and metric when there is one (and `exact` is not asked), else exactly.
pub(crate) async fn search(
    pool: &PgPool,
    cache: &IndexCache,
    agent: &AgentId,
    agent_row: &str,
    query: &VectorQuery,
    decode: impl Fn(&PgRow) -> Result<Memory>,
    fail: impl Fn(sqlx::Error) -> Error,
) -> Result<Vec<Neighbor>> {
    let dims = query.dimensions();
    let op = query.metric.operator();
    let indexed = match IndexType::for_dimensions(dims) {
        Some(ty) if !query.exact => {
            let name = super::index_name(dims, query.metric);
            has_index(pool, cache, &name)
                .await
                .map_err(&fail)?
                .then_some(ty)
        }
        _ => None,
    };
    let bind_err = |e| Error::invalid("query vector", format!("cannot be bound: {e}"));
    let mut args = PgArguments::default();
    args.add(agent_row).map_err(bind_err)?;
    args.add(Vector::from(query.vector.clone()))
        .map_err(bind_err)?;
    args.add(i64::try_from(query.k).unwrap_or(i64::MAX))
        .map_err(bind_err)?;
    let filter_sql = filters(query, &mut args, 4)?;
    let order = match indexed {
        Some(ty) => {
            let ty = ty.sql();
            format!("embedding::{ty}({dims}) {op} $2::{ty}({dims})")
        }
        None => format!("embedding {op} $2, id"),
    };
    // The dimension is a literal, so the planner can match the index's predicate.
    let sql = format!(
        "select id, key, content, metadata, embedding, created_at, updated_at,
                embedding {op} $2 as distance
         from agent_memories
         where agent_id = $1 and vector_dims(embedding) = {dims}{filter_sql}
         order by {order}
         limit $3"
    );
    let rows = match indexed {
        Some(_) => {
            let mut tx = pool.begin().await.map_err(&fail)?;
            // Both values are numbers and names of ours, never input text.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "set local hnsw.ef_search = {}; set local hnsw.iterative_scan = strict_order",
                query.effective_ef_search()
            )))
            .execute(&mut *tx)
            .await
            .map_err(&fail)?;
            let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                .fetch_all(&mut *tx)
                .await
                .map_err(&fail)?;
            tx.commit().await.map_err(&fail)?;
            rows
        }
        None => sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_all(pool)
            .await
            .map_err(&fail)?,
    };
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let distance: f64 = row.get("distance");
        if distance.is_nan() {
            continue; // no defined distance (cosine with a zero vector): never an answer
        }
        found.push(Neighbor {
            memory: decode(row)?,
            distance,
        });
    }
    // A halfvec index ranks by 16-bit distances; answer in the order of the full ones.
    found.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then(a.memory.id.cmp(&b.memory.id))
    });
    if found.is_empty() {
        let found_dims: Vec<i32> = sqlx::query_scalar(
            "select distinct vector_dims(embedding) from agent_memories
             where agent_id = $1 and embedding is not null order by 1 limit 16",
        )
        .bind(agent_row)
        .fetch_all(pool)
        .await
        .map_err(&fail)?;
        let found_dims: Vec<i64> = found_dims.into_iter().map(i64::from).collect();
        if !found_dims.is_empty() && !found_dims.contains(&(dims as i64)) {
            return Err(dimension_mismatch(query, agent.as_str(), &found_dims));
        }
    }
    Ok(found)
}

/// What [`PostgresBackend::create_vector_index`](crate::PostgresBackend::create_vector_index) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexBuild {
    /// The index's name.
    pub name: String,
    /// False when a valid index of that name was already there.
    pub created: bool,
    /// True when an invalid index left by a failed build was dropped first.
    pub replaced_invalid: bool,
    /// How long the build took.
    pub seconds: f64,
}

/// The operator class of `ty` for `metric`.
fn operator_class(ty: IndexType, metric: DistanceMetric) -> String {
    let ops = match metric {
        DistanceMetric::Cosine => "cosine_ops",
        DistanceMetric::L2 => "l2_ops",
        DistanceMetric::InnerProduct => "ip_ops",
    };
    format!("{}_{ops}", ty.sql())
}

/// The statement that builds `index` without blocking writers.
pub(crate) fn create_statement(index: &VectorIndex) -> Result<String> {
    index.validate()?;
    let ty = index.index_type()?;
    let dims = index.dimensions;
    Ok(format!(
        "create index concurrently if not exists {name} on agent_memories
         using hnsw ((embedding::{t}({dims})) {class})
         with (m = {m}, ef_construction = {ef})
         where vector_dims(embedding) = {dims}",
        name = index.name(),
        t = ty.sql(),
        class = operator_class(ty, index.metric),
        m = index.m,
        ef = index.ef_construction,
    ))
}

/// Builds `index` with `CREATE INDEX CONCURRENTLY` (writers go on meanwhile), replacing
/// an invalid index a failed build left; a valid one is kept as it is.
/// The index's `maintenance_work_mem` is set for the build's session when given.
pub(crate) async fn create_index(
    pool: &PgPool,
    cache: &IndexCache,
    index: &VectorIndex,
) -> std::result::Result<IndexBuild, IndexError> {
    let statement = create_statement(index).map_err(IndexError::Input)?;
    let name = index.name();
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let state: Option<bool> =
        sqlx::query_scalar("select indisvalid from pg_index where indexrelid = to_regclass($1)")
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await?;
    if state == Some(true) {
        cache.set(&name, true);
        return Ok(IndexBuild {
            name,
            created: false,
            replaced_invalid: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    if state == Some(false) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop index concurrently if exists {name}"
        )))
        .execute(&mut *conn)
        .await?;
    }
    let maintenance_work_mem = index.maintenance_work_mem.as_deref();
    if let Some(memory) = maintenance_work_mem {
        sqlx::query("select set_config('maintenance_work_mem', $1, false)")
            .bind(memory)
            .execute(&mut *conn)
            .await?;
    }
    let built = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut *conn)
        .await;
    if maintenance_work_mem.is_some() {
        // The connection goes back to the pool; leave its settings as they were.
        sqlx::query("reset maintenance_work_mem")
            .execute(&mut *conn)
            .await
            .ok();
    }
    cache.forget(&name);
    built?;
    // Statistics: how many rows have each dimension (without them the planner guesses
    // 0.5% for the index's predicate and scans small tables instead), and fresh ones at
    // once rather than at autovacuum's next visit.
    sqlx::raw_sql(
        "create statistics if not exists agent_memories_embedding_dims
             on (vector_dims(embedding)) from agent_memories;
         analyze agent_memories",
    )
    .execute(&mut *conn)
    .await?;
    Ok(IndexBuild {
        name,
        created: true,
        replaced_invalid: state == Some(false),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Drops the index for `dimensions` and `metric` without blocking writers; false when
/// there was none.
pub(crate) async fn drop_index(
    pool: &PgPool,
    cache: &IndexCache,
    dimensions: usize,
    metric: DistanceMetric,
) -> sqlx::Result<bool> {
    let name = super::index_name(dimensions, metric);
    let there = index_state(pool, &name).await?.is_some();
    if there {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop index concurrently if exists {name}"
        )))
        .execute(pool)
        .await?;
    }
    cache.forget(&name);
    Ok(there)
}

/// Why an index could not be built: bad settings, or the database's error.
#[derive(Debug)]
pub(crate) enum IndexError {
    Input(Error),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for IndexError {
    fn from(e: sqlx::Error) -> Self {
        IndexError::Database(e)
    }
}
