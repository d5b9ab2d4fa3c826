//! Vector search over memories: the query, its answer, the distance functions and the
//! PostgreSQL index.
//!
//! A memory may carry an embedding ([`Memory::embedding`]); a [`VectorQuery`] asks a
//! backend for the `k` memories of one agent whose embeddings are nearest to a query
//! vector ([`MemoryBackend::search_memories`](crate::MemoryBackend::search_memories),
//! [`AgentMemory::search`](crate::AgentMemory::search)).
//!
//! # Dimensions
//!
//! The contract's `embedding` column is an untyped `vector`, so one table can hold
//! embeddings of several models. A search compares only embeddings of the query's
//! dimension; when an agent has embeddings but none of that dimension, the search fails
//! with [`Error::InvalidInput`] naming the dimensions it has (a query from the wrong
//! model is an error, never a silent truncation or an empty answer).
//!
//! An HNSW index in PostgreSQL is built for one dimension and one metric
//! ([`VectorIndex`]): an expression index over `embedding::vector(D)` limited to rows
//! with `vector_dims(embedding) = D`. pgvector indexes `vector` up to 2,000 dimensions;
//! from 2,001 to 4,000 the index holds `halfvec(D)` (16-bit floats, half the size, with
//! distances re-ranked from the full vectors); beyond 4,000 there is no index and every
//! search is exact. Searches use an index when one exists for their dimension and metric
//! and are exact otherwise; SQLite always searches exactly.
//!
//! # Defined answers
//!
//! - `k = 0`: an empty list.
//! - `k` larger than the candidates: all of them, nearest first.
//! - An empty query vector, or one holding NaN or an infinity, or more than 16,000
//!   dimensions: [`Error::InvalidInput`].
//! - Cosine with an all-zero query vector: [`Error::InvalidInput`] (it has no direction).
//!   A stored all-zero embedding has no cosine distance either; it is never returned by
//!   a cosine search.
//! - An agent without embeddings: an empty list.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Memory, check_vector};

mod distance;
pub mod embed;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "sqlite", feature = "postgres"))))]
pub mod fill;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite_cache;

pub use distance::distance;
pub use embed::{Embedder, HashEmbedder};
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub use fill::{FillOptions, FillReport, TextSource, fill_embeddings, missing_embeddings};
#[cfg(feature = "postgres")]
pub use postgres::IndexBuild;

pub use crate::record::MAX_DIMENSIONS;
/// The most dimensions pgvector's HNSW index takes for `vector`.
pub const MAX_VECTOR_INDEX_DIMENSIONS: usize = 2_000;
/// The most dimensions pgvector's HNSW index takes for `halfvec`.
pub const MAX_HALFVEC_INDEX_DIMENSIONS: usize = 4_000;
/// pgvector's default `hnsw.ef_search`: the fewest candidates an index search keeps.
pub const DEFAULT_EF_SEARCH: u32 = 40;
/// The largest `hnsw.ef_search` pgvector accepts.
pub const MAX_EF_SEARCH: u32 = 1_000;

/// How nearness is measured. The distances are pgvector's: smaller is nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistanceMetric {
    /// `1 - cos(a, b)`, from 0 (same direction) to 2 (opposite): pgvector's `<=>`.
    #[default]
    Cosine,
    /// Euclidean distance `|a - b|`: pgvector's `<->`.
    L2,
    /// The negated inner product `-(a . b)`: pgvector's `<#>`.
    InnerProduct,
}

impl DistanceMetric {
    /// Every metric.
    pub const ALL: [DistanceMetric; 3] = [
        DistanceMetric::Cosine,
        DistanceMetric::L2,
        DistanceMetric::InnerProduct,
    ];

    /// The metric's name: `cosine`, `l2` or `inner_product`.
    pub fn as_str(self) -> &'static str {
        match self {
            DistanceMetric::Cosine => "cosine",
            DistanceMetric::L2 => "l2",
            DistanceMetric::InnerProduct => "inner_product",
        }
    }

    /// Reads a metric name (`cosine`, `l2`, `inner_product`; also `ip` and `euclidean`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the metrics there are.
    pub fn parse(name: &str) -> Result<DistanceMetric> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cosine" => Ok(DistanceMetric::Cosine),
            "l2" | "euclidean" => Ok(DistanceMetric::L2),
            "inner_product" | "ip" => Ok(DistanceMetric::InnerProduct),
            _ => Err(Error::invalid(
                "metric",
                format!("{name:?} is not one of cosine, l2, inner_product"),
            )),
        }
    }

    /// pgvector's distance operator for the metric.
    #[cfg(feature = "postgres")]
    pub(crate) fn operator(self) -> &'static str {
        match self {
            DistanceMetric::Cosine => "<=>",
            DistanceMetric::L2 => "<->",
            DistanceMetric::InnerProduct => "<#>",
        }
    }

    /// The code the SQLite distance function takes for the metric.
    #[cfg(feature = "sqlite")]
    pub(crate) fn code(self) -> i64 {
        match self {
            DistanceMetric::Cosine => 0,
            DistanceMetric::L2 => 1,
            DistanceMetric::InnerProduct => 2,
        }
    }
}

