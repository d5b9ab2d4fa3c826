//! The backfill program on agents trees that work against it: FIFOs and symbolic links
//! among the files, agent folders copied from others, report folders that are missing,
//! runs in the same second, unreadable files, workers killed with -9 and backups that
//! run out of space. Each test runs the shipped program, as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memshift::backend::DualBackend;
use memshift::testing::postgres::TestDatabase;
use memshift::{
    AgentId, Execution, Json, Listing, Memory, MemoryBackend, Metric, SqliteBackend, Stage, Tool,
};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

mod common;
use common::{legacy_file, memory_rows_once, memory_table};

/// The id a library-layout row of agent `agent` gets in PostgreSQL when its own id `id`
/// is another agent's there (a copied agent folder), as docs/backfill.md gives it: UUID
/// v5 of `["<agent>","<id>"]` under the namespace UUID v5 of
/// `urn:agent-memory:copied-row:v1` in the URL namespace.
fn copied_row_id(agent: &AgentId, id: uuid::Uuid) -> uuid::Uuid {
    let namespace = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"urn:agent-memory:copied-row:v1",
    );
    let name = json!([agent.as_str(), id.to_string()]).to_string();
    uuid::Uuid::new_v5(&namespace, name.as_bytes())
}

/// How long any one run of the program may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(60);

/// The backfill program with a clean environment, `RUST_LOG=warn`, and the database
/// when one is given.
fn backfill(db: Option<&TestDatabase>) -> Command {
    let mut command = Command::new(common::example_path("backfill"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("AGENTS_PATH")
        .env_remove("MIGRATION_BACKUP_PATH")
        .env("RUST_LOG", "warn");
    if let Some(db) = db {
        command.env("DATABASE_URL", &db.url);
    }
    command
}

/// Runs `command` to its end, or kills it and fails the test when it takes longer than
/// [`PATIENCE`].
fn finish(mut command: Command, what: &str) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the backfill program");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.expect("wait for the backfill program"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} hung: no end after {PATIENCE:?}");
        }
    }
}

/// `backfill --agents-path AGENTS ARGS...`, with the database when given, run to its end.
fn program(db: Option<&TestDatabase>, agents: &Path, args: &[&str]) -> Output {
    let mut command = backfill(db);
    command.arg("--agents-path").arg(agents).args(args);
    finish(command, &format!("backfill {}", args.join(" ")))
}

/// A dry run that writes its report into `reports`.
fn dry_run(agents: &Path, reports: &Path) -> Output {
    program(None, agents, &["--dry-run", "--report-dir", text(reports)])
}

/// A run into `db` that writes its report into `reports`.
fn migrate(db: &TestDatabase, agents: &Path, reports: &Path) -> Output {
    program(Some(db), agents, &["--report-dir", text(reports)])
}

/// A backup into `to`.
fn back_up(agents: &Path, to: &Path) -> Output {
    program(None, agents, &["--backup", "--backup-path", text(to)])
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The report a run or dry run printed the path of.
fn printed_report(out: &Output) -> (PathBuf, Value) {
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("report {}: {e}; said: {}", path.display(), said(out)));
    (path, serde_json::from_str(&text).unwrap())
}

/// The report of file `source_db` in a report.
fn file_in<'a>(report: &'a Value, source_db: &str) -> &'a Value {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source_db"] == json!(source_db))
        .unwrap_or_else(|| panic!("no {source_db} in {report:#}"))
}

async fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[tokio::test]
async fn a_fifo_named_like_a_database_is_reported_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("alpha/main.db"), &memory_table(3)).await;
    mkfifo(&agents.join("alpha/pipe.db"));
    mkfifo(&agents.join("beta.sqlite"));
    let db = TestDatabase::migrated().await;

    let out = dry_run(&agents, dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let (_, report) = printed_report(&out);
    for fifo in ["alpha/pipe.db", "beta.sqlite"] {
        let problem = file_in(&report, fifo)["problem"]
            .as_str()
            .unwrap_or_default();
        assert!(problem.contains("not a regular file"), "{fifo}: {problem}");
    }
    assert_eq!(report["totals"]["read"], json!(3));

    let out = migrate(&db, &agents, dir.path());
    let text = said(&out);
    assert_eq!(out.status.code(), Some(3), "unreadable files: {text}");
    assert!(
        text.contains("pipe.db") && text.contains("not a regular file"),
        "{text}"
    );
    let mut conn = connect(&db).await;
    assert_eq!(
        count(&mut conn, "select count(*) from agent_memories").await,
        3
    );

    let backups = dir.path().join("backups");
    let out = back_up(&agents, &backups);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("not backed up: alpha/pipe.db") && text.contains("not a regular file"),
        "{text}"
    );
    let copied = files_under(&backups);
    assert!(
        copied.iter().any(|f| f.ends_with("alpha/main.db")),
        "{copied:?}"
    );
    assert!(!copied.iter().any(|f| f.contains("pipe")), "{copied:?}");
}

