//! The agent's handle: `store_memory` / `retrieve_memory` and the tool, metric and
//! execution calls, over whichever backend the configuration picks.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{self, MemoryBackend};
use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::json::Json;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool};
use crate::typed::TypedNeighbor;
use crate::vector::{Neighbor, VectorQuery};

/// One agent's memory, tools, metrics and execution history.
///
/// Cheap to clone; clones share the backend. Many handles (one per agent) can share one
/// backend through [`AgentMemory::with_backend`].
///
/// When the configuration says `memory_enabled = false`, the handle opens no database:
/// every store, register, record and log call succeeds without storing anything, and
/// every read finds nothing.
///
/// ```no_run
/// # async fn demo() -> memshift::Result<()> {
/// use memshift::{AgentConfig, AgentMemory};
///
/// let memory = AgentMemory::open(&AgentConfig::from_env("operational_crawler")?).await?;
/// memory.store_memory("last_query", &serde_json::json!({"q": "pricing"})).await?;
/// let back: Option<serde_json::Value> = memory.retrieve_memory("last_query").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AgentMemory {
    agent: AgentId,
    backend: Option<Arc<dyn MemoryBackend>>,
}

impl AgentMemory {
    /// Opens the backend `config` selects for agent `config.name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name that cannot be an agent id; configuration,
    /// connection and schema errors from [`backend::open`].
    pub async fn open(config: &AgentConfig) -> Result<Self> {
        let agent = AgentId::new(config.name.clone())?;
        if !config.memory_enabled {
            return Ok(AgentMemory::disabled(agent));
        }
        Ok(AgentMemory::with_backend(
            agent,
            backend::open(config).await?,
        ))
    }

    /// A handle for `agent` over an existing backend.
    pub fn with_backend(agent: AgentId, backend: Arc<dyn MemoryBackend>) -> Self {
        AgentMemory {
            agent,
            backend: Some(backend),
        }
    }

    /// A handle that stores nothing and finds nothing.
    pub fn disabled(agent: AgentId) -> Self {
        AgentMemory {
            agent,
            backend: None,
        }
    }

    /// The agent this handle is for.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    /// The backend, or `None` when memory is disabled.
    pub fn backend(&self) -> Option<&Arc<dyn MemoryBackend>> {
        self.backend.as_ref()
    }

    /// Finishes the backend's background bookkeeping now (see
    /// [`MemoryBackend::flush`]); call it before a short-lived process exits.
    ///
    /// # Errors
    /// When the bookkeeping cannot be written; nothing stored is lost.
    pub async fn flush(&self) -> Result<()> {
        match &self.backend {
            Some(backend) => backend.flush().await,
            None => Ok(()),
        }
    }

    /// Flushes and closes the backend ([`MemoryBackend::close`]): the clean end of a
    /// process. Call it last.
    ///
    /// # Errors
    /// When the bookkeeping cannot be written; the connections are closed all the same,
    /// and nothing stored is lost.
    pub async fn close(&self) -> Result<()> {
        match &self.backend {
            Some(backend) => backend.close().await,
            None => Ok(()),
        }
    }

    /// Stores `data` (anything `Serialize`) under `key`, replacing what was there.
    ///
    /// `data` is written straight to JSON text, which is stored as it is: a struct's
    /// fields in their order, numbers as `data` writes them.
    ///
    /// # Errors
    /// [`Error::Json`] when `data` cannot be serialized; backend errors.
    pub async fn store_memory(&self, key: &str, data: impl Serialize) -> Result<()> {
        if self.backend.is_none() {
            return Ok(());
        }
        let content = self.to_json(data, || format!("memory {key:?}"))?;
        self.store(Memory::new(key, content)).await.map(drop)
    }

