//! Later backfill runs over legacy files that kept changing: PostgreSQL is brought to the
//! files' current state (rows added, changed, deleted, rowids reused), writes and deletes
//! made through the library since always win, and a run over unchanged files reads
//! nothing. Against a real PostgreSQL.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use memshift::backfill::{self, BackfillOptions, Report};
use memshift::legacy::{self, RowOrigin, TableMap, Target};
use memshift::testing::postgres::TestDatabase;
use memshift::{AgentId, Memory, MemoryBackend, PostgresBackend};
use serde_json::json;
use sqlx::{Connection, PgConnection};

mod common;
use common::legacy_file;

/// Runs `sql` on a legacy file that exists, as an agent still writing it would.
async fn agent_writes(path: &Path, sql: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Sets the modification time of every file under `root` an hour back, so a run trusts
/// their stamps (a stamp younger than two seconds is not trusted).
fn settle(root: &Path) {
    let past = SystemTime::now() - Duration::from_secs(3600);
    for entry in walk(root) {
        std::fs::File::options()
            .write(true)
            .open(&entry)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// What PostgreSQL must hold of the legacy tables under `root`: every row as the
/// contract converts it, by id (content only).
async fn sources(root: &Path, map: &TableMap) -> BTreeMap<uuid::Uuid, (Target, String)> {
    common::legacy_rows(root, map, chrono::Utc::now())
        .await
        .into_iter()
        .map(|row| {
            let id = row.record.id();
            (id, (row.record.target(), row.record.content().to_string()))
        })
        .collect()
}

/// Every row PostgreSQL holds that came from a legacy table, by id.
async fn migrated(conn: &mut PgConnection) -> BTreeMap<uuid::Uuid, (Target, String)> {
    let mut rows = BTreeMap::new();
    for target in [
        Target::Memories,
        Target::Tools,
        Target::Metrics,
        Target::Executions,
    ] {
        let sql = format!(
            "select id, content from {} where metadata ? 'source_table'",
            target.table()
        );
        let found: Vec<(uuid::Uuid, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        rows.extend(found.into_iter().map(|(id, c)| (id, (target, c))));
    }
    rows
}

/// PostgreSQL holds exactly the sources' rows, each exact, apart from `outranked` ids
/// (rows the library wrote or deleted since).
async fn assert_mirrors(conn: &mut PgConnection, root: &Path, outranked: &[uuid::Uuid]) {
    let mut want = sources(root, &TableMap::new()).await;
    let mut have = migrated(conn).await;
    for id in outranked {
        want.remove(id);
        have.remove(id);
    }
    let missing: Vec<_> = want.keys().filter(|id| !have.contains_key(id)).collect();
    let extra: Vec<_> = have.keys().filter(|id| !want.contains_key(id)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "source rows missing in PostgreSQL: {missing:?}; rows not in any source: {extra:?}"
    );
    for (id, row) in &want {
        assert_eq!(&have[id], row, "row {id} is not the source's");
    }
}

fn id_of(agent: &str, source_db: &str, table: &str, rowid: i64) -> uuid::Uuid {
    let agent = AgentId::new(agent).unwrap();
    let origin = RowOrigin {
        agent: &agent,
        source: "",
        source_db,
    };
    legacy::row_id(&origin, table, &json!(rowid).into())
}

async fn run(db: &TestDatabase, root: &Path) -> Report {
    let report = backfill::run(&db.url, &BackfillOptions::new(root), &())
        .await
        .unwrap();
    assert!(report.succeeded(), "{report:#?}");
    report
}

#[tokio::test]
async fn a_later_run_brings_postgres_to_the_files_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("alpha/main.db");
    legacy_file(
        &main,
        "create table memory (key text, content text);
         insert into memory values ('pricing', 'v1'), ('greeting', 'hello'), ('plan', 'draft'),
                                   ('gone', 'to delete'), (null, 'last row');
         create table tools (name text, spec text);
         insert into tools values ('search', '{}'), ('fetch', '{}');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let first = run(&db, dir.path()).await;
    assert_eq!(first.totals.inserted, 7);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    assert_mirrors(&mut conn, dir.path(), &[]).await;

    // The agent keeps writing its legacy file: a new row, updates in place, a delete,
    // and the last rowid deleted and reused for another row. Meanwhile an agent already
    // moved writes one migrated key through the library and deletes another, both of
    // which the legacy file changes too.
    agent_writes(
        &main,
        "insert into memory values ('new', 'added later');
         update memory set content = 'v2' where key = 'pricing';
         update memory set content = 'legacy hello' where key = 'greeting';
         update memory set content = 'final' where key = 'plan';
         delete from memory where key = 'gone';
         delete from memory where rowid = 5;
         insert into memory (rowid, key, content) values (5, 'reused', 'another row');
         delete from tools where name = 'fetch';",
    )
    .await;
    let backend = PostgresBackend::connect(&db.url).await.unwrap();
    let alpha = AgentId::new("alpha").unwrap();
    backend
        .put_memory(&alpha, &Memory::new("greeting", json!("the agent's own")))
        .await
        .unwrap();
    assert!(backend.delete_memory(&alpha, "plan").await.unwrap());

    let later = run(&db, dir.path()).await;
    let t = &later.totals;
    assert_eq!(
        (
            t.inserted,
            t.updated,
            t.deleted,
            t.outranked,
            t.unchanged_rows
        ),
        (1, 2, 2, 2, 1),
        "one new row; 'pricing' and rowid 5 replaced; 'gone' and tool 'fetch' deleted; \
         the library's write and delete outrank the legacy rows' changes; tool 'search' \
         unchanged: {t:#?}"
    );
    let greeting = id_of("alpha", "alpha/main.db", "memory", 2);
    let plan = id_of("alpha", "alpha/main.db", "memory", 3);
    assert_mirrors(&mut conn, dir.path(), &[greeting, plan]).await;
    let value = backend
        .get_memory(&alpha, "greeting")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        value.content.as_str(),
        "\"the agent's own\"",
        "a library write survives the catch-up"
    );
    assert!(
        backend.get_memory(&alpha, "plan").await.unwrap().is_none(),
        "a key deleted through the library stays deleted"
    );
    let plan_rows: i64 = sqlx::query_scalar("select count(*) from agent_memories where id = $1")
        .bind(plan)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(plan_rows, 0, "not even without its key");
    let pricing = backend
        .get_memory(&alpha, "pricing")
        .await
        .unwrap()
        .unwrap();
    assert!(pricing.content.as_str().contains("v2"), "{pricing:?}");
    backend.close().await;
}

#[tokio::test]
async fn a_run_over_unchanged_files_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("alpha/main.db");
    legacy_file(
        &main,
        "create table memory (key text, content text);
         insert into memory values ('a', '1'), ('b', '2');
         create table metrics (name text, value real);
         insert into metrics values ('latency', 1.5);",
    )
    .await;
    settle(dir.path());
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    let again = run(&db, dir.path()).await;
    assert_eq!(
        (again.totals.read, again.totals.unchanged_tables),
        (0, 2),
        "{again:#?}"
    );

    // One write to the file: its tables are read again, and only the change moves.
    agent_writes(&main, "insert into memory values ('c', '3');").await;
    settle(dir.path());
    let changed = run(&db, dir.path()).await;
    assert_eq!(changed.totals.read, 4, "{changed:#?}");
    assert_eq!(
        (changed.totals.inserted, changed.totals.unchanged_rows),
        (1, 3),
        "the unchanged rows are not sent again"
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    assert_mirrors(&mut conn, dir.path(), &[]).await;
}

#[tokio::test]
async fn a_table_whose_map_changed_moves_to_its_new_target() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/main.db"),
        "create table notes (name text, body text);
         insert into notes values ('one', 'first'), ('two', 'second');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let mut options = BackfillOptions::new(dir.path());
    options.map = TableMap::new().with("notes", Target::Memories);
    backfill::run(&db.url, &options, &()).await.unwrap();
    options.map = TableMap::new().with("notes", Target::Tools);
    let moved = backfill::run(&db.url, &options, &()).await.unwrap();
    let notes = &moved.files[0].tables[0];
    assert_eq!(notes.moved_from.as_deref(), Some("agent_memories"));
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let (memories, tools): (i64, i64) = sqlx::query_as(
        "select (select count(*) from agent_memories), (select count(*) from agent_tools)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        (memories, tools),
        (0, 2),
        "the rows are in the new target only"
    );
}

#[tokio::test]
async fn rows_of_a_table_dropped_from_its_file_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("alpha/main.db");
    legacy_file(
        &main,
        "create table memory (key text, content text); insert into memory values ('a', '1');
         create table tools (name text); insert into tools values ('search');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    agent_writes(&main, "drop table tools;").await;
    let later = run(&db, dir.path()).await;
    assert_eq!(later.totals.deleted, 1, "{later:#?}");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    assert_mirrors(&mut conn, dir.path(), &[]).await;
}

#[tokio::test]
async fn a_key_goes_to_the_next_row_when_its_holder_is_deleted_at_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("alpha/main.db");
    legacy_file(
        &main,
        "create table memory (key text, content text, created_at text);
         insert into memory values ('pricing', 'older', '2024-01-01'),
                                   ('pricing', 'newer', '2025-01-01');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    let backend = PostgresBackend::connect(&db.url).await.unwrap();
    let alpha = AgentId::new("alpha").unwrap();
    let holder = backend
        .get_memory(&alpha, "pricing")
        .await
        .unwrap()
        .unwrap();
    assert!(holder.content.as_str().contains("newer"));
    agent_writes(&main, "delete from memory where content = 'newer';").await;
    run(&db, dir.path()).await;
    let holder = backend
        .get_memory(&alpha, "pricing")
        .await
        .unwrap()
        .unwrap();
    assert!(
        holder.content.as_str().contains("older"),
        "the remaining legacy row of the key holds it now: {holder:?}"
    );
    backend.close().await;
}

#[tokio::test]
async fn a_rollback_never_brings_back_a_key_deleted_since_and_refuses_unknown_runs() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/main.db"),
        "create table memory (key text, content text);
         insert into memory values ('keep', 'kept'), ('forget', 'secret');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    let first = run(&db, dir.path()).await;
    let backend = PostgresBackend::connect(&db.url).await.unwrap();
    let alpha = AgentId::new("alpha").unwrap();
    assert!(backend.delete_memory(&alpha, "forget").await.unwrap());

    let unknown = backfill::rollback(&db.url, "no-such-run").await;
    let message = memshift::Chain(&unknown.unwrap_err()).to_string();
    assert!(message.contains("no-such-run"), "{message}");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1, "an unknown run id deletes nothing");

    let rolled = backfill::rollback(&db.url, &first.run_id).await.unwrap();
    assert_eq!(rolled.memories, 1);
    let again = run(&db, dir.path()).await;
    assert_eq!(
        (again.totals.inserted, again.totals.outranked),
        (1, 1),
        "{again:#?}"
    );
    let secret: i64 =
        sqlx::query_scalar("select count(*) from agent_memories where content like '%secret%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        secret, 0,
        "the deleted memory did not come back, with or without its key"
    );
    backend.close().await;
}

