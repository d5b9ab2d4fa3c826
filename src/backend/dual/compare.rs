//! Whether two reads of the same data agree, across the two databases' value forms.

use std::collections::BTreeMap;

use super::{Comparison, DualBackend, Side};
use crate::error::Result;
use crate::json::Json;
use crate::listing::Listing;
use crate::record::{AgentId, Memory, Metadata, Tool};

/// True when `a` and `b` are the same data: objects equal whatever their key order,
/// numbers equal by value whatever their written form (`1`, `1.0`, `1e0`); see
/// [`Json::same_data`].
pub(crate) fn same_json(a: &Json, b: &Json) -> bool {
    a.same_data(b)
}

/// Metadata compared as [`same_json`] compares contents.
pub(crate) fn same_metadata(a: &Metadata, b: &Metadata) -> bool {
    // A map of JSON values always serializes.
    a == b || matches!((Json::new(a), Json::new(b)), (Ok(a), Ok(b)) if same_json(&a, &b))
}

/// True when two reads of a memory hold the same data (content, metadata, embedding and
/// times; ids may differ between the sides). An embedding on one side only counts as
/// not yet filled, not as a difference: the fill pass
/// ([`fill_embeddings`](crate::vector::fill_embeddings)) writes PostgreSQL alone.
pub(crate) fn same_memory(a: &Memory, b: &Memory) -> bool {
    a.key == b.key
        && same_json(&a.content, &b.content)
        && same_metadata(&a.metadata, &b.metadata)
        && match (&a.embedding, &b.embedding) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
        && a.updated_at == b.updated_at
}

/// True when two reads of a tool hold the same data.
pub(crate) fn same_tool(a: &Tool, b: &Tool) -> bool {
    a.name == b.name
        && same_json(&a.content, &b.content)
        && same_metadata(&a.metadata, &b.metadata)
        && a.updated_at == b.updated_at
}

impl DualBackend {
    /// Compares every memory of `agent` between the sides.
    ///
    /// # Errors
    /// When either side cannot be read.
    pub async fn compare(&self, agent: &AgentId) -> Result<Comparison> {
        self.refresh_health().await;
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        let mut keys: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for key in sqlite.memory_keys(agent, &Listing::default()).await? {
            keys.entry(key).or_default().0 = true;
        }
        for key in postgres.memory_keys(agent, &Listing::default()).await? {
            keys.entry(key).or_default().1 = true;
        }
        let mut comparison = Comparison::default();
        for (key, held) in keys {
            match held {
                (true, false) => comparison.only_sqlite.push(key),
                (false, true) => comparison.only_postgres.push(key),
                _ => {
                    let a = sqlite.get_memory(agent, &key).await?;
                    let b = postgres.get_memory(agent, &key).await?;
                    match (a, b) {
                        (Some(a), Some(b)) if same_memory(&a, &b) => comparison.same += 1,
                        (Some(_), None) => comparison.only_sqlite.push(key),
                        (None, Some(_)) => comparison.only_postgres.push(key),
                        (None, None) => {}
                        _ => comparison.different.push(key),
                    }
                }
            }
        }
        Ok(comparison)
    }
}