    /// Stores `data` (anything `Serialize`) under `key` with `embedding` for vector search
    /// ([`search`](Self::search)), replacing what was there, and returns the memory as
    /// stored. With memory disabled, returns it without storing it.
    ///
    /// ```no_run
    /// # async fn demo(memory: memshift::AgentMemory) -> memshift::Result<()> {
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Note {
    ///     text: String,
    ///     turn: u32,
    /// }
    ///
    /// let note = Note { text: "refund policy".into(), turn: 3 };
    /// memory.store_with_embedding("notes/3", &note, vec![0.1, 0.7, 0.2]).await?;
    /// let query = memshift::VectorQuery::new(vec![0.1, 0.6, 0.3], 5);
    /// for hit in memory.search_as::<Note>(&query).await? {
    ///     println!("{} at {:.3}", hit.value.text, hit.distance);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Json`] when `data` cannot be serialized; backend errors
    /// ([`Error::InvalidInput`] for an embedding [`Memory::validate`] refuses).
    pub async fn store_with_embedding<T: Serialize + ?Sized>(
        &self,
        key: &str,
        data: &T,
        embedding: Vec<f32>,
    ) -> Result<Memory> {
        let content = self.to_json(data, || format!("memory {key:?}"))?;
        self.store(Memory::new(key, content).with_embedding(embedding))
            .await
    }

    /// Stores a full [`Memory`] (with metadata or an embedding) and returns it as stored.
    /// With memory disabled, returns `memory` unchanged without storing it.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn store(&self, memory: Memory) -> Result<Memory> {
        match &self.backend {
            Some(backend) => backend.put_memory(&self.agent, &memory).await,
            None => Ok(memory),
        }
    }

