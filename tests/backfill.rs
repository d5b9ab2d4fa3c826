//! The bulk backfill end to end against a real PostgreSQL: exactly once, per the
//! contract, resumable, shared by concurrent runs, dry runs that write nothing, and
//! rollbacks that remove exactly one run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use memshift::backend::Replica as _;
use memshift::backfill::{self, BackfillOptions};
use memshift::legacy::{self, ContractRecord, TableMap};
use memshift::testing::postgres::TestDatabase;
use memshift::testing::scenarios::{assert_awkward_values, store_awkward_values};
use memshift::{AgentId, Listing, Memory, MemoryBackend, SqliteBackend, Tool};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};

mod common;
use common::{legacy_file, memory_rows_once, memory_table};

/// A small tree with every contract table, shared keys across files, an unmapped table
/// and a view.
async fn tree(root: &Path) {
    legacy_file(
        &root.join("alpha/main.db"),
        "create table memory (id integer primary key, key text, content text, timestamp text);
         insert into memory (key, content, timestamp) values
           ('pricing', 'old answer', '2024-01-15 10:30:00'),
           ('greeting', 'hello ✓', '2024-01-16 09:00:00'),
           (null, 'no key', '1723825537.59');
         create table tools (name text, config text);
         insert into tools values ('search', '{\"k\": 5}'), ('search', 'a second search');
         create table metrics (name text, value real, ts integer);
         insert into metrics values ('latency', 1.5, 1700000000), ('latency', null, 1700000001000);
         create table execution_log (status text, details blob, created_at text);
         insert into execution_log values ('ok', x'00ff10', '2024-02-01T12:00:00Z');
         create table notes (body text);
         insert into notes values ('not a contract table');
         create view recent as select * from memory;",
    )
    .await;
    legacy_file(
        &root.join("alpha/archive/old.sqlite"),
        "create table agent_memory (key text, content text, created_at text);
         insert into agent_memory values ('pricing', 'newest answer', '2025-03-01 00:00:00'),
                                         ('greeting', 'older hello', '2023-01-01 00:00:00');",
    )
    .await;
    legacy_file(
        &root.join("beta.DB"),
        "create table performance (name text, value integer);
         insert into performance values ('tokens', 9007199254740993);",
    )
    .await;
}

async fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

/// Row counts of the contract tables and the library's bookkeeping.
async fn counts(conn: &mut PgConnection) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "agents",
        "agent_memories",
        "agent_tools",
        "agent_metrics",
        "agent_executions",
        "agent_memory.backfill_tables",
    ] {
        let sql = format!("select count(*) from {table}");
        out.push(
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await
                .unwrap(),
        );
    }
    out
}

/// The migration time the expected rows are converted with: a row without a time of
/// its own carries it, and the run's own migration time then differs.
fn no_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(946_684_800, 0).unwrap()
}

/// Every row the legacy layer makes of the tree, by id: what PostgreSQL must hold.
async fn expected(root: &Path) -> Vec<(uuid::Uuid, legacy::ContractRow)> {
    let mut rows: Vec<_> = common::legacy_rows(root, &TableMap::new(), no_time())
        .await
        .into_iter()
        .map(|row| (row.record.id(), row))
        .collect();
    rows.sort_by_key(|(id, _)| *id);
    rows
}

