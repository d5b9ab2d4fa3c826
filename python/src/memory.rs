//! `_native.Memory`: an agent's memory handle, each call an awaitable run on the
//! library's tokio runtime. `memshift.AgentMemory` (Python) wraps it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::bridge::call as future_into_py;
use memshift::DualBackend;
use memshift::backend;
use memshift::vector::{DistanceMetric, VectorQuery};
use memshift::{AgentConfig, AgentId, AgentMemory, BackendKind, Listing, Memory, Stage};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::convert::{JsonText, to_json, to_metadata};
use crate::errors::{self, IntoPy};

/// The configuration read from any object with the fields of `memshift.AgentConfig`
/// (`name`, `memory_enabled`, `memory_backend`, `database_url`, `agents_path`,
/// `memory_stage`, and optionally `max_connections`, and `connect_timeout` and `stage_poll`
/// in seconds),
/// so an agent's own config class works as it is.
pub(crate) fn read_config(config: &Bound<'_, PyAny>) -> PyResult<AgentConfig> {
    let mut out = AgentConfig::new(
        config
            .getattr("name")
            .map_err(|_| errors::config("the config has no `name`".into()))?
            .extract::<String>()
            .map_err(|_| errors::config("the config's `name` is not a str".into()))?,
    );
    if let Some(enabled) = field(config, "memory_enabled")? {
        out.memory_enabled = enabled.is_truthy()?;
    }
    if let Some(kind) = field(config, "memory_backend")? {
        out.memory_backend = name_of(&kind, "memory_backend")?.parse().py_err()?;
    }
    if let Some(stage) = field(config, "memory_stage")? {
        out.memory_stage = name_of(&stage, "memory_stage")?.parse().py_err()?;
    }
    if let Some(url) = field(config, "database_url")? {
        out.database_url = Some(
            url.extract::<String>()
                .map_err(|_| errors::config("the config's `database_url` is not a str".into()))?,
        );
    }
    if let Some(path) = field(config, "agents_path")? {
        out.agents_path = path.extract::<PathBuf>().map_err(|_| {
            errors::config("the config's `agents_path` is not a str or a path".into())
        })?;
    }
    if let Some(max) = field(config, "max_connections")? {
        out.max_connections = max.extract().map_err(|_| {
            errors::config("the config's `max_connections` is not a positive int".into())
        })?;
    }
    if let Some(timeout) = field(config, "connect_timeout")? {
        let seconds: f64 = timeout.extract().map_err(|_| {
            errors::config("the config's `connect_timeout` is not a number of seconds".into())
        })?;
        out.connect_timeout = Duration::try_from_secs_f64(seconds).map_err(|_| {
            errors::config(format!(
                "the config's `connect_timeout` {seconds} is not a duration"
            ))
        })?;
    }
    if let Some(poll) = field(config, "stage_poll")? {
        let seconds: f64 = poll.extract().map_err(|_| {
            errors::config("the config's `stage_poll` is not a number of seconds".into())
        })?;
        out.stage_poll = Duration::try_from_secs_f64(seconds).map_err(|_| {
            errors::config(format!(
                "the config's `stage_poll` {seconds} is not a duration"
            ))
        })?;
    }
    Ok(out)
}

/// The attribute `name` of `config`, `None` when it is absent or `None`.
fn field<'py>(config: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match config.getattr(name) {
        Ok(value) if value.is_none() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(_) => Ok(None),
    }
}

/// A backend or stage name given as a str or as an enum whose `value` is one.
fn name_of(value: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let value = match value.cast::<PyString>() {
        Ok(_) => value.clone(),
        Err(_) => value.getattr("value").unwrap_or_else(|_| value.clone()),
    };
    value
        .extract::<String>()
        .map_err(|_| errors::config(format!("the config's `{what}` is not a str")))
}

struct Handle {
    memory: AgentMemory,
    kind: BackendKind,
    dual: Option<Arc<DualBackend>>,
}

/// An open agent memory.
#[pyclass(frozen, module = "memshift._native", name = "Memory")]
pub(crate) struct NativeMemory {
    agent: String,
    handle: RwLock<Option<Arc<Handle>>>,
}

/// Opens the memory `config` describes (see [`read_config`]).
#[pyfunction]
pub(crate) fn open<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let config = read_config(config)?;
    future_into_py(py, async move {
        let agent = AgentId::new(config.name.clone()).py_err()?;
        let handle = if !config.memory_enabled {
            Handle {
                memory: AgentMemory::disabled(agent),
                kind: config.memory_backend,
                dual: None,
            }
        } else if config.memory_backend == BackendKind::Dual {
            let dual = Arc::new(backend::open_dual(&config).await.py_err()?);
            Handle {
                memory: AgentMemory::with_backend(agent, dual.clone()),
                kind: BackendKind::Dual,
                dual: Some(dual),
            }
        } else {
            Handle {
                memory: AgentMemory::with_backend(agent, backend::open(&config).await.py_err()?),
                kind: config.memory_backend,
                dual: None,
            }
        };
        Ok(NativeMemory {
            agent: config.name,
            handle: RwLock::new(Some(Arc::new(handle))),
        })
    })
}