impl std::fmt::Display for DistanceMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A search: the `k` memories of an agent nearest to `vector`, optionally only those
/// whose key starts with a prefix and whose metadata has given field values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VectorQuery {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many memories to return at most.
    pub k: usize,
    /// How nearness is measured.
    pub metric: DistanceMetric,
    /// Only memories whose key starts with this (byte for byte).
    pub key_prefix: Option<String>,
    /// Only memories whose metadata has each of these top-level fields with this value
    /// (strings, numbers by value, booleans, `null`).
    pub metadata: Vec<(String, Value)>,
    /// Compare with every candidate instead of using an index (PostgreSQL; SQLite is
    /// always exact).
    pub exact: bool,
    /// Candidates an HNSW index search keeps (`hnsw.ef_search`); by default
    /// [`VectorQuery::default_ef_search`] of `k`.
    pub ef_search: Option<u32>,
}

impl VectorQuery {
    /// The `k` nearest memories to `vector` by cosine distance, unfiltered.
    pub fn new(vector: Vec<f32>, k: usize) -> Self {
        VectorQuery {
            vector,
            k,
            metric: DistanceMetric::Cosine,
            key_prefix: None,
            metadata: Vec::new(),
            exact: false,
            ef_search: None,
        }
    }

    /// Measures nearness by `metric`.
    pub fn metric(mut self, metric: DistanceMetric) -> Self {
        self.metric = metric;
        self
    }

    /// Only memories whose key starts with `prefix`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Only memories whose metadata field `field` equals `value` (a JSON scalar).
    pub fn metadata_eq(mut self, field: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.push((field.into(), value.into()));
        self
    }

    /// Compares with every candidate, never an index.
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Sets `hnsw.ef_search` for this search (1 to 1,000).
    pub fn ef_search(mut self, ef_search: u32) -> Self {
        self.ef_search = Some(ef_search);
        self
    }

    /// The query's dimension.
    pub fn dimensions(&self) -> usize {
        self.vector.len()
    }

    /// The `hnsw.ef_search` a search for `k` uses unless told: twice `k`, at least
    /// pgvector's default 40 and at most its limit 1,000, so a search for 100 keeps 200
    /// candidates. Searches for more than 500 still return `k` memories, since the index
    /// scan goes on past `ef_search` until it has `k` (`hnsw.iterative_scan`).
    pub fn default_ef_search(k: usize) -> u32 {
        let twice = u32::try_from(k.saturating_mul(2)).unwrap_or(u32::MAX);
        twice.clamp(DEFAULT_EF_SEARCH, MAX_EF_SEARCH)
    }

    /// The `hnsw.ef_search` this search uses.
    pub fn effective_ef_search(&self) -> u32 {
        self.ef_search
            .unwrap_or_else(|| Self::default_ef_search(self.k))
            .clamp(1, MAX_EF_SEARCH)
    }

    /// Checks the query: a vector of 1 to 16,000 finite numbers (not all zero for
    /// cosine), metadata filters on scalar values, `ef_search` within 1 to 1,000.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        check_vector("query vector", &self.vector)?;
        if self.metric == DistanceMetric::Cosine && self.vector.iter().all(|x| *x == 0.0) {
            return Err(Error::invalid(
                "query vector",
                "it is all zeros, which has no direction for a cosine search",
            ));
        }
        for (field, value) in &self.metadata {
            if matches!(value, Value::Array(_) | Value::Object(_)) {
                return Err(Error::invalid(
                    "metadata filter",
                    format!(
                        "field {field:?} is compared with {value}; filters take a string, \
                         number, boolean or null"
                    ),
                ));
            }
        }
        if let Some(ef) = self.ef_search
            && !(1..=MAX_EF_SEARCH).contains(&ef)
        {
            return Err(Error::invalid(
                "ef_search",
                format!("{ef} is outside 1 to {MAX_EF_SEARCH}"),
            ));
        }
        Ok(())
    }
}

