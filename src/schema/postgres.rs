//! PostgreSQL: applying the shipped migrations, the library's bookkeeping schema, and
//! checking that a database has what the library needs.

use sqlx::{PgPool, Row};

use super::POSTGRES_MIGRATIONS;
use crate::error::{Error, Result};

/// The library's bookkeeping in PostgreSQL (schema `agent_memory`): applied migrations,
/// memory and tool tombstones, writes owed to SQLite, the backfill's runs and
/// catch-up state, and the central migration stages with their history. Created at connect, never in
/// `public`. Its files run in order; each is idempotent.
const BOOKKEEPING_SQL: &str = concat!(
    include_str!("../../migrations/postgres/bookkeeping.sql"),
    "\n",
    include_str!("../../migrations/postgres/bookkeeping_0002_tool_tombstones.sql"),
    "\n",
    include_str!("../../migrations/postgres/bookkeeping_0003_catch_up.sql"),
    "\n",
    include_str!("../../migrations/postgres/bookkeeping_0004_stages.sql"),
);

/// Serialises concurrent migrators on one PostgreSQL database.
const MIGRATE_LOCK: i64 = 0x6167_656e_745f_6d65; // "agent_me"

const HINT: &str = "apply the shipped schema (backfill --migrate, memctl migrate, or \
                    memshift::migrate_url), or run the admin app's prisma db push";

/// Applies the shipped PostgreSQL migrations that `pool`'s database has not had yet, in
/// one transaction, and returns the versions it applied.
///
/// Safe to run concurrently and repeatedly: migrators take an advisory lock, and every
/// statement is idempotent over tables the admin application created itself.
///
/// # Errors
/// [`Error::Database`] when a statement fails (for example `permission denied to create
/// extension "vector"`); nothing is applied then.
pub(crate) async fn migrate(pool: &PgPool) -> Result<Vec<i64>> {
    let fail = |step: String| {
        move |e: sqlx::Error| Error::Database {
            backend: "postgres",
            operation: step,
            source: Box::new(e),
        }
    };
    let mut tx = pool.begin().await.map_err(fail("begin migration".into()))?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail("take the migration lock".into()))?;
    sqlx::raw_sql(BOOKKEEPING_SQL)
        .execute(&mut *tx)
        .await
        .map_err(fail("create the agent_memory schema".into()))?;
    let done: Vec<i64> = sqlx::query_scalar("select version from agent_memory.schema_migrations")
        .fetch_all(&mut *tx)
        .await
        .map_err(fail("read applied migrations".into()))?;
    let mut applied = Vec::new();
    for m in POSTGRES_MIGRATIONS
        .iter()
        .filter(|m| !done.contains(&m.version))
    {
        let step = format!("migration {:04}_{}", m.version, m.name);
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(fail(step.clone()))?;
        sqlx::query("insert into agent_memory.schema_migrations (version, name) values ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(fail(step))?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(fail("commit migration".into()))?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied PostgreSQL migrations");
    }
    Ok(applied)
}