#[tokio::test]
async fn symbolic_links_that_leave_the_agents_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let outside = dir.path().join("elsewhere");
    legacy_file(
        &outside.join("secret.db"),
        "create table memory (key text, content text);
         insert into memory values ('password', 'not for the backfill');",
    )
    .await;
    legacy_file(&agents.join("alpha/main.db"), &memory_table(2)).await;
    legacy_file(&agents.join("beta/data.db"), &memory_table(4)).await;
    // A file link and a folder link out of the agents path, and a file link that stays
    // inside it (followed: read as the linking agent's file).
    std::os::unix::fs::symlink(outside.join("secret.db"), agents.join("alpha/stolen.db")).unwrap();
    std::os::unix::fs::symlink(&outside, agents.join("mallory")).unwrap();
    std::os::unix::fs::symlink("../beta/data.db", agents.join("alpha/shared.db")).unwrap();
    let db = TestDatabase::migrated().await;

    let out = dry_run(&agents, dir.path());
    let (_, report) = printed_report(&out);
    for link in ["alpha/stolen.db", "mallory"] {
        let problem = file_in(&report, link)["problem"]
            .as_str()
            .unwrap_or_default();
        assert!(
            problem.contains("outside the agents path"),
            "{link}: {problem}"
        );
    }

    let out = migrate(&db, &agents, dir.path());
    let text = said(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("stolen.db") && text.contains("outside the agents path"),
        "{text}"
    );
    let mut conn = connect(&db).await;
    assert_eq!(
        count(
            &mut conn,
            "select count(*) from agent_memories where content like '%not for the backfill%'"
        )
        .await,
        0,
        "nothing of the file outside was read"
    );
    // 2 of alpha's own, 4 of beta, and beta's 4 again through alpha's inside link.
    assert_eq!(
        count(&mut conn, "select count(*) from agent_memories").await,
        10
    );
    let (_, report) = printed_report(&out);
    assert!(file_in(&report, "alpha/shared.db")["problem"].is_null());

    let backups = dir.path().join("backups");
    let out = back_up(&agents, &backups);
    let text = said(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("not backed up: alpha/stolen.db"), "{text}");
    let copied = files_under(&backups);
    assert!(
        !copied
            .iter()
            .any(|f| f.contains("stolen") || f.contains("mallory")),
        "{copied:?}"
    );
    assert!(
        copied.iter().any(|f| f.ends_with("alpha/shared.db")),
        "{copied:?}"
    );
}

/// Agent `a`'s library file, with one record of each kind.
async fn library_agent(agents: &Path, agent: &AgentId) {
    let sqlite = SqliteBackend::new(agents);
    sqlite
        .put_memory(agent, &Memory::new("k", json!("the value")))
        .await
        .unwrap();
    sqlite
        .put_tool(agent, &Tool::new("search", json!({"k": 5})))
        .await
        .unwrap();
    sqlite
        .record_metric(agent, &Metric::new("latency", Some(1.5)))
        .await
        .unwrap();
    sqlite
        .log_execution(
            agent,
            &Execution::new(Some("ok".into()), json!({"step": 1})),
        )
        .await
        .unwrap();
    sqlite.close().await;
}

fn copy_folder(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-r").arg(from).arg(to).status();
    assert!(status.unwrap().success());
}

