//! The SQLite backend as one side of a dual backend: the outbox transaction, versioned
//! copies, tombstones and the journal (`agent_memory_owed`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, Row, SqliteConnection};

use super::SqliteBackend;
use super::deletes::{MEMORIES, TOOLS};
use super::rows::{parse_id, stored_identity};
use super::sql::{APPLY_MEMORY, APPLY_TOOL, LOG_EXECUTION, PUT_MEMORY, PUT_TOOL, RECORD_METRIC};
use crate::backend::codec::{embedding_bytes, json_text, metadata_text, parse_time, time_text};
use crate::backend::replica::{Change, Committed, Outcome, OwedCount, OwedRecord, Replica};
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory, Tool};

impl SqliteBackend {
    /// The body of [`Replica::commit`], inside its transaction.
    async fn commit_in(
        conn: &mut SqliteConnection,
        change: Change<'_>,
    ) -> std::result::Result<Outcome, sqlx::Error> {
        Ok(match change {
            Change::PutMemory(memory) => {
                let rows = sqlx::query(PUT_MEMORY)
                    .bind(memory.id.to_string())
                    .bind(memory.key.as_deref().unwrap_or_default())
                    .bind(json_text(&memory.content))
                    .bind(metadata_text(&memory.metadata))
                    .bind(memory.embedding.as_deref().map(embedding_bytes))
                    .bind(time_text(&memory.created_at))
                    .bind(time_text(&memory.updated_at))
                    .fetch_all(&mut *conn)
                    .await?;
                let (id, created_at, updated_at) = identity(&rows)?;
                Outcome::Memory(Memory {
                    id,
                    created_at,
                    updated_at,
                    ..memory.clone()
                })
            }
            Change::DeleteMemory { key, at } => Self::delete_in(conn, MEMORIES, key, at).await?,
            Change::DeleteTool { name, at } => Self::delete_in(conn, TOOLS, name, at).await?,
            Change::PutTool(tool) => {
                let rows = sqlx::query(PUT_TOOL)
                    .bind(tool.id.to_string())
                    .bind(&tool.name)
                    .bind(json_text(&tool.content))
                    .bind(metadata_text(&tool.metadata))
                    .bind(time_text(&tool.created_at))
                    .bind(time_text(&tool.updated_at))
                    .fetch_all(&mut *conn)
                    .await?;
                let (id, created_at, updated_at) = identity(&rows)?;
                Outcome::Tool(Tool {
                    id,
                    created_at,
                    updated_at,
                    ..tool.clone()
                })
            }
            Change::Metric(metric) => {
                sqlx::query(RECORD_METRIC)
                    .bind(metric.id.to_string())
                    .bind(&metric.name)
                    .bind(metric.value)
                    .bind(json_text(&metric.content))
                    .bind(metadata_text(&metric.metadata))
                    .bind(time_text(&metric.created_at))
                    .execute(&mut *conn)
                    .await?;
                Outcome::Recorded
            }
            Change::Execution(execution) => {
                sqlx::query(LOG_EXECUTION)
                    .bind(execution.id.to_string())
                    .bind(&execution.status)
                    .bind(json_text(&execution.content))
                    .bind(metadata_text(&execution.metadata))
                    .bind(time_text(&execution.created_at))
                    .execute(&mut *conn)
                    .await?;
                Outcome::Recorded
            }
        })
    }
}

/// A stored time, as a decode error of the statement that read it.
fn read_time(text: &str) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    parse_time(text, || "stored version".to_string()).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The id, `created_at` and version an upsert returned.
fn identity(
    rows: &[sqlx::sqlite::SqliteRow],
) -> std::result::Result<(uuid::Uuid, DateTime<Utc>, DateTime<Utc>), sqlx::Error> {
    let row = rows
        .first()
        .ok_or_else(|| sqlx::Error::Protocol("an upsert returned no row".into()))?;
    let id = parse_id(row.get("id"), || "stored row".to_string())
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok((
        id,
        read_time(row.get("created_at"))?,
        read_time(row.get("updated_at"))?,
    ))
}