/// The (content, created_at, metadata without run and migration time) of row `id`.
async fn stored(
    conn: &mut PgConnection,
    table: &str,
    id: uuid::Uuid,
) -> Option<(String, chrono::DateTime<chrono::Utc>, Value)> {
    let sql = format!("select content, created_at, metadata from {table} where id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .unwrap()?;
    let mut metadata: Value = row.get::<sqlx::types::Json<Value>, _>(2).0;
    for volatile in [
        "migration_run",
        "migrated_at",
        "key_conflict",
        "name_conflict",
    ] {
        metadata.as_object_mut().unwrap().remove(volatile);
    }
    Some((row.get(0), row.get(1), metadata))
}

#[tokio::test]
async fn every_row_arrives_once_as_the_contract_says() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());
    let report = backfill::run(&db.url, &options, &())
        .await
        .expect("backfill");
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(report.totals.read, 11);
    assert_eq!(report.totals.inserted, 11);
    let notes = report
        .files
        .iter()
        .flat_map(|f| &f.tables)
        .find(|t| t.table == "notes")
        .unwrap();
    assert!(
        notes.skipped.as_deref().unwrap().starts_with("unmapped"),
        "unmapped tables are listed"
    );

    let mut conn = connect(&db).await;
    let want = expected(dir.path()).await;
    assert_eq!(want.len(), 11);
    for (id, row) in &want {
        let table = row.record.target().table();
        let (content, created_at, metadata) = stored(&mut conn, table, *id)
            .await
            .unwrap_or_else(|| panic!("{table} lacks {id}"));
        assert_eq!(
            content,
            row.record.content().to_string(),
            "content of {id} changed on the way"
        );
        if row.record.created_at() != no_time() {
            assert_eq!(
                created_at,
                row.record.created_at(),
                "created_at of {id} is the row's own time"
            );
        }
        let mut want_meta = Value::Object(row.record.metadata().clone());
        want_meta.as_object_mut().unwrap().remove("migrated_at");
        assert_eq!(metadata, want_meta, "metadata of {id}");
    }
    // The newest legacy row of a key holds it; the others keep their rows, without it.
    let holders: Vec<(String, String)> = sqlx::query_as(
        "select key, content from agent_memories where agent_id = 'alpha' and key is not null order by key",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(holders.len(), 2);
    assert!(
        holders[0].0 == "greeting" && holders[0].1.contains("hello ✓"),
        "{holders:?}"
    );
    assert!(
        holders[1].0 == "pricing" && holders[1].1.contains("newest answer"),
        "{holders:?}"
    );
    let conflicts: i64 =
        sqlx::query_scalar("select count(*) from agent_memories where metadata ? 'key_conflict'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        conflicts, 2,
        "the older rows of a key arrive with key_conflict"
    );
    let tools: Vec<String> = sqlx::query_scalar("select name from agent_tools order by name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        tools.len(),
        2,
        "a second tool of one name arrives renamed: {tools:?}"
    );
    let agents: Vec<String> = sqlx::query_scalar("select id from agents order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(agents, ["alpha", "beta"]);

    // A second run finds every row there; so does one that lost the catch-up records and
    // compares every row in PostgreSQL.
    let again = backfill::run(&db.url, &options, &()).await.unwrap();
    assert_eq!(again.totals.inserted, 0);
    sqlx::raw_sql(
        "delete from agent_memory.backfill_tables; delete from agent_memory.backfill_chunks",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let before = counts(&mut conn).await;
    let reread = backfill::run(&db.url, &options, &()).await.unwrap();
    assert_eq!(
        (
            reread.totals.read,
            reread.totals.inserted,
            reread.totals.already_present
        ),
        (11, 0, 11)
    );
    assert_eq!(
        counts(&mut conn).await[..5],
        before[..5],
        "a re-run made second copies"
    );
}

#[tokio::test]
async fn verify_passes_after_a_run_and_names_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());
    let before = backfill::verify(&db.url, &options).await.unwrap();
    assert!(!before.passed(), "nothing migrated yet");
    backfill::run(&db.url, &options, &()).await.unwrap();
    let after = backfill::verify(&db.url, &options).await.unwrap();
    assert!(after.passed(), "{after:#?}");
    assert_eq!(after.tables.len(), 6);
    let mut conn = connect(&db).await;
    sqlx::raw_sql("update agent_metrics set content = '{}' where name = 'tokens'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql("delete from agent_tools where name = 'search'")
        .execute(&mut conn)
        .await
        .unwrap();
    let broken = backfill::verify(&db.url, &options).await.unwrap();
    let differing: Vec<(&str, &str)> = broken
        .tables
        .iter()
        .filter(|t| !t.same)
        .map(|t| (t.table.as_str(), t.difference.as_deref().unwrap()))
        .collect();
    assert_eq!(
        differing,
        [
            ("tools", "2 legacy rows, 1 in agent_tools"),
            ("performance", "same row count, but ids or contents differ")
        ]
    );
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let before = counts(&mut conn).await;
    let report = backfill::dry_run(&BackfillOptions::new(dir.path())).await;
    assert!(report.dry_run);
    assert_eq!(report.totals.read, 11, "the dry run counts what would move");
    assert_eq!(counts(&mut conn).await, before);
}

#[tokio::test]
async fn a_rollback_removes_exactly_one_run() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    let alpha = AgentId::new("alpha").unwrap();
    backend
        .put_memory(&alpha, &Memory::new("own", json!("the agent wrote this")))
        .await
        .unwrap();
    let report = backfill::run(&db.url, &BackfillOptions::new(dir.path()), &())
        .await
        .unwrap();
    // The agent overwrites a migrated key: that row is the agent's now.
    backend
        .put_memory(&alpha, &Memory::new("pricing", json!("agent's answer")))
        .await
        .unwrap();
    let deleted = backfill::rollback(&db.url, &report.run_id).await.unwrap();
    assert_eq!(
        deleted.memories + deleted.tools + deleted.metrics + deleted.executions,
        10
    );
    let keys = backend
        .memory_keys(&alpha, &Listing::default())
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["own", "pricing"],
        "rows agents wrote survive a rollback"
    );
    let again = backfill::run(&db.url, &BackfillOptions::new(dir.path()), &())
        .await
        .unwrap();
    assert_eq!(
        again.totals.inserted, 10,
        "a run after a rollback brings the rows back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_and_interrupted_runs_end_with_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    for file in 0..6 {
        let values: Vec<String> = (0..3000)
            .map(|i| format!("('k{file}_{i}', 'value {i}', {})", 1_700_000_000 + i))
            .collect();
        let sql = format!(
            "create table memory (key text, content text, ts integer); insert into memory values {};",
            values.join(",")
        );
        legacy_file(
            &dir.path().join(format!("agent{}/data{file}.db", file % 3)),
            &sql,
        )
        .await;
    }
    let db = TestDatabase::migrated().await;
    let mut options = BackfillOptions::new(dir.path());
    options.read.batch_size = 500;
    // Killed part way: the run is dropped mid-batch, as a dead process would be.
    let cut = tokio::time::timeout(
        Duration::from_millis(150),
        backfill::run(&db.url, &options, &()),
    )
    .await;
    assert!(cut.is_err(), "the first run should still be going when cut");
    // Two workers at once finish the job between them.
    let (a, b) = tokio::join!(
        backfill::run(&db.url, &options, &()),
        backfill::run(&db.url, &options, &())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut conn = connect(&db).await;
    let (total, distinct) = memory_rows_once(&mut conn).await;
    assert_eq!(
        (total, distinct),
        (18_000, 18_000),
        "every row exactly once"
    );
    let claimed_elsewhere = a
        .files
        .iter()
        .chain(&b.files)
        .filter(|f| f.claimed_elsewhere)
        .count();
    assert!(a.totals.inserted + b.totals.inserted <= 18_000);
    eprintln!(
        "workers inserted {} and {}; {claimed_elsewhere} files left to the other",
        a.totals.inserted, b.totals.inserted
    );
    let last = backfill::run(&db.url, &options, &()).await.unwrap();
    assert_eq!(last.totals.inserted, 0);
}

#[tokio::test]
async fn library_files_move_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteBackend::new(dir.path());
    let agent = AgentId::new("own_layout").unwrap();
    let stored = sqlite
        .put_memory(
            &agent,
            &Memory::new(
                "k",
                json!({"big": 123456789012345678901234567890_u128.to_string(), "v": 2.50}),
            )
            .with_embedding(vec![0.5, -1.0]),
        )
        .await
        .unwrap();
    sqlite
        .put_memory(&agent, &Memory::new("gone", json!("deleted by the agent")))
        .await
        .unwrap();
    assert!(sqlite.delete_memory(&agent, "gone").await.unwrap());
    let awkward = AgentId::new("own_layout_awkward").unwrap();
    store_awkward_values(&sqlite, &awkward).await;
    sqlite.close().await;
    let db = TestDatabase::migrated().await;
    let report = backfill::run(&db.url, &BackfillOptions::new(dir.path()), &())
        .await
        .unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let backend: Arc<dyn MemoryBackend> = Arc::new(db.backend().await);
    let moved = backend
        .get_memory(&agent, "k")
        .await
        .unwrap()
        .expect("moved");
    assert_eq!(
        moved, stored,
        "same id, key, value, metadata, embedding and times"
    );
    assert!(matches!(
        ContractRecord::Memory(moved.clone()),
        ContractRecord::Memory(_)
    ));
    assert_awkward_values(&*backend, &awkward, "backfilled").await;
}