#[tokio::test]
async fn a_copied_agent_folder_moves_under_ids_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let (a, b) = (AgentId::new("a").unwrap(), AgentId::new("b").unwrap());
    library_agent(&agents, &a).await;
    copy_folder(&agents.join("a"), &agents.join("b"));
    let db = TestDatabase::migrated().await;
    for attempt in ["first", "second"] {
        let out = migrate(&db, &agents, dir.path());
        assert_eq!(out.status.code(), Some(0), "{attempt} run: {}", said(&out));
    }
    let pg = db.backend().await;
    let (in_a, in_b) = (
        pg.get_memory(&a, "k").await.unwrap().unwrap(),
        pg.get_memory(&b, "k").await.unwrap().unwrap(),
    );
    assert_eq!(in_b.content, Json::from(json!("the value")));
    assert_ne!(in_a.id, in_b.id);
    assert_eq!(in_b.id, copied_row_id(&b, in_a.id), "the documented rule");
    let tool_b = pg.get_tool(&b, "search").await.unwrap().unwrap();
    assert_eq!(
        tool_b.id,
        copied_row_id(&b, pg.get_tool(&a, "search").await.unwrap().unwrap().id)
    );
    for agent in [&a, &b] {
        let listing = Listing::default();
        assert_eq!(pg.list_metrics(agent, &listing).await.unwrap().len(), 1);
        assert_eq!(pg.list_executions(agent, &listing).await.unwrap().len(), 1);
    }
    let out = program(Some(&db), &agents, &["--verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
}

#[tokio::test]
async fn a_live_read_of_a_copied_agent_copies_it_under_its_own_id() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (AgentId::new("a").unwrap(), AgentId::new("b").unwrap());
    library_agent(dir.path(), &a).await;
    let db = TestDatabase::migrated().await;
    let pg = Arc::new(db.backend().await);
    // a is in PostgreSQL (its reads copied it), then its folder is copied as b.
    let sqlite = Arc::new(SqliteBackend::new(dir.path()));
    let dual = DualBackend::new(sqlite.clone(), pg.clone(), Stage::Live);
    let in_a = dual.get_memory(&a, "k").await.unwrap().unwrap();
    assert!(dual.get_tool(&a, "search").await.unwrap().is_some());
    copy_folder(&dir.path().join("a"), &dir.path().join("b"));
    let in_b = dual
        .get_memory(&b, "k")
        .await
        .expect("a live read of the copy")
        .expect("the copy's memory");
    assert_eq!(in_b.content, in_a.content);
    let tool = dual
        .get_tool(&b, "search")
        .await
        .expect("its tool")
        .unwrap();
    let held = pg.get_memory(&b, "k").await.unwrap().expect("copied");
    assert_eq!(held.id, copied_row_id(&b, in_a.id));
    assert_eq!(
        pg.get_tool(&b, "search").await.unwrap().unwrap().id,
        tool.id
    );
    assert_eq!(pg.get_memory(&a, "k").await.unwrap().unwrap().id, in_a.id);
}

#[tokio::test]
async fn a_missing_report_folder_stops_the_run_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("alpha/main.db"), &memory_table(5)).await;
    let db = TestDatabase::migrated().await;
    let a_file = dir.path().join("a file");
    std::fs::write(&a_file, b"not a folder").unwrap();
    for (report_dir, reason) in [
        (dir.path().join("no such folder"), "does not exist"),
        (a_file, "not a folder"),
    ] {
        for dry_run in [false, true] {
            let mut args = vec!["--report-dir", text(&report_dir)];
            if dry_run {
                args.push("--dry-run");
            }
            let out = program(Some(&db), &agents, &args);
            let text = said(&out);
            assert_eq!(out.status.code(), Some(2), "{text}");
            assert!(
                text.contains("--report-dir") && text.contains(reason),
                "{text}"
            );
        }
    }
    let mut conn = connect(&db).await;
    assert_eq!(
        count(&mut conn, "select count(*) from agent_memories").await,
        0,
        "nothing committed"
    );
    assert_eq!(
        count(&mut conn, "select count(*) from agent_memory.backfill_runs").await,
        0,
        "no run started"
    );
}