/// The error for a query whose dimension no embedding of the agent has.
pub(crate) fn dimension_mismatch(query: &VectorQuery, agent: &str, found: &[i64]) -> Error {
    let found: Vec<String> = found.iter().map(i64::to_string).collect();
    Error::invalid(
        "query vector",
        format!(
            "it has {} dimensions, but the embeddings of agent {agent:?} have {}; \
             query with a vector of the model that made them",
            query.dimensions(),
            found.join(", ")
        ),
    )
}

/// One memory found by a search, and its distance from the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbor {
    /// The memory, as [`get_memory`](crate::MemoryBackend::get_memory) returns it.
    pub memory: Memory,
    /// Its distance from the query by the query's metric (smaller is nearer).
    pub distance: f64,
}

/// The column type an HNSW index of a dimension holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexType {
    /// `vector(D)`, 32-bit floats: up to 2,000 dimensions.
    Vector,
    /// `halfvec(D)`, 16-bit floats: 2,001 to 4,000 dimensions.
    Halfvec,
}

impl IndexType {
    /// The type an index of `dimensions` holds, or `None` beyond 4,000 (no index).
    pub fn for_dimensions(dimensions: usize) -> Option<IndexType> {
        match dimensions {
            1..=MAX_VECTOR_INDEX_DIMENSIONS => Some(IndexType::Vector),
            ..=MAX_HALFVEC_INDEX_DIMENSIONS if dimensions > 0 => Some(IndexType::Halfvec),
            _ => None,
        }
    }

    /// The SQL type name (`vector` or `halfvec`).
    pub fn sql(self) -> &'static str {
        match self {
            IndexType::Vector => "vector",
            IndexType::Halfvec => "halfvec",
        }
    }
}

/// An HNSW index over the embeddings of one dimension, for one metric
/// ([`PostgresBackend::create_vector_index`](crate::PostgresBackend::create_vector_index)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VectorIndex {
    /// The dimension it indexes; embeddings of other dimensions are left out.
    pub dimensions: usize,
    /// The metric its searches use.
    pub metric: DistanceMetric,
    /// HNSW links per node (`m`, pgvector's default 16).
    pub m: u32,
    /// Candidates kept while building (`ef_construction`, pgvector's default 64).
    pub ef_construction: u32,
    /// `maintenance_work_mem` for the build's session (e.g. `"1GB"`); the server's
    /// setting when `None`. A build is several times faster when the whole graph fits
    /// (about `dimensions * 4 + m * 16` bytes per embedding, plus overhead).
    pub maintenance_work_mem: Option<String>,
}

impl VectorIndex {
    /// An index for `dimensions` and `metric` with pgvector's default build settings.
    pub fn new(dimensions: usize, metric: DistanceMetric) -> Self {
        VectorIndex {
            dimensions,
            metric,
            m: 16,
            ef_construction: 64,
            maintenance_work_mem: None,
        }
    }

    /// The index's name: `agent_memories_embedding_<metric>_<dimensions>`.
    pub fn name(&self) -> String {
        index_name(self.dimensions, self.metric)
    }

    /// The column type it holds.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] beyond 4,000 dimensions, or for 0.
    pub fn index_type(&self) -> Result<IndexType> {
        IndexType::for_dimensions(self.dimensions).ok_or_else(|| {
            Error::invalid(
                "vector index",
                format!(
                    "{} dimensions cannot be indexed: pgvector's HNSW takes 1 to \
                     {MAX_VECTOR_INDEX_DIMENSIONS} (vector) or up to \
                     {MAX_HALFVEC_INDEX_DIMENSIONS} (halfvec); searches of this dimension \
                     are exact",
                    self.dimensions
                ),
            )
        })
    }

    /// Checks the build settings (`m` 2 to 100, `ef_construction` 4 to 1,000 and at
    /// least twice `m`) and the dimension.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.index_type()?;
        if !(2..=100).contains(&self.m) {
            return Err(Error::invalid(
                "vector index",
                format!("m = {} is outside 2 to 100", self.m),
            ));
        }
        if !(4..=1000).contains(&self.ef_construction) || self.ef_construction < 2 * self.m {
            return Err(Error::invalid(
                "vector index",
                format!(
                    "ef_construction = {} must be 4 to 1,000 and at least 2 * m = {}",
                    self.ef_construction,
                    2 * self.m
                ),
            ));
        }
        Ok(())
    }
}

/// The name of the index for `dimensions` and `metric`.
pub(crate) fn index_name(dimensions: usize, metric: DistanceMetric) -> String {
    format!("agent_memories_embedding_{}_{dimensions}", metric.as_str())
}