/// Creates the library's bookkeeping schema (`agent_memory`) where it is missing. It
/// never touches the contract tables.
///
/// # Errors
/// [`Error::Database`], e.g. when the user may not create a schema; the message says so.
pub(crate) async fn ensure_bookkeeping(pool: &PgPool) -> Result<()> {
    let fail = |e: sqlx::Error| Error::Database {
        backend: "postgres",
        operation: "create the library's bookkeeping schema agent_memory (needs the CREATE \
                    privilege on the database once; or apply the shipped migrations)"
            .into(),
        source: Box::new(e),
    };
    // Every table and the last column each bookkeeping file adds: a database made by an
    // older version gets what it lacks.
    let present: bool = sqlx::query_scalar(
        "select count(*) = 11
            and exists (select 1 from information_schema.columns
                        where table_schema = 'agent_memory' and table_name = 'owed_writes'
                          and column_name = 'parked_at')
            and exists (select 1 from information_schema.columns
                        where table_schema = 'agent_memory' and table_name = 'backfill_runs'
                          and column_name = 'options')
         from information_schema.tables
         where table_schema = 'agent_memory'
           and table_name in ('schema_migrations', 'memory_tombstones', 'owed_writes',
                              'backfill_runs', 'backfill_progress', 'tool_tombstones',
                              'backfill_tables', 'backfill_chunks', 'stages',
                              'stage_history', 'stage_counters')",
    )
    .fetch_one(pool)
    .await
    .map_err(fail)?;
    if present {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(fail)?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    sqlx::raw_sql(BOOKKEEPING_SQL)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    tx.commit().await.map_err(fail)
}

/// What the library reads and writes in each contract table.
const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    ("agents", &["id", "name", "created_at", "updated_at"]),
    (
        "agent_memories",
        &[
            "id",
            "agent_id",
            "key",
            "content",
            "metadata",
            "embedding",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "agent_tools",
        &[
            "id",
            "agent_id",
            "name",
            "content",
            "metadata",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "agent_metrics",
        &[
            "id",
            "agent_id",
            "name",
            "value",
            "content",
            "metadata",
            "created_at",
        ],
    ),
    (
        "agent_executions",
        &[
            "id",
            "agent_id",
            "status",
            "content",
            "metadata",
            "created_at",
        ],
    ),
];

/// The unique keys the upserts rely on.
const REQUIRED_UNIQUE: &[(&str, &[&str])] = &[
    ("agent_memories", &["agent_id", "key"]),
    ("agent_tools", &["agent_id", "name"]),
];

/// Lists what the library needs that `pool`'s database lacks: the `vector` extension,
/// contract tables, their columns and the unique keys upserts rely on. Empty when all is
/// there.
///
/// # Errors
/// [`Error::Database`] when the catalog cannot be read.
pub(crate) async fn missing_schema(pool: &PgPool) -> Result<Vec<String>> {
    let fail = |e: sqlx::Error| Error::Database {
        backend: "postgres",
        operation: "check the schema".into(),
        source: Box::new(e),
    };
    let mut missing = Vec::new();
    let has_vector: bool =
        sqlx::query_scalar("select exists (select 1 from pg_extension where extname = 'vector')")
            .fetch_one(pool)
            .await
            .map_err(fail)?;
    if !has_vector {
        missing.push("extension vector".to_string());
    }
    let tables: Vec<&str> = REQUIRED_COLUMNS.iter().map(|(t, _)| *t).collect();
    let rows = sqlx::query(
        "select table_name::text, column_name::text from information_schema.columns
         where table_schema = current_schema() and table_name = any($1)",
    )
    .bind(&tables)
    .fetch_all(pool)
    .await
    .map_err(fail)?;
    let present: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect();
    for (table, columns) in REQUIRED_COLUMNS {
        if !present.iter().any(|(t, _)| t == table) {
            missing.push(format!("table {table}"));
            continue;
        }
        for column in *columns {
            if !present.iter().any(|(t, c)| t == table && c == column) {
                missing.push(format!("column {table}.{column}"));
            }
        }
    }
    let uniques: Vec<(String, Vec<String>)> = sqlx::query(
        "select t.relname::text,
                array(select a.attname::text from pg_attribute a
                      where a.attrelid = t.oid and a.attnum = any(i.indkey)
                      order by a.attname)
         from pg_index i join pg_class t on t.oid = i.indrelid
         where i.indisunique and t.relnamespace = current_schema()::regnamespace
           and t.relname = any($1)",
    )
    .bind(REQUIRED_UNIQUE.iter().map(|(t, _)| *t).collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .map_err(fail)?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    for (table, columns) in REQUIRED_UNIQUE {
        if missing.contains(&format!("table {table}")) {
            continue;
        }
        let mut wanted: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        wanted.sort();
        if !uniques
            .iter()
            .any(|(t, cols)| t == table && *cols == wanted)
        {
            missing.push(format!("unique ({}) on {table}", columns.join(", ")));
        }
    }
    Ok(missing)
}

/// Fails with [`Error::SchemaMissing`] unless [`missing_schema`] finds nothing.
pub(crate) async fn check_schema(pool: &PgPool, target: &str) -> Result<()> {
    let missing = missing_schema(pool).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::SchemaMissing {
        target: target.to_string(),
        missing,
        hint: HINT,
    })
}