impl NativeMemory {
    fn handle(&self) -> PyResult<Arc<Handle>> {
        self.handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| {
                errors::invalid_input(format!(
                    "the memory of agent {:?} is closed; open it again with AgentMemory.open",
                    self.agent
                ))
            })
    }

    fn memory(&self) -> PyResult<AgentMemory> {
        Ok(self.handle()?.memory.clone())
    }

    fn dual(&self, what: &str) -> PyResult<Arc<DualBackend>> {
        let handle = self.handle()?;
        handle.dual.clone().ok_or_else(|| {
            errors::invalid_input(format!(
                "{what} is the dual backend's, and agent {:?} uses memory_backend = {}",
                self.agent, handle.kind
            ))
        })
    }
}

/// A memory dropped without `close()` (by the garbage collector, at interpreter exit)
/// lets its connections go inside the library's runtime, which their pools need.
impl Drop for NativeMemory {
    fn drop(&mut self) {
        crate::bridge::drop_in_runtime(
            self.handle
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }
}

/// Serializes a record (or a list of them) for Python, which reads it with `json.loads`.
fn record_text<T: serde::Serialize>(value: &T) -> PyResult<JsonText> {
    serde_json::to_string(value)
        .map(JsonText)
        .map_err(|err| errors::invalid_input(format!("a record cannot be written: {err}")))
}

#[pymethods]
impl NativeMemory {
    #[getter]
    fn agent(&self) -> &str {
        &self.agent
    }

    /// `sqlite`, `postgres` or `dual`.
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(self.handle()?.kind.as_str())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.handle
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
    }

    #[pyo3(signature = (key, data, embedding=None, metadata=None))]
    fn store_memory<'py>(
        &self,
        py: Python<'py>,
        key: String,
        data: &Bound<'py, PyAny>,
        embedding: Option<Vec<f32>>,
        metadata: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let content = to_json(data, "data")?;
        let metadata = metadata.map(|m| to_metadata(m)).transpose()?;
        future_into_py(py, async move {
            if embedding.is_none() && metadata.is_none() {
                return memory.store_memory(&key, &content).await.py_err();
            }
            let mut record = Memory::new(key, content);
            if let Some(embedding) = embedding {
                record = record.with_embedding(embedding);
            }
            if let Some(metadata) = metadata {
                record = record.with_metadata(metadata);
            }
            memory.store(record).await.py_err().map(|_| ())
        })
    }

    fn retrieve_memory<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move {
            let found = memory.memory(&key).await.py_err()?;
            Ok(found.map(|record| JsonText(record.content.as_str().to_owned())))
        })
    }

    fn get_memory<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move {
            match memory.memory(&key).await.py_err()? {
                Some(record) => Ok(Some(record_text(&record)?)),
                None => Ok(None),
            }
        })
    }

    fn delete_memory<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move { memory.delete_memory(&key).await.py_err() })
    }

    #[pyo3(signature = (prefix=None, limit=None))]
    fn memory_keys<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<String>,
        limit: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let listing = listing(prefix, limit);
        future_into_py(py, async move {
            memory.memory_keys_with(&listing).await.py_err()
        })
    }

    #[pyo3(signature = (vector, k, metric, key_prefix=None, metadata=None, exact=false))]
    #[allow(clippy::too_many_arguments)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        vector: Vec<f32>,
        k: usize,
        metric: &str,
        key_prefix: Option<String>,
        metadata: Option<&Bound<'py, PyDict>>,
        exact: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let metric = DistanceMetric::ALL
            .into_iter()
            .find(|m| m.as_str() == metric)
            .ok_or_else(|| {
                errors::invalid_input(format!(
                    "unknown metric {metric:?}; valid metrics are: cosine, l2, inner_product"
                ))
            })?;
        let mut query = VectorQuery::new(vector, k);
        query.metric = metric;
        query.key_prefix = key_prefix;
        query.exact = exact;
        if let Some(metadata) = metadata {
            query.metadata = to_metadata(metadata)?.into_iter().collect();
        }
        future_into_py(py, async move {
            record_text(&memory.search(&query).await.py_err()?)
        })
    }

    fn register_tool<'py>(
        &self,
        py: Python<'py>,
        name: String,
        definition: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let definition = to_json(definition, "definition")?;
        future_into_py(py, async move {
            record_text(&memory.register_tool(&name, &definition).await.py_err()?)
        })
    }

    fn get_tool<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move {
            match memory.tool(&name).await.py_err()? {
                Some(tool) => Ok(Some(record_text(&tool)?)),
                None => Ok(None),
            }
        })
    }

    #[pyo3(signature = (prefix=None, limit=None))]
    fn list_tools<'py>(
        &self,
        py: Python<'py>,
        prefix: Option<String>,
        limit: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let listing = listing(prefix, limit);
        future_into_py(py, async move {
            record_text(&memory.tools_with(&listing).await.py_err()?)
        })
    }

    fn delete_tool<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move { memory.delete_tool(&name).await.py_err() })
    }

    fn record_metric<'py>(
        &self,
        py: Python<'py>,
        name: String,
        value: f64,
        details: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let details = to_json(details, "details")?;
        future_into_py(py, async move {
            memory.record_metric(&name, value, &details).await.py_err()
        })
    }

    #[pyo3(signature = (limit=None))]
    fn metrics<'py>(&self, py: Python<'py>, limit: Option<u32>) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let listing = listing(None, limit);
        future_into_py(py, async move {
            record_text(&memory.metrics_with(&listing).await.py_err()?)
        })
    }

    fn log_execution<'py>(
        &self,
        py: Python<'py>,
        status: String,
        details: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let details = to_json(details, "details")?;
        future_into_py(py, async move {
            memory.log_execution(&status, &details).await.py_err()
        })
    }

    #[pyo3(signature = (limit=None))]
    fn executions<'py>(&self, py: Python<'py>, limit: Option<u32>) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        let listing = listing(None, limit);
        future_into_py(py, async move {
            record_text(&memory.executions_with(&listing).await.py_err()?)
        })
    }

    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let memory = self.memory()?;
        future_into_py(py, async move { memory.flush().await.py_err() })
    }

    /// Flushes and closes; a second close does nothing.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self
            .handle
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        future_into_py(py, async move {
            match handle {
                Some(handle) => handle.memory.close().await.py_err(),
                None => Ok(()),
            }
        })
    }

    /// The dual backend's stage.
    #[getter]
    /// The agent's stage now (its central row's, when PostgreSQL holds one).
    fn stage(&self) -> PyResult<&'static str> {
        let agent = self.handle()?.memory.agent().clone();
        Ok(self.dual("stage")?.stage_of(&agent).as_str())
    }

    /// Puts the agent at `stage` in this process (a central row still wins).
    fn set_stage(&self, stage: &str) -> PyResult<()> {
        let stage: Stage = stage.parse().py_err()?;
        let agent = self.handle()?.memory.agent().clone();
        self.dual("set_stage")?.set_agent_stage(&agent, Some(stage));
        Ok(())
    }

    /// Replays this agent's owed writes; `retry_parked` also those parked.
    #[pyo3(signature = (retry_parked=false))]
    fn repair<'py>(&self, py: Python<'py>, retry_parked: bool) -> PyResult<Bound<'py, PyAny>> {
        let dual = self.dual("repair")?;
        let agent = self.handle()?.memory.agent().clone();
        future_into_py(py, async move {
            let report = if retry_parked {
                dual.retry_parked(&agent).await
            } else {
                dual.repair(&agent).await
            };
            record_text(&report.py_err()?)
        })
    }

    /// The counters, with the owed writes pending when both journals can be read; while
    /// a side is down (when the counters matter most) `owed_pending` is `None` instead of
    /// the whole call failing.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dual = self.dual("stats")?;
        let agent = self.handle()?.memory.agent().clone();
        future_into_py(py, async move {
            let mut stats = match dual.stats_with_pending().await {
                Ok(stats) => stats,
                Err(_) => dual.stats(),
            };
            // The stage of this memory's agent, which may be its own.
            stats.stage = dual.stage_of(&agent);
            record_text(&stats)
        })
    }

    fn __repr__(&self) -> String {
        match self.handle() {
            Ok(handle) => format!("<memshift memory of {:?} on {}>", self.agent, handle.kind),
            Err(_) => format!("<memshift memory of {:?}, closed>", self.agent),
        }
    }
}