#[tokio::test]
async fn a_library_file_is_read_again_only_when_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentId::new("own").unwrap();
    let sqlite = memshift::SqliteBackend::new(dir.path());
    sqlite
        .put_memory(&agent, &Memory::new("a", json!(1)))
        .await
        .unwrap();
    sqlite.close().await;
    settle(dir.path());
    let db = TestDatabase::migrated().await;
    let first = run(&db, dir.path()).await;
    assert_eq!(first.totals.inserted, 1);
    let again = run(&db, dir.path()).await;
    assert_eq!(
        (again.totals.read, again.totals.unchanged_tables),
        (0, 1),
        "{again:#?}"
    );

    let sqlite = memshift::SqliteBackend::new(dir.path());
    sqlite
        .put_memory(&agent, &Memory::new("b", json!(2)))
        .await
        .unwrap();
    sqlite.close().await;
    let changed = run(&db, dir.path()).await;
    assert_eq!(changed.totals.inserted, 1, "{changed:#?}");
    let backend = PostgresBackend::connect(&db.url).await.unwrap();
    assert!(backend.get_memory(&agent, "b").await.unwrap().is_some());
    backend.close().await;
}

#[tokio::test]
async fn a_file_gone_from_the_tree_keeps_its_rows_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/main.db"),
        "create table memory (key text, content text); insert into memory values ('a', '1');",
    )
    .await;
    legacy_file(
        &dir.path().join("beta/main.db"),
        "create table memory (key text, content text); insert into memory values ('b', '2');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    // The agent moved, and its legacy folder was removed.
    std::fs::remove_dir_all(dir.path().join("beta")).unwrap();
    let later = run(&db, dir.path()).await;
    assert!(
        later
            .warnings
            .iter()
            .any(|w| w.contains("beta/main.db") && w.contains("stay in PostgreSQL")),
        "{:?}",
        later.warnings
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the moved agent's rows stay");
}

/// Requests a stop once the first batch was read.
struct StopAfterFirstBatch(memshift::backfill::Stop);

impl memshift::backfill::Progress for StopAfterFirstBatch {
    fn rows(&self, _: u64) {
        self.0.request();
    }
}

#[tokio::test]
async fn a_run_stopped_inside_a_table_deletes_nothing_it_did_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("alpha/main.db");
    legacy_file(&main, &common::memory_table(1500)).await;
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    // A change in the first chunk, so the stopped run reads the table again.
    agent_writes(
        &main,
        "update memory set content = 'changed' where rowid = 1;",
    )
    .await;
    let stop = memshift::backfill::Stop::new();
    let mut options = BackfillOptions::new(dir.path());
    options.stop = stop.clone();
    let stopped = backfill::run(&db.url, &options, &StopAfterFirstBatch(stop))
        .await
        .unwrap();
    assert_eq!(stopped.totals.read, 1000, "{stopped:#?}");
    assert_eq!(
        stopped.totals.deleted, 0,
        "rows after the stop are unknown, not deleted"
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1500);
    // The next run finishes the table.
    run(&db, dir.path()).await;
    assert_mirrors(&mut conn, dir.path(), &[]).await;
}

