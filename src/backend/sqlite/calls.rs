//! The agent-facing calls: [`MemoryBackend`] for [`SqliteBackend`].

use async_trait::async_trait;

use super::SqliteBackend;
use super::rows::{execution_from_row, memory_from_row, metric_from_row, of_agent, tool_from_row};
use super::sql::GET_MEMORY;
use crate::backend::MemoryBackend;
use crate::backend::replica::{Change, Outcome, Replica};
use crate::error::Result;
use crate::record::{AgentId, Execution, Memory, Metric, Tool, now};
use crate::vector::{Neighbor, VectorQuery};

#[async_trait]
impl MemoryBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        // Embedded: reachable whenever the process runs; a bad file shows on its agent.
        Ok(())
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        match self
            .commit(agent, Change::PutMemory(memory), false, &[])
            .await?
            .outcome
        {
            Outcome::Memory(stored) => Ok(stored),
            other => unreachable!("a store commits a memory, not {other:?}"),
        }
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(None);
        };
        sqlx::query(GET_MEMORY)
            .bind(key)
            .fetch_optional(&pool)
            .await
            .map_err(self.fail(|| format!("retrieve memory {key:?} of agent {agent:?}")))?
            .map(|row| memory_from_row(&row, &of_agent(agent)))
            .transpose()
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        query.validate()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        crate::vector::sqlite::search(
            &pool,
            agent,
            query,
            |row| memory_from_row(row, &of_agent(agent)),
            |e| self.fail(|| format!("search memories of agent {agent:?}"))(e),
        )
        .await
    }

    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        // Without a file there is nothing to delete and no replay to guard against, so a
        // delete of an unknown agent creates nothing (replicated deletes do record one).
        if self.reader(agent).await?.is_none() {
            return Ok(false);
        }
        let change = Change::DeleteMemory { key, at: now() };
        match self.commit(agent, change, false, &[]).await?.outcome {
            Outcome::Deleted { existed, .. } => Ok(existed),
            other => unreachable!("a delete commits a delete, not {other:?}"),
        }
    }

    async fn memory_keys(&self, agent: &AgentId) -> Result<Vec<String>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        sqlx::query_scalar("select key from agent_memories where key is not null order by key")
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("list memory keys of agent {agent:?}")))
    }

    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        match self
            .commit(agent, Change::PutTool(tool), false, &[])
            .await?
            .outcome
        {
            Outcome::Tool(stored) => Ok(stored),
            other => unreachable!("a registration commits a tool, not {other:?}"),
        }
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(None);
        };
        sqlx::query(
            "select id, name, content, metadata, created_at, updated_at
             from agent_tools where name = ?",
        )
        .bind(name)
        .fetch_optional(&pool)
        .await
        .map_err(self.fail(|| format!("get tool {name:?} of agent {agent:?}")))?
        .map(|row| tool_from_row(&row, &of_agent(agent)))
        .transpose()
    }

    async fn list_tools(&self, agent: &AgentId) -> Result<Vec<Tool>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        sqlx::query(
            "select id, name, content, metadata, created_at, updated_at
             from agent_tools order by name",
        )
        .fetch_all(&pool)
        .await
        .map_err(self.fail(|| format!("list tools of agent {agent:?}")))?
        .iter()
        .map(|row| tool_from_row(row, &of_agent(agent)))
        .collect()
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        self.commit(agent, Change::Metric(metric), false, &[])
            .await
            .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId) -> Result<Vec<Metric>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        sqlx::query(
            "select id, name, value, content, metadata, created_at
             from agent_metrics order by created_at, id",
        )
        .fetch_all(&pool)
        .await
        .map_err(self.fail(|| format!("list metrics of agent {agent:?}")))?
        .iter()
        .map(|row| metric_from_row(row, &of_agent(agent)))
        .collect()
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        self.commit(agent, Change::Execution(execution), false, &[])
            .await
            .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId) -> Result<Vec<Execution>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        sqlx::query(
            "select id, status, content, metadata, created_at
             from agent_executions order by created_at, id",
        )
        .fetch_all(&pool)
        .await
        .map_err(self.fail(|| format!("list executions of agent {agent:?}")))?
        .iter()
        .map(|row| execution_from_row(row, &of_agent(agent)))
        .collect()
    }
}
