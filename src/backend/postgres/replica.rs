//! The PostgreSQL backend as one side of a dual backend: the outbox statements,
//! versioned copies, tombstones and the journal (`agent_memory.owed_writes`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Postgres, Row};

use super::PostgresBackend;
use super::deletes::{MEMORIES, Named, TOOLS};
use super::sql::{LOG_EXECUTION, PUT_MEMORY, PUT_MEMORY_PLAIN, PUT_TOOL, RECORD_METRIC, own_id};
use crate::backend::codec::json_text;
use crate::backend::replica::{Change, Committed, Outcome, OwedCount, OwedRecord, Replica};
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory, Tool};

/// The namespace of [`copied_row_id`]: UUID v5 of the name
/// `urn:agent-memory:copied-row:v1` under the standard URL namespace. Fixed forever:
/// changing it would give copied rows second copies.
pub const COPIED_ROW_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8c453a9c_c281_514d_8ffe_f486691a08c4);

/// The id a row of `agent` that arrives under the id `id` is stored under in
/// PostgreSQL when another agent's row already has `id` there: an agent folder copied
/// from another (`cp -r agents/a agents/b`) holds the same ids as the original, and each
/// agent's rows must stay its own. UUID v5 (SHA-1) under [`COPIED_ROW_NAMESPACE`] of the
/// UTF-8 bytes of the compact JSON array `[agent, id]`, the id in its hyphenated lower
/// case form: for agent `b` and id `67e55044-10b1-426f-9247-bb680e5fe0c8`,
/// `uuid5(COPIED_ROW_NAMESPACE, '["b","67e55044-10b1-426f-9247-bb680e5fe0c8"]')`.
///
/// A row keeps its own id wherever it is free or already its agent's; only a row whose
/// id another agent holds gets this one, and gets the same one on every later copy, so
/// re-runs and repeated lazy copies stay idempotent. The rule applies wherever
/// PostgreSQL stores a row under an id it did not make: a backfill of the library's own
/// files, the dual backend's copies (its lazy copies too), metrics and executions
/// recorded by id.
pub fn copied_row_id(agent: &AgentId, id: uuid::Uuid) -> uuid::Uuid {
    let name = serde_json::json!([agent.as_str(), id.to_string()]).to_string();
    uuid::Uuid::new_v5(&COPIED_ROW_NAMESPACE, name.as_bytes())
}