    /// The value stored under `key`, read back as `T`, or `None` when there is none.
    ///
    /// `T` is read straight from the stored text (ask for [`Json`] to get the text
    /// itself).
    ///
    /// # Errors
    /// [`Error::Json`] when the stored value is not a `T`; backend errors.
    pub async fn retrieve_memory<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(memory) = self.memory(key).await? else {
            return Ok(None);
        };
        serde_json::from_str(memory.content.as_str())
            .map(Some)
            .map_err(|source| Error::Json {
                context: format!("memory {key:?} of agent {:?}", self.agent),
                source,
            })
    }

    /// The full [`Memory`] under `key`, with its metadata, embedding and times.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn memory(&self, key: &str) -> Result<Option<Memory>> {
        match &self.backend {
            Some(backend) => backend.get_memory(&self.agent, key).await,
            None => Ok(None),
        }
    }

    /// Deletes the memory under `key`; returns whether there was one.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn delete_memory(&self, key: &str) -> Result<bool> {
        match &self.backend {
            Some(backend) => backend.delete_memory(&self.agent, key).await,
            None => Ok(false),
        }
    }

    /// Every stored key, in byte order.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn memory_keys(&self) -> Result<Vec<String>> {
        self.memory_keys_with(&Listing::default()).await
    }

    /// The stored keys `listing` selects (by prefix, stored or replaced since, at most
    /// its limit), in byte order.
    ///
    /// ```no_run
    /// # async fn demo(memory: memshift::AgentMemory) -> memshift::Result<()> {
    /// use memshift::Listing;
    /// let notes = Listing::new().prefix("notes/").limit(50);
    /// for key in memory.memory_keys_with(&notes).await? {
    ///     println!("{key}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a prefix holding NUL; backend errors.
    pub async fn memory_keys_with(&self, listing: &Listing) -> Result<Vec<String>> {
        match &self.backend {
            Some(backend) => backend.memory_keys(&self.agent, listing).await,
            None => Ok(Vec::new()),
        }
    }

    /// The memories nearest to `query.vector`, nearest first, with their distances
    /// ([`MemoryBackend::search_memories`]); empty when memory is disabled.
    ///
    /// ```no_run
    /// # async fn demo(memory: memshift::AgentMemory) -> memshift::Result<()> {
    /// use memshift::{DistanceMetric, VectorQuery};
    /// let query = VectorQuery::new(vec![0.1, 0.7, 0.2], 5)
    ///     .metric(DistanceMetric::Cosine)
    ///     .key_prefix("notes/")
    ///     .metadata_eq("topic", "billing");
    /// for hit in memory.search(&query).await? {
    ///     println!("{:?} at {:.3}", hit.memory.key, hit.distance);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`MemoryBackend::search_memories`].
    pub async fn search(&self, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        match &self.backend {
            Some(backend) => backend.search_memories(&self.agent, query).await,
            None => Ok(Vec::new()),
        }
    }

    /// [`search`](Self::search), with each memory's value read as `T`: the nearest first,
    /// each with its distance and the memory itself.
    ///
    /// # Errors
    /// As [`search`](Self::search); [`Error::Json`] naming the key of a found value that
    /// is not a `T`.
    pub async fn search_as<T: DeserializeOwned>(
        &self,
        query: &VectorQuery,
    ) -> Result<Vec<TypedNeighbor<T>>> {
        let found = self.search(query).await?;
        found
            .into_iter()
            .map(|neighbor| {
                let key = neighbor.memory.key.clone().unwrap_or_default();
                neighbor.into_typed(|| format!("memory {key:?} of agent {:?}", self.agent))
            })
            .collect()
    }

    /// Registers a tool under `name` with `definition` (anything `Serialize`), replacing
    /// an earlier definition, and returns it as stored.
    ///
    /// # Errors
    /// [`Error::Json`] when `definition` cannot be serialized; backend errors.
    pub async fn register_tool(&self, name: &str, definition: impl Serialize) -> Result<Tool> {
        let content = self.to_json(definition, || format!("tool {name:?}"))?;
        let tool = Tool::new(name, content);
        match &self.backend {
            Some(backend) => backend.put_tool(&self.agent, &tool).await,
            None => Ok(tool),
        }
    }

    /// The tool registered under `name`.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn tool(&self, name: &str) -> Result<Option<Tool>> {
        match &self.backend {
            Some(backend) => backend.get_tool(&self.agent, name).await,
            None => Ok(None),
        }
    }

    /// Deletes the tool registered under `name`; returns whether there was one. A
    /// deleted tool stays deleted on every backend, also across the dual backend's two
    /// sides, until it is registered again.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn delete_tool(&self, name: &str) -> Result<bool> {
        match &self.backend {
            Some(backend) => backend.delete_tool(&self.agent, name).await,
            None => Ok(false),
        }
    }

    /// Every registered tool, in byte order of name.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn tools(&self) -> Result<Vec<Tool>> {
        self.tools_with(&Listing::default()).await
    }

    /// The registered tools `listing` selects (by prefix of the name, registered or
    /// changed since, at most its limit), in byte order of name.
    ///
    /// # Errors
    /// As [`memory_keys_with`](Self::memory_keys_with).
    pub async fn tools_with(&self, listing: &Listing) -> Result<Vec<Tool>> {
        match &self.backend {
            Some(backend) => backend.list_tools(&self.agent, listing).await,
            None => Ok(Vec::new()),
        }
    }

    /// Records a measurement `name` = `value`, with `details` (anything `Serialize`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for NaN; [`Error::Json`]; backend errors.
    pub async fn record_metric(
        &self,
        name: &str,
        value: f64,
        details: impl Serialize,
    ) -> Result<()> {
        let mut metric = Metric::new(name, Some(value));
        metric.content = self.to_json(details, || format!("metric {name:?}"))?;
        match &self.backend {
            Some(backend) => backend.record_metric(&self.agent, &metric).await,
            None => Ok(()),
        }
    }

    /// Every recorded measurement, oldest first.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn metrics(&self) -> Result<Vec<Metric>> {
        self.metrics_with(&Listing::default()).await
    }

    /// The measurements `listing` selects (by prefix of the name, recorded since, the
    /// first ones up to its limit), oldest first.
    ///
    /// # Errors
    /// As [`memory_keys_with`](Self::memory_keys_with).
    pub async fn metrics_with(&self, listing: &Listing) -> Result<Vec<Metric>> {
        match &self.backend {
            Some(backend) => backend.list_metrics(&self.agent, listing).await,
            None => Ok(Vec::new()),
        }
    }

    /// Logs an execution with `status` and `details` (anything `Serialize`).
    ///
    /// # Errors
    /// [`Error::Json`]; backend errors.
    pub async fn log_execution(&self, status: &str, details: impl Serialize) -> Result<()> {
        let content = self.to_json(details, || "execution details".to_string())?;
        let execution = Execution::new(Some(status.to_string()), content);
        match &self.backend {
            Some(backend) => backend.log_execution(&self.agent, &execution).await,
            None => Ok(()),
        }
    }

    /// Every logged execution, oldest first.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn executions(&self) -> Result<Vec<Execution>> {
        self.executions_with(&Listing::default()).await
    }

    /// The executions `listing` selects (by prefix of the status, logged since, the
    /// first ones up to its limit), oldest first.
    ///
    /// # Errors
    /// As [`memory_keys_with`](Self::memory_keys_with).
    pub async fn executions_with(&self, listing: &Listing) -> Result<Vec<Execution>> {
        match &self.backend {
            Some(backend) => backend.list_executions(&self.agent, listing).await,
            None => Ok(Vec::new()),
        }
    }

    fn to_json(&self, data: impl Serialize, what: impl FnOnce() -> String) -> Result<Json> {
        Json::new(&data).map_err(|source| Error::Json {
            context: format!("{} of agent {:?}", what(), self.agent),
            source,
        })
    }
}
