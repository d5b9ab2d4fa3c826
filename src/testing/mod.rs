//! Test support (feature `testing`): the conformance scenarios every backend runs, and
//! throwaway PostgreSQL databases for tests.
//!
//! A backend (or a wrapper around one) gets the whole suite with one macro call:
//!
//! ```text
//! async fn fixture() -> (Arc<dyn MemoryBackend>, impl Sized) { /* backend, guard */ }
//! memshift::conformance_suite!(fixture);
//! ```

pub mod faulty;
pub mod listing;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod replication;
pub mod scenarios;
pub mod search;

use crate::record::AgentId;

/// The statements the backends issue for a single store and a single retrieve, for
/// benchmarks that time them without the library around them. Door for the bench's
/// floor (examples/bench/ops/raw.rs); not part of the API.
#[doc(hidden)]
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub mod statements {
    use crate::backend::{postgres, sqlite};

    /// PostgreSQL: one memory of an agent by key.
    pub const POSTGRES_GET_MEMORY: &str = postgres::GET_MEMORY;
    /// PostgreSQL: the statement of a store ($1 id, $2 the agent's row id, $3 key, $4
    /// content, $5 metadata, $6 embedding, $7 created_at, $8 the writer's clock, $9 the
    /// agent's name, $10 a journal record or null, $11 journal records to clear).
    pub const POSTGRES_PUT_MEMORY: &str = postgres::PUT_MEMORY;
    /// SQLite: one memory of the agent's file by key.
    pub const SQLITE_GET_MEMORY: &str = sqlite::GET_MEMORY;
    /// SQLite: the upsert of a store (the library runs it in a transaction after reading
    /// the key's version and tombstone).
    pub const SQLITE_PUT_MEMORY: &str = sqlite::PUT_MEMORY;
}

/// A fresh agent id no other test uses: `<prefix>_<random>`.
pub fn unique_agent(prefix: &str) -> AgentId {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    AgentId::new(format!("{prefix}_{}", &suffix[..12])).expect("generated agent ids are valid")
}

/// Stamps out one `#[tokio::test]` per conformance scenario for a backend.
///
/// `$fixture` is an async fn returning `(Arc<dyn MemoryBackend>, guard)`; the guard (a
/// temporary folder, a test database) lives until the scenario ends.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:path) => {
        $crate::conformance_suite!(@each $fixture;
            round_trip_awkward_values,
            overwrite_replaces_value_keeps_identity,
            delete_is_final,
            missing_keys_read_as_absent,
            agents_are_isolated,
            concurrent_writers_one_agent,
            concurrent_writers_many_agents,
            tools_register_get_list,
            metrics_and_executions_keep_order,
            listings_by_prefix,
            listings_by_limit_and_since,
            listings_refuse_and_read_nothing,
            unstorable_values_are_refused,
            search_finds_nearest,
            search_edge_cases,
            search_filters,
            search_follows_writes
        );
    };
    (@each $fixture:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $scenario() {
                let (backend, _guard) = $fixture().await;
                $crate::testing::scenarios::$scenario(&*backend).await;
            }
        )*
    };
}