#[tokio::test]
async fn reports_are_named_by_run_so_runs_in_one_second_keep_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("alpha/main.db"), &memory_table(2)).await;
    let db = TestDatabase::migrated().await;
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let start = |dry_run: bool| {
        let mut command = backfill(Some(&db));
        command
            .arg("--agents-path")
            .arg(&agents)
            .arg("--report-dir")
            .arg(&reports)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if dry_run {
            command.arg("--dry-run");
        }
        command.spawn().unwrap()
    };
    // Pairs started together until one pair started in the same second.
    for dry_run in [true, false] {
        let mut same_second = false;
        for _ in 0..20 {
            let (one, two) = (start(dry_run), start(dry_run));
            let (one, two) = (
                one.wait_with_output().unwrap(),
                two.wait_with_output().unwrap(),
            );
            let ((path_one, one), (path_two, two)) = (printed_report(&one), printed_report(&two));
            assert_ne!(one["run_id"], two["run_id"]);
            for (path, report) in [(&path_one, &one), (&path_two, &two)] {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let id = report["run_id"].as_str().unwrap();
                assert_eq!(name, format!("migration_report_{id}.json"));
                // Each file is still the report of its own run.
                let kept: Value =
                    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
                assert_eq!(kept["run_id"], json!(id));
            }
            let second = |r: &Value| r["started_at"].as_str().unwrap()[..19].to_string();
            if second(&one) == second(&two) {
                same_second = true;
                break;
            }
        }
        assert!(same_second, "no two runs started in the same second");
    }
}

#[tokio::test]
async fn unreadable_files_have_an_exit_status_and_a_reason_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("alpha/main.db"), &memory_table(3)).await;
    std::fs::write(agents.join("alpha/notes.db"), b"plain text, not SQLite").unwrap();
    // A folder whose name cannot be an agent's (a control character).
    legacy_file(&agents.join("bad\u{7}name/data.db"), &memory_table(2)).await;
    let db = TestDatabase::migrated().await;

    let out = dry_run(&agents, dir.path());
    let (_, report) = printed_report(&out);
    for file in ["alpha/notes.db", "bad\u{7}name/data.db"] {
        assert!(
            file_in(&report, file)["problem"].is_string(),
            "{file} gets a reason: {report:#}"
        );
    }

    let out = migrate(&db, &agents, dir.path());
    assert_eq!(out.status.code(), Some(3), "{}", said(&out));
    let mut conn = connect(&db).await;
    assert_eq!(
        count(&mut conn, "select count(*) from agent_memories").await,
        3
    );

    // Failed rows keep their own status, 1, also with unreadable files beside them: a
    // new file whose metrics PostgreSQL refuses.
    sqlx::raw_sql(
        "create function refuse_metrics() returns trigger language plpgsql
           as $$ begin raise exception 'metrics refused here'; end $$;
         create trigger refuse_metrics before insert on agent_metrics
           for each row execute function refuse_metrics();",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    legacy_file(
        &agents.join("gamma/m.db"),
        "create table metrics (name text, value real); insert into metrics values ('m', 1);",
    )
    .await;
    let out = migrate(&db, &agents, dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));

    let help = finish(
        {
            let mut help = backfill(None);
            help.arg("--help");
            help
        },
        "--help",
    );
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Exit status") && text.contains("3 "),
        "--help documents the exit statuses: {text}"
    );
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Whether a backfill worker holds the claim on file `source_db` (its session lock).
async fn claimed(conn: &mut PgConnection, source_db: &str) -> bool {
    let key = "hashtextextended('agent_memory.backfill:' || $1, 0)";
    let free: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select pg_try_advisory_lock({key})"
    )))
    .bind(source_db)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    if free {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select pg_advisory_unlock({key})"
        )))
        .bind(source_db)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    !free
}

