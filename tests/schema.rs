//! The PostgreSQL side of the data contract: the shipped migrations create exactly the
//! contract's tables and columns, with its types, keys and defaults; the library's own
//! bookkeeping stays out of `public`; connecting runs no DDL on the contract tables; and
//! the content compression switch changes how values are stored, not the columns.

use std::collections::BTreeMap;

use memshift::testing::postgres::TestDatabase;
use sqlx::{Connection, PgConnection, Row};

/// A column as the contract states it: (name, type, nullable).
type Column = (&'static str, &'static str, bool);

/// Each contract table's columns.
const CONTRACT: &[(&str, &[Column])] = &[
    (
        "agents",
        &[
            ("id", "text", false),
            ("name", "text", false),
            ("created_at", "timestamp with time zone", false),
            ("updated_at", "timestamp with time zone", false),
        ],
    ),
    (
        "agent_memories",
        &[
            ("id", "uuid", false),
            ("agent_id", "text", false),
            ("key", "text", true),
            ("content", "text", false),
            ("metadata", "jsonb", false),
            ("embedding", "vector", true),
            ("created_at", "timestamp with time zone", false),
            ("updated_at", "timestamp with time zone", false),
        ],
    ),
    (
        "agent_tools",
        &[
            ("id", "uuid", false),
            ("agent_id", "text", false),
            ("name", "text", false),
            ("content", "text", false),
            ("metadata", "jsonb", false),
            ("created_at", "timestamp with time zone", false),
            ("updated_at", "timestamp with time zone", false),
        ],
    ),
    (
        "agent_metrics",
        &[
            ("id", "uuid", false),
            ("agent_id", "text", false),
            ("name", "text", false),
            ("value", "double precision", true),
            ("content", "text", false),
            ("metadata", "jsonb", false),
            ("created_at", "timestamp with time zone", false),
        ],
    ),
    (
        "agent_executions",
        &[
            ("id", "uuid", false),
            ("agent_id", "text", false),
            ("status", "text", true),
            ("content", "text", false),
            ("metadata", "jsonb", false),
            ("created_at", "timestamp with time zone", false),
        ],
    ),
];

async fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(&db.url)
        .await
        .expect("connect to the test database")
}

