//! The shipped schemas: embedded migrations for both databases, the migrators that apply
//! them, and the start-up check that PostgreSQL has what the library needs (PostgreSQL's
//! parts come with the `postgres` feature; `memshift::migrate_url` is the public door).

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub(crate) use postgres::check_schema;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub(crate) use postgres::{ensure_bookkeeping, migrate};
#[cfg(feature = "sqlite")]
pub(crate) use sqlite::migrate_sqlite;

/// One schema step, embedded from `migrations/<database>/`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Applied in increasing order; recorded once applied.
    pub version: i64,
    /// The file's name without version and extension.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// PostgreSQL migrations: the contract tables, the `vector` extension and the library's
/// own `agent_memory` schema.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "contract_tables",
    sql: include_str!("../../migrations/postgres/0001_contract_tables.sql"),
}];

/// SQLite migrations, applied to every agent file when it is opened.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "agent_memory",
        sql: include_str!("../../migrations/sqlite/0001_agent_memory.sql"),
    },
    Migration {
        version: 2,
        name: "replication",
        sql: include_str!("../../migrations/sqlite/0002_replication.sql"),
    },
    Migration {
        version: 3,
        name: "parked_owed",
        sql: include_str!("../../migrations/sqlite/0003_parked_owed.sql"),
    },
    Migration {
        version: 4,
        name: "tool_tombstones",
        sql: include_str!("../../migrations/sqlite/0004_tool_tombstones.sql"),
    },
];