#[async_trait]
impl Replica for SqliteBackend {
    async fn commit(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        journal: bool,
        clear: &[i64],
    ) -> Result<Committed> {
        match change {
            Change::PutMemory(memory) => memory.validate()?,
            Change::PutTool(tool) => tool.validate()?,
            Change::Metric(metric) => metric.validate()?,
            Change::Execution(execution) => execution.validate()?,
            Change::DeleteMemory { .. } | Change::DeleteTool { .. } => {}
        }
        let record = journal
            .then(|| serde_json::to_string(&change.owed()))
            .transpose()
            .map_err(|source| Error::Json {
                context: format!("owed {} of agent {agent:?}", change.owed().subject()),
                source,
            })?;
        let pool = self.writer(agent).await?;
        // A store, registration or record with nothing to journal is one statement, in
        // autocommit; anything more is one `begin immediate` transaction.
        let single = record.is_none() && clear.is_empty() && change.deletes().is_none();
        let committed = async {
            let mut conn = pool.acquire().await?;
            if single {
                let outcome = Self::commit_in(&mut conn, change).await?;
                return Ok(Committed { outcome, seq: None });
            }
            let mut tx = conn.begin_with("begin immediate").await?;
            let outcome = Self::commit_in(&mut tx, change).await?;
            let seq = match &record {
                Some(op) => Some(
                    sqlx::query_scalar::<_, i64>(
                        "insert into agent_memory_owed (op) values (?) returning seq",
                    )
                    .bind(op)
                    .fetch_all(&mut *tx)
                    .await?
                    .first()
                    .copied()
                    .ok_or_else(|| sqlx::Error::Protocol("no journal sequence number".into()))?,
                ),
                None => None,
            };
            if !clear.is_empty() {
                clear_in(&mut tx, clear).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Committed { outcome, seq })
        };
        committed
            .await
            .map_err(self.fail(|| format!("{} of agent {agent:?}", change.describe())))
    }

    async fn apply_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        self.apply_memory_row(agent, memory).await
    }

    async fn apply_memory_delete(
        &self,
        agent: &AgentId,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.apply_delete(agent, MEMORIES, key, at).await
    }

    async fn restore_memory(
        &self,
        agent: &AgentId,
        key: &str,
        version: DateTime<Utc>,
        to: Option<&Memory>,
    ) -> Result<bool> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(false);
        };
        let query = match to {
            Some(memory) => sqlx::query(
                "update agent_memories set content = ?, metadata = ?, embedding = ?, updated_at = ?
                 where key = ? and updated_at = ?",
            )
            .bind(json_text(&memory.content))
            .bind(metadata_text(&memory.metadata))
            .bind(memory.embedding.as_deref().map(embedding_bytes))
            .bind(time_text(&memory.updated_at)),
            None => sqlx::query("delete from agent_memories where key = ? and updated_at = ?"),
        };
        let done = query
            .bind(key)
            .bind(time_text(&version))
            .execute(&pool)
            .await
            .map_err(self.fail(|| format!("restore memory {key:?} of agent {agent:?}")))?;
        Ok(done.rows_affected() > 0)
    }

    async fn memory_tombstone(&self, agent: &AgentId, key: &str) -> Result<Option<DateTime<Utc>>> {
        self.tombstone_of(agent, MEMORIES, key).await
    }

    async fn apply_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>> {
        self.apply_tool_row(agent, tool).await
    }

    async fn apply_tool_delete(
        &self,
        agent: &AgentId,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        self.apply_delete(agent, TOOLS, name, at).await
    }

    async fn tool_tombstone(&self, agent: &AgentId, name: &str) -> Result<Option<DateTime<Utc>>> {
        self.tombstone_of(agent, TOOLS, name).await
    }

    async fn owed_writes(&self, agent: &AgentId, limit: usize) -> Result<Vec<OwedRecord>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "select seq, op from agent_memory_owed where parked is null order by seq limit ?",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&pool)
        .await
        .map_err(self.fail(|| format!("read owed writes of agent {agent:?}")))?;
        Ok(rows
            .into_iter()
            .map(|(seq, op)| OwedRecord { seq, op })
            .collect())
    }

    async fn clear_owed(&self, agent: &AgentId, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let Some(pool) = self.reader(agent).await? else {
            return Ok(());
        };
        let cleared = async {
            let mut conn = pool.acquire().await?;
            clear_in(&mut conn, seqs).await
        };
        cleared
            .await
            .map_err(self.fail(|| format!("clear owed writes of agent {agent:?}")))
    }

    async fn park_owed(&self, agent: &AgentId, seq: i64, error: &str) -> Result<()> {
        let pool = self.writer(agent).await?;
        sqlx::query(
            "update agent_memory_owed set parked = ?,
                 parked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             where seq = ?",
        )
        .bind(error)
        .bind(seq)
        .execute(&pool)
        .await
        .map_err(self.fail(|| format!("park owed write {seq} of agent {agent:?}")))?;
        Ok(())
    }

    async fn unpark_owed(&self, agent: &AgentId) -> Result<u64> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(0);
        };
        let done = sqlx::query(
            "update agent_memory_owed set parked = null, parked_at = null
             where parked is not null",
        )
        .execute(&pool)
        .await
        .map_err(self.fail(|| format!("retry parked writes of agent {agent:?}")))?;
        Ok(done.rows_affected())
    }

    async fn owed_agents(&self) -> Result<Vec<OwedCount>> {
        let mut owed = Vec::new();
        for agent in self.agents()? {
            // One unreadable file is that agent's problem: it is listed with its error,
            // and the others are still counted.
            let counted = async {
                let Some(pool) = self.reader(&agent).await? else {
                    return Ok((0, 0));
                };
                sqlx::query_as::<_, (i64, i64)>(
                    "select count(*) filter (where parked is null),
                            count(*) filter (where parked is not null)
                     from agent_memory_owed",
                )
                .fetch_one(&pool)
                .await
                .map_err(self.fail(|| format!("count owed writes of agent {agent:?}")))
            };
            match counted.await {
                Ok((0, 0)) => {}
                Ok((pending, parked)) => owed.push(OwedCount {
                    agent,
                    pending: pending.unsigned_abs(),
                    parked: parked.unsigned_abs(),
                    error: None,
                }),
                Err(err) => owed.push(OwedCount {
                    agent,
                    pending: 0,
                    parked: 0,
                    error: Some(crate::Chain(&err).to_string()),
                }),
            }
        }
        Ok(owed)
    }
}

