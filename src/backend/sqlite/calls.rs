//! The agent-facing calls: [`MemoryBackend`] for [`SqliteBackend`].

use async_trait::async_trait;

use super::SqliteBackend;
use super::rows::{
    execution_from_row, memory_from_columns, memory_from_row, metric_from_row, of_agent,
    tool_from_row,
};
use super::sql::GET_MEMORY;
use crate::backend::MemoryBackend;
use crate::backend::listing::{Kind, key_of};
use crate::backend::replica::{Change, Outcome, Replica};
use crate::error::Result;
use crate::listing::Listing;
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

    async fn close(&self) -> Result<()> {
        SqliteBackend::close(self).await;
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
        if self.options.quick_reads {
            let quick = self.quick.get_memory(
                agent,
                || self.file_of(agent),
                self.options.mmap_size,
                self.options.max_connections as usize,
                key,
            );
            if let Some(found) = quick {
                return found
                    .map(|columns| memory_from_columns(columns, &of_agent(agent)))
                    .transpose();
            }
        }
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
        let cached = crate::vector::sqlite_cache::search(
            &self.search_cache,
            self.options.search_cache_bytes,
            &pool,
            agent,
            query,
            |row| memory_from_row(row, &of_agent(agent)),
            |e| self.fail(|| format!("search memories of agent {agent:?}"))(e),
        )
        .await?;
        if let Some(found) = cached {
            return Ok(found);
        }
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
        self.delete_own(agent, Change::DeleteMemory { key, at: now() })
            .await
    }

    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>> {
        self.list(agent, Kind::MemoryKeys, listing, key_of).await
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

    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>> {
        self.list(agent, Kind::Tools, listing, tool_from_row).await
    }

    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool> {
        self.delete_own(agent, Change::DeleteTool { name, at: now() })
            .await
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        self.commit(agent, Change::Metric(metric), false, &[])
            .await
            .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        self.list(agent, Kind::Metrics, listing, metric_from_row)
            .await
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        self.commit(agent, Change::Execution(execution), false, &[])
            .await
            .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        self.list(agent, Kind::Executions, listing, execution_from_row)
            .await
    }
}
