//! Stored values read as the caller's own types: [`Memory::content_as`],
//! [`Neighbor::content_as`] and the answers of
//! [`AgentMemory::search_as`](crate::AgentMemory::search_as).

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::record::Memory;
use crate::vector::Neighbor;

/// One memory found by [`AgentMemory::search_as`](crate::AgentMemory::search_as): its
/// value read as `T`, its distance from the query, and the memory itself (key, metadata,
/// embedding, times).
#[derive(Debug, Clone, PartialEq)]
pub struct TypedNeighbor<T> {
    /// The stored value, as `T`.
    pub value: T,
    /// Its distance from the query by the query's metric (smaller is nearer).
    pub distance: f64,
    /// The memory, as [`get_memory`](crate::MemoryBackend::get_memory) returns it.
    pub memory: Memory,
}

impl Memory {
    /// The stored value read as `T`, from its exact JSON text (numbers in their written
    /// form, keys in their order), as [`AgentMemory::retrieve_memory`](crate::AgentMemory::retrieve_memory)
    /// reads it.
    ///
    /// # Errors
    /// [`Error::Json`] naming the key when the value is not a `T`.
    pub fn content_as<T: DeserializeOwned>(&self) -> Result<T> {
        read_content(self, || {
            format!("memory {:?}", self.key.as_deref().unwrap_or_default())
        })
    }
}

impl Neighbor {
    /// The found memory's value read as `T` (see [`Memory::content_as`]).
    ///
    /// # Errors
    /// [`Error::Json`] naming the key when the value is not a `T`.
    pub fn content_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.memory.content_as()
    }

    /// This answer with its value read as `T`; `context` names it in an error.
    pub(crate) fn into_typed<T: DeserializeOwned>(
        self,
        context: impl FnOnce() -> String,
    ) -> Result<TypedNeighbor<T>> {
        Ok(TypedNeighbor {
            value: read_content(&self.memory, context)?,
            distance: self.distance,
            memory: self.memory,
        })
    }
}

/// Parses the memory's stored JSON text as `T`.
fn read_content<T: DeserializeOwned>(
    memory: &Memory,
    context: impl FnOnce() -> String,
) -> Result<T> {
    serde_json::from_str(memory.content.as_str()).map_err(|source| Error::Json {
        context: context(),
        source,
    })
}