/// Removes journal records by sequence number.
async fn clear_in(
    conn: &mut SqliteConnection,
    seqs: &[i64],
) -> std::result::Result<(), sqlx::Error> {
    let list = serde_json::Value::from(seqs.to_vec()).to_string();
    sqlx::query("delete from agent_memory_owed where seq in (select value from json_each(?))")
        .bind(list)
        .execute(conn)
        .await?;
    Ok(())
}

impl SqliteBackend {
    /// Copies `memory` over older versions only ([`APPLY_MEMORY`]); returns the memory
    /// as stored (with the id and `created_at` of an existing key), or `None` when a
    /// newer version kept it out.
    async fn apply_memory_row(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        memory.validate()?;
        let pool = self.writer(agent).await?;
        let key = memory.key.as_deref().unwrap_or_default();
        let row = sqlx::query(APPLY_MEMORY)
            .bind(memory.id.to_string())
            .bind(key)
            .bind(json_text(&memory.content))
            .bind(metadata_text(&memory.metadata))
            .bind(memory.embedding.as_deref().map(embedding_bytes))
            .bind(time_text(&memory.created_at))
            .bind(time_text(&memory.updated_at))
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("apply memory {key:?} of agent {agent:?}")))?;
        row.first()
            .map(|row| stored_identity(row, memory, agent))
            .transpose()
    }

    /// Copies `tool` over older versions only ([`APPLY_TOOL`]); returns the tool as
    /// registered, or `None` when a newer version or a delete of its name kept it out.
    async fn apply_tool_row(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>> {
        tool.validate()?;
        let pool = self.writer(agent).await?;
        let row = sqlx::query(APPLY_TOOL)
            .bind(tool.id.to_string())
            .bind(&tool.name)
            .bind(json_text(&tool.content))
            .bind(metadata_text(&tool.metadata))
            .bind(time_text(&tool.created_at))
            .bind(time_text(&tool.updated_at))
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("apply tool {:?} of agent {agent:?}", tool.name)))?;
        let what = || format!("tool {:?} of agent {agent:?}", tool.name);
        row.first()
            .map(|row| {
                Ok(Tool {
                    id: parse_id(row.get("id"), what)?,
                    created_at: parse_time(row.get("created_at"), what)?,
                    ..tool.clone()
                })
            })
            .transpose()
    }
}
