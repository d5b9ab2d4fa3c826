//! The floor's baseline: the library's own statements, bound and decoded by hand.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use memshift::{AgentId, Memory};
// The statements the backends issue, so that the floor times exactly those.
use memshift::testing::statements::{
    POSTGRES_GET_MEMORY as POSTGRES_GET, POSTGRES_PUT_MEMORY as POSTGRES_PUT,
    SQLITE_GET_MEMORY as SQLITE_GET, SQLITE_PUT_MEMORY as SQLITE_PUT,
};
use pgvector::Vector;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::harness::Result;

/// A hand-written client of the same tables: the library's statements, bound and
/// decoded directly through sqlx.
pub(super) enum Raw {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Times as the SQLite backend writes them.
fn time_text(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Raw {
    /// Opens the agent's SQLite file as the library does (WAL, `synchronous = FULL`, the
    /// default busy timeout and pool size); the library has created it already.
    pub(super) async fn sqlite(file: &std::path::Path) -> Result<Raw> {
        let defaults = memshift::SqliteOptions::default();
        let connect = SqliteConnectOptions::new()
            .filename(file)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(defaults.busy_timeout)
            .pragma("mmap_size", defaults.mmap_size.to_string());
        let pool = SqlitePoolOptions::new()
            .max_connections(defaults.max_connections)
            .test_before_acquire(false)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(300))
            .connect_with(connect)
            .await?;
        Ok(Raw::Sqlite(pool))
    }

    /// Stores `memory` under the agent; returns how long it took.
    pub(super) async fn store(&self, agent: &AgentId, memory: &Memory) -> Result<Duration> {
        let key = memory.key.as_deref().unwrap_or_default();
        let started = Instant::now();
        let row = match self {
            Raw::Sqlite(pool) => sqlx::query(SQLITE_PUT)
                .bind(memory.id.to_string())
                .bind(key)
                .bind(memory.content.to_string())
                .bind(serde_json::to_string(&memory.metadata)?)
                .bind(None::<Vec<u8>>)
                .bind(time_text(&memory.created_at))
                .bind(time_text(&memory.updated_at))
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<String, _>("id").map(|_| ())),
            Raw::Postgres(pool) => sqlx::query(POSTGRES_PUT)
                .bind(memory.id)
                .bind(agent.as_str())
                .bind(key)
                .bind(memory.content.to_string())
                .bind(Json(&memory.metadata))
                .bind(None::<Vector>)
                .bind(memory.created_at)
                .bind(memory.updated_at)
                // The agent's name (its row's id here), no journal record, none to clear.
                .bind(agent.as_str())
                .bind(None::<String>)
                .bind(Vec::<i64>::new())
                .fetch_optional(pool)
                .await?
                .map(|row| row.try_get::<uuid::Uuid, _>("id").map(|_| ())),
        };
        row.ok_or("the upsert returned no row")??;
        Ok(started.elapsed())
    }

    /// Retrieves `key` of the agent and parses its value; returns how long it took.
    pub(super) async fn retrieve(&self, agent: &AgentId, key: &str) -> Result<Duration> {
        let started = Instant::now();
        let content: Value = match self {
            Raw::Sqlite(pool) => {
                let row = sqlx::query(SQLITE_GET)
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
                    .ok_or("key not found")?;
                let _: (String, Option<Vec<u8>>, String, String) = (
                    row.try_get("metadata")?,
                    row.try_get("embedding")?,
                    row.try_get("created_at")?,
                    row.try_get("updated_at")?,
                );
                serde_json::from_str(row.try_get("content")?)?
            }
            Raw::Postgres(pool) => {
                let row = sqlx::query(POSTGRES_GET)
                    .bind(agent.as_str())
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
                    .ok_or("key not found")?;
                let _: (uuid::Uuid, Json<Value>, Option<Vector>, DateTime<Utc>) = (
                    row.try_get("id")?,
                    row.try_get("metadata")?,
                    row.try_get("embedding")?,
                    row.try_get("updated_at")?,
                );
                serde_json::from_str(row.try_get("content")?)?
            }
        };
        if content.is_null() {
            return Err(format!("{key:?} holds null").into());
        }
        Ok(started.elapsed())
    }
}