/// Every column of `schema`: table -> [(column, type, nullable, default)].
async fn columns(
    conn: &mut PgConnection,
    schema: &str,
) -> BTreeMap<String, Vec<(String, String, bool, Option<String>)>> {
    let rows = sqlx::query(
        "select c.relname::text, a.attname::text, format_type(a.atttypid, null),
                not a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
         from pg_attribute a
         join pg_class c on c.oid = a.attrelid and c.relkind = 'r'
         join pg_namespace n on n.oid = c.relnamespace and n.nspname = $1
         left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where a.attnum > 0 and not a.attisdropped
         order by c.relname, a.attnum",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .unwrap();
    let mut tables: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for row in rows {
        tables.entry(row.get(0)).or_default().push((
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
        ));
    }
    tables
}

/// Unique and primary keys of `table` in public, as sorted column lists.
async fn keys(conn: &mut PgConnection, table: &str) -> Vec<(bool, Vec<String>)> {
    let mut keys: Vec<(bool, Vec<String>)> = sqlx::query(
        "select i.indisprimary,
                array(select a.attname::text from pg_attribute a
                      where a.attrelid = i.indrelid and a.attnum = any(i.indkey) order by a.attname)
         from pg_index i join pg_class t on t.oid = i.indrelid
         where i.indisunique and t.relname = $1 and t.relnamespace = 'public'::regnamespace",
    )
    .bind(table)
    .fetch_all(conn)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn migrations_create_exactly_the_contract_tables() {
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let public = columns(&mut conn, "public").await;
    let names: Vec<&str> = public.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = CONTRACT.iter().map(|(t, _)| *t).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "public holds the contract tables and nothing else"
    );
    for (table, contract) in CONTRACT {
        let got: Vec<(&str, &str, bool)> = public[*table]
            .iter()
            .map(|(c, t, n, _)| (c.as_str(), t.as_str(), *n))
            .collect();
        assert_eq!(got, contract.to_vec(), "columns of {table}");
        if let Some((_, _, _, default)) = public[*table].iter().find(|(c, ..)| c == "metadata") {
            assert_eq!(
                default.as_deref(),
                Some("'{}'::jsonb"),
                "{table}.metadata defaults to {{}}"
            );
        }
    }
    assert_eq!(
        keys(&mut conn, "agents").await,
        [
            (false, vec!["name".to_string()]),
            (true, vec!["id".to_string()])
        ]
    );
    assert_eq!(
        keys(&mut conn, "agent_memories").await,
        [
            (false, vec!["agent_id".to_string(), "key".to_string()]),
            (true, vec!["id".to_string()])
        ]
    );
    assert_eq!(
        keys(&mut conn, "agent_tools").await,
        [
            (false, vec!["agent_id".to_string(), "name".to_string()]),
            (true, vec!["id".to_string()])
        ]
    );
    for table in ["agent_metrics", "agent_executions"] {
        assert_eq!(
            keys(&mut conn, table).await,
            [(true, vec!["id".to_string()])],
            "{table}"
        );
    }
    let references: Vec<String> = sqlx::query_scalar(
        "select conrelid::regclass::text from pg_constraint
         where contype = 'f' and confrelid = 'public.agents'::regclass order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        references,
        [
            "agent_executions",
            "agent_memories",
            "agent_metrics",
            "agent_tools"
        ]
    );
    let bookkeeping = columns(&mut conn, "agent_memory").await;
    assert_eq!(
        bookkeeping.keys().collect::<Vec<_>>(),
        [
            "backfill_chunks",
            "backfill_progress",
            "backfill_runs",
            "backfill_tables",
            "memory_tombstones",
            "owed_writes",
            "schema_migrations",
            "stage_counters",
            "stage_history",
            "stages",
            "tool_tombstones"
        ],
        "the library's own tables live in its schema"
    );
}

#[tokio::test]
async fn using_the_backend_changes_no_contract_table_definition() {
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    // As when the admin app owns the schema: the library's bookkeeping is not there yet.
    sqlx::raw_sql("drop schema agent_memory cascade")
        .execute(&mut conn)
        .await
        .unwrap();
    let before = columns(&mut conn, "public").await;
    let backend = db.backend().await;
    let agent = memshift::AgentId::new("schema_probe").unwrap();
    use memshift::MemoryBackend;
    backend
        .put_memory(&agent, &memshift::Memory::new("k", serde_json::json!(1)))
        .await
        .unwrap();
    backend.delete_memory(&agent, "k").await.unwrap();
    assert_eq!(
        columns(&mut conn, "public").await,
        before,
        "a contract table changed at run time"
    );
    let bookkeeping = columns(&mut conn, "agent_memory").await;
    assert!(
        bookkeeping.contains_key("memory_tombstones"),
        "bookkeeping is made where it is missing"
    );
    // Over tables someone else made, the migration changes nothing and is then recorded.
    assert_eq!(memshift::migrate_url(&db.url).await.unwrap(), [1]);
    assert_eq!(
        columns(&mut conn, "public").await,
        before,
        "migrating over existing tables changed them"
    );
    assert!(
        memshift::migrate_url(&db.url).await.unwrap().is_empty(),
        "applied twice"
    );
}

/// (stored bytes, text bytes) of key `key`'s content.
async fn content_sizes(conn: &mut PgConnection, key: &str) -> (i32, i32) {
    let row = sqlx::query(
        "select pg_column_size(content), octet_length(content) from agent_memories
         where key = $1",
    )
    .bind(key)
    .fetch_one(conn)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn content_compression_turns_off_and_on_for_new_values_only() {
    use memshift::MemoryBackend;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let before = columns(&mut conn, "public").await;
    let backend = db.backend().await;
    let agent = memshift::AgentId::new("compression").unwrap();
    // Agent text of ~20 KB: it compresses, as real memories do.
    let text = "the agent noted that the customer asked about the invoice again. ".repeat(300);
    let store = async |key: &str| {
        let memory = memshift::Memory::new(key, serde_json::json!(text));
        backend.put_memory(&agent, &memory).await.unwrap();
    };

    assert!(
        backend.content_compression().await.unwrap(),
        "PostgreSQL's default"
    );
    store("compressed").await;
    backend.set_content_compression(false).await.unwrap();
    assert!(!backend.content_compression().await.unwrap());
    store("plain").await;
    backend.set_content_compression(true).await.unwrap();
    assert!(backend.content_compression().await.unwrap());
    store("compressed again").await;

    let (stored, len) = content_sizes(&mut conn, "compressed").await;
    assert!(stored * 4 < len, "compressed: {stored} of {len} bytes");
    let (stored, len) = content_sizes(&mut conn, "plain").await;
    assert!(stored >= len, "stored as is: {stored} of {len} bytes");
    let (stored, len) = content_sizes(&mut conn, "compressed again").await;
    assert!(
        stored * 4 < len,
        "compressed again: {stored} of {len} bytes"
    );
    for key in ["compressed", "plain", "compressed again"] {
        let read = backend.get_memory(&agent, key).await.unwrap().unwrap();
        assert_eq!(
            read.content,
            serde_json::json!(text),
            "{key} reads back whole"
        );
    }
    assert_eq!(
        columns(&mut conn, "public").await,
        before,
        "the setting changed a contract column"
    );

    // A statement holding the table: the change gives up instead of queueing calls.
    let mut holder = connect(&db).await;
    sqlx::raw_sql("begin; lock table agent_memories in access share mode")
        .execute(&mut holder)
        .await
        .unwrap();
    let err = backend.set_content_compression(false).await.unwrap_err();
    let message = memshift::Chain(&err).to_string();
    assert!(message.contains("lock timeout"), "{message}");
    assert!(message.contains("agent_memories.content"), "{message}");
    sqlx::raw_sql("rollback")
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(backend.content_compression().await.unwrap(), "unchanged");
}
