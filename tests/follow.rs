//! The backfill program as an operator runs it while agents keep writing: `--follow`
//! (a write in PostgreSQL within seconds, a clean stop on SIGTERM and SIGINT, no runs
//! row per idle round) and `--source` (two trees with the same paths kept apart, and a
//! warning when they are not named).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{example_path, legacy_file, memory_table};
use memshift::testing::postgres::TestDatabase;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// The backfill program with the variables it reads cleared, quiet logs.
fn backfill(db: &TestDatabase, agents: &Path) -> Command {
    let mut command = Command::new(example_path("backfill"));
    command
        .arg("--postgres-url")
        .arg(&db.url)
        .arg("--agents-path")
        .arg(agents)
        .env_remove("DATABASE_URL")
        .env_remove("AGENTS_PATH")
        .env("RUST_LOG", "warn");
    command
}

/// A running `backfill --follow`: its output lines as they come, its exit.
struct Follower {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Follower {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .arg("--follow")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backfill --follow");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines, out) = (stdout.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (text, mut err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Follower {
            child,
            stdout,
            stderr,
        }
    }

    /// The report files printed so far.
    fn reports(&self) -> Vec<PathBuf> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(PathBuf::from)
            .collect()
    }

    fn said(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `n` report files were printed (the first round's is printed when it
    /// ends).
    async fn wait_for_reports(&mut self, n: usize) {
        let started = Instant::now();
        while self.reports().len() < n {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("backfill exited ({status}): {}", self.said());
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no {n} reports after 120 s: {}",
                self.said()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits for the exit (at most 60 s), then lets the output threads finish.
    async fn exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no exit 60 s after the signal: {}",
                self.said()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

/// Waits (at most `limit` after `since`) until a memory with `key` is in PostgreSQL;
/// how long after `since` it was there.
async fn arrival(
    conn: &mut PgConnection,
    key: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        let found: bool =
            sqlx::query_scalar("select exists (select 1 from agent_memories where key = $1)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        if found {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// (id, status, report) of every row of `agent_memory.backfill_runs`, oldest first.
async fn runs(conn: &mut PgConnection) -> Vec<(String, String, Option<Value>)> {
    sqlx::query_as("select id, status, report from agent_memory.backfill_runs order by started_at")
        .fetch_all(conn)
        .await
        .unwrap()
}

fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// After a clean stop: exit 0, no run left `running`, the follow `stopped`, and the
/// last report printed is on disk and is the last round's.
async fn assert_clean_stop(follower: &mut Follower, conn: &mut PgConnection) -> Value {
    let status = follower.exit().await;
    let said = follower.said();
    assert_eq!(status.code(), Some(0), "{said}");
    let runs = runs(conn).await;
    let unfinished: Vec<_> = runs
        .iter()
        .filter(|(_, status, _)| status == "running" || status == "following")
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let (_, status, following) = runs
        .iter()
        .find(|(id, _, _)| id.starts_with("follow-"))
        .expect("the follow's own row");
    assert_eq!(status, "stopped");
    let following = following.clone().unwrap();
    let last = follower
        .reports()
        .last()
        .cloned()
        .expect("a report printed");
    let report = read_report(&last);
    assert_eq!(report["run_id"], following["last_round"], "{said}");
    report
}

/// A follow, a round every `interval` seconds, over `agents/a/data.db` (3 memories),
/// after its first round.
struct Started {
    dir: tempfile::TempDir,
    agents: PathBuf,
    conn: PgConnection,
    follower: Follower,
    _db: TestDatabase,
}

async fn start_following(interval: &str) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    legacy_file(&agents.join("a/data.db"), &memory_table(3)).await;
    let db = TestDatabase::migrated().await;
    let conn = connect(&db).await;
    let mut command = backfill(&db, &agents);
    command
        .args(["--interval", interval, "--report-dir"])
        .arg(dir.path());
    let mut follower = Follower::start(command);
    follower.wait_for_reports(1).await;
    Started {
        dir,
        agents,
        conn,
        follower,
        _db: db,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_moves_a_new_file_within_seconds_keeps_idle_rounds_out_and_stops_on_sigterm() {
    let Started {
        dir,
        agents,
        mut conn,
        mut follower,
        _db,
    } = start_following("0.5").await;

    // An agent starts a new file (made aside and moved in, so no round sees it half
    // made): its row is in PostgreSQL within a round or two.
    let aside = dir.path().join("aside/data.db");
    legacy_file(
        &aside,
        "create table memory (key text, content text); insert into memory values ('fresh', 'new');",
    )
    .await;
    std::fs::create_dir_all(agents.join("b")).unwrap();
    let written = Instant::now();
    std::fs::rename(&aside, agents.join("b/data.db")).unwrap();
    let gap = arrival(&mut conn, "fresh", written, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("not in PostgreSQL after 30 s: {}", follower.said()));
    eprintln!(
        "a row in a new legacy file reached PostgreSQL {:.2} s after it was written (rounds every 0.5 s)",
        gap.as_secs_f64()
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
    follower.wait_for_reports(2).await;

    // Rounds with nothing to do leave no trace but the follow's own count.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let runs_now = runs(&mut conn).await;
    let following = runs_now
        .iter()
        .find(|(id, _, _)| id.starts_with("follow-"))
        .and_then(|(_, _, report)| report.clone())
        .expect("the follow's row, with its counts");
    let (rounds, recorded) = (
        following["rounds"].as_u64().unwrap(),
        following["recorded_rounds"].as_u64().unwrap(),
    );
    let round_rows = runs_now.len() as u64 - 1;
    eprintln!(
        "{rounds} rounds, {recorded} recorded, {round_rows} round rows in backfill_runs, {} report files",
        follower.reports().len()
    );
    assert_eq!(recorded, 2, "{following}");
    assert!(rounds >= recorded + 2, "idle rounds ran: {following}");
    // The latest idle round keeps its row until the next round ends, and that next round
    // may be in progress (its row written when it started) as the rows are counted.
    assert!(
        round_rows <= recorded + 2,
        "idle rounds keep at most their latest row: {runs_now:#?}"
    );
    assert_eq!(follower.reports().len(), 2, "no report file per idle round");

    follower.signal("TERM");
    let last = assert_clean_stop(&mut follower, &mut conn).await;
    assert_eq!(last["totals"]["failed"], 0);
    let said = follower.said();
    assert!(
        said.contains("SIGTERM") && said.contains("stopped after"),
        "{said}"
    );
    for report in follower.reports() {
        assert!(report.is_file(), "{}", report.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_a_round_between_batches_with_every_batch_whole() {
    const FILES: usize = 80;
    const ROWS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().join("agents");
    for i in 0..FILES {
        legacy_file(
            &agents.join(format!("agent{i:02}/data.db")),
            &memory_table(ROWS),
        )
        .await;
    }
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let mut command = backfill(&db, &agents);
    command
        .args(["--batch-size", "100", "--report-dir"])
        .arg(dir.path());
    let mut follower = Follower::start(command);
    // Interrupted during the first round, as soon as rows arrive.
    let started = Instant::now();
    loop {
        let rows: i64 = sqlx::query_scalar("select count(*) from agent_memories")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if rows > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            follower.said()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    follower.signal("INT");
    let report = assert_clean_stop(&mut follower, &mut conn).await;
    let said = follower.said();
    assert!(said.contains("SIGINT"), "{said}");

    // The round says it stopped, lists the files it read, and every batch it read is
    // whole (a stop ends a table between batches of 100 rows).
    let files = report["files"].as_array().unwrap();
    eprintln!("stopped after {} of {FILES} files", files.len());
    assert!(
        files.len() < FILES,
        "the round stopped before the last file"
    );
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("stopped on request")),
        "{report}"
    );
    let status: String =
        sqlx::query_scalar("select status from agent_memory.backfill_runs where id = $1")
            .bind(report["run_id"].as_str().unwrap())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(status, "stopped");
    let per_file: Vec<(String, i64)> = sqlx::query_as(
        "select metadata->>'source_db', count(*) from agent_memories group by 1 order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    // Every file with rows in PostgreSQL is one the round lists, with what it inserted.
    for (file, rows) in &per_file {
        let listed = files
            .iter()
            .find(|f| f["source_db"] == file.as_str())
            .unwrap_or_else(|| panic!("{file} has rows but is not in the report"));
        let inserted: i64 = listed["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["inserted"].as_i64().unwrap())
            .sum();
        assert_eq!(*rows, inserted, "{file}");
        assert!(
            *rows > 0 && *rows % 100 == 0 && *rows <= ROWS as i64,
            "{file}: {rows} rows, not whole batches"
        );
    }
}

/// A table a round moved is read again once its file changed, and the new row moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_moves_a_row_added_to_a_moved_table_within_seconds() {
    // Bound whole: the folder and the database live to the end of the test.
    let Started {
        dir: _dir,
        agents,
        mut conn,
        mut follower,
        _db,
    } = start_following("1").await;
    let written = Instant::now();
    legacy_file(
        &agents.join("a/data.db"),
        "insert into memory values ('later', 'written after')",
    )
    .await;
    let gap = arrival(&mut conn, "later", written, Duration::from_secs(20)).await;
    follower.signal("INT");
    let _ = follower.exit().await;
    let gap = gap.unwrap_or_else(|| {
        panic!(
            "a row added to a table already moved is not in PostgreSQL 20 s later: {}",
            follower.said()
        )
    });
    eprintln!(
        "a row added to a moved table reached PostgreSQL {:.2} s after it was written (rounds every 1 s)",
        gap.as_secs_f64()
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
}

/// Two agents trees with the same relative path `a/data.db` and different rows.
async fn two_trees(dir: &Path) -> (PathBuf, PathBuf) {
    let (east, west) = (dir.join("east"), dir.join("west"));
    legacy_file(
        &east.join("a/data.db"),
        "create table memory (key text, content text);
         insert into memory values ('e0', 'east 0'), ('e1', 'east 1'), ('e2', 'east 2');",
    )
    .await;
    legacy_file(
        &west.join("a/data.db"),
        "create table memory (key text, content text);
         insert into memory values ('w0', 'west 0'), ('w1', 'west 1'), ('w2', 'west 2'), ('w3', 'west 3');",
    )
    .await;
    (east, west)
}

/// Runs the program to its end: (exit code, stdout, stderr).
fn finished(command: &mut Command) -> (Option<i32>, String, String) {
    let out = command.output().expect("run backfill");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (source, sorted keys) of every memory.
async fn keys_by_source(conn: &mut PgConnection) -> Vec<(Option<String>, Vec<String>)> {
    sqlx::query_as(
        "select metadata->>'source', array_agg(key order by key) from agent_memories
         group by 1 order by 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn sources_keep_two_trees_with_the_same_paths_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = two_trees(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let mut conn = connect(&db).await;
    let mut run_ids = Vec::new();
    for (tree, name) in [(&east, "east"), (&west, "west")] {
        let (code, stdout, said) = finished(
            backfill(&db, tree)
                .args(["--source", name, "--report-dir"])
                .arg(dir.path()),
        );
        assert_eq!(code, Some(0), "{said}");
        run_ids.push(read_report(Path::new(stdout.trim()))["run_id"].clone());
    }
    let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        keys_by_source(&mut conn).await,
        [
            (Some("east".into()), keys(&["e0", "e1", "e2"])),
            (Some("west".into()), keys(&["w0", "w1", "w2", "w3"])),
        ]
    );
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "select source, agents_path from agent_memory.backfill_runs order by started_at",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        recorded,
        [
            ("east".to_string(), absolute(&east)),
            ("west".to_string(), absolute(&west)),
        ]
    );

    // Each tree verifies against its own rows; unnamed, neither has any.
    for (tree, name) in [(&east, "east"), (&west, "west")] {
        let (code, _, said) = finished(backfill(&db, tree).args(["--verify", "--source", name]));
        assert_eq!(code, Some(0), "--verify --source {name}: {said}");
    }
    let (code, _, said) = finished(backfill(&db, &east).arg("--verify"));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("3 legacy rows, 0 in agent_memories"),
        "{said}"
    );

    // A rollback of one source's run leaves the other's rows.
    let (code, _, said) = finished(
        backfill(&db, &east)
            .arg("--rollback")
            .arg(run_ids[0].as_str().unwrap()),
    );
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        keys_by_source(&mut conn).await,
        [(Some("west".into()), keys(&["w0", "w1", "w2", "w3"]))]
    );
}

#[test]
fn a_source_name_that_would_not_read_well_is_refused() {
    for bad in ["two words", "a/b", "-x", "é"] {
        let out = Command::new(example_path("backfill"))
            .args(["--postgres-url", "postgres://u@127.0.0.1:1/db"])
            .arg(format!("--source={bad}"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {said}");
        assert!(said.contains("--source") && said.contains(bad), "{said}");
    }
}

#[tokio::test]
async fn moving_two_unnamed_trees_with_the_same_paths_in_turn_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (east, west) = two_trees(dir.path()).await;
    let db = TestDatabase::migrated().await;
    let mut reports = Vec::new();
    for tree in [&east, &west] {
        let (code, stdout, said) =
            finished(backfill(&db, tree).arg("--report-dir").arg(dir.path()));
        assert_eq!(code, Some(0), "{said}");
        reports.push((read_report(Path::new(stdout.trim())), said));
    }
    let (first, _) = &reports[0];
    assert!(first["warnings"].as_array().unwrap().is_empty(), "{first}");
    let (second, said) = &reports[1];
    let warnings = second["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{second}");
    let warning = warnings[0].as_str().unwrap();
    let east_path = std::fs::canonicalize(&east).unwrap().display().to_string();
    let west_path = std::fs::canonicalize(&west).unwrap().display().to_string();
    for part in [
        "\"a/data.db\"",
        &format!(":{east_path}, run {}", first["run_id"].as_str().unwrap()),
        &format!(":{west_path})"),
        "--source NAME",
    ] {
        assert!(warning.contains(part), "{part:?} missing: {warning}");
    }
    assert!(said.contains(warning), "the warning is printed too: {said}");
}

/// A follow killed with -9 cannot record that it stopped: the next run marks it
/// abandoned, as it does a run left `running`; a live follow is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_killed_with_sigkill_is_marked_abandoned_by_the_next_run() {
    let Started {
        dir,
        agents,
        mut conn,
        mut follower,
        _db: db,
    } = start_following("1").await;
    let follow_status = |runs: Vec<(String, String, Option<Value>)>| {
        runs.into_iter()
            .find(|(id, _, _)| id.starts_with("follow-"))
            .map(|(_, status, _)| status)
    };
    // While it lives, another run does not touch its record.
    let other = backfill(&db, &agents)
        .arg("--report-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(other.status.success(), "{other:?}");
    assert_eq!(
        follow_status(runs(&mut conn).await).as_deref(),
        Some("following")
    );
    follower.signal("KILL");
    follower.exit().await;
    assert_eq!(
        follow_status(runs(&mut conn).await).as_deref(),
        Some("following"),
        "a killed follow records nothing"
    );
    let next = backfill(&db, &agents)
        .arg("--report-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(next.status.success(), "{next:?}");
    assert_eq!(
        follow_status(runs(&mut conn).await).as_deref(),
        Some("abandoned")
    );
}