/// Tool deletes move like key deletes: a tool the agent deleted after an earlier run
/// is deleted in PostgreSQL by the next, and a legacy table's older registration of a
/// deleted name does not bring it back.
#[tokio::test]
async fn tool_deletes_move_and_keep_older_registrations_out() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentId::new("tool_deletes").unwrap();
    let sqlite = SqliteBackend::new(dir.path());
    for name in ["kept", "gone"] {
        sqlite
            .put_tool(&agent, &Tool::new(name, json!({"tool": name})))
            .await
            .unwrap();
    }
    sqlite.close().await;
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let postgres = db.backend().await;
    let names = |tools: Vec<Tool>| tools.into_iter().map(|t| t.name).collect::<Vec<_>>();
    let listed = postgres.list_tools(&agent, &Listing::default()).await;
    assert_eq!(names(listed.unwrap()), ["gone", "kept"]);

    // The agent deletes a tool; an old database of its own has an older registration of
    // it, and of another.
    let sqlite = SqliteBackend::new(dir.path());
    assert!(sqlite.delete_tool(&agent, "gone").await.unwrap());
    sqlite.close().await;
    legacy_file(
        &dir.path().join("tool_deletes/old.db"),
        "create table tools (name text, config text, created_at text);
         insert into tools values ('gone', '{\"legacy\": true}', '2024-01-01 00:00:00'),
                                  ('older', '{\"legacy\": true}', '2024-01-01 00:00:00');",
    )
    .await;
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let listed = postgres.list_tools(&agent, &Listing::default()).await;
    assert_eq!(names(listed.unwrap()), ["kept", "older"]);
    assert!(
        postgres
            .tool_tombstone(&agent, "gone")
            .await
            .unwrap()
            .is_some()
    );
    // A third run changes nothing.
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let listed = postgres.list_tools(&agent, &Listing::default()).await;
    assert_eq!(names(listed.unwrap()), ["kept", "older"]);
    // Verify counts the kept-out registration and the moved delete as outranked.
    let verified = backfill::verify(&db.url, &options).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");
    let outranked: u64 = verified.tables.iter().map(|t| t.newer_in_postgres).sum();
    assert_eq!(outranked, 1, "{verified:#?}");
    // A tool deleted in PostgreSQL since outranks the file's registration of it.
    assert!(postgres.delete_tool(&agent, "kept").await.unwrap());
    let verified = backfill::verify(&db.url, &options).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");
    let outranked: u64 = verified.tables.iter().map(|t| t.newer_in_postgres).sum();
    assert_eq!(outranked, 2, "{verified:#?}");
}

