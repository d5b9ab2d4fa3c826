//! A backend wrapper that fails on command, for fault tests of code built on backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::backend::MemoryBackend;
use crate::backend::replica::{Change, Committed, OwedCount, OwedRecord, Replica};
use crate::error::{Error, Result};
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool};
use crate::vector::{Neighbor, VectorQuery};

/// Wraps a backend; while [`set_down`](Self::set_down) is on, every call fails as a
/// refused connection would (so [`Error::is_connection`] is true), and while
/// [`set_writes_failing`](Self::set_writes_failing) is on, every write does.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Replica>,
    down: AtomicBool,
    writes_failing: AtomicBool,
    injected: AtomicU64,
}

impl FaultyBackend {
    /// Wraps `inner`, healthy.
    pub fn new(inner: Arc<dyn Replica>) -> Self {
        FaultyBackend {
            inner,
            down: AtomicBool::new(false),
            writes_failing: AtomicBool::new(false),
            injected: AtomicU64::new(0),
        }
    }

    /// Makes every call fail (`true`) or pass through (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes every write fail (`true`) or pass through (`false`).
    pub fn set_writes_failing(&self, failing: bool) {
        self.writes_failing.store(failing, Ordering::SeqCst);
    }

    /// How many calls failed by injection.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn check(&self, operation: &str, write: bool) -> Result<()> {
        let failing = self.down.load(Ordering::SeqCst)
            || (write && self.writes_failing.load(Ordering::SeqCst));
        if !failing {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(Error::unreachable(
            self.inner.name(),
            format!("{operation} (injected fault)"),
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "injected: connection refused",
            ),
        ))
    }
}

/// Forwards one call after the fault check.
macro_rules! forward {
    ($self:ident, $write:expr, $name:ident($($arg:expr),*)) => {{
        $self.check(stringify!($name), $write)?;
        $self.inner.$name($($arg),*).await
    }};
}

#[async_trait]
impl MemoryBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn ping(&self) -> Result<()> {
        forward!(self, false, ping())
    }
    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        forward!(self, true, put_memory(agent, memory))
    }
    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        forward!(self, false, get_memory(agent, key))
    }
    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        forward!(self, true, delete_memory(agent, key))
    }
    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>> {
        forward!(self, false, memory_keys(agent, listing))
    }
    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        forward!(self, false, search_memories(agent, query))
    }
    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        forward!(self, true, put_tool(agent, tool))
    }
    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        forward!(self, false, get_tool(agent, name))
    }
    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>> {
        forward!(self, false, list_tools(agent, listing))
    }
    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool> {
        forward!(self, true, delete_tool(agent, name))
    }
    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        forward!(self, true, record_metric(agent, metric))
    }
    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        forward!(self, false, list_metrics(agent, listing))
    }
    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        forward!(self, true, log_execution(agent, execution))
    }
    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        forward!(self, false, list_executions(agent, listing))
    }
}

#[async_trait]
impl Replica for FaultyBackend {
    async fn commit(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        journal: bool,
        clear: &[i64],
    ) -> Result<Committed> {
        forward!(self, true, commit(agent, change, journal, clear))
    }
    async fn apply_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        forward!(self, true, apply_memory(agent, memory))
    }
    async fn apply_memory_delete(
        &self,
        agent: &AgentId,
        key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        forward!(self, true, apply_memory_delete(agent, key, at))
    }
    async fn restore_memory(
        &self,
        agent: &AgentId,
        key: &str,
        version: DateTime<Utc>,
        to: Option<&Memory>,
    ) -> Result<bool> {
        forward!(self, true, restore_memory(agent, key, version, to))
    }
    async fn memory_tombstone(&self, agent: &AgentId, key: &str) -> Result<Option<DateTime<Utc>>> {
        forward!(self, false, memory_tombstone(agent, key))
    }
    async fn apply_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Option<Tool>> {
        forward!(self, true, apply_tool(agent, tool))
    }
    async fn apply_tool_delete(
        &self,
        agent: &AgentId,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        forward!(self, true, apply_tool_delete(agent, name, at))
    }
    async fn tool_tombstone(&self, agent: &AgentId, name: &str) -> Result<Option<DateTime<Utc>>> {
        forward!(self, false, tool_tombstone(agent, name))
    }
    async fn owed_writes(&self, agent: &AgentId, limit: usize) -> Result<Vec<OwedRecord>> {
        forward!(self, false, owed_writes(agent, limit))
    }
    async fn clear_owed(&self, agent: &AgentId, seqs: &[i64]) -> Result<()> {
        forward!(self, true, clear_owed(agent, seqs))
    }
    async fn park_owed(&self, agent: &AgentId, seq: i64, error: &str) -> Result<()> {
        forward!(self, true, park_owed(agent, seq, error))
    }
    async fn unpark_owed(&self, agent: &AgentId) -> Result<u64> {
        forward!(self, true, unpark_owed(agent))
    }
    async fn owed_agents(&self) -> Result<Vec<OwedCount>> {
        forward!(self, false, owed_agents())
    }
}
