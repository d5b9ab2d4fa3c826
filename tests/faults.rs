//! The fault suite of the first promise: acknowledged means stored, under real faults, against the real
//! test server and the shipped binaries (memctl, store_loop) or the public API. Each test
//! asserts what a user would notice: no acknowledged write unreadable, both sides equal
//! after `repair`, no deleted key back.
//!
//! None of these stops the server (that one is in `faults_restart.rs`), so they run in
//! parallel. The full-disk cases mount small tmpfs file systems and need root; without
//! it they say so plainly ("faults: full-disk case NOT RUN: ...") and fail, unless
//! `MEMSHIFT_ALLOW_NO_ROOT=1`. The kill -9 cases are seeded from the clock, or from
//! `MEMSHIFT_FAULT_SEED`; the seed is printed.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use common::{example_path, memctl, stdout};
use memshift::backend::dual::DualOptions;
use memshift::backend::{DualBackend, Replica};
use memshift::config::Stage;
use memshift::testing::postgres::TestDatabase;
use memshift::testing::unique_agent;
use memshift::{AgentId, AgentMemory, Memory, MemoryBackend, SqliteBackend};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A memctl run's status and both streams, for assertion messages (long runs of text,
/// such as a 10,000-character key, cut to their ends).
fn shown(output: &Output) -> String {
    fn cut(text: String) -> String {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() <= 1200 {
            return text;
        }
        let head: String = chars[..300].iter().collect();
        let tail: String = chars[chars.len() - 700..].iter().collect();
        format!("{head}[... {} characters ...]{tail}", chars.len() - 1000)
    }
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        cut(stdout(output)),
        cut(stderr(output))
    )
}

/// Both sides of a dual backend on a fresh database and agents folder, with direct
/// handles on each side.
struct Sides {
    dual: DualBackend,
    sqlite: Arc<dyn Replica>,
    postgres: Arc<dyn Replica>,
    agent: AgentId,
    db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Sides {
    async fn new(stage: Stage, options: DualOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let db = TestDatabase::migrated().await;
        let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(dir.path()));
        let postgres: Arc<dyn Replica> = Arc::new(db.backend().await);
        let dual = DualBackend::with_options(sqlite.clone(), postgres.clone(), stage, options);
        Sides {
            dual,
            sqlite,
            postgres,
            agent: unique_agent("fault"),
            db,
            _dir: dir,
        }
    }

    /// The agent's handle over the dual backend.
    fn memory(&self) -> AgentMemory {
        AgentMemory::with_backend(self.agent.clone(), Arc::new(self.dual.clone()))
    }

    /// The value of `key` on each side: (SQLite, PostgreSQL).
    async fn on_sides(&self, key: &str) -> (Option<Value>, Option<Value>) {
        (
            value_of(&*self.sqlite, &self.agent, key).await,
            value_of(&*self.postgres, &self.agent, key).await,
        )
    }

    /// Repairs the agent (retrying while PostgreSQL is marked down) and asserts that
    /// both sides hold the same memories.
    async fn repair_and_assert_agree(&self, context: &str) {
        repair_and_assert_agree(&self.dual, &self.agent, context).await;
    }
}

/// A short retry interval, so a side marked down after a timeout is found back quickly.
fn quick_options() -> DualOptions {
    DualOptions {
        retry_after: Duration::from_millis(50),
        ..DualOptions::default()
    }
}

async fn value_of(backend: &dyn MemoryBackend, agent: &AgentId, key: &str) -> Option<Value> {
    let found = backend.get_memory(agent, key).await;
    let found = found.unwrap_or_else(|e| panic!("{}: read {key:?}: {e:?}", backend.name()));
    found.map(|m| m.content.parse().expect("stored JSON reads back"))
}