/// A library-written agent: memories (one with an embedding, one deleted), a tool, a
/// metric and an execution.
async fn library_agent(root: &Path, agent: &AgentId) {
    let sqlite = SqliteBackend::new(root);
    for (key, value) in [("k", r#"{"v": 2.50}"#), ("other", r#""text""#)] {
        let value: memshift::Json = value.parse().unwrap();
        sqlite
            .put_memory(
                agent,
                &Memory::new(key, value).with_embedding(vec![0.5, -1.0]),
            )
            .await
            .unwrap();
    }
    sqlite
        .put_memory(agent, &Memory::new("gone", json!("deleted by the agent")))
        .await
        .unwrap();
    assert!(sqlite.delete_memory(agent, "gone").await.unwrap());
    sqlite
        .put_tool(agent, &memshift::Tool::new("search", json!({"k": 5})))
        .await
        .unwrap();
    sqlite
        .record_metric(agent, &memshift::Metric::new("latency", Some(1.5)))
        .await
        .unwrap();
    sqlite
        .log_execution(
            agent,
            &memshift::Execution::new(Some("ok".into()), json!({"task": "t"})),
        )
        .await
        .unwrap();
    sqlite.close().await;
}

/// (table, difference) of every table that differs.
fn differing(verification: &backfill::Verification) -> Vec<(String, String)> {
    verification
        .tables
        .iter()
        .filter(|t| !t.same)
        .map(|t| (t.table.clone(), t.difference.clone().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn verify_checks_every_record_of_library_files() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentId::new("own_verified").unwrap();
    library_agent(dir.path(), &agent).await;
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());

    let before = backfill::verify(&db.url, &options).await.unwrap();
    assert!(!before.passed(), "nothing moved yet: {before:#?}");
    let missing = differing(&before);
    assert_eq!(missing.len(), 4, "every record table: {missing:?}");
    assert!(
        missing[0].1.contains(r#"memory "k": missing"#),
        "names the row: {missing:?}"
    );

    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let after = backfill::verify(&db.url, &options).await.unwrap();
    assert!(after.passed(), "{after:#?}");
    assert_eq!(
        after.rows(),
        6,
        "2 memories, 1 tool, 1 metric, 1 execution, 1 delete"
    );
    let memories = &after.tables[0];
    assert_eq!(
        (
            memories.table.as_str(),
            memories.legacy_rows,
            memories.postgres_rows
        ),
        ("agent_memories", 2, 2)
    );

    // A later write through the library outranks the file's row: still verified.
    let postgres = db.backend().await;
    postgres
        .put_memory(&agent, &Memory::new("other", json!("written later")))
        .await
        .unwrap();
    let outranked = backfill::verify(&db.url, &options).await.unwrap();
    assert!(outranked.passed(), "{outranked:#?}");
    assert_eq!(outranked.tables[0].newer_in_postgres, 1);

    // Rows changed in PostgreSQL behind the library's back (2.50 rewritten as 2.5, a
    // metric's value), and a deleted key back.
    let mut conn = connect(&db).await;
    sqlx::raw_sql(
        r#"update agent_memories set content = '{"v": 2.5}' where key = 'k';
           update agent_metrics set value = 2.5 where name = 'latency';
           insert into agent_memories (id, agent_id, key, content, created_at, updated_at)
           select gen_random_uuid(), id, 'gone', '"back"', '2000-01-01', '2000-01-01'
           from agents where name = 'own_verified';"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let broken = backfill::verify(&db.url, &options).await.unwrap();
    assert!(!broken.passed());
    let differences = differing(&broken);
    let tables: Vec<&str> = differences.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        tables,
        ["agent_memories", "agent_metrics", "agent_memory_tombstones"],
        "{differences:#?}"
    );
    assert!(
        differences[0]
            .1
            .contains(r#"memory "k": differs in content"#)
            && differences[1].1.contains(r#"metric "latency""#)
            && differences[1].1.contains("differs in value")
            && differences[2].1.contains(r#"memory "gone": deleted here"#),
        "{differences:#?}"
    );

    // The command says the same, and fails.
    let out = std::process::Command::new(common::example_path("backfill"))
        .args(["--verify", "--agents-path"])
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(r#"memory "k": differs in content"#)
            && said.contains("compared 6 rows in 6 tables: 3 tables differ"),
        "{said}"
    );
}

#[tokio::test]
async fn verify_that_finds_nothing_to_compare_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    let empty = backfill::verify(&db.url, &BackfillOptions::new(dir.path()))
        .await
        .unwrap();
    assert!(!empty.passed(), "an empty verification is no success");
    let out = std::process::Command::new(common::example_path("backfill"))
        .args(["--verify", "--agents-path"])
        .arg(dir.path())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("nothing verified"), "{said}");
}

#[tokio::test]
async fn the_backfill_command_finds_agents_where_agents_path_says() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("elsewhere");
    legacy_file(&agents.join("alpha/main.db"), &memory_table(3)).await;
    let backfill = || {
        let mut command = std::process::Command::new(common::example_path("backfill"));
        command
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("AGENTS_PATH")
            .env("RUST_LOG", "warn");
        command
    };
    let help = backfill().arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("[env: AGENTS_PATH="),
        "--help names the variable"
    );
    // A dry run: (the report's path, what it said); it exits 0 either way.
    let dry_run = |agents_path: Option<&Path>| {
        let mut command = backfill();
        command.args(["--dry-run", "--report-dir"]).arg(dir.path());
        if let Some(path) = agents_path {
            command.env("AGENTS_PATH", path);
        }
        let out = command.output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{said}");
        (String::from_utf8(out.stdout).unwrap(), said)
    };
    let (report, _) = dry_run(Some(&agents));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report.trim()).unwrap()).unwrap();
    assert_eq!(report["agents_path"], json!(agents));
    assert_eq!(report["files"][0]["source_db"], json!("alpha/main.db"));
    assert_eq!(report["totals"]["read"], json!(3));

    // Without it, ./agents, which here does not exist: said, not silently empty.
    let (_, said) = dry_run(None);
    assert!(
        said.contains("(1 unusable)") && said.contains("./agents cannot be listed"),
        "{said}"
    );
}