/// Stores a memory over older versions only ($1-$8 as in [`PUT_MEMORY`], $9 the agent's
/// name, $10 its [`copied_row_id`], the id when another agent holds `$1`): the select's
/// WHERE skips keys deleted at or after this version, the upsert's WHERE skips newer
/// values; of two values with the same version, the one whose content sorts later by
/// bytes wins, as in SQLite.
const APPLY_MEMORY: &str = concat!(
    r#"insert into agent_memories
        (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
    select "#,
    own_id!("agent_memories", "$10"),
    r#", $2, $3, $4, $5, $6, $7, $8
    where not exists (select 1 from agent_memory.memory_tombstones
                      where agent_id = $9 and key = $3 and deleted_at >= $8)
    on conflict (agent_id, key) do update set
        content = excluded.content, metadata = excluded.metadata,
        embedding = excluded.embedding, updated_at = excluded.updated_at
    where agent_memories.updated_at < excluded.updated_at
       or (agent_memories.updated_at = excluded.updated_at
           and agent_memories.content < excluded.content collate "C")
    returning id, created_at"#
);

/// Registers a tool over older versions only (ties as for memories), and not over a
/// delete at or after it ($8 the agent's name, $9 its [`copied_row_id`]).
const APPLY_TOOL: &str = concat!(
    r#"insert into agent_tools
        (id, agent_id, name, content, metadata, created_at, updated_at)
    select "#,
    own_id!("agent_tools", "$9"),
    r#", $2, $3, $4, $5, $6, $7
    where not exists (select 1 from agent_memory.tool_tombstones
                      where agent_id = $8 and name = $3 and deleted_at >= $7)
    on conflict (agent_id, name) do update set
        content = excluded.content, metadata = excluded.metadata,
        updated_at = excluded.updated_at
    where agent_tools.updated_at < excluded.updated_at
       or (agent_tools.updated_at = excluded.updated_at
           and agent_tools.content < excluded.content collate "C")
    returning id, created_at"#
);

impl PostgresBackend {
    /// [`Replica::commit`], with the journal record already encoded (`None`: none).
    pub(super) async fn commit_change(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        op: Option<String>,
        clear: &[i64],
    ) -> Result<Committed> {
        match change {
            Change::PutMemory(memory) => memory.validate()?,
            Change::PutTool(tool) => tool.validate()?,
            Change::Metric(metric) => metric.validate()?,
            Change::Execution(execution) => execution.validate()?,
            Change::DeleteMemory { .. } | Change::DeleteTool { .. } => {}
        }
        let row_id = self.agent_row(agent).await?;
        let name = agent.as_str();
        let plain = op.is_none() && clear.is_empty();
        let operation = || format!("{} of agent {agent:?}", change.describe());
        let committed = self
            .on_lease(operation, async |c| {
                let query = match change {
                    Change::PutMemory(memory) => {
                        sqlx::query(if plain { PUT_MEMORY_PLAIN } else { PUT_MEMORY })
                            .bind(memory.id)
                            .bind(&row_id)
                            .bind(memory.key.as_deref().unwrap_or_default())
                            .bind(json_text(&memory.content))
                            .bind(Json(&memory.metadata))
                            .bind(memory.embedding.clone().map(Vector::from))
                            .bind(memory.created_at)
                            .bind(memory.updated_at)
                    }
                    Change::DeleteMemory { .. } | Change::DeleteTool { .. } => {
                        let (deletes, key, at) = change.deletes().expect("a delete");
                        let named = deletes.pick(MEMORIES, TOOLS);
                        // $4-$8 are unused by this statement; PostgreSQL needs their
                        // types anyway, so bind typed nulls.
                        sqlx::query(named.commit)
                            .bind(&row_id)
                            .bind(key)
                            .bind(at)
                            .bind(None::<String>)
                            .bind(None::<String>)
                            .bind(None::<String>)
                            .bind(None::<String>)
                            .bind(None::<String>)
                    }
                    Change::PutTool(tool) => sqlx::query(PUT_TOOL)
                        .bind(tool.id)
                        .bind(&row_id)
                        .bind(&tool.name)
                        .bind(json_text(&tool.content))
                        .bind(Json(&tool.metadata))
                        .bind(tool.created_at)
                        .bind(tool.updated_at)
                        .bind(None::<String>),
                    Change::Metric(metric) => sqlx::query(RECORD_METRIC)
                        .bind(metric.id)
                        .bind(&row_id)
                        .bind(&metric.name)
                        .bind(metric.value)
                        .bind(json_text(&metric.content))
                        .bind(Json(&metric.metadata))
                        .bind(metric.created_at)
                        .bind(copied_row_id(agent, metric.id)),
                    Change::Execution(execution) => sqlx::query(LOG_EXECUTION)
                        .bind(execution.id)
                        .bind(&row_id)
                        .bind(&execution.status)
                        .bind(json_text(&execution.content))
                        .bind(Json(&execution.metadata))
                        .bind(execution.created_at)
                        .bind(None::<String>)
                        .bind(copied_row_id(agent, execution.id)),
                };
                let row = query
                    .bind(name)
                    .bind(&op)
                    .bind(clear)
                    .fetch_one(&mut *c)
                    .await?;
                let seq: Option<i64> = row.try_get("seq")?;
                let stored = match change {
                    Change::PutMemory(memory) => Some((MEMORIES, memory.key.as_deref())),
                    Change::PutTool(tool) => Some((TOOLS, Some(tool.name.as_str()))),
                    _ => None,
                };
                // Replication needs the order of a store and a concurrent delete to match
                // their versions (see `drop_deleted`); a plain backend, with no other
                // side, takes the store as the later of the two and saves the round trip.
                if let (Some((named, key)), Some(_)) = (stored, &op) {
                    sqlx::query(named.drop_deleted)
                        .bind(&row_id)
                        .bind(key.unwrap_or_default())
                        .bind(name)
                        .execute(&mut *c)
                        .await?;
                }
                let outcome = match change {
                    Change::PutMemory(memory) => Outcome::Memory(Memory {
                        id: row.try_get("id")?,
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                        ..memory.clone()
                    }),
                    Change::DeleteMemory { .. } | Change::DeleteTool { .. } => {
                        let (deletes, key, _) = change.deletes().expect("a delete");
                        let named = deletes.pick(MEMORIES, TOOLS);
                        let at: DateTime<Utc> = row.try_get("deleted_at")?;
                        let held: bool = row.try_get("held")?;
                        let done = sqlx::query(named.delete_up_to)
                            .bind(&row_id)
                            .bind(key)
                            .bind(at)
                            .execute(&mut *c)
                            .await?;
                        // Between the two statements a repair (of any process) that read
                        // this delete's journal record, or a copy's closing check, may
                        // have removed the value the tombstone outranks: it existed all
                        // the same.
                        Outcome::Deleted {
                            existed: held || done.rows_affected() > 0,
                            at,
                        }
                    }
                    Change::PutTool(tool) => Outcome::Tool(Tool {
                        id: row.try_get("id")?,
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                        ..tool.clone()
                    }),
                    Change::Metric(_) | Change::Execution(_) => Outcome::Recorded,
                };
                Ok(Committed { outcome, seq })
            })
            .await?;
        Ok(committed)
    }

    /// Runs one of the memory copies; returns the memory as stored (with the id and
    /// `created_at` of an existing key), or `None` when a newer version kept it out.
    async fn apply_memory_row(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        memory.validate()?;
        let row_id = self.agent_row(agent).await?;
        let key = memory.key.as_deref().unwrap_or_default();
        let apply = sqlx::query(APPLY_MEMORY)
            .bind(memory.id)
            .bind(&row_id)
            .bind(key)
            .bind(json_text(&memory.content))
            .bind(Json(&memory.metadata))
            .bind(memory.embedding.clone().map(Vector::from))
            .bind(memory.created_at)
            .bind(memory.updated_at)
            .bind(agent.as_str())
            .bind(copied_row_id(agent, memory.id));
        let stored = self.apply_checked(agent, MEMORIES, key, &row_id, apply);
        Ok(stored.await?.map(|(id, created_at)| Memory {
            id,
            created_at,
            ..memory.clone()
        }))
    }

    /// Runs `apply`, a copy that stores over older versions only, and then the closing
    /// check for a delete of `name` committed while it ran (`drop_deleted`); returns the
    /// id and `created_at` `apply` returned (those of an existing row), or `None` when a
    /// newer version or a delete kept it out.
    async fn apply_checked(
        &self,
        agent: &AgentId,
        named: Named,
        name: &str,
        row_id: &str,
        apply: Query<'_, Postgres, PgArguments>,
    ) -> Result<Option<(uuid::Uuid, DateTime<Utc>)>> {
        let fail = || format!("apply {} {name:?} of agent {agent:?}", named.what);
        self.on_lease(fail, async |c| {
            let Some(row) = apply.fetch_optional(&mut *c).await? else {
                return Ok(None);
            };
            let undone = sqlx::query(named.drop_deleted)
                .bind(row_id)
                .bind(name)
                .bind(agent.as_str())
                .execute(&mut *c)
                .await?;
            Ok((undone.rows_affected() == 0).then(|| (row.get("id"), row.get("created_at"))))
        })
        .await
    }
}

#[async_trait]
impl Replica for PostgresBackend {
    async fn commit(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        journal: bool,
        clear: &[i64],
    ) -> Result<Committed> {
        let op = journal
            .then(|| serde_json::to_string(&change.owed()))
            .transpose()
            .map_err(|source| Error::Json {
                context: format!("owed {} of agent {agent:?}", change.owed().subject()),
                source,
            })?;
        self.commit_change(agent, change, op, clear).await
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
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(false);
        };
        let query = match to {
            Some(memory) => sqlx::query(
                "update agent_memories set content = $3, metadata = $4, embedding = $5,
                 updated_at = $6
                 where agent_id = $1 and key = $2 and updated_at = $7",
            )
            .bind(&row_id)
            .bind(key)
            .bind(json_text(&memory.content))
            .bind(Json(&memory.metadata))
            .bind(memory.embedding.clone().map(Vector::from))
            .bind(memory.updated_at),
            None => sqlx::query(
                "delete from agent_memories where agent_id = $1 and key = $2 and updated_at = $3",
            )
            .bind(&row_id)
            .bind(key),
        };
        let done = self
            .on_lease(
                || format!("restore memory {key:?} of agent {agent:?}"),
                async |c| query.bind(version).execute(c).await,
            )
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn memory_tombstone(&self, agent: &AgentId, key: &str) -> Result<Option<DateTime<Utc>>> {
        self.tombstone_of(agent, MEMORIES, key).await
    }

    async fn apply_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>> {
        tool.validate()?;
        let row_id = self.agent_row(agent).await?;
        let apply = sqlx::query(APPLY_TOOL)
            .bind(tool.id)
            .bind(&row_id)
            .bind(&tool.name)
            .bind(json_text(&tool.content))
            .bind(Json(&tool.metadata))
            .bind(tool.created_at)
            .bind(tool.updated_at)
            .bind(agent.as_str())
            .bind(copied_row_id(agent, tool.id));
        let stored = self.apply_checked(agent, TOOLS, &tool.name, &row_id, apply);
        Ok(stored.await?.map(|(id, created_at)| Tool {
            id,
            created_at,
            ..tool.clone()
        }))
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
        let rows: Vec<(i64, String)> = self
            .on_lease(
                || format!("read owed writes of agent {agent:?}"),
                async |c| {
                    sqlx::query_as(
                        "select seq, op from agent_memory.owed_writes
                         where agent_id = $1 and parked is null order by seq limit $2",
                    )
                    .bind(agent.as_str())
                    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                    .fetch_all(c)
                    .await
                },
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, op)| OwedRecord { seq, op })
            .collect())
    }

    async fn clear_owed(&self, agent: &AgentId, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.on_lease(
            || format!("clear owed writes of agent {agent:?}"),
            async |c| {
                sqlx::query(
                    "delete from agent_memory.owed_writes where agent_id = $1 and seq = any($2)",
                )
                .bind(agent.as_str())
                .bind(seqs)
                .execute(c)
                .await
            },
        )
        .await?;
        Ok(())
    }

    async fn park_owed(&self, agent: &AgentId, seq: i64, error: &str) -> Result<()> {
        self.on_lease(
            || format!("park owed write {seq} of agent {agent:?}"),
            async |c| {
                sqlx::query(
                    "update agent_memory.owed_writes set parked = $3, parked_at = now()
                     where agent_id = $1 and seq = $2",
                )
                .bind(agent.as_str())
                .bind(seq)
                .bind(error)
                .execute(c)
                .await
            },
        )
        .await?;
        Ok(())
    }

    async fn unpark_owed(&self, agent: &AgentId) -> Result<u64> {
        let done = self
            .on_lease(
                || format!("retry parked writes of agent {agent:?}"),
                async |c| {
                    sqlx::query(
                        "update agent_memory.owed_writes set parked = null, parked_at = null
                         where agent_id = $1 and parked is not null",
                    )
                    .bind(agent.as_str())
                    .execute(c)
                    .await
                },
            )
            .await?;
        Ok(done.rows_affected())
    }

    async fn owed_agents(&self) -> Result<Vec<OwedCount>> {
        let rows: Vec<(String, i64, i64)> = self
            .on_lease(
                || "list agents with owed writes".to_string(),
                async |c| {
                    sqlx::query_as(
                        "select agent_id, count(*) filter (where parked is null),
                                count(*) filter (where parked is not null)
                         from agent_memory.owed_writes group by agent_id order by agent_id",
                    )
                    .fetch_all(c)
                    .await
                },
            )
            .await?;
        rows.into_iter()
            .map(|(agent, pending, parked)| {
                Ok(OwedCount {
                    agent: AgentId::new(agent)?,
                    pending: pending.unsigned_abs(),
                    parked: parked.unsigned_abs(),
                    error: None,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_row_ids_are_the_documented_uuid5() {
        let named = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            b"urn:agent-memory:copied-row:v1",
        );
        assert_eq!(COPIED_ROW_NAMESPACE, named);
        let id = uuid::Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        let b = AgentId::new("b").unwrap();
        let name = br#"["b","67e55044-10b1-426f-9247-bb680e5fe0c8"]"#;
        assert_eq!(
            copied_row_id(&b, id),
            uuid::Uuid::new_v5(&COPIED_ROW_NAMESPACE, name)
        );
        assert_ne!(
            copied_row_id(&b, id),
            copied_row_id(&AgentId::new("c").unwrap(), id)
        );
    }
}
