//! memshift: one memory API for AI agents, over embedded SQLite or shared
//! PostgreSQL with pgvector.
//!
//! Agents call [`AgentMemory::store_memory`] and [`AgentMemory::retrieve_memory`]; the
//! configuration (`memory_backend = sqlite | postgres`, see [`AgentConfig`]) decides where
//! the data lives. Every backend implements [`MemoryBackend`], whose `# Contract` section
//! lists what all of them guarantee.
//!
//! ```no_run
//! # async fn demo() -> memshift::Result<()> {
//! use memshift::{AgentConfig, AgentMemory};
//!
//! // MEMORY_BACKEND, DATABASE_URL and AGENTS_PATH; by default SQLite under ./agents.
//! let config = AgentConfig::from_env("operational_crawler")?;
//! let memory = AgentMemory::open(&config).await?;
//! memory.store_memory("key", &serde_json::json!({"seen": 3})).await?;
//! let data: Option<serde_json::Value> = memory.retrieve_memory("key").await?;
//! # Ok(()) }
//! ```
//!
//! A stored value keeps its exact JSON text ([`Json`]): key order, numbers of any size in
//! their written form, escapes. The crate turns on no `serde_json` feature that would
//! change how your own code serializes or deserializes.
//!
//! The PostgreSQL tables are those of the data contract, shared with an admin
//! application; [`migrate_url`] creates them when asked, and [`PostgresBackend::connect`]
//! checks that they are there.
//!
//! Memories with embeddings can be searched by nearness ([`AgentMemory::search`],
//! [`VectorQuery`]): exactly in SQLite, through pgvector's HNSW indexes in PostgreSQL; the
//! [`vector`] module has the details, the [`Embedder`] trait and the pass that fills the
//! embeddings of migrated memories.
//!
//! # Features
//!
//! `sqlite` and `postgres`, both on by default, each bring their backend; the dual
//! backend, the backfill and the embedding fill need both. A SQLite-only agent builds
//! without the PostgreSQL driver and pgvector:
//! `memshift = { version = "0.1", default-features = false, features = ["sqlite"] }`.
//! Configuration asking for a backend the build leaves out (`MEMORY_BACKEND=postgres`
//! there) fails with [`Error::Config`] naming the feature to turn on. `cli` builds the
//! `memctl` and `backfill` programs (`cargo install memshift --features cli`); `testing`
//! brings the conformance scenarios.
//!
//! What a user implements or configures is at the crate root: the traits
//! ([`MemoryBackend`], [`Embedder`]) with [`async_trait`](macro@async_trait) to implement them, the backends
//! and their options, the dual backend ([`DualBackend`], [`DualOptions`]) and its
//! [`Stage`]s, and [`Listing`] for filtered listings. Implementing a trait needs no
//! dependency on `async-trait` of your own:
//!
//! ```
//! use memshift::{Embedder, Result};
//!
//! /// Each text's length, as a one-dimensional vector.
//! struct Lengths;
//!
//! #[memshift::async_trait]
//! impl Embedder for Lengths {
//!     fn name(&self) -> String {
//!         "lengths".into()
//!     }
//!     fn dimensions(&self) -> usize {
//!         1
//!     }
//!     async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
//!         Ok(texts.iter().map(|t| vec![t.len() as f32]).collect())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let vectors = Lengths.embed(&["four".to_string()]).await.unwrap();
//! assert_eq!(vectors, [[4.0]]);
//! # });
//! ```

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend (`default-features = false` and neither `sqlite` nor `postgres`) the
// crate still builds, holding only its types; what only the backends use is left over.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports, unreachable_code)
)]

pub mod agent;
pub mod backend;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "sqlite", feature = "postgres"))))]
pub mod backfill;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod backup;
pub mod config;
pub mod error;
mod json;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod legacy;
mod listing;
mod progress;
pub mod record;
mod redact;
mod schema;
mod typed;
pub mod vector;

#[cfg(feature = "testing")]
pub mod testing;

/// The attribute that implements [`MemoryBackend`] and [`Embedder`] (their methods are
/// `async`): `#[memshift::async_trait]` on the `impl` block, re-exported from the
/// `async-trait` crate so that implementing them needs no dependency of your own.
pub use async_trait::async_trait;

pub use agent::AgentMemory;
pub use backend::MemoryBackend;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub use backend::dual::{DualBackend, DualOptions};
#[cfg(feature = "postgres")]
pub use backend::{PostgresBackend, PostgresOptions};
#[cfg(feature = "sqlite")]
pub use backend::{SqliteBackend, SqliteOptions};
pub use config::{AgentConfig, BackendKind, Stage};
pub use error::{Chain, Error, Result, redact_url};
pub use json::Json;
pub use listing::Listing;
pub use progress::Progress;
pub use record::{AgentId, Execution, MAX_KEY_BYTES, Memory, Metadata, Metric, Tool};
pub use typed::TypedNeighbor;
pub use vector::{DistanceMetric, Embedder, Neighbor, VectorIndex, VectorQuery};

/// Connects to `url` and applies the shipped PostgreSQL migrations its database has not
/// had yet, in one transaction, returning the versions applied.
///
/// Safe to run concurrently and repeatedly: migrators take an advisory lock, and every
/// statement is idempotent over tables the admin application created itself.
///
/// # Errors
/// Connection errors (never showing the password), and [`Error::Database`] when a
/// statement fails (for example `permission denied to create extension "vector"`);
/// nothing is applied then.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub async fn migrate_url(url: &str) -> Result<Vec<i64>> {
    let pool = backend::postgres::connect_pool(
        &backend::PgTarget::parse(url)?,
        &PostgresOptions {
            max_connections: 1,
            ..PostgresOptions::default()
        },
    )
    .await?;
    let applied = schema::migrate(&pool).await;
    pool.close().await;
    applied
}

/// The README's Rust examples, compiled as doctests so they cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The Rust examples of the guides in `docs/`, compiled as doctests like the README's.
#[cfg(doctest)]
pub mod guide_doctests {
    #[doc = include_str!("../docs/backends.md")]
    pub struct Backends;
    #[doc = include_str!("../docs/dual.md")]
    pub struct Dual;
    #[doc = include_str!("../docs/backfill.md")]
    pub struct Backfill;
    #[doc = include_str!("../docs/vector.md")]
    pub struct Vector;
    #[doc = include_str!("../docs/memctl.md")]
    pub struct Memctl;
    #[doc = include_str!("../docs/guarantees.md")]
    pub struct Guarantees;
    #[doc = include_str!("../docs/contract.md")]
    pub struct Contract;
    #[doc = include_str!("../docs/performance.md")]
    pub struct Performance;
}