#[tokio::test]
async fn awkward_values_and_files_arrive_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(1 << 20);
    legacy_file(
        &dir.path().join("odd/values.db"),
        &format!(
            "create table memory (key text, content, note text);
             insert into memory values
               ('nul', 'a' || char(0) || 'b', 'n' || char(0)),
               ('bytes', x'66696c65966e616d65', null),
               ('blob', x'00ff', 'raw'),
               ('big', '{big}', null),
               ('ints', 9223372036854775807, '-9223372036854775808'),
               ('inf', 1e999, -1e999),
               ('mixed', 12.5, 7),
               ('unicode', 'João “quoted” ✓', 'ok');
             create table \"tools\" (name text primary key, spec text) without rowid;
             insert into \"tools\" values ('a tool', 'spec'), ('b', 'x');"
        ),
    )
    .await;
    legacy_file(
        &dir.path().join("Case/a.db"),
        "create table metrics (name text, value real); insert into metrics values ('m', 1);",
    )
    .await;
    legacy_file(
        &dir.path().join("case/a.db"),
        "create table metrics (name text, value real); insert into metrics values ('m', 2);",
    )
    .await;
    std::fs::write(dir.path().join("case/not-sqlite.db"), b"just text").unwrap();
    std::fs::write(dir.path().join("case/empty.sqlite3"), b"").unwrap();
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());
    let report = backfill::run(&db.url, &options, &())
        .await
        .expect("backfill");
    let problems: Vec<&str> = report
        .files
        .iter()
        .filter(|f| f.problem.is_some())
        .map(|f| f.source_db.as_str())
        .collect();
    assert_eq!(
        problems,
        ["case/empty.sqlite3", "case/not-sqlite.db"],
        "unusable files are reported, the rest carries on"
    );
    assert_eq!(report.totals.inserted, 12);
    assert_eq!(report.totals.failed, 0);
    let verification = backfill::verify(&db.url, &options).await.unwrap();
    assert!(
        verification.tables.iter().all(|t| t.same),
        "{verification:#?}"
    );
    let mut conn = connect(&db).await;
    for (id, row) in expected(dir.path()).await {
        let table = row.record.target().table();
        let (content, _, _) = stored(&mut conn, table, id)
            .await
            .unwrap_or_else(|| panic!("{table} lacks {id}"));
        assert_eq!(
            content,
            row.record.content().to_string(),
            "a value changed on the way"
        );
    }
    let agents: Vec<String> = sqlx::query_scalar("select id from agents order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        agents,
        ["Case", "case", "odd"],
        "agents whose names differ only in case stay apart"
    );
    // Columns in their order (not sorted), numbers exact, infinities tagged (`note` has
    // TEXT affinity: SQLite itself stored its numbers as text).
    for (key, want) in [
        (
            "ints",
            r#"{"key":"ints","content":9223372036854775807,"note":"-9223372036854775808"}"#,
        ),
        ("mixed", r#"{"key":"mixed","content":12.5,"note":"7"}"#),
        (
            "inf",
            r#"{"key":"inf","content":{"$float":"Infinity"},"note":"-Inf"}"#,
        ),
    ] {
        let content: String =
            sqlx::query_scalar("select content from agent_memories where key = $1")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(content, want, "legacy row {key:?}");
    }
    let nul: String = sqlx::query_scalar("select content from agent_memories where key = 'nul'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(nul.contains(r"a\u0000b"), "{nul}");
}

#[tokio::test]
async fn the_public_corpus_backfills_and_verifies() {
    let Some(corpus) = common::corpus("the_public_corpus_backfills_and_verifies") else {
        return;
    };
    let db = TestDatabase::migrated().await;
    let mut options = BackfillOptions::new(&corpus);
    for (table, target) in [
        ("long_term_memories", "agent_memories"),
        ("checkpoints", "agent_memories"),
        ("memories", "agent_memories"),
        ("episodes", "agent_memories"),
        ("risk_log", "agent_executions"),
    ] {
        options.map = options
            .map
            .with(table, legacy::Target::parse(target).unwrap());
    }
    let report = backfill::run(&db.url, &options, &())
        .await
        .expect("backfill");
    assert!(report.succeeded(), "{:#?}", report.totals);
    assert!(report.totals.inserted > 300, "{:?}", report.totals);
    let skipped = report
        .files
        .iter()
        .flat_map(|f| &f.tables)
        .filter(|t| t.skipped.is_some())
        .count();
    assert!(
        skipped > 50,
        "unmapped and non-data tables are listed: {skipped}"
    );
    let verification = backfill::verify(&db.url, &options).await.unwrap();
    assert!(verification.passed(), "{verification:#?}");
}

#[tokio::test]
async fn a_refused_privilege_is_reported_with_the_grant_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let role = format!("limited_{}", &db.name[8..20]);
    let sql = format!(
        "create role {role} login password 'limited-pw';
         grant usage on schema agent_memory to {role};
         grant select, insert, update, delete on all tables in schema agent_memory to {role};
         grant usage on all sequences in schema agent_memory to {role};
         grant select on all tables in schema public to {role};
         grant insert, update on agents to {role};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("limited-pw")).unwrap();
    let report = backfill::run(url.as_str(), &BackfillOptions::new(dir.path()), &())
        .await
        .expect("the run itself goes on");
    assert!(!report.succeeded());
    let reasons: Vec<&str> = report
        .files
        .iter()
        .flat_map(|f| &f.tables)
        .flat_map(|t| &t.failed)
        .map(|f| f.reason.as_str())
        .collect();
    assert!(!reasons.is_empty());
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("permission denied for table agent_memories")
                && r.contains("grant select, insert, update on agent_memories")),
        "{reasons:#?}"
    );
    assert!(
        !format!("{report:?}").contains("limited-pw"),
        "the report shows no password"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_sigkill_is_finished_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    for file in 0..8 {
        legacy_file(
            &dir.path().join(format!("agent{file}/data.db")),
            &memory_table(5000),
        )
        .await;
    }
    let db = TestDatabase::migrated().await;
    let command = || {
        let mut command = std::process::Command::new(common::example_path("backfill"));
        command
            .args([
                "--agents-path",
                dir.path().to_str().unwrap(),
                "--batch-size",
                "200",
                "--report-dir",
            ])
            .arg(dir.path())
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let mut doomed = command().spawn().expect("start the backfill example");
    let mut conn = connect(&db).await;
    // Kill it once it has committed some batches, as kill -9 would mid-run.
    let started = std::time::Instant::now();
    loop {
        let loaded: i64 = sqlx::query_scalar("select count(*) from agent_memories")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if loaded >= 2000 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().expect("SIGKILL");
    doomed.wait().unwrap();
    let partial: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        partial < 40_000,
        "the run was killed before it finished ({partial} rows)"
    );
    let status = command().status().unwrap();
    assert!(status.success(), "the re-run finishes: {status:?}");
    let (total, distinct) = memory_rows_once(&mut conn).await;
    assert_eq!(
        (total, distinct),
        (40_000, 40_000),
        "every row exactly once"
    );
    let verify = command().arg("--verify").status().unwrap();
    assert!(
        verify.success(),
        "--verify passes after the kill and the re-run"
    );
}

/// A table's report in `report`, by file and table name.
fn table_report<'r>(
    report: &'r backfill::Report,
    source_db: &str,
    table: &str,
) -> &'r backfill::TableReport {
    report
        .files
        .iter()
        .filter(|f| f.source_db == source_db)
        .flat_map(|f| &f.tables)
        .find(|t| t.table == table)
        .unwrap_or_else(|| panic!("no table {table} of {source_db} in {report:#?}"))
}

#[tokio::test]
async fn a_time_in_the_future_cannot_outrank_what_agents_write_after() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/main.db"),
        "create table memory (key text, content text, timestamp text);
         insert into memory values ('plan', 'written by a clock ahead', '2031-01-01 00:00:00'),
                                   ('old', 'an ordinary row', '2024-01-15 10:30:00');",
    )
    .await;
    let options = BackfillOptions::new(dir.path());
    // The dry run already says so, in the table, the totals and a warning.
    let dry = backfill::dry_run(&options).await;
    let planned = table_report(&dry, "alpha/main.db", "memory");
    assert_eq!(planned.future_times, 1);
    assert_eq!(dry.totals.future_times, 1);
    assert_eq!(dry.warnings.len(), 1, "{:?}", dry.warnings);
    assert!(
        dry.warnings[0].starts_with("alpha/main.db table memory: 1 rows have a time later")
            && dry.warnings[0].contains("rowid 1: 2031-01-01T00:00:00.000000Z"),
        "{:?}",
        dry.warnings
    );

    let db = TestDatabase::migrated().await;
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(
        table_report(&report, "alpha/main.db", "memory").future_times,
        1
    );
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["files"][0]["tables"][0]["future_times"], json!(1));

    let mut conn = connect(&db).await;
    let (created, updated): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("select created_at, updated_at from agent_memories where key = 'plan'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(created.to_rfc3339(), "2031-01-01T00:00:00+00:00");
    assert!(
        updated <= chrono::Utc::now(),
        "the version is the migration's time, not 2031: {updated}"
    );
    // The agent can replace it (over older versions only) and delete it.
    let backend = db.backend().await;
    let alpha = AgentId::new("alpha").unwrap();
    let applied = backend
        .apply_memory(&alpha, &Memory::new("plan", json!("the agent's plan")))
        .await
        .unwrap();
    assert!(applied.is_some(), "a write after the migration wins");
    assert_eq!(
        backend
            .get_memory(&alpha, "plan")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!("the agent's plan")
    );
    assert!(backend.delete_memory(&alpha, "old").await.unwrap());
    assert!(backend.delete_memory(&alpha, "plan").await.unwrap());
    assert_eq!(backend.get_memory(&alpha, "plan").await.unwrap(), None);
}

