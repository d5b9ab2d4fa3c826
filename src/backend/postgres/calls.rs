//! The agent-facing calls: [`MemoryBackend`] for [`PostgresBackend`].

use async_trait::async_trait;

use super::PostgresBackend;
use super::rows::{execution_from_row, memory_from_row, metric_from_row, tool_from_row};
use super::sql::GET_MEMORY;
use crate::backend::MemoryBackend;
use crate::backend::listing::{Kind, key_of};
use crate::backend::replica::{Change, Outcome};
use crate::error::Result;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool, now};
use crate::vector::{Neighbor, VectorQuery};

#[async_trait]
impl MemoryBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map_err(self.fail(|| "ping".to_string()))?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        PostgresBackend::close(self).await;
        Ok(())
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        match self
            .commit_change(agent, Change::PutMemory(memory), None, &[])
            .await?
            .outcome
        {
            Outcome::Memory(stored) => Ok(stored),
            other => unreachable!("a store commits a memory, not {other:?}"),
        }
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(None);
        };
        let fail = || format!("retrieve memory {key:?} of agent {agent:?}");
        let row = self
            .on_lease(fail, async |c| {
                sqlx::query(GET_MEMORY)
                    .bind(&row_id)
                    .bind(key)
                    .fetch_optional(c)
                    .await
            })
            .await?;
        row.map(|row| memory_from_row(&row, agent)).transpose()
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        query.validate()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(Vec::new());
        };
        crate::vector::postgres::search(
            &self.pool,
            &self.indexes,
            agent,
            &row_id,
            query,
            |row| memory_from_row(row, agent),
            |e| self.fail(|| format!("search memories of agent {agent:?}"))(e),
        )
        .await
    }

    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        self.delete_own(agent, Change::DeleteMemory { key, at: now() })
            .await
    }

    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>> {
        self.list(agent, Kind::MemoryKeys, listing, key_of).await
    }

    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        match self
            .commit_change(agent, Change::PutTool(tool), None, &[])
            .await?
            .outcome
        {
            Outcome::Tool(stored) => Ok(stored),
            other => unreachable!("a registration commits a tool, not {other:?}"),
        }
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(None);
        };
        self.on_lease(
            || format!("get tool {name:?} of agent {agent:?}"),
            async |c| {
                sqlx::query(
                    "select id, name, content, metadata, created_at, updated_at
                     from agent_tools where agent_id = $1 and name = $2",
                )
                .bind(&row_id)
                .bind(name)
                .fetch_optional(c)
                .await
            },
        )
        .await?
        .map(|row| tool_from_row(&row, agent))
        .transpose()
    }

    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>> {
        self.list(agent, Kind::Tools, listing, tool_from_row).await
    }

    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool> {
        self.delete_own(agent, Change::DeleteTool { name, at: now() })
            .await
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        self.commit_change(agent, Change::Metric(metric), None, &[])
            .await
            .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        self.list(agent, Kind::Metrics, listing, metric_from_row)
            .await
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        self.commit_change(agent, Change::Execution(execution), None, &[])
            .await
            .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        self.list(agent, Kind::Executions, listing, execution_from_row)
            .await
    }
}
