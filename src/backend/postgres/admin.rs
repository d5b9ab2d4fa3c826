//! DDL on the contract tables that runs only when its caller asks: HNSW indexes per
//! dimension and metric, and the storage of memory contents.

use super::PostgresBackend;
use crate::error::Result;
use crate::vector::postgres::IndexError;
use crate::vector::{DistanceMetric, IndexBuild, VectorIndex};

impl PostgresBackend {
    /// Builds the HNSW index for `index`'s dimension and metric with
    /// `CREATE INDEX CONCURRENTLY`, so agents keep writing meanwhile; searches of that
    /// dimension and metric use it from then on (this process at once, others within
    /// 30 s). A valid index of the same name is kept; an invalid one left by a failed
    /// build is replaced.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a dimension that cannot be indexed (over 4,000) or
    /// bad build settings; the database's error when the build fails (the failed index
    /// is replaced by the next call).
    pub async fn create_vector_index(&self, index: &VectorIndex) -> Result<IndexBuild> {
        crate::vector::postgres::create_index(&self.pool, &self.indexes, index)
            .await
            .map_err(|e| match e {
                IndexError::Input(e) => e,
                IndexError::Database(e) => {
                    self.fail(|| format!("build vector index {}", index.name()))(e)
                }
            })
    }

    /// Whether PostgreSQL compresses memory contents over about 2 KB before storing
    /// them (its default, `STORAGE EXTENDED` on `agent_memories.content`), or stores
    /// them out of line uncompressed (`STORAGE EXTERNAL`).
    ///
    /// # Errors
    /// The database's error.
    pub async fn content_compression(&self) -> Result<bool> {
        let storage: String = sqlx::query_scalar(
            "select attstorage::text from pg_attribute
             where attrelid = 'agent_memories'::regclass and attname = 'content'",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.fail(|| "read the storage of agent_memories.content".to_string()))?;
        Ok(storage != "e")
    }

    /// Turns compression of memory contents on (PostgreSQL's default) or off, for
    /// values written from now on; stored values stay as they are.
    ///
    /// Compressing a value of 2-20 KB with PostgreSQL's `pglz` costs server CPU on every
    /// store: where the server's CPUs are what limits throughput, turning it off
    /// raised calls/s by 6-8% in the `ops` benchmark, at the price of storing
    /// large contents at full size (agent text compresses to about half). The setting
    /// is a storage attribute of the column, outside the contract's columns and types
    /// and invisible to the admin application's schema. Like the shipped migrations and
    /// [`create_vector_index`](Self::create_vector_index), this is DDL on a contract
    /// table that runs only when called; the library never calls it on its own. The
    /// change takes a brief
    /// exclusive lock on the table; it gives up after `lock_timeout` (5 s) rather than
    /// queue agents' calls behind a long-running statement.
    ///
    /// # Errors
    /// The database's error, e.g. a lock timeout (nothing changed; try again).
    pub async fn set_content_compression(&self, compress: bool) -> Result<()> {
        let storage = if compress { "extended" } else { "external" };
        let fail = || format!("set the storage of agent_memories.content to {storage}");
        let mut tx = self.pool.begin().await.map_err(self.fail(fail))?;
        sqlx::query("set local lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .map_err(self.fail(fail))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter table agent_memories alter column content set storage {storage}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(self.fail(fail))?;
        tx.commit().await.map_err(self.fail(fail))
    }

    /// Drops the HNSW index for `dimensions` and `metric` without blocking writers;
    /// returns whether there was one.
    ///
    /// # Errors
    /// The database's error.
    pub async fn drop_vector_index(
        &self,
        dimensions: usize,
        metric: DistanceMetric,
    ) -> Result<bool> {
        crate::vector::postgres::drop_index(&self.pool, &self.indexes, dimensions, metric)
            .await
            .map_err(self.fail(|| {
                format!(
                    "drop vector index {}",
                    crate::vector::index_name(dimensions, metric)
                )
            }))
    }
}