#[tokio::test]
async fn epoch_numbers_in_every_unit_arrive_at_their_time() {
    let dir = tempfile::tempdir().unwrap();
    // 2024-11-28T13:20:00.123456Z as seconds, ms, us, ns, and decimal text.
    legacy_file(
        &dir.path().join("alpha/times.db"),
        "create table memory (key text, ts);
         insert into memory values ('s', 1732800000), ('ms', 1732800000123),
           ('us', 1732800000123456), ('ns', 1732800000123456789),
           ('text', '1732800000.123456'), ('us text', '1732800000123456'),
           ('real us', 1732800000123456.0);",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let report = backfill::run(&db.url, &BackfillOptions::new(dir.path()), &())
        .await
        .unwrap();
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(report.totals.future_times, 0, "no year 56880");
    let mut conn = connect(&db).await;
    let got: Vec<(String, String)> = sqlx::query_as(
        r#"select key, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')
           from agent_memories order by (metadata->>'source_rowid')::int"#,
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let want = |key: &str, at: &str| (key.to_string(), format!("2024-11-28T13:20:00.{at}"));
    assert_eq!(
        got,
        [
            want("s", "000000"),
            want("ms", "123000"),
            want("us", "123456"),
            want("ns", "123456"),
            want("text", "123456"),
            want("us text", "123456"),
            want("real us", "123456"),
        ]
    );
}

#[tokio::test]
async fn keys_too_long_for_postgres_arrive_and_fail_no_batch() {
    let long = "ключ".repeat(2500); // 10,000 characters, 20,000 bytes
    let limit = "n".repeat(memshift::MAX_KEY_BYTES);
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/long.db"),
        &format!(
            "create table memory (key text, content text);
             insert into memory values ('{long}', 'first'), ('{long}', 'second'), ('short', 'ok');
             create table tools (name text, spec text);
             insert into tools values ('{long}', 'a'), ('{long}', 'b'),
               ('{limit}', 'c'), ('{limit}', 'd');"
        ),
    )
    .await;
    let db = TestDatabase::migrated().await;
    let options = BackfillOptions::new(dir.path());
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!((report.totals.inserted, report.totals.failed), (7, 0));
    let mut conn = connect(&db).await;
    let memories: Vec<(Option<String>, String, Value)> = sqlx::query_as(
        "select key, content, metadata from agent_memories
         order by (metadata->>'source_rowid')::int",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (key, content, metadata) in &memories[..2] {
        assert_eq!(*key, None);
        assert_eq!(metadata["key_too_long"], json!(20_000));
        let content: Value = serde_json::from_str(content).unwrap();
        assert_eq!(
            content["key"],
            json!(long),
            "the key arrives exactly, in content"
        );
    }
    assert_eq!(memories[2].0.as_deref(), Some("short"));
    let tools: Vec<(String, Value, uuid::Uuid)> = sqlx::query_as(
        "select name, metadata, id from agent_tools order by (metadata->>'source_rowid')::int",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names[..2], ["tools:1", "tools:2"]);
    assert!(
        tools[..2]
            .iter()
            .all(|t| t.1["name_too_long"] == json!(20_000))
    );
    // The older tool of a name at the limit cannot take a longer "(file:rowid)" name:
    // it gets its id, and the newer keeps the name.
    assert_eq!(tools[2].0, tools[2].2.to_string());
    assert_eq!(tools[2].1["name_conflict"], json!(limit));
    assert_eq!(tools[3].0, limit);
    let verified = backfill::verify(&db.url, &options).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");
}

#[tokio::test]
async fn an_agent_the_admin_app_registered_keeps_its_id() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("sales/main.db"),
        "create table memory (key text, content text);
         insert into memory values ('pricing', 'x'), ('pricing', 'y'), ('terms', 'z');
         create table tools (name text);
         insert into tools values ('crm'), ('crm');
         create table metrics (name text, value real);
         insert into metrics values ('deals', 3);
         create table execution_log (status text);
         insert into execution_log values ('ok');",
    )
    .await;
    legacy_file(
        &dir.path().join("sales/archive/old.sqlite"),
        "create table agent_memory (key text, content text, created_at text);
         insert into agent_memory values ('terms', 'older terms', '2020-01-01');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    sqlx::raw_sql(
        "insert into agents (id, name, created_at, updated_at)
         values ('clx9adminid', 'sales', now(), now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let options = BackfillOptions::new(dir.path());
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(report.totals.inserted, 8);
    let agents: Vec<(String, String)> = sqlx::query_as("select id, name from agents")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        agents,
        [("clx9adminid".to_string(), "sales".to_string())],
        "no second agents row"
    );
    let on: Vec<(String, i64)> = sqlx::query_as(
        "select agent_id, count(*) from (
           select agent_id from agent_memories union all select agent_id from agent_tools
           union all select agent_id from agent_metrics
           union all select agent_id from agent_executions) a group by agent_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(on, [("clx9adminid".to_string(), 8)]);
    // Key and name conflicts are settled within the agent, under its real id.
    let keys: Vec<String> =
        sqlx::query_scalar("select key from agent_memories where key is not null order by key")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(keys, ["pricing", "terms"]);
    let verified = backfill::verify(&db.url, &options).await.unwrap();
    assert!(verified.passed(), "{verified:#?}");

    // A second run adds nothing, also when it reads every table again.
    let before = counts(&mut conn).await;
    let again = backfill::run(&db.url, &options, &()).await.unwrap();
    assert_eq!(again.totals.inserted, 0);
    sqlx::raw_sql(
        "delete from agent_memory.backfill_tables; delete from agent_memory.backfill_chunks",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let reread = backfill::run(&db.url, &options, &()).await.unwrap();
    assert_eq!(
        (reread.totals.inserted, reread.totals.already_present),
        (0, 8)
    );
    assert_eq!(counts(&mut conn).await[..5], before[..5]);

    // Verify notices rows hung on another agent.
    sqlx::raw_sql(
        "insert into agents (id, name, created_at, updated_at) values ('x1', 'other', now(), now());
         update agent_tools set agent_id = 'x1'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let broken = backfill::verify(&db.url, &options).await.unwrap();
    let differing: Vec<&str> = broken
        .tables
        .iter()
        .filter_map(|t| t.difference.as_deref())
        .collect();
    assert_eq!(
        differing,
        [
            r#"2 rows have agent_id "x1" (first seen), not "clx9adminid", the id of the agents row named "sales""#
        ]
    );
}

#[tokio::test]
async fn an_agent_whose_id_another_agent_holds_is_reported_not_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("sales/main.db"),
        "create table memory (key text, content text); insert into memory values ('k', 'v');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    sqlx::raw_sql(
        "insert into agents (id, name, created_at, updated_at)
         values ('sales', 'sales_eu', now(), now())",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let report = backfill::run(&db.url, &BackfillOptions::new(dir.path()), &())
        .await
        .unwrap();
    assert!(!report.succeeded());
    let memory = table_report(&report, "sales/main.db", "memory");
    assert_eq!(memory.failed.len(), 1);
    assert!(
        memory.failed[0]
            .reason
            .contains(r#"its id "sales" is taken by the agent named "sales_eu""#),
        "{:?}",
        memory.failed
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing lands on the other agent");
}

/// Which row holds each key, per agent: `(agent, key, source_db, source_rowid)`, and how
/// many rows arrived with `metadata.key_conflict`.
async fn key_holders(db: &TestDatabase) -> (Vec<(String, String, String, Option<i64>)>, i64) {
    let mut conn = connect(db).await;
    let holders = sqlx::query_as(
        "select agent_id, key, metadata->>'source_db', (metadata->>'source_rowid')::bigint
         from agent_memories where key is not null order by agent_id, key",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let conflicts =
        sqlx::query_scalar("select count(*) from agent_memories where metadata ? 'key_conflict'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    (holders, conflicts)
}

#[tokio::test]
async fn key_conflicts_keep_the_newest_whatever_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "create table memory (key text, created_at text);
               insert into memory values ('k', '2024-01-01'), ('k', '2024-06-01'),
                                         ('j', '2024-01-01'), ('k', '2024-06-01');";
    for file in ["a/one.db", "a/two.db", "b/one.db"] {
        legacy_file(&dir.path().join(file), sql).await;
    }
    // Without rowids and with the same time, the greater id keeps the key.
    legacy_file(
        &dir.path().join("c/keyed.db"),
        "create table memory (n integer primary key, key text, created_at text) without rowid;
         insert into memory values (1, 'k', '2024-01-01'), (2, 'k', '2024-01-01'),
                                   (3, 'l', '2024-01-01'), (4, 'l', '2024-01-01'),
                                   (5, 'm', '2024-01-01'), (6, 'm', '2024-01-01'),
                                   (7, 'n', '2024-01-01'), (8, 'n', '2024-01-01');",
    )
    .await;
    let holders = [
        ("a", "j", "a/two.db", Some(3)),
        // Newest first, then the later file, then the later row.
        ("a", "k", "a/two.db", Some(4)),
        ("b", "j", "b/one.db", Some(3)),
        ("b", "k", "b/one.db", Some(4)),
        ("c", "k", "c/keyed.db", None),
        ("c", "l", "c/keyed.db", None),
        ("c", "m", "c/keyed.db", None),
        ("c", "n", "c/keyed.db", None),
    ]
    .map(|(agent, key, db, rowid)| (agent.to_string(), key.to_string(), db.to_string(), rowid));
    // All rows of a file in one batch, and every row in a batch of its own: the rule is
    // the same within a batch and against rows loaded before.
    let mut winners = Vec::new();
    for batch_size in [1000, 1] {
        let db = TestDatabase::migrated().await;
        let mut options = BackfillOptions::new(dir.path());
        options.read.batch_size = batch_size;
        let report = backfill::run(&db.url, &options, &()).await.unwrap();
        assert!(report.succeeded(), "{report:#?}");
        assert_eq!(report.totals.inserted, 20, "no row is dropped");
        let (held, conflicts) = key_holders(&db).await;
        assert_eq!(held, holders, "batches of {batch_size}");
        assert_eq!(conflicts, 12, "batches of {batch_size}");
        let mut conn = connect(&db).await;
        let ids: Vec<(String, uuid::Uuid, bool)> = sqlx::query_as(
            "select coalesce(key, metadata->>'key_conflict'), id, key is not null
             from agent_memories where agent_id = 'c' order by 1, id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(ids.len(), 8);
        for pair in ids.chunks(2) {
            assert!(
                !pair[0].2 && pair[1].2,
                "the greater id wins a full tie: {pair:?}"
            );
        }
        winners.push(ids);
    }
    assert_eq!(winners[0], winners[1]);
}

/// A legacy file whose `memory` table holds `rows` (key, content, second of the row's
/// time on 2024-01-01), their rowids 1,024 apart: each a chunk of the catch-up
/// bookkeeping of its own, so that a batch of N rows holds N chunks.
async fn a_chunk_a_row(path: &Path, rows: impl IntoIterator<Item = (String, String, i64)>) {
    let mut sql = String::from(
        "create table memory (id integer primary key, key text, content text, created_at text);",
    );
    for (n, (key, content, second)) in rows.into_iter().enumerate() {
        sql.push_str(&format!(
            "insert into memory values ({}, '{key}', '{content}', '2024-01-01 00:00:{second:02}');",
            (n + 1) * 1024
        ));
    }
    legacy_file(path, &sql).await;
}

/// A file no run has loaded goes straight into the contract table, batch by batch, until
/// a batch holds a key deleted through the library or one a row already holds: those
/// batches, and the table's batches after them, settle their keys the long way, with the
/// same outcome as a run that never took the short one.
#[tokio::test]
async fn batches_that_conflict_leave_the_fast_path_with_the_same_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let rows = (0..60).map(|n| {
        let key = match n {
            33 => "gone".to_string(),
            47 => "held".to_string(),
            _ => format!("k{n:02}"),
        };
        (key, format!("legacy {n}"), n)
    });
    a_chunk_a_row(&dir.path().join("alpha/main.db"), rows).await;
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    let alpha = AgentId::new("alpha").unwrap();
    backend
        .apply_memory(&alpha, &Memory::new("gone", json!("stored, then deleted")))
        .await
        .unwrap();
    assert!(backend.delete_memory(&alpha, "gone").await.unwrap());
    backend
        .apply_memory(&alpha, &Memory::new("held", json!("the agent's own")))
        .await
        .unwrap();

    let mut options = BackfillOptions::new(dir.path());
    options.read.batch_size = 10;
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let table = table_report(&report, "alpha/main.db", "memory");
    assert_eq!(table.read, 60);
    assert_eq!(
        table.inserted, 59,
        "every row but the deleted key's: {table:#?}"
    );
    assert_eq!(table.outranked, 1, "{table:#?}");

    let mut conn = connect(&db).await;
    let keys_held = "select key from agent_memories where key is not null order by key";
    let keys: Vec<String> = sqlx::query_scalar(keys_held)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        59,
        "58 legacy keys and the agent's own: {keys:?}"
    );
    assert!(!keys.iter().any(|k| k == "gone"), "a deleted key came back");
    assert!(keys.iter().any(|k| k == "k59"), "{keys:?}");
    assert_eq!(
        backend
            .get_memory(&alpha, "held")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!("the agent's own")
    );
    let (key_conflict, content): (String, String) = sqlx::query_as(
        "select metadata->>'key_conflict', content from agent_memories
         where metadata ? 'key_conflict'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(key_conflict, "held");
    assert!(content.contains("legacy 47"), "{content}");
    // Run again: nothing changes, nothing is duplicated.
    let again = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(again.succeeded(), "{again:#?}");
    assert_eq!(again.totals.inserted, 0, "{again:#?}");
    let count = "select count(*) from agent_memories";
    let rows: i64 = sqlx::query_scalar(count)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 60, "59 legacy rows and the agent's own");
}

/// Batches of new rows load two at a time, on two connections. When both hold the same
/// keys, the key still goes to the newest row, as when every row loads in one batch.
#[tokio::test]
async fn batches_loading_at_once_settle_shared_keys_by_the_same_rule() {
    let dir = tempfile::tempdir().unwrap();
    // Two rows in a row share a key, so batches loading together hold the same key;
    // times out of order.
    let rows: Vec<(String, String, i64)> = (0..48i64)
        .map(|n| {
            (
                format!("k{}", (n / 2) % 4),
                format!("row {n}"),
                (n * 37) % 48,
            )
        })
        .collect();
    let mut newest = std::collections::BTreeMap::new();
    for (n, (key, _, second)) in rows.iter().enumerate() {
        let entry = newest.entry(key.clone()).or_insert((*second, n));
        if (*second, n) > *entry {
            *entry = (*second, n);
        }
    }
    a_chunk_a_row(&dir.path().join("alpha/main.db"), rows).await;
    let expected: Vec<(String, String)> = newest
        .into_iter()
        .map(|(key, (_, n))| (key, format!("row {n}")))
        .collect();
    for batch_size in [1, 3, 1000] {
        let db = TestDatabase::migrated().await;
        let mut options = BackfillOptions::new(dir.path());
        options.read.batch_size = batch_size;
        let report = backfill::run(&db.url, &options, &()).await.unwrap();
        assert!(report.succeeded(), "{report:#?}");
        assert_eq!(report.totals.inserted, 48, "batches of {batch_size}");
        let mut conn = connect(&db).await;
        let held: Vec<(String, String)> = sqlx::query_as(
            "select key, content::jsonb->>'content' from agent_memories
             where key is not null order by key",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(held, expected, "batches of {batch_size}");
        let conflicts: i64 = sqlx::query_scalar(
            "select count(*) from agent_memories where metadata ? 'key_conflict'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(conflicts, 44, "batches of {batch_size}");
    }
}

/// The second loading connection dies in the middle of a batch (its server process is
/// ended): that batch is loaded again on the run's own connection, and every row arrives
/// once.
#[tokio::test]
async fn a_batch_whose_second_connection_dies_is_loaded_on_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let rows = (0..12).map(|n| (format!("k{n}"), format!("row {n}"), n));
    a_chunk_a_row(&dir.path().join("alpha/main.db"), rows).await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    // The second connection's inserts take a while, so there is time to end one.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create function slow_second() returns trigger language plpgsql as $$
         begin
             if current_setting('application_name') = '{}' then
                 perform pg_sleep(0.3);
             end if;
             return null;
         end $$;
         create trigger slow_second before insert on agent_memories
             for each statement execute function slow_second();",
        backfill::SECOND_CONNECTION
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let killer = {
        let mut conn = connect(&db).await;
        tokio::spawn(async move {
            for _ in 0..500 {
                let ended: Vec<bool> = sqlx::query_scalar(
                    "select pg_terminate_backend(pid) from pg_stat_activity
                     where application_name = $1 and state = 'active'
                       and query ilike 'insert into agent_memories%'",
                )
                .bind(backfill::SECOND_CONNECTION)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                if ended.contains(&true) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        })
    };
    let mut options = BackfillOptions::new(dir.path());
    options.read.batch_size = 1;
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(
        killer.await.unwrap(),
        "the second connection was never seen inserting"
    );
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(report.totals.inserted, 12, "{report:#?}");
    let keys: Vec<String> =
        sqlx::query_scalar("select key from agent_memories order by created_at")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let expected: Vec<String> = (0..12).map(|n| format!("k{n}")).collect();
    assert_eq!(keys, expected);
}