#[tokio::test]
async fn a_database_from_an_older_version_gets_the_catch_up_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(
        &dir.path().join("alpha/main.db"),
        "create table memory (key text, content text); insert into memory values ('a', '1');",
    )
    .await;
    let db = TestDatabase::migrated().await;
    // The bookkeeping as the version before catch-up runs made it.
    PostgresBackend::connect(&db.url)
        .await
        .unwrap()
        .close()
        .await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "drop table agent_memory.backfill_tables, agent_memory.backfill_chunks;
         alter table agent_memory.backfill_runs drop column source, drop column host,
             drop column agents_path, drop column options;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    run(&db, dir.path()).await;
    let again = run(&db, dir.path()).await;
    assert_eq!(again.totals.inserted, 0, "{again:#?}");
    let tables: i64 = sqlx::query_scalar("select count(*) from agent_memory.backfill_tables")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tables, 1);
}

/// A catch-up killed with -9 in the middle (a chunk's rows and its record commit in one
/// transaction) is finished by the next run: PostgreSQL ends equal to the sources, every
/// change moved once, no deleted row left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_killed_with_sigkill_is_finished_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("agent{i}/data.db")))
        .collect();
    for file in &files {
        legacy_file(file, &common::memory_table(3000)).await;
    }
    let db = TestDatabase::migrated().await;
    run(&db, dir.path()).await;
    for file in &files {
        agent_writes(
            file,
            "update memory set content = content || ' (changed)';
             delete from memory where rowid % 7 = 0;",
        )
        .await;
    }
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut child = std::process::Command::new(common::example_path("backfill"))
        .arg("--postgres-url")
        .arg(&db.url)
        .arg("--agents-path")
        .arg(dir.path())
        .args(["--batch-size", "100", "--report-dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let changed: i64 = sqlx::query_scalar(
            "select count(*) from agent_memories where content like '%(changed)%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if changed > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no change moved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let changed: i64 =
        sqlx::query_scalar("select count(*) from agent_memories where content like '%(changed)%'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    eprintln!("killed after {changed} of 10288 changed rows moved");
    run(&db, dir.path()).await;
    assert_mirrors(&mut conn, dir.path(), &[]).await;
}
