//! The backfill command on files that LangGraph, mem0 and CrewAI wrote themselves
//! (`tests/fixtures/frameworks`, made by its `make.py`): the first run moves every row
//! exactly; after the agents went on writing (rows added, updated in place, deleted,
//! rowids reused) and a write was made through the library, a second run leaves
//! PostgreSQL equal to the files again, with the library's write intact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use memshift::legacy::{self, ReadOptions, TableMap, Target};
use memshift::testing::postgres::TestDatabase;
use memshift::{AgentId, Memory, MemoryBackend};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};

mod common;

/// The tables the frameworks write and where each goes: what an operator passes today
/// as `--map TABLE=TARGET`. `store_migrations` (the store's schema version) and
/// `pending_feedback` (empty) stay unmapped, and are reported so.
const MAPS: [(&str, Target); 7] = [
    ("checkpoints", Target::Executions),
    ("writes", Target::Executions),
    ("store", Target::Memories),
    ("history", Target::Memories),
    ("messages", Target::Memories),
    ("latest_kickoff_task_outputs", Target::Executions),
    ("flow_states", Target::Executions),
];

/// The committed snapshot `which` (`before` or `after`).
fn fixtures(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/frameworks")
        .join(which)
}

/// Copies the SQLite files of snapshot `which` into `agents`, over the files already
/// there: the agents' frameworks changed them in place.
fn lay(which: &str, agents: &Path) {
    let from = fixtures(which);
    let files = sqlite_files(&from);
    assert!(
        files.len() >= 5,
        "{} holds the framework files",
        from.display()
    );
    for file in files {
        let to = agents.join(file.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
}

fn sqlite_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every file under `root` with its bytes: a source the backfill read must be unchanged,
/// and no file (a `-wal`, a `-shm`) may appear beside it.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    sqlite_files(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The backfill command with the maps, on `agents`, writing its report to `reports`.
fn backfill(db: &TestDatabase, agents: &Path, reports: &Path, extra: &[&str]) -> (i32, String) {
    let mut command = std::process::Command::new(common::example_path("backfill"));
    command
        .arg("--agents-path")
        .arg(agents)
        .arg("--report-dir")
        .arg(reports)
        .args(extra)
        .env("DATABASE_URL", &db.url)
        .env_remove("AGENTS_PATH")
        .env("RUST_LOG", "warn");
    for (table, target) in MAPS {
        command.arg("--map").arg(format!("{table}={target}"));
    }
    let out = command.output().expect("run the backfill example");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// The report a run wrote (its path is what the run printed on standard output).
fn report(said: &str) -> Value {
    let path = said
        .lines()
        .rev()
        .find(|l| l.ends_with(".json"))
        .unwrap_or_else(|| panic!("the run printed its report's path: {said}"));
    serde_json::from_str(&std::fs::read_to_string(path.trim()).unwrap()).unwrap()
}

/// The migration time the expected rows are converted with: a row without a time of
/// its own carries it, and its real `created_at` is then the run's.
fn no_time() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(946_684_800, 0).unwrap()
}

/// One row as PostgreSQL must hold it.
struct Want {
    table: &'static str,
    content: String,
    /// `None` when the row has no time of its own.
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    metadata: Value,
    /// A memory's key.
    key: Option<String>,
}

/// Every row of the mapped tables under `agents`, by id, as the legacy layer converts it.
async fn expected(agents: &Path) -> BTreeMap<uuid::Uuid, Want> {
    let map = MAPS.iter().fold(TableMap::new(), |map, (table, target)| {
        map.with(*table, *target)
    });
    for found in legacy::discover(agents, &ReadOptions::default()).await {
        assert_eq!(
            found.probe,
            legacy::Probe::Legacy,
            "{} is a legacy file",
            found.source_db
        );
    }
    let mut rows = BTreeMap::new();
    for converted in common::legacy_rows(agents, &map, no_time()).await {
        let record = &converted.record;
        let mut metadata = Value::Object(record.metadata().clone());
        metadata.as_object_mut().unwrap().remove("migrated_at");
        let key = match record {
            legacy::ContractRecord::Memory(m) => m.key.clone(),
            _ => None,
        };
        let want = Want {
            table: record.target().table(),
            content: record.content().to_string(),
            created_at: Some(record.created_at()).filter(|at| *at != no_time()),
            metadata,
            key,
        };
        assert!(
            rows.insert(record.id(), want).is_none(),
            "two rows with one id"
        );
    }
    rows
}

/// One row PostgreSQL holds.
struct Held {
    table: &'static str,
    content: String,
    created_at: chrono::DateTime<chrono::Utc>,
    metadata: Value,
    key: Option<String>,
}

/// Every row of the four contract tables.
async fn held(conn: &mut PgConnection) -> BTreeMap<uuid::Uuid, Held> {
    let mut out = BTreeMap::new();
    for target in [
        Target::Memories,
        Target::Tools,
        Target::Metrics,
        Target::Executions,
    ] {
        let key = if target == Target::Memories {
            "key"
        } else {
            "null::text"
        };
        let sql = format!(
            "select id, content, created_at, metadata, {key} from {}",
            target.table()
        );
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await
            .unwrap()
        {
            out.insert(
                row.get(0),
                Held {
                    table: target.table(),
                    content: row.get(1),
                    created_at: row.get(2),
                    metadata: row.get::<sqlx::types::Json<Value>, _>(3).0,
                    key: row.get(4),
                },
            );
        }
    }
    out
}

/// How PostgreSQL differs from the files under `agents`, one line per difference (empty
/// when it holds every row exactly, and nothing else). Rows in `library` were written
/// through the library since: they are expected to hold the library's value, whatever
/// the files say of their id.
async fn differences(
    conn: &mut PgConnection,
    agents: &Path,
    library: &BTreeSet<uuid::Uuid>,
) -> Vec<String> {
    let want = expected(agents).await;
    let mut have = held(conn).await;
    let mut out = Vec::new();
    let (mut missing, mut stale, mut extra) = (0, 0, 0);
    for (id, want) in &want {
        if library.contains(id) {
            have.remove(id);
            continue;
        }
        let Some(row) = have.remove(id) else {
            missing += 1;
            out.push(format!(
                "missing: {} {} rowid {} ({})",
                want.metadata["source_db"],
                want.metadata["source_table"],
                want.metadata["source_rowid"],
                want.table
            ));
            continue;
        };
        let mut metadata = row.metadata.clone();
        let conflict = metadata
            .as_object_mut()
            .unwrap()
            .remove("key_conflict")
            .and_then(|k| k.as_str().map(str::to_owned));
        for volatile in ["migration_run", "migrated_at"] {
            metadata.as_object_mut().unwrap().remove(volatile);
        }
        let mut wrong = Vec::new();
        if row.table != want.table {
            wrong.push(format!("in {} instead of {}", row.table, want.table));
        }
        if row.content != want.content {
            wrong.push(divergence(&row.content, &want.content));
        }
        if want.created_at.is_some_and(|at| at != row.created_at) {
            wrong.push(format!("created_at {}", row.created_at));
        }
        if metadata != want.metadata {
            wrong.push(format!("metadata {metadata}"));
        }
        // A key another row holds arrives without it, naming it.
        if row.key != want.key && !(row.key.is_none() && conflict == want.key) {
            wrong.push(format!("key {:?} instead of {:?}", row.key, want.key));
        }
        if !wrong.is_empty() {
            stale += 1;
            out.push(format!(
                "stale: {} {} rowid {}: {}",
                want.metadata["source_db"],
                want.metadata["source_table"],
                want.metadata["source_rowid"],
                wrong.join("; ")
            ));
        }
    }
    for (id, row) in have {
        if library.contains(&id) {
            continue;
        }
        extra += 1;
        out.push(format!(
            "extra: {} {id}: {} {} rowid {}",
            row.table,
            row.metadata["source_db"],
            row.metadata["source_table"],
            row.metadata["source_rowid"]
        ));
    }
    if !out.is_empty() {
        out.sort();
        out.insert(
            0,
            format!(
                "{} source rows: {missing} missing, {stale} stale, {extra} rows not in the files",
                want.len()
            ),
        );
    }
    out
}

/// Where `held` and `wanted` part, with a little of each from there: enough to see the
/// difference in a long JSON text.
fn divergence(held: &str, wanted: &str) -> String {
    let at = held
        .char_indices()
        .zip(wanted.chars())
        .find(|((_, h), w)| h != w)
        .map_or(held.len().min(wanted.len()), |((at, _), _)| at);
    let from = held[..at]
        .char_indices()
        .rev()
        .nth(20)
        .map_or(0, |(start, _)| start);
    let piece = |text: &str| text[from..].chars().take(60).collect::<String>();
    format!("content ...{} instead of ...{}", piece(held), piece(wanted))
}

/// The report's unmapped tables, as `file/table`.
fn unmapped(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for file in report["files"].as_array().unwrap() {
        for table in file["tables"].as_array().unwrap() {
            if table["skipped"]
                .as_str()
                .is_some_and(|why| why.starts_with("unmapped"))
            {
                out.push(format!(
                    "{}/{}",
                    file["source_db"].as_str().unwrap(),
                    table["table"].as_str().unwrap()
                ));
            }
        }
    }
    out.sort();
    out
}

/// A first run over the files as the frameworks left them, checked exactly.
async fn first_run(db: &TestDatabase, agents: &Path, reports: &Path) {
    lay("before", agents);
    let sources = contents(agents);
    let (code, said) = backfill(db, agents, reports, &[]);
    assert_eq!(code, 0, "the first run succeeds: {said}");
    let report = report(&said);
    let rows = expected(agents).await.len() as u64;
    assert!(rows > 50, "the fixtures hold rows of every framework");
    assert_eq!(report["totals"]["read"], json!(rows), "{report:#}");
    assert_eq!(report["totals"]["inserted"], json!(rows), "{report:#}");
    assert_eq!(
        unmapped(&report),
        [
            "crew/flow_states.db/pending_feedback",
            "planner/store.sqlite/store_migrations"
        ],
        "the tables left out are reported"
    );
    assert!(
        contents(agents) == sources,
        "the run left the framework files as they were, and no file beside them"
    );

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let differ = differences(&mut conn, agents, &BTreeSet::new()).await;
    assert!(
        differ.is_empty(),
        "after the first run:\n{}",
        differ.join("\n")
    );
    let agents_rows: Vec<String> = sqlx::query_scalar("select name from agents order by name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(agents_rows, ["assistant", "crew", "planner"]);

    let (code, said) = backfill(db, agents, reports, &["--verify"]);
    assert_eq!(code, 0, "--verify passes after the first run: {said}");
    assert!(contents(agents) == sources, "--verify changed no file");
}

#[tokio::test]
async fn the_first_run_moves_every_framework_row_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let db = TestDatabase::migrated().await;
    first_run(&db, &agents, dir.path()).await;

    // A run again with nothing changed moves nothing and changes nothing.
    let (code, said) = backfill(&db, &agents, dir.path(), &[]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(report(&said)["totals"]["inserted"], json!(0));
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let differ = differences(&mut conn, &agents, &BTreeSet::new()).await;
    assert!(
        differ.is_empty(),
        "after a second run:\n{}",
        differ.join("\n")
    );
}

#[tokio::test]
async fn a_catch_up_run_follows_the_frameworks_and_keeps_library_writes() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let db = TestDatabase::migrated().await;
    first_run(&db, &agents, dir.path()).await;

    // The agents go on: the frameworks change their files in place (make.py's second
    // session), and the planner, already moved, writes two notes through the library:
    // one whose row the file updates in place (a TTL refresh), one whose row the file
    // replaces under a new rowid (INSERT OR REPLACE).
    let was = expected(&agents).await;
    lay("after", &agents);
    let now = expected(&agents).await;
    let sources = contents(&agents);
    let planner = AgentId::new("planner").unwrap();
    let postgres = db.backend().await;
    let mut library = BTreeSet::new();
    for (key, value) in [
        (
            "printer",
            json!({"room": "3.01", "written": "through the library"}),
        ),
        (
            "wifi",
            json!({"ssid": "harbour-office", "written": "through the library"}),
        ),
    ] {
        let stored = postgres
            .put_memory(&planner, &Memory::new(key, value))
            .await
            .unwrap();
        library.insert(stored.id);
    }

    let (code, said) = backfill(&db, &agents, dir.path(), &[]);
    assert_eq!(code, 0, "the catch-up run succeeds: {said}");
    // It says what it did: each change at the source once, less the two rows the
    // library's writes outrank.
    let added = now.keys().filter(|id| !was.contains_key(id)).count();
    let changed: BTreeSet<_> = now
        .iter()
        .filter(|(id, want)| was.get(id).is_some_and(|w| w.content != want.content))
        .map(|(id, _)| *id)
        .collect();
    let deleted: BTreeSet<_> = was
        .keys()
        .filter(|id| !now.contains_key(id))
        .copied()
        .collect();
    assert_eq!(
        (added, changed.len(), deleted.len()),
        (30, 5, 19),
        "the fixtures' changes, as make.py printed them (README.md)"
    );
    let on_changed = library.intersection(&changed).count();
    let on_deleted = library.intersection(&deleted).count();
    assert_eq!(
        (on_changed, on_deleted),
        (1, 1),
        "one library write on a row the files changed, one on a row they deleted"
    );
    let totals = &report(&said)["totals"];
    assert_eq!(
        [
            &totals["inserted"],
            &totals["updated"],
            &totals["deleted"],
            &totals["outranked"],
            &totals["failed"]
        ],
        [
            &json!(added),
            &json!(changed.len() - on_changed),
            &json!(deleted.len() - on_deleted),
            &json!(on_changed + on_deleted),
            &json!(0)
        ],
        "inserted, updated, deleted, outranked, failed: {totals:#}"
    );
    assert!(
        contents(&agents) == sources,
        "the catch-up left the framework files as they were"
    );

    // The library's writes won: the same values, under their keys, with the library's
    // metadata (not the backfill's).
    for (key, room_or_ssid) in [("printer", "3.01"), ("wifi", "harbour-office")] {
        let memory = postgres
            .get_memory(&planner, key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the library's {key:?} survived the catch-up"));
        assert!(
            memory.content.as_str().contains(room_or_ssid)
                && memory.content.as_str().contains("through the library"),
            "{key}: {}",
            memory.content.as_str()
        );
        assert!(
            !memory.metadata.contains_key("migration_run"),
            "{key}: {:?}",
            memory.metadata
        );
        assert!(library.contains(&memory.id), "{key} kept its row");
    }

    // Everything else is what the files hold now: new rows in, changed rows changed,
    // reused rowids holding their new rows, deleted rows gone.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let differ = differences(&mut conn, &agents, &library).await;
    assert!(
        differ.is_empty(),
        "after the catch-up run:\n{}",
        differ.join("\n")
    );

    let (code, said) = backfill(&db, &agents, dir.path(), &["--verify"]);
    assert_eq!(code, 0, "--verify passes after the catch-up: {said}");
}