/// Runs `repair` until it succeeds (a side marked down is pinged back; 20 s at most),
/// then asserts that the sides agree.
async fn repair_and_assert_agree(dual: &DualBackend, agent: &AgentId, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match dual.repair(agent).await {
            Ok(_) => break,
            Err(err) if Instant::now() > deadline => {
                panic!("{context}: repair still failing after 20 s: {err:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let comparison = dual.compare(agent).await.expect("compare the sides");
    assert!(
        comparison.agrees(),
        "{context}: the sides disagree after repair: {comparison:?}"
    );
}

/// The `i` of a `{"i":n}` value.
fn i_of(value: &Value) -> u64 {
    value["i"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an {{\"i\":n}} value: {value}"))
}

/// A small seeded generator (splitmix64), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    /// Seeded from `MEMSHIFT_FAULT_SEED`, else the clock; prints the seed.
    fn seeded(what: &str) -> Self {
        let seed = std::env::var("MEMSHIFT_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.expect("a clock after 1970").as_nanos() as u64
            });
        println!("faults: {what}: seed {seed} (MEMSHIFT_FAULT_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// A store_loop child: `AGENT STAGE KEYS [COUNT] [START]`, with the backend from `env`.
fn store_loop(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(example_path("store_loop"));
    command
        .args(args)
        .env_remove("MEMORY_BACKEND")
        .env_remove("DATABASE_URL")
        .env_remove("AGENTS_PATH")
        .env_remove("MEMORY_STAGE");
    command.envs(env.iter().copied());
    command
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("a mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs -o size={size} failed (root needed): {}",
                stderr(&out).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows the file system to `size`, as an operator frees space.
    fn grow(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount: {}", stderr(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a pool of this process may still hold a file open on it.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A tmpfs, or `None` (after saying so plainly) when it cannot be mounted and
/// `MEMSHIFT_ALLOW_NO_ROOT=1`; without that variable the test fails.
fn tmpfs_or_not_run(size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(tmpfs) => Some(tmpfs),
        Err(reason) => {
            println!("faults: full-disk case NOT RUN: {reason}");
            eprintln!("faults: full-disk case NOT RUN: {reason}");
            if std::env::var("MEMSHIFT_ALLOW_NO_ROOT").as_deref() == Ok("1") {
                None
            } else {
                panic!(
                    "faults: full-disk case NOT RUN: {reason} (run as root, as CI does, or set \
                     MEMSHIFT_ALLOW_NO_ROOT=1 to accept not running it)"
                )
            }
        }
    }
}

/// A key of `len` pseudo-random letters and digits: unlike a repeated letter, PostgreSQL
/// cannot compress it into its btree index, whose entries stop at 2,704 bytes.
fn incompressible_key(len: usize) -> String {
    let mut rng = Rng(0x5eed);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| char::from(alphabet[(rng.next() % alphabet.len() as u64) as usize]))
        .collect()
}

/// A JSON string value of about 120 KB, distinct per `i`.
fn big_value(i: usize) -> String {
    let body: String = (0..120_000)
        .map(|n| char::from(b'a' + ((n * 7 + i * 13) % 26) as u8))
        .collect();
    format!("\"{i}:{body}\"")
}

/// The `comparison` of `memctl --agent A stats`, asserting it is there.
fn stats_comparison(output: &Output) -> Value {
    let stats: Value = serde_json::from_str(stdout(output).trim())
        .unwrap_or_else(|e| panic!("memctl stats is not JSON ({e}): {}", shown(output)));
    let comparison = stats["comparison"].clone();
    assert!(
        comparison.get("only_sqlite").is_some(),
        "memctl stats has no comparison: {stats}"
    );
    comparison
}

fn comparison_agrees(comparison: &Value) -> bool {
    ["only_sqlite", "only_postgres", "different"]
        .iter()
        .all(|field| comparison[field].as_array().is_some_and(Vec::is_empty))
}

/// The number of parked writes anywhere in `memctl stats` output: the sum of every field
/// named `parked` (a number, or an array's length, or the numbers inside an object).
fn parked_in(stats: &Value) -> Option<u64> {
    fn count(v: &Value) -> u64 {
        match v {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::Array(items) => items.len() as u64,
            Value::Object(fields) => fields.values().map(count).sum(),
            _ => 0,
        }
    }
    match stats {
        Value::Object(fields) => {
            let mut found = None;
            for (name, value) in fields {
                let here = if name == "parked" {
                    Some(count(value))
                } else {
                    parked_in(value)
                };
                if let Some(n) = here {
                    found = Some(found.unwrap_or(0) + n);
                }
            }
            found
        }
        Value::Array(items) => items.iter().filter_map(parked_in).reduce(|a, b| a + b),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// 1. A full disk
// ---------------------------------------------------------------------------------------

/// SQLite alone on a 4 MB disk, 120 KB stores until one fails: every store memctl
/// acknowledged reads back from a new process, and the store that does not fit fails
/// saying the disk is full.
#[test]
fn full_disk_sqlite_acknowledges_only_stored_writes() {
    let Some(disk) = tmpfs_or_not_run("4m") else {
        return;
    };
    let agents = disk.path().to_str().unwrap();
    let env = [("MEMORY_BACKEND", "sqlite"), ("AGENTS_PATH", agents)];
    let agent = "fulldisk";
    let mut acknowledged = Vec::new();
    let mut refused = None;
    // 4 MB holds about 30 values of 120 KB; 80 is far past full.
    for i in 0..80 {
        let key = format!("k{i}");
        let out = memctl(&env, &["--agent", agent, "store", &key, &big_value(i)]);
        if out.status.success() {
            acknowledged.push(i);
        } else {
            refused = Some((i, out));
            break;
        }
    }
    let unreadable: Vec<usize> = acknowledged
        .iter()
        .copied()
        .filter(|&i| {
            let out = memctl(&env, &["--agent", agent, "get", &format!("k{i}")]);
            !(out.status.success() && stdout(&out).trim_end() == big_value(i))
        })
        .collect();
    println!(
        "full disk, sqlite: {} stores acknowledged, {} of them unreadable",
        acknowledged.len(),
        unreadable.len()
    );
    assert!(
        unreadable.is_empty(),
        "{} of {} acknowledged stores are not readable from a new process: keys {:?}",
        unreadable.len(),
        acknowledged.len(),
        unreadable
            .iter()
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
    );
    let Some((at, out)) = refused else {
        panic!(
            "all {} stores of 120 KB on a 4 MB disk exited 0",
            acknowledged.len()
        );
    };
    assert_eq!(out.status.code(), Some(2), "store k{at}: {}", shown(&out));
    assert!(
        stderr(&out).contains("full"),
        "store k{at} on a full disk does not say so: {}",
        shown(&out)
    );
    // A small value: stored (and readable) if it fits, else refused as full.
    let out = memctl(
        &env,
        &["--agent", agent, "store", "small", r#""13 bytes..""#],
    );
    if out.status.success() {
        let read = memctl(&env, &["--agent", agent, "get", "small"]);
        assert_eq!(
            stdout(&read).trim_end(),
            r#""13 bytes..""#,
            "an acknowledged small store on a full disk is unreadable: {}",
            shown(&read)
        );
    } else {
        assert!(
            stderr(&out).contains("full"),
            "small store: {}",
            shown(&out)
        );
    }
}

/// dualwrite with SQLite on a 20 MB disk, 120 KB stores until one fails; then the
/// operator grows the disk and runs `memctl repair`: both sides hold the same keys, and
/// every acknowledged key reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_dualwrite_sides_agree_after_repair() {
    let Some(disk) = tmpfs_or_not_run("20m") else {
        return;
    };
    let db = TestDatabase::migrated().await;
    let agents = disk.path().to_str().unwrap();
    let env = [
        ("MEMORY_BACKEND", "dual"),
        ("MEMORY_STAGE", "dualwrite"),
        ("DATABASE_URL", db.url.as_str()),
        ("AGENTS_PATH", agents),
    ];
    let agent = "fulldual";
    let mut acknowledged = Vec::new();
    let mut refused = None;
    // 20 MB holds about 170 values of 120 KB; 220 is past full.
    for i in 0..220 {
        let key = format!("k{i}");
        let out = memctl(&env, &["--agent", agent, "store", &key, &big_value(i)]);
        if out.status.success() {
            acknowledged.push(i);
        } else {
            refused = Some((i, out));
            break;
        }
    }
    println!(
        "full disk, dualwrite: {} stores acknowledged, refused: {:?}",
        acknowledged.len(),
        refused.as_ref().map(|(i, out)| (i, stderr(out)))
    );
    disk.grow("64m");
    let repaired = memctl(&env, &["repair"]);
    assert!(
        repaired.status.success(),
        "repair after the disk grew: {}",
        shown(&repaired)
    );
    let comparison = stats_comparison(&memctl(&env, &["--agent", agent, "stats"]));
    // Read in this process (a new one to the stores), through the dual backend.
    let memory = {
        let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(disk.path()));
        let postgres: Arc<dyn Replica> = Arc::new(db.backend().await);
        let dual = DualBackend::new(sqlite, postgres, Stage::DualWrite);
        AgentMemory::with_backend(AgentId::new(agent).unwrap(), Arc::new(dual))
    };
    let mut unreadable = Vec::new();
    for &i in &acknowledged {
        let key = format!("k{i}");
        let read = memory.retrieve_memory::<Value>(&key).await;
        let want: Value = serde_json::from_str(&big_value(i)).unwrap();
        if !matches!(&read, Ok(Some(v)) if *v == want) {
            unreadable.push(key);
        }
    }
    drop(memory);
    assert!(
        comparison_agrees(&comparison),
        "after repair SQLite and PostgreSQL hold different keys: only_sqlite {}, \
         only_postgres {}, different {} ({} stores acknowledged)",
        comparison["only_sqlite"].as_array().map_or(0, Vec::len),
        comparison["only_postgres"].as_array().map_or(0, Vec::len),
        comparison["different"].as_array().map_or(0, Vec::len),
        acknowledged.len()
    );
    assert!(
        unreadable.is_empty(),
        "{} of {} acknowledged stores are unreadable: {unreadable:?}",
        unreadable.len(),
        acknowledged.len()
    );
    assert!(
        refused.is_some(),
        "all 220 stores of 120 KB on a 20 MB disk exited 0"
    );
}

// ---------------------------------------------------------------------------------------
// 2. kill -9 of a process storing in a loop
// ---------------------------------------------------------------------------------------

/// Kills a store_loop child `kills` times at random points at `stage`; after each kill a
/// new dual backend at the same stage repairs, the sides agree, and the last acknowledged
/// value (or a newer one) is what a read returns. Collects every bad kill, then fails.
async fn kill_store_loop(stage: Stage, kills: usize) {
    let mut rng = Rng::seeded(&format!("kill -9 in {stage}"));
    let dir = tempfile::tempdir().expect("temporary agents folder");
    let db = TestDatabase::migrated().await;
    let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(dir.path()));
    let postgres: Arc<dyn Replica> = Arc::new(db.backend().await);
    let agents = dir.path().to_str().unwrap();
    let stage_name = stage.to_string();
    let env = [
        ("MEMORY_BACKEND", "dual"),
        ("DATABASE_URL", db.url.as_str()),
        ("AGENTS_PATH", agents),
    ];
    let started = Instant::now();
    let mut bad = Vec::new();
    for run in 0..kills {
        let agent = unique_agent("kill");
        let mut child = store_loop(&env, &[agent.as_str(), &stage_name, "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start store_loop");
        let out = child.stdout.take().unwrap();
        let (lines, acks) = std::sync::mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let n = line.split(' ').nth(1).and_then(|n| n.parse().ok());
                if lines.send(n.expect("store_loop prints KEY N")).is_err() {
                    break;
                }
            }
        });
        // Killed in the loop, not while it connects: wait for its first acknowledgement.
        let first = acks.recv_timeout(Duration::from_secs(30));
        let wait = rng.between(30, 400);
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().expect("SIGKILL store_loop");
        child.wait().expect("reap store_loop");
        reader.join().expect("read store_loop's output");
        let first =
            first.unwrap_or_else(|_| panic!("run {run}: store_loop acknowledged nothing in 30 s"));
        let last = acks.try_iter().last().unwrap_or(first);

        let dual =
            DualBackend::with_options(sqlite.clone(), postgres.clone(), stage, quick_options());
        let mut problems = Vec::new();
        if let Err(err) = dual.repair(&agent).await {
            problems.push(format!("repair failed: {err}"));
        }
        match dual.compare(&agent).await {
            Ok(c) if c.agrees() => {}
            Ok(c) => problems.push(
                format!(
                    "sides differ (sqlite {:?}, postgres {:?})",
                    value_of(&*sqlite, &agent, "k0").await,
                    value_of(&*postgres, &agent, "k0").await
                ) + &format!(" {c:?}"),
            ),
            Err(err) => problems.push(format!("compare failed: {err}")),
        }
        match value_of(&dual, &agent, "k0").await {
            Some(v) if i_of(&v) >= last => {}
            other => problems.push(format!(
                "read {other:?}, older than the acknowledged {last}"
            )),
        }
        if !problems.is_empty() {
            bad.push(format!(
                "kill {run} after {wait} ms (last acknowledged {{\"i\":{last}}}): {}",
                problems.join("; ")
            ));
        }
    }
    println!(
        "kill -9 in {stage}: {kills} kills in {:?}, {} bad",
        started.elapsed(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "{} of {kills} kills in {stage} lost an acknowledged write or left the sides \
         different after repair:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_store_loop_in_live() {
    kill_store_loop(Stage::Live, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_store_loop_in_dualwrite() {
    // More kills than in live: a crash between the two sides' writes is a short window.
    kill_store_loop(Stage::DualWrite, 30).await;
}

// ---------------------------------------------------------------------------------------
// 3. A row lock past the side timeout
// ---------------------------------------------------------------------------------------

/// A connection holding `select ... for update` on the agent's memory row `key`.
async fn lock_row(db: &TestDatabase, agent: &AgentId, key: &str) -> PgConnection {
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    let locked: Vec<(i32,)> = sqlx::query_as(
        "select 1 from agent_memories m join agents a on a.id = m.agent_id
         where a.name = $1 and m.key = $2 for update of m",
    )
    .bind(agent.as_str())
    .bind(key)
    .fetch_all(&mut conn)
    .await
    .expect("lock the row");
    assert_eq!(locked.len(), 1, "the row of {key:?} is in PostgreSQL");
    conn
}

async fn unlock(mut conn: PgConnection) {
    sqlx::query("rollback").execute(&mut conn).await.unwrap();
    conn.close().await.ok();
}

/// In `live`, PostgreSQL's row is locked past the side timeout while a store waits on
/// it: whether the store was reported failed or not, once the lock goes and repair runs,
/// the sides agree (and an acknowledged store is what both hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_lock_past_the_side_timeout_in_live() {
    let options = DualOptions {
        side_timeout: Duration::from_secs(1),
        ..quick_options()
    };
    let sides = Sides::new(Stage::Live, options).await;
    let memory = sides.memory();
    memory.store_memory("k", json!({"v": "old"})).await.unwrap();
    let lock = lock_row(&sides.db, &sides.agent, "k").await;
    let started = Instant::now();
    let stored = memory.store_memory("k", json!({"v": "new"})).await;
    println!(
        "live store under a row lock: {:?} after {:?}",
        stored.as_ref().map_err(|e| memshift::Chain(e).to_string()),
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    unlock(lock).await;
    // The statement the server was still waiting on lands now, if it is going to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let context = format!(
        "store {}",
        match &stored {
            Ok(()) => "acknowledged".to_string(),
            Err(e) => format!("failed ({})", memshift::Chain(e)),
        }
    );
    let (sqlite, postgres) = sides.on_sides("k").await;
    println!("before repair: sqlite {sqlite:?}, postgres {postgres:?}");
    sides.repair_and_assert_agree(&context).await;
    if stored.is_ok() {
        assert_eq!(
            memory.retrieve_memory::<Value>("k").await.unwrap(),
            Some(json!({"v": "new"}))
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. A version from the future
// ---------------------------------------------------------------------------------------

/// Puts `memory` on both sides as is (a legacy row, or a process whose clock was ahead).
async fn put_on_both(sides: &Sides, memory: &Memory) {
    sides.sqlite.put_memory(&sides.agent, memory).await.unwrap();
    sides
        .postgres
        .put_memory(&sides.agent, memory)
        .await
        .unwrap();
}

fn dated(key: &str, content: Value, at: DateTime<Utc>) -> Memory {
    let mut memory = Memory::new(key, content);
    memory.created_at = at;
    memory.updated_at = at;
    memory
}

/// A memory dated 2031 on both sides: a `live` store replaces it, a delete removes it,
/// and the sides agree after repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn future_version_is_overwritten_and_deleted_in_live() {
    let sides = Sides::new(Stage::Live, quick_options()).await;
    let future = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
    put_on_both(&sides, &dated("legacy", json!({"from": 2031}), future)).await;
    let memory = sides.memory();
    memory
        .store_memory("legacy", json!({"new": 1}))
        .await
        .expect("store over a future version");
    assert_eq!(
        memory.retrieve_memory::<Value>("legacy").await.unwrap(),
        Some(json!({"new": 1})),
        "an acknowledged store over a version dated 2031 is not what a read returns"
    );
    assert!(memory.delete_memory("legacy").await.unwrap());
    assert_eq!(
        memory.retrieve_memory::<Value>("legacy").await.unwrap(),
        None,
        "a deleted key dated 2031 is still there"
    );
    sides.repair_and_assert_agree("after the delete").await;
    assert_eq!(sides.on_sides("legacy").await, (None, None));
}

/// A process whose clock was an hour ahead wrote a key; the clock stepped back. Later
/// normal writes and a delete take effect, and the sides agree after repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clock_stepping_back_does_not_freeze_a_key_in_live() {
    let sides = Sides::new(Stage::Live, quick_options()).await;
    let ahead = Utc::now() + chrono::Duration::hours(1);
    put_on_both(&sides, &dated("k", json!({"clock": "ahead"}), ahead)).await;
    let memory = sides.memory();
    for n in 1..=3 {
        memory.store_memory("k", json!({"n": n})).await.unwrap();
        assert_eq!(
            memory.retrieve_memory::<Value>("k").await.unwrap(),
            Some(json!({"n": n})),
            "store {n} after the clock stepped back is not what a read returns"
        );
    }
    assert!(memory.delete_memory("k").await.unwrap());
    assert_eq!(
        memory.retrieve_memory::<Value>("k").await.unwrap(),
        None,
        "deleted after the clock stepped back, still there"
    );
    sides.repair_and_assert_agree("after the delete").await;
    assert_eq!(sides.on_sides("k").await, (None, None));
}

// ---------------------------------------------------------------------------------------
// 5. Equal timestamps
// ---------------------------------------------------------------------------------------

/// Two store_loop processes write the same 20 keys in `dualwrite`, 3,000 stores each
/// (different values); after repair the sides agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_same_keys_in_dualwrite_agree_after_repair() {
    let dir = tempfile::tempdir().expect("temporary agents folder");
    let db = TestDatabase::migrated().await;
    let agent = unique_agent("twins");
    let agents = dir.path().to_str().unwrap().to_string();
    let started = Instant::now();
    let children: Vec<_> = ["0", "1000000"]
        .into_iter()
        .map(|start| {
            let env = [
                ("MEMORY_BACKEND", "dual"),
                ("DATABASE_URL", db.url.as_str()),
                ("AGENTS_PATH", agents.as_str()),
            ];
            store_loop(&env, &[agent.as_str(), "dualwrite", "20", "3000", start])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start store_loop")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait for store_loop");
        assert!(out.status.success(), "store_loop: {}", shown(&out));
        assert!(
            stderr(&out).is_empty(),
            "a store failed: {}",
            stderr(&out).lines().next().unwrap_or_default()
        );
    }
    println!("2 x 3,000 stores in {:?}", started.elapsed());
    let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(dir.path()));
    let postgres: Arc<dyn Replica> = Arc::new(db.backend().await);
    let dual = DualBackend::with_options(sqlite, postgres, Stage::DualWrite, quick_options());
    repair_and_assert_agree(&dual, &agent, "two processes, same keys").await;
}

/// Two versions of one key with the same `updated_at` and different contents, applied
/// to the two sides in opposite orders, leave the sides equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_versions_applied_in_opposite_orders_end_equal() {
    let sides = Sides::new(Stage::DualWrite, quick_options()).await;
    let a = Memory::new("tie", json!({"writer": "a"}));
    let mut b = Memory::new("tie", json!({"writer": "b"}));
    b.created_at = a.created_at;
    b.updated_at = a.updated_at;
    let agent = &sides.agent;
    sides.sqlite.apply_memory(agent, &a).await.unwrap();
    sides.sqlite.apply_memory(agent, &b).await.unwrap();
    sides.postgres.apply_memory(agent, &b).await.unwrap();
    sides.postgres.apply_memory(agent, &a).await.unwrap();
    let comparison = sides.dual.compare(agent).await.unwrap();
    assert!(
        comparison.agrees(),
        "equal versions split the sides: sqlite {:?}, postgres {:?}",
        sides.on_sides("tie").await.0,
        sides.on_sides("tie").await.1
    );
}

// ---------------------------------------------------------------------------------------
// 6. An over-long key, a poison owed write, a corrupt agent file
// ---------------------------------------------------------------------------------------

/// memctl refuses a 10,000-character key up front, and neither side holds anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_key_is_refused_on_both_sides() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    let run = |backend: &str, args: &[&str]| {
        let env = [
            ("MEMORY_BACKEND", backend),
            ("MEMORY_STAGE", "dualwrite"),
            ("DATABASE_URL", db.url.as_str()),
            ("AGENTS_PATH", agents),
        ];
        memctl(&env, args)
    };
    let agent = "longkey";
    let key = incompressible_key(10_000);
    let out = run("dual", &["--agent", agent, "store", &key, r#"{"x":1}"#]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(
        stderr(&out).contains("at most 1024 bytes"),
        "{}",
        shown(&out)
    );
    for backend in ["sqlite", "postgres"] {
        let keys = run(backend, &["--agent", agent, "keys"]);
        assert!(keys.status.success(), "{backend} keys: {}", shown(&keys));
        assert_eq!(stdout(&keys), "", "{backend} holds a key");
    }
    let stats: Value = serde_json::from_str(&stdout(&run("dual", &["stats"]))).unwrap();
    assert_eq!(stats["owed_to_postgres"], json!(0), "{stats}");
    assert_eq!(stats["owed_to_sqlite"], json!(0), "{stats}");
}

/// SQL-safe RFC 3339 text with microseconds, as the SQLite side stores times.
fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// An agent's SQLite file holds a row with a 10,000-character key and a journal record
/// owing it to PostgreSQL, as an older version left it; a store and a delete journaled
/// after it reach PostgreSQL on `memctl repair`, which exits 0, and `memctl stats`
/// shows the one parked write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_owed_write_is_parked_and_the_rest_replayed() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    let run = |backend: &str, stage: &str, args: &[&str]| {
        let env = [
            ("MEMORY_BACKEND", backend),
            ("MEMORY_STAGE", stage),
            ("DATABASE_URL", db.url.as_str()),
            ("AGENTS_PATH", agents),
        ];
        memctl(&env, args)
    };
    let agent = unique_agent("poison");
    let a = agent.as_str();
    let out = run(
        "dual",
        "dualwrite",
        &["--agent", a, "store", "gone", r#"{"v":1}"#],
    );
    assert!(out.status.success(), "{}", shown(&out));

    // What an older version left: the row, and the journal record owing it.
    let long_key = incompressible_key(10_000);
    let mut poison = Memory::new(long_key.clone(), json!({"poison": true}));
    poison.created_at = Utc::now();
    poison.updated_at = poison.created_at;
    let file = dir.path().join(a).join("memory.db");
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&file),
    )
    .await
    .expect("open the agent's file");
    sqlx::query(
        "insert into agent_memories (id, key, content, metadata, embedding, created_at, updated_at)
         values (?1, ?2, ?3, '{}', null, ?4, ?4)",
    )
    .bind(poison.id.to_string())
    .bind(&long_key)
    .bind(poison.content.to_string())
    .bind(sqlite_time(poison.updated_at))
    .execute(&mut conn)
    .await
    .expect("the over-long row");
    let op = json!({"op": "put_memory", "memory": poison});
    sqlx::query("insert into agent_memory_owed (op) values (?1)")
        .bind(op.to_string())
        .execute(&mut conn)
        .await
        .expect("the journal record");
    conn.close().await.unwrap();

    // Journaled after it: a store and a delete made while PostgreSQL is not written.
    let out = run(
        "dual",
        "sqlite",
        &["--agent", a, "store", "kept", r#"{"v":2}"#],
    );
    assert!(out.status.success(), "{}", shown(&out));
    let out = run("dual", "sqlite", &["--agent", a, "delete", "gone"]);
    assert!(out.status.success(), "{}", shown(&out));

    let repaired = run("dual", "dualwrite", &["repair"]);
    let got = |key: &str| run("postgres", "", &["--agent", a, "get", key]);
    let (kept, gone) = (got("kept"), got("gone"));
    assert!(
        repaired.status.success(),
        "memctl repair behind a poison owed write: {}; PostgreSQL now: kept {}, gone {}",
        shown(&repaired),
        shown(&kept),
        shown(&gone)
    );
    assert_eq!(
        stdout(&kept),
        "{\"v\":2}\n",
        "the store journaled after the poison write"
    );
    assert_eq!(
        gone.status.code(),
        Some(1),
        "the key deleted after the poison write is back in PostgreSQL: {}",
        shown(&gone)
    );
    let stats_out = run("dual", "dualwrite", &["stats"]);
    let stats: Value = serde_json::from_str(stdout(&stats_out).trim())
        .unwrap_or_else(|e| panic!("memctl stats is not JSON ({e}): {}", shown(&stats_out)));
    assert_eq!(
        parked_in(&stats),
        Some(1),
        "memctl stats does not show the one parked write: {stats}"
    );
}

/// `memctl repair` of all agents, one of whose files is garbage: the others are
/// repaired, it exits 0, and its output names the bad agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_all_reports_a_corrupt_agent_and_repairs_the_others() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    let run = |backend: &str, stage: &str, args: &[&str]| {
        let env = [
            ("MEMORY_BACKEND", backend),
            ("MEMORY_STAGE", stage),
            ("DATABASE_URL", db.url.as_str()),
            ("AGENTS_PATH", agents),
        ];
        memctl(&env, args)
    };
    let (good, bad) = (unique_agent("good"), unique_agent("bad"));
    for agent in [&good, &bad] {
        // Stage sqlite: journaled as owed to PostgreSQL.
        let out = run(
            "dual",
            "sqlite",
            &["--agent", agent.as_str(), "store", "k", r#"{"v":1}"#],
        );
        assert!(out.status.success(), "{}", shown(&out));
    }
    let folder = dir.path().join(bad.as_str());
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("memory.db-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    std::fs::write(folder.join("memory.db"), vec![0x5a_u8; 8192]).unwrap();

    let repaired = run("dual", "dualwrite", &["repair"]);
    let read = run("postgres", "", &["--agent", good.as_str(), "get", "k"]);
    assert!(
        repaired.status.success(),
        "memctl repair with one corrupt agent file: {}; the good agent's key in \
         PostgreSQL: {}",
        shown(&repaired),
        shown(&read)
    );
    assert_eq!(
        stdout(&read),
        "{\"v\":1}\n",
        "the good agent was not repaired"
    );
    let said = format!("{}{}", stdout(&repaired), stderr(&repaired));
    assert!(
        said.contains(bad.as_str()),
        "repair does not name the corrupt agent {bad}: {}",
        shown(&repaired)
    );
}

// ---------------------------------------------------------------------------------------
// 7. An agent the admin application registered
// ---------------------------------------------------------------------------------------

/// `agents` holds `sales` under the admin application's id: memctl stores for it with
/// the postgres backend and with dual in dualwrite, the rows hang on that id, and no
/// second `sales` row appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_registered_agent_writes_under_its_id() {
    for (backend, stage) in [("postgres", ""), ("dual", "dualwrite")] {
        let db = TestDatabase::migrated().await;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("insert into agents (id, name) values ('clx9adminid', 'sales')")
            .execute(&mut conn)
            .await
            .unwrap();
        let env = [
            ("MEMORY_BACKEND", backend),
            ("MEMORY_STAGE", stage),
            ("DATABASE_URL", db.url.as_str()),
            ("AGENTS_PATH", dir.path().to_str().unwrap()),
        ];
        let out = memctl(&env, &["--agent", "sales", "store", "k", r#"{"x":1}"#]);
        assert!(
            out.status.success(),
            "{backend} {stage} store: {}",
            shown(&out)
        );
        let out = memctl(&env, &["--agent", "sales", "get", "k"]);
        assert_eq!(
            stdout(&out),
            "{\"x\":1}\n",
            "{backend} {stage}: {}",
            shown(&out)
        );
        let rows: Vec<(String,)> =
            sqlx::query_as("select agent_id from agent_memories where key = 'k'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![("clx9adminid".to_string(),)],
            "{backend} {stage}"
        );
        let named: i64 = sqlx::query_scalar("select count(*) from agents where name = 'sales'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            named, 1,
            "{backend} {stage}: a second agents row named sales"
        );
        if backend == "dual" {
            let stats: Value = serde_json::from_str(&stdout(&memctl(&env, &["stats"]))).unwrap();
            assert_eq!(stats["owed_to_postgres"], json!(0), "{stats}");
        }
        conn.close().await.ok();
    }
}

// ---------------------------------------------------------------------------------------
// 8. A stage change in the middle of a call
// ---------------------------------------------------------------------------------------

/// In `live` a store blocks on PostgreSQL's row lock; the stage moves to `shadow` while
/// it waits. Once the lock goes, the store completes under `live`'s plan: after repair
/// both sides hold the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stage_change_mid_call_finishes_under_the_starting_stage() {
    let sides = Sides::new(Stage::Live, quick_options()).await;
    let memory = sides.memory();
    memory.store_memory("k", json!({"v": "old"})).await.unwrap();
    let lock = lock_row(&sides.db, &sides.agent, "k").await;
    let store = {
        let memory = memory.clone();
        tokio::spawn(async move { memory.store_memory("k", json!({"v": "new"})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !store.is_finished(),
        "the store did not wait on the row lock"
    );
    sides.dual.set_stage(Stage::Shadow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    unlock(lock).await;
    let stored = store.await.unwrap();
    assert!(stored.is_ok(), "the store failed: {stored:?}");
    let before = sides.on_sides("k").await;
    sides
        .repair_and_assert_agree(&format!("stage changed mid-call; before repair {before:?}"))
        .await;
    let new = Some(json!({"v": "new"}));
    assert_eq!(sides.on_sides("k").await, (new.clone(), new));
}