fn listing(prefix: Option<String>, limit: Option<u32>) -> Listing {
    let mut listing = Listing::new();
    if let Some(prefix) = prefix {
        listing = listing.prefix(prefix);
    }
    if let Some(limit) = limit {
        listing = listing.limit(limit);
    }
    listing
}

/// The configuration of agent `name` from the environment, read as the Rust side reads
/// it (`AgentConfig::from_env`), as a dict of the Python `AgentConfig`'s fields.
#[pyfunction]
pub(crate) fn config_from_env<'py>(py: Python<'py>, name: String) -> PyResult<Bound<'py, PyDict>> {
    let config = AgentConfig::from_env(name).py_err()?;
    let out = PyDict::new(py);
    out.set_item("name", &config.name)?;
    out.set_item("memory_enabled", config.memory_enabled)?;
    out.set_item("memory_backend", config.memory_backend.as_str())?;
    out.set_item("database_url", &config.database_url)?;
    out.set_item("agents_path", config.agents_path.to_string_lossy())?;
    out.set_item("memory_stage", config.memory_stage.as_str())?;
    out.set_item("stage_poll", config.stage_poll.as_secs_f64())?;
    Ok(out)
}

/// Checks the backend and stage names as the library does, raising `ConfigError` with its
/// message (which lists the valid names).
#[pyfunction]
#[pyo3(signature = (memory_backend, memory_stage=None))]
pub(crate) fn check_names(memory_backend: &str, memory_stage: Option<&str>) -> PyResult<()> {
    memory_backend.parse::<BackendKind>().py_err()?;
    if let Some(stage) = memory_stage {
        stage.parse::<Stage>().py_err()?;
    }
    Ok(())
}