async fn statuses(conn: &mut PgConnection) -> Vec<(String, String)> {
    sqlx::query_as("select id, status from agent_memory.backfill_runs order by started_at, id")
        .fetch_all(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_is_marked_abandoned_and_its_claims_are_not_problems() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    let files: Vec<String> = (0..4).map(|i| format!("agent{i}/data.db")).collect();
    for file in &files {
        legacy_file(&agents.join(file), &memory_table(5000)).await;
    }
    let db = TestDatabase::migrated().await;
    let command = || {
        let mut command = backfill(Some(&db));
        command
            .arg("--agents-path")
            .arg(&agents)
            .args(["--batch-size", "100", "--report-dir"])
            .arg(dir.path());
        command
    };
    let mut doomed = command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = connect(&db).await;
    // Stopped while it holds a file (it keeps its session and its claims).
    let started = Instant::now();
    let held = loop {
        assert!(
            started.elapsed() < PATIENCE,
            "the first worker never held a file"
        );
        let loaded = count(&mut conn, "select count(*) from agent_memories").await;
        if loaded >= 300 {
            signal(doomed.id(), "STOP");
            let mut held = None;
            for file in &files {
                if claimed(&mut conn, file).await {
                    held = Some(file.clone());
                }
            }
            if let Some(file) = held {
                break file;
            }
            signal(doomed.id(), "CONT");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A concurrent worker leaves that file to it, says so, and is not incomplete for it.
    let out = finish(command(), "the concurrent worker");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let (_, report) = printed_report(&out);
    let left = file_in(&report, &held);
    assert!(left["problem"].is_null(), "{left:#}");
    assert_eq!(left["claimed_elsewhere"], json!(true), "{left:#}");
    assert!(!said(&out).contains("unusable: "), "{}", said(&out));
    let concurrent = report["run_id"].as_str().unwrap().to_string();
    let runs = statuses(&mut conn).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let first = runs
        .iter()
        .find(|(id, _)| *id != concurrent)
        .unwrap()
        .0
        .clone();
    assert!(
        runs.contains(&(first.clone(), "running".into())),
        "a live worker is not abandoned, even when stopped: {runs:?}"
    );
    assert!(
        runs.contains(&(concurrent.clone(), "succeeded".into())),
        "{runs:?}"
    );

    signal(doomed.id(), "KILL");
    doomed.wait().unwrap();
    // The killed session's locks go once PostgreSQL sees the connection closed.
    let started = Instant::now();
    while claimed(&mut conn, &held).await {
        assert!(
            started.elapsed() < PATIENCE,
            "the killed worker's claim stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = finish(command(), "the run after the kill");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let runs = statuses(&mut conn).await;
    assert!(
        runs.contains(&(first.clone(), "abandoned".into())),
        "the killed run is marked abandoned: {runs:?}"
    );
    assert_eq!(
        runs.iter().filter(|(_, s)| s == "succeeded").count(),
        2,
        "{runs:?}"
    );
    let (total, distinct) = memory_rows_once(&mut conn).await;
    assert_eq!(
        (total, distinct),
        (20_000, 20_000),
        "every row exactly once"
    );
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop; `None` when it cannot
/// be mounted (not root) and `MEMSHIFT_ALLOW_NO_ROOT=1` says that is accepted.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            return Some(SmallDisk(dir));
        }
        let reason = format!("cannot mount a tmpfs (root needed): {}", said(&out).trim());
        eprintln!("backfill_hostile: full-disk backup NOT RUN: {reason}");
        assert_eq!(
            std::env::var("MEMSHIFT_ALLOW_NO_ROOT").as_deref(),
            Ok("1"),
            "{reason}; run as root or set MEMSHIFT_ALLOW_NO_ROOT=1"
        );
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_backup_that_runs_out_of_space_leaves_no_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("alpha/small.db"), &memory_table(3)).await;
    legacy_file(
        &agents.join("beta/big.db"),
        "create table memory (key text, content blob);
         with recursive n(i) as (select 1 union all select i + 1 from n where i < 600)
         insert into memory select 'k' || i, randomblob(4000) from n;",
    )
    .await;
    // Room for the small file and the manifest, not for the big one.
    let Some(disk) = SmallDisk::mount("256k") else {
        return;
    };
    let out = back_up(&agents, disk.0.path());
    let text = said(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("not backed up: beta/big.db"), "{text}");
    let left = files_under(disk.0.path());
    assert!(
        !left.iter().any(|f| f.contains(".partial")),
        "no partial copy or journal is left: {left:?}"
    );
    assert!(
        left.iter().any(|f| f.ends_with("alpha/small.db")),
        "{left:?}"
    );
    // Not even room for the manifest: the whole backup fails, and leaves nothing.
    let Some(tiny) = SmallDisk::mount("8k") else {
        return;
    };
    let out = back_up(&agents, tiny.0.path());
    let text = said(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("was removed"), "{text}");
    assert_eq!(files_under(tiny.0.path()), Vec::<String>::new());
}
