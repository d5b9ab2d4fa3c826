//! The dual backend under faults and concurrency: a side down or refusing writes, lazy
//! copies racing stores, deletes that must stay deleted, every stage under concurrent
//! load, and stepping through the stages. Faults come from `FaultyBackend`, so these tests
//! run in parallel on the shared test server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all as futures_join_all;
use memshift::backend::DualBackend;
use memshift::backend::dual::DualOptions;
use memshift::backend::replica::{OwedWrite, Replica};
use memshift::config::Stage;
use memshift::testing::faulty::FaultyBackend;
use memshift::testing::postgres::TestDatabase;
use memshift::testing::scenarios::{assert_awkward_values, store_awkward_values};
use memshift::testing::unique_agent;
use memshift::{
    AgentId, Execution, Json, Listing, Memory, MemoryBackend, Metric, SqliteBackend, Tool,
};
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Fixture and helpers
// ---------------------------------------------------------------------------------------

/// A dual backend whose two sides can be broken on command, with direct handles on
/// each side's real backend to check what it holds.
struct Fixture {
    dual: DualBackend,
    /// Fault switches of the SQLite side.
    sqlite_faults: Arc<FaultyBackend>,
    /// Fault switches of the PostgreSQL side.
    postgres_faults: Arc<FaultyBackend>,
    /// The SQLite side itself, read past the fault switch.
    sqlite: Arc<dyn Replica>,
    /// The PostgreSQL side itself, read past the fault switch.
    postgres: Arc<dyn Replica>,
    agent: AgentId,
    dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl Fixture {
    /// A fixture whose dual backend pings a side it found unreachable every 50 ms.
    async fn new(stage: Stage) -> Self {
        Self::with_retry(stage, Duration::from_millis(50)).await
    }

    /// A fixture whose dual backend pings an unreachable side every `retry_after`.
    async fn with_retry(stage: Stage, retry_after: Duration) -> Self {
        let options = DualOptions {
            retry_after,
            ..DualOptions::default()
        };
        Self::with_options(stage, options).await
    }

    /// A fixture whose dual backend has `options`.
    async fn with_options(stage: Stage, options: DualOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let db = TestDatabase::migrated().await;
        let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(dir.path()));
        let postgres: Arc<dyn Replica> = Arc::new(db.backend().await);
        let sqlite_faults = Arc::new(FaultyBackend::new(sqlite.clone()));
        let postgres_faults = Arc::new(FaultyBackend::new(postgres.clone()));
        let dual = DualBackend::with_options(
            sqlite_faults.clone(),
            postgres_faults.clone(),
            stage,
            options,
        );
        Fixture {
            dual,
            sqlite_faults,
            postgres_faults,
            sqlite,
            postgres,
            agent: unique_agent("dual"),
            dir,
            _db: db,
        }
    }

    /// Stores `content` under `key` through the dual backend.
    async fn try_put(&self, key: &str, content: impl Into<Json>) -> memshift::Result<Memory> {
        let memory = Memory::new(key, content);
        self.dual.put_memory(&self.agent, &memory).await
    }

    /// Stores `content` under `key` through the dual backend; the write must succeed.
    async fn put(&self, key: &str, content: impl Into<Json>) -> Memory {
        let stage = self.dual.stage();
        let stored = self.try_put(key, content).await;
        stored.unwrap_or_else(|e| panic!("store {key:?} at {stage}: {e:?}"))
    }

    /// The value under `key`, read through the dual backend.
    async fn get(&self, key: &str) -> Option<Json> {
        value_of(&self.dual, &self.agent, key).await
    }

    /// Asserts the value of `key` through the dual backend and on each side it names.
    async fn assert_value(&self, key: &str, want: Option<&Json>, sides: &[Side]) {
        let stage = self.dual.stage();
        assert_eq!(
            self.get(key).await.as_ref(),
            want,
            "{key:?} through the dual backend at {stage}"
        );
        for side in sides {
            assert_eq!(
                value_of(self.side(*side), &self.agent, key).await.as_ref(),
                want,
                "{key:?} in {side:?} at {stage}"
            );
        }
    }

    fn side(&self, side: Side) -> &dyn Replica {
        match side {
            Side::Sqlite => &*self.sqlite,
            Side::Postgres => &*self.postgres,
        }
    }

    /// Owed writes waiting in `side`'s journal for the agent.
    async fn journal(&self, side: Side) -> Vec<OwedWrite> {
        let owed = self.side(side).owed_writes(&self.agent, 10_000).await;
        owed.expect("read a journal")
            .into_iter()
            .map(|record| serde_json::from_str(&record.op).expect("a readable record"))
            .collect()
    }

    /// Both sides hold the same memories (`compare`), tools, metrics and executions.
    async fn assert_sides_agree(&self) {
        let agent = &self.agent;
        let comparison = self.dual.compare(agent).await.expect("compare the sides");
        assert!(comparison.agrees(), "the sides disagree: {comparison:?}");
        let (s, p) = (&self.sqlite, &self.postgres);
        assert_eq!(
            s.list_tools(agent, &Listing::default()).await.unwrap(),
            p.list_tools(agent, &Listing::default()).await.unwrap(),
            "tools"
        );
        assert_eq!(
            s.list_metrics(agent, &Listing::default()).await.unwrap(),
            p.list_metrics(agent, &Listing::default()).await.unwrap(),
            "metrics"
        );
        assert_eq!(
            s.list_executions(agent, &Listing::default()).await.unwrap(),
            p.list_executions(agent, &Listing::default()).await.unwrap(),
            "executions"
        );
    }

    /// Owed writes of the agent in both journals, read past the fault switches and
    /// the dual backend's reachability marks.
    async fn pending(&self) -> usize {
        self.journal(Side::Sqlite).await.len() + self.journal(Side::Postgres).await.len()
    }

    /// Waits until both journals are empty (a background repair ran).
    async fn wait_until_repaired(&self) {
        eventually("owed writes replayed", || async {
            match self.pending().await {
                0 => Ok(()),
                n => Err(format!("{n} pending")),
            }
        })
        .await;
    }

    /// Reads `key` through the dual backend once the sides it needs answer again (the
    /// dual backend skips a side that failed with a connection error until a ping
    /// finds it back).
    async fn get_when_reachable(&self, key: &str) -> Option<Json> {
        eventually("a read", || async {
            match self.dual.get_memory(&self.agent, key).await {
                Ok(found) => Ok(found.map(|m| m.content)),
                Err(err) if err.is_connection() => Err(format!("{err:?}")),
                Err(err) => panic!("read {key:?}: {err:?}"),
            }
        })
        .await
    }
}

/// Retries `attempt` every 20 ms until it succeeds; fails after 20 s.
async fn eventually<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(last) if Instant::now() > deadline => panic!("{what}: still failing: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Sqlite,
    Postgres,
}

const BOTH: &[Side] = &[Side::Sqlite, Side::Postgres];

async fn value_of(backend: &dyn MemoryBackend, agent: &AgentId, key: &str) -> Option<Json> {
    let found = backend.get_memory(agent, key).await;
    let found = found.unwrap_or_else(|e| panic!("{}: read {key:?}: {e:?}", backend.name()));
    found.map(|m| m.content)
}

/// The stages forward, then back down to `sqlite`.
fn there_and_back() -> impl Iterator<Item = Stage> {
    Stage::ALL
        .into_iter()
        .chain(Stage::ALL.into_iter().rev().skip(1))
}

/// Moves to `stage`, repairing first when the authoritative side changes (as
/// `DualBackend::set_stage` asks).
async fn step(dual: &DualBackend, stage: Stage) {
    if dual.stage().authoritative() != stage.authoritative() {
        dual.repair_all().await.expect("repair before the step");
    }
    dual.set_stage(stage);
}

/// A tiny deterministic random generator (xorshift64*), seeded per task.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

// ---------------------------------------------------------------------------------------
// 1. PostgreSQL down while SQLite is authoritative
// ---------------------------------------------------------------------------------------

/// How owed writes get replayed once PostgreSQL is back.
#[derive(Clone, Copy)]
enum Repair {
    /// An operator runs `repair`.
    Explicit,
    /// The agent's next successful dual write starts a repair in the background.
    OnLaterWrite,
    /// The background ping that finds PostgreSQL back starts it.
    WhenBack,
}

/// With PostgreSQL down in a SQLite-authoritative stage the agent notices nothing; the
/// missed writes are journaled and, once PostgreSQL is back, replayed until both sides
/// hold the same data.
async fn postgres_down_then_back(stage: Stage, repair: Repair) {
    let retry_after = match repair {
        Repair::WhenBack => Duration::from_millis(50),
        // Only the repair under test may run.
        Repair::Explicit | Repair::OnLaterWrite => Duration::from_secs(3600),
    };
    let fx = Fixture::with_retry(stage, retry_after).await;
    let agent = &fx.agent;
    fx.put("doomed", json!("stored while healthy")).await;

    fx.postgres_faults.set_down(true);
    // Text only an exact store keeps: the replays must carry it as it is.
    let exact = |text: &str| text.parse::<Json>().unwrap();
    let kept = fx
        .put(
            "kept",
            exact(r#"{"n": 1, "big": 18446744073709551616, "w": 2.50}"#),
        )
        .await;
    assert_eq!(fx.get("kept").await, Some(kept.content.clone()));
    assert!(fx.dual.delete_memory(agent, "doomed").await.unwrap());
    assert_eq!(fx.get("doomed").await, None);
    let tool = Tool::new("search", json!({"endpoint": "/search"}));
    fx.dual
        .put_tool(agent, &tool)
        .await
        .expect("register a tool");
    let got = fx.dual.get_tool(agent, "search").await.unwrap();
    assert_eq!(got.map(|t| t.content), Some(tool.content.clone()));
    assert_eq!(
        fx.dual
            .list_tools(agent, &Listing::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let mut metric = Metric::new("latency_ms", Some(12.5));
    metric.content = exact(r#"{"z": -0, "a": 1e400}"#);
    fx.dual.record_metric(agent, &metric).await.expect("metric");
    let execution = Execution::new(Some("ok".into()), exact(r#"{"step": 1, "at": 2.50}"#));
    fx.dual.log_execution(agent, &execution).await.expect("log");
    assert_eq!(
        fx.dual
            .list_metrics(agent, &Listing::default())
            .await
            .unwrap(),
        vec![metric]
    );
    assert_eq!(
        fx.dual
            .list_executions(agent, &Listing::default())
            .await
            .unwrap(),
        vec![execution]
    );

    let stats = fx.dual.stats();
    assert_eq!(stats.owed_recorded, 5, "{stats:?}");
    assert!(stats.postgres.errors >= 5, "{stats:?}");
    assert_eq!(stats.sqlite.errors, 0, "{stats:?}");
    assert_eq!(fx.journal(Side::Sqlite).await.len(), 5);
    assert_eq!(value_of(&*fx.postgres, agent, "kept").await, None);

    fx.postgres_faults.set_down(false);
    match repair {
        Repair::Explicit => {
            assert_eq!(fx.pending().await, 5, "nothing replayed yet");
            let report = fx.dual.repair(agent).await.expect("repair");
            assert_eq!((report.to_postgres, report.to_sqlite), (5, 0));
        }
        Repair::OnLaterWrite => {
            // Another agent's repair finds PostgreSQL back without replaying ours.
            fx.dual
                .repair(&unique_agent("other"))
                .await
                .expect("repair");
            assert_eq!(fx.pending().await, 5, "nothing replayed yet");
            fx.put("trigger", json!("a later write")).await;
            fx.wait_until_repaired().await;
        }
        Repair::WhenBack => fx.wait_until_repaired().await,
    }
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
    assert_eq!(fx.dual.stats().owed_replayed, 5);
    fx.assert_value("kept", Some(&kept.content), BOTH).await;
    fx.assert_value("doomed", None, BOTH).await;
    fx.assert_sides_agree().await;
}

macro_rules! postgres_down_then_back {
    ($($name:ident: $stage:expr, $repair:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            postgres_down_then_back($stage, $repair).await;
        }
    )*};
}

postgres_down_then_back!(
    postgres_down_in_dualwrite_then_repair: Stage::DualWrite, Repair::Explicit;
    postgres_down_in_dualwrite_then_repaired_on_later_write: Stage::DualWrite, Repair::OnLaterWrite;
    postgres_down_in_dualwrite_then_repaired_when_back: Stage::DualWrite, Repair::WhenBack;
    postgres_down_in_shadow_then_repair: Stage::Shadow, Repair::Explicit;
    postgres_down_in_shadow_then_repaired_on_later_write: Stage::Shadow, Repair::OnLaterWrite;
    postgres_down_in_shadow_then_repaired_when_back: Stage::Shadow, Repair::WhenBack;
);

// ---------------------------------------------------------------------------------------
// 2. Faults while PostgreSQL is authoritative
// ---------------------------------------------------------------------------------------

/// With PostgreSQL down in `live` or `rampdown`, writes fail with a connection error and
/// leave SQLite untouched; `live` reads fall back to SQLite, `rampdown` reads fail.
async fn postgres_down_while_authoritative(stage: Stage) {
    let fx = Fixture::new(stage).await;
    let agent = &fx.agent;
    let old = fx.put("k", json!("old")).await;

    fx.postgres_faults.set_down(true);
    let err = fx.try_put("k", json!("new")).await;
    let err = err.expect_err("a store with PostgreSQL down fails");
    assert!(err.is_connection(), "{err:?}");
    let err = fx.try_put("fresh", json!(1)).await;
    assert!(err.expect_err("store fails").is_connection());
    let err = fx.dual.delete_memory(agent, "k").await;
    assert!(err.expect_err("delete fails").is_connection());
    let tool = Tool::new("t", json!({}));
    assert!(
        fx.dual
            .put_tool(agent, &tool)
            .await
            .unwrap_err()
            .is_connection()
    );
    // Nothing of the failed writes reached SQLite.
    assert_eq!(
        fx.sqlite.get_memory(agent, "k").await.unwrap(),
        Some(old.clone())
    );
    assert_eq!(value_of(&*fx.sqlite, agent, "fresh").await, None);
    assert_eq!(fx.sqlite.get_tool(agent, "t").await.unwrap(), None);
    assert!(fx.journal(Side::Sqlite).await.is_empty());

    let read = fx.dual.get_memory(agent, "k").await;
    match stage {
        Stage::Live => {
            assert_eq!(read.expect("live reads fall back"), Some(old.clone()));
            assert_eq!(fx.get("fresh").await, None);
            assert!(
                fx.dual.stats().fallback_on_error >= 2,
                "{:?}",
                fx.dual.stats()
            );
        }
        _ => {
            assert!(
                read.expect_err("rampdown reads PostgreSQL only")
                    .is_connection()
            );
            assert_eq!(fx.dual.stats().fallback_on_error, 0);
        }
    }

    // Once the server is back, writes reach it again without anyone's help.
    fx.postgres_faults.set_down(false);
    let newer = eventually("a store after PostgreSQL is back", || async {
        fx.try_put("k", json!("newer"))
            .await
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    fx.assert_value("k", Some(&newer.content), BOTH).await;
    fx.assert_value("fresh", None, BOTH).await;
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
    fx.assert_sides_agree().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_in_live_fails_writes_and_reads_fall_back() {
    postgres_down_while_authoritative(Stage::Live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_in_rampdown_fails_writes_and_reads() {
    postgres_down_while_authoritative(Stage::RampDown).await;
}

/// In `live`, SQLite refusing writes does not fail the agent's write: PostgreSQL takes it
/// and journals it as owed to SQLite, and repair brings SQLite level.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_failing_in_live_is_journaled_and_repaired() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    let before = fx.put("k", json!("before")).await;

    fx.sqlite_faults.set_writes_failing(true);
    let after = fx.put("k", json!("after")).await;
    fx.put("other", json!([1, 2])).await;
    assert_eq!(fx.get("k").await, Some(after.content.clone()));
    assert_eq!(
        value_of(&*fx.sqlite, agent, "k").await,
        Some(before.content)
    );
    assert_eq!(value_of(&*fx.sqlite, agent, "other").await, None);
    let owed = fx.journal(Side::Postgres).await;
    assert!(
        matches!(&owed[..], [OwedWrite::SyncMemory { key: a }, OwedWrite::SyncMemory { key: b }]
            if a == "k" && b == "other"),
        "journaled in PostgreSQL as owed to SQLite: {owed:?}"
    );
    assert_eq!(fx.dual.stats().owed_recorded, 2);

    fx.sqlite_faults.set_writes_failing(false);
    fx.dual.repair(agent).await.expect("repair");
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
    // A background repair, started when the side answered again, may replay them too.
    assert!(fx.dual.stats().owed_replayed >= 2);
    fx.assert_value("k", Some(&after.content), BOTH).await;
    fx.assert_value("other", Some(&json!([1, 2]).into()), BOTH)
        .await;
    fx.assert_sides_agree().await;
}

// ---------------------------------------------------------------------------------------
// 3, 4. Lazy copy
// ---------------------------------------------------------------------------------------

/// Data stored before the dual backend (plain SQLite) reads back in `live` and is copied
/// into PostgreSQL once, with its identity and times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_reads_copy_sqlite_data_into_postgres_once() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    // The `sqlite` stage of a project before it had a dual backend.
    let plain = SqliteBackend::new(fx.dir.path());
    plain
        .put_memory(agent, &Memory::new("k", json!("v1")))
        .await
        .unwrap();
    let stored = plain
        .put_memory(agent, &Memory::new("k", json!("v2")))
        .await
        .unwrap();
    assert!(stored.updated_at > stored.created_at);
    plain
        .put_tool(agent, &Tool::new("t", json!({"v": 1})))
        .await
        .unwrap();
    let tool = plain
        .put_tool(agent, &Tool::new("t", json!({"v": 2})))
        .await
        .unwrap();
    plain.close().await;

    for _ in 0..2 {
        assert_eq!(
            fx.dual.get_memory(agent, "k").await.unwrap(),
            Some(stored.clone())
        );
        assert_eq!(
            fx.postgres.get_memory(agent, "k").await.unwrap(),
            Some(stored.clone())
        );
        assert_eq!(
            fx.dual.stats().lazy_copies,
            1,
            "copied once, on the first read"
        );
    }
    for _ in 0..2 {
        assert_eq!(
            fx.dual.get_tool(agent, "t").await.unwrap(),
            Some(tool.clone())
        );
        assert_eq!(
            fx.postgres.get_tool(agent, "t").await.unwrap(),
            Some(tool.clone())
        );
        assert_eq!(fx.dual.stats().lazy_copies, 2, "the tool copied once");
    }
    fx.assert_sides_agree().await;

    // Every awkward value is copied as the same text: key order, number forms, escapes.
    let other = unique_agent("awkward");
    let plain = SqliteBackend::new(fx.dir.path());
    store_awkward_values(&plain, &other).await;
    plain.close().await;
    assert_awkward_values(&fx.dual, &other, "read through live").await;
    assert_awkward_values(&*fx.postgres, &other, "copied into PostgreSQL").await;
}

/// A lazy copy of an old value racing a store of a new one never brings the old value
/// back, on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lazy_copy_racing_a_store_keeps_the_newer_value() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    for i in 0..60 {
        let key = format!("k{i}");
        fx.sqlite
            .put_memory(agent, &Memory::new(&key, json!("old")))
            .await
            .unwrap();
        let newer = Memory::new(&key, json!({"new": i}));
        let (dual, a, k) = (fx.dual.clone(), agent.clone(), key.clone());
        let read = tokio::spawn(async move { dual.get_memory(&a, &k).await });
        let (dual, a) = (fx.dual.clone(), agent.clone());
        let write = tokio::spawn(async move { dual.put_memory(&a, &newer).await });
        let (read, write) = (read.await.unwrap(), write.await.unwrap());
        let read = read.expect("read").map(|m| m.content);
        assert!(
            read == Some(json!("old").into()) || read == Some(json!({"new": i}).into()),
            "{read:?}"
        );
        let written = write.expect("store").content;
        fx.assert_value(&key, Some(&written), BOTH).await;
    }
    fx.assert_sides_agree().await;
}

// ---------------------------------------------------------------------------------------
// 5. Deletes
// ---------------------------------------------------------------------------------------

/// A key deleted in `live`, whether it was only in SQLite or on both sides, reads as
/// absent in every stage afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_in_live_stay_deleted_in_every_stage() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    fx.sqlite
        .put_memory(agent, &Memory::new("only_sqlite", json!(1)))
        .await
        .unwrap();
    fx.put("both", json!(2)).await;
    fx.put("survivor", json!(3)).await;
    // Tools the same way.
    fx.sqlite
        .put_tool(agent, &Tool::new("only_sqlite", json!(1)))
        .await
        .unwrap();
    for name in ["both", "survivor"] {
        let tool = Tool::new(name, json!(2));
        fx.dual.put_tool(agent, &tool).await.unwrap();
    }
    for name in ["only_sqlite", "both"] {
        assert!(fx.dual.delete_memory(agent, name).await.unwrap());
        assert!(fx.dual.delete_tool(agent, name).await.unwrap());
    }
    for stage in there_and_back() {
        step(&fx.dual, stage).await;
        fx.assert_value("only_sqlite", None, &[]).await;
        fx.assert_value("both", None, &[]).await;
        fx.assert_value("survivor", Some(&json!(3).into()), &[])
            .await;
        let keys = fx
            .dual
            .memory_keys(agent, &Listing::default())
            .await
            .unwrap();
        assert_eq!(keys, ["survivor"], "keys at {stage}");
        for name in ["only_sqlite", "both"] {
            assert_eq!(fx.tool_of(&fx.dual, name).await, None, "{name} at {stage}");
        }
        assert_eq!(fx.tool_names(&fx.dual).await, ["survivor"], "at {stage}");
    }
    assert_eq!(fx.dual.stats().lazy_copies, 0);
    fx.assert_value("only_sqlite", None, BOTH).await;
    fx.assert_value("both", None, BOTH).await;
    for side in [&*fx.sqlite, &*fx.postgres] {
        assert_eq!(fx.tool_names(side).await, ["survivor"], "{}", side.name());
    }
    fx.assert_sides_agree().await;
}

/// A `live` delete that SQLite missed is not copied back from SQLite by a later read,
/// and repair removes it from SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_missed_by_sqlite_is_not_copied_back() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    fx.sqlite
        .put_memory(agent, &Memory::new("only_sqlite", json!(1)))
        .await
        .unwrap();
    fx.put("both", json!(2)).await;
    fx.sqlite
        .put_tool(agent, &Tool::new("only_sqlite", json!(1)))
        .await
        .unwrap();
    fx.dual
        .put_tool(agent, &Tool::new("both", json!(2)))
        .await
        .unwrap();

    fx.sqlite_faults.set_writes_failing(true);
    for key in ["only_sqlite", "both"] {
        fx.dual
            .delete_tool(agent, key)
            .await
            .expect("delete a tool");
        assert!(
            fx.tool_of(&*fx.sqlite, key).await.is_some(),
            "SQLite missed it"
        );
        fx.dual.delete_memory(agent, key).await.expect("delete");
        assert!(
            value_of(&*fx.sqlite, agent, key).await.is_some(),
            "SQLite missed it"
        );
        // The miss in PostgreSQL reads SQLite (once it is deemed reachable again), finds
        // the old row there, and must not copy it back over the tombstone.
        for _ in 0..2 {
            assert_eq!(fx.get_when_reachable(key).await, None, "{key} came back");
            assert_eq!(value_of(&*fx.postgres, agent, key).await, None, "{key}");
        }
    }
    let keys = eventually("list keys", || async {
        fx.dual
            .memory_keys(agent, &Listing::default())
            .await
            .map_err(|e| format!("{e:?}"))
    });
    assert!(keys.await.is_empty(), "deleted keys are not listed");
    // The same for the tools: a read or a listing does not bring them back.
    for name in ["only_sqlite", "both"] {
        assert_eq!(fx.tool_of(&fx.dual, name).await, None, "{name} came back");
    }
    assert!(
        fx.tool_names(&fx.dual).await.is_empty(),
        "deleted tools are listed"
    );
    assert!(fx.tool_names(&*fx.postgres).await.is_empty());
    let stats = fx.dual.stats();
    assert_eq!(stats.lazy_copies, 0, "{stats:?}");
    assert!(
        stats.fallback_hits > 0,
        "the old rows were found in SQLite: {stats:?}"
    );
    let owed = fx.journal(Side::Postgres).await;
    let tool_deletes = owed
        .iter()
        .filter(|w| matches!(w, OwedWrite::DeleteTool { .. }))
        .count();
    assert_eq!((owed.len(), tool_deletes), (4, 2), "{owed:?}");

    fx.sqlite_faults.set_writes_failing(false);
    fx.dual.repair(agent).await.expect("repair");
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
    // A background repair, started when the side answered again, may replay them too.
    assert!(fx.dual.stats().owed_replayed >= 4);
    for key in ["only_sqlite", "both"] {
        fx.assert_value(key, None, BOTH).await;
        assert!(
            fx.sqlite
                .tool_tombstone(agent, key)
                .await
                .unwrap()
                .is_some()
        );
    }
    assert!(fx.tool_names(&*fx.sqlite).await.is_empty());
    fx.assert_sides_agree().await;
}

/// The advisory lock of [`hold_deletes_after_journaled_writes`].
const HOLD: i64 = 7000;

/// Holds PostgreSQL deletes right after a journaled write: once installed in `fx`'s
/// database, a connection that journals a write (a delete's tombstone with its record,
/// or a store) runs its next statement deleting a memory or a tool only once it can take
/// the advisory lock [`HOLD`] (shared), so it waits while the test holds that lock.
/// Other connections' deletes go through.
async fn hold_deletes_after_journaled_writes(fx: &Fixture) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&fx._db.url)
        .await
        .expect("connect");
    let install = format!(
        "create function test_journaled() returns trigger language plpgsql as $$
         begin
             perform set_config('test.journaled', 'yes', false);
             return null;
         end $$;
         create trigger test_journaled after insert on agent_memory.owed_writes
             for each row execute function test_journaled();
         create function test_hold() returns trigger language plpgsql as $$
         begin
             if current_setting('test.journaled', true) = 'yes' then
                 perform set_config('test.journaled', 'no', false);
                 perform pg_advisory_xact_lock_shared({HOLD});
             end if;
             return null;
         end $$;
         create trigger test_hold before delete on agent_memories
             for each statement execute function test_hold();
         create trigger test_hold before delete on agent_tools
             for each statement execute function test_hold();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(install))
        .execute(&mut conn)
        .await
        .expect("install the hold");
    conn
}

/// Waits until a session of `conn`'s database waits for the advisory lock `id`
/// (`who`, for the message after 20 s of none).
async fn wait_for_a_waiter(conn: &mut sqlx::PgConnection, id: i64, who: &str) {
    let waiting = "select count(*) from pg_locks where locktype = 'advisory' and objid = $1
                   and not granted and database = (select oid from pg_database
                                                   where datname = current_database())";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiters: i64 = sqlx::query_scalar(waiting)
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if waiters >= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{who} never reached its hold");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `delete` (a dual backend's, in a stage where PostgreSQL leads) held between the
/// tombstone it commits with its journal record and its removal of the value, repairs
/// the agent meanwhile from another process's dual backend (one in this process waits
/// for the delete instead), and returns what the delete answered. The repair replays
/// the delete's record and removes the value itself first.
async fn delete_with_a_repair_between(
    fx: &Fixture,
    hold: &mut sqlx::PgConnection,
    delete: impl std::future::Future<Output = memshift::Result<bool>> + Send + 'static,
) -> bool {
    let values = "select (select count(*) from agent_memories)
                       + (select count(*) from agent_tools)";
    sqlx::query("select pg_advisory_lock($1)")
        .bind(HOLD)
        .execute(&mut *hold)
        .await
        .unwrap();
    let before: i64 = sqlx::query_scalar(values)
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    let delete = tokio::spawn(delete);
    wait_for_a_waiter(hold, HOLD, "the delete").await;
    let other_process = DualBackend::new(fx.sqlite.clone(), fx.postgres.clone(), fx.dual.stage());
    other_process.repair(&fx.agent).await.expect("repair");
    let after: i64 = sqlx::query_scalar(values)
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    assert_eq!(after, before - 1, "the repair removed the value first");
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(HOLD)
        .execute(&mut *hold)
        .await
        .unwrap();
    delete.await.expect("the delete ran").expect("delete")
}

/// PostgreSQL commits a delete's tombstone with its journal record, then removes the
/// value. A repair of another process that replays the record in between
/// removes the value on both sides itself; the delete still answers that there was one,
/// for memories and tools, in every stage where PostgreSQL leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_finds_the_value_a_repair_removed_between_its_statements() {
    for stage in [Stage::Live, Stage::RampDown, Stage::Postgres] {
        let fx = Fixture::new(stage).await;
        let agent = &fx.agent;
        fx.put("k", json!("doomed")).await;
        let tool = Tool::new("t", json!("doomed"));
        fx.dual.put_tool(agent, &tool).await.expect("register");
        let mut hold = hold_deletes_after_journaled_writes(&fx).await;

        let (dual, who) = (fx.dual.clone(), agent.clone());
        let delete = async move { dual.delete_memory(&who, "k").await };
        let existed = delete_with_a_repair_between(&fx, &mut hold, delete).await;
        assert!(existed, "{stage}: the delete of k found nothing");
        fx.assert_value("k", None, BOTH).await;

        let (dual, who) = (fx.dual.clone(), agent.clone());
        let delete = async move { dual.delete_tool(&who, "t").await };
        let existed = delete_with_a_repair_between(&fx, &mut hold, delete).await;
        assert!(existed, "{stage}: the delete of t found nothing");
        for side in [&*fx.sqlite, &*fx.postgres] {
            assert_eq!(
                fx.tool_of(side, "t").await,
                None,
                "{stage}: {}",
                side.name()
            );
        }
        fx.dual.repair(agent).await.expect("repair");
        fx.assert_sides_agree().await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. Concurrency in every stage
// ---------------------------------------------------------------------------------------

const TASKS: u64 = 8;
const OPS_PER_TASK: usize = 50;
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

/// Many tasks put, get and delete a few shared keys. A per-key lock held across each
/// operation makes the order in which operations are acknowledged the order they take
/// effect, so every read must see the last acknowledged write of its key, and in the
/// end both sides must hold it.
async fn concurrent_operations(stage: Stage) {
    let fx = Arc::new(Fixture::new(stage).await);
    // The last acknowledged write of each key: its value, or None after a delete.
    type Last = BTreeMap<&'static str, Option<Json>>;
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new(KEYS.iter().map(|_| tokio::sync::Mutex::new(())).collect());
    let last: Arc<std::sync::Mutex<Last>> = Arc::new(std::sync::Mutex::new(
        KEYS.iter().map(|k| (*k, None)).collect(),
    ));
    let tasks = (0..TASKS).map(|task| {
        let (fx, locks, last) = (fx.clone(), locks.clone(), last.clone());
        tokio::spawn(async move {
            let mut rng = Rng::new(task + 1);
            for op in 0..OPS_PER_TASK {
                let index = rng.below(KEYS.len());
                let key = KEYS[index];
                let _held = locks[index].lock().await;
                let expected = last.lock().unwrap()[key].clone();
                match rng.below(3) {
                    0 => {
                        let value = json!({"task": task, "op": op});
                        let stored = fx.put(key, value.clone()).await;
                        assert_eq!(stored.content, value);
                        last.lock().unwrap().insert(key, Some(stored.content));
                    }
                    1 => {
                        let existed = fx.dual.delete_memory(&fx.agent, key).await;
                        let existed = existed.unwrap_or_else(|e| panic!("delete: {e:?}"));
                        assert_eq!(existed, expected.is_some(), "delete of {key} at {stage}");
                        last.lock().unwrap().insert(key, None);
                    }
                    _ => assert_eq!(fx.get(key).await, expected, "read {key} at {stage}"),
                }
            }
        })
    });
    for task in futures_join_all(tasks).await {
        task.expect("a task panicked");
    }

    let last = last.lock().unwrap().clone();
    let written: &[Side] = match stage {
        Stage::Sqlite => &[Side::Sqlite],
        Stage::Postgres => &[Side::Postgres],
        _ => BOTH,
    };
    for (key, value) in &last {
        fx.assert_value(key, value.as_ref(), written).await;
    }
    // Once repaired (as before a step to dualwrite), both sides hold the last writes.
    fx.dual.repair(&fx.agent).await.expect("repair");
    step(&fx.dual, Stage::DualWrite).await;
    for (key, value) in &last {
        fx.assert_value(key, value.as_ref(), BOTH).await;
    }
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
    fx.assert_sides_agree().await;
}

macro_rules! concurrency_in {
    ($($name:ident: $stage:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn $name() {
            concurrent_operations($stage).await;
        }
    )*};
}

concurrency_in!(
    concurrent_operations_in_sqlite: Stage::Sqlite,
    concurrent_operations_in_dualwrite: Stage::DualWrite,
    concurrent_operations_in_shadow: Stage::Shadow,
    concurrent_operations_in_live: Stage::Live,
    concurrent_operations_in_rampdown: Stage::RampDown,
    concurrent_operations_in_postgres: Stage::Postgres,
);

// ---------------------------------------------------------------------------------------
// 7. Stepping through the stages
// ---------------------------------------------------------------------------------------

/// Writing at every stage while stepping forward to `postgres` and back to `sqlite`
/// loses nothing: every key reads back with its last value at every stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stepping_through_the_stages_loses_nothing() {
    let fx = Fixture::new(Stage::Sqlite).await;
    let mut expected: BTreeMap<String, Option<Json>> = BTreeMap::new();
    for (round, stage) in there_and_back().enumerate() {
        step(&fx.dual, stage).await;
        // Everything written so far reads back first, then this stage writes.
        for (key, value) in &expected {
            fx.assert_value(key, value.as_ref(), &[]).await;
        }
        let value = json!({"stage": stage.as_str(), "round": round});
        for key in [
            format!("{stage}-{round}"),
            "shared".into(),
            format!("doomed-{round}"),
        ] {
            let stored = fx.put(&key, value.clone()).await;
            expected.insert(key, Some(stored.content));
        }
        if round > 0 {
            let key = format!("doomed-{}", round - 1);
            assert!(
                fx.dual.delete_memory(&fx.agent, &key).await.unwrap(),
                "{key}"
            );
            expected.insert(key, None);
        }
        for (key, value) in &expected {
            fx.assert_value(key, value.as_ref(), &[]).await;
        }
    }
    fx.dual.repair_all().await.expect("repair");
    for (key, value) in &expected {
        fx.assert_value(key, value.as_ref(), BOTH).await;
    }
    fx.assert_sides_agree().await;
}

/// A `live` delete of a key whose SQLite copy is still owed (SQLite had not even a file
/// for the agent yet) stays deleted when the owed store is replayed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owed_store_replayed_after_a_delete_stays_deleted() {
    let fx = Fixture::with_retry(Stage::Live, Duration::from_secs(3600)).await;
    let agent = &fx.agent;
    fx.sqlite_faults.set_writes_failing(true);
    fx.put("k", json!("owed to SQLite")).await;
    fx.sqlite_faults.set_writes_failing(false);
    // Another agent's repair finds SQLite back (without replaying our store), so the
    // delete reaches SQLite before the store owed to it is replayed.
    fx.dual
        .repair(&unique_agent("other"))
        .await
        .expect("repair");
    assert_eq!(fx.pending().await, 1, "the store is still owed");
    assert!(fx.dual.delete_memory(agent, "k").await.unwrap());
    fx.wait_until_repaired().await;
    fx.assert_value("k", None, BOTH).await;
    fx.assert_sides_agree().await;
}

// ---------------------------------------------------------------------------------------
// Shadow compares
// ---------------------------------------------------------------------------------------

/// Overwrites `key` on one side only with `content`, keeping the stored times, so the
/// sides differ in content alone.
async fn diverge(side: &dyn Replica, agent: &AgentId, stored: &Memory, content: impl Into<Json>) {
    let changed = Memory {
        content: content.into(),
        ..stored.clone()
    };
    assert!(
        side.restore_memory(
            agent,
            stored.key.as_deref().unwrap(),
            stored.updated_at,
            Some(&changed)
        )
        .await
        .expect("write one side directly"),
        "the stored version is there to overwrite"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_reads_compare_by_meaning() {
    let fx = Fixture::new(Stage::Shadow).await;
    let same = fx.put("same", json!({"a": 1, "b": [2.5]})).await;
    let other_form: Json = r#"{"b": [2.50], "a": 1.0}"#.parse().unwrap();
    diverge(&*fx.postgres, &fx.agent, &same, other_form).await;
    let differs = fx.put("differs", json!("what SQLite holds")).await;
    diverge(
        &*fx.postgres,
        &fx.agent,
        &differs,
        json!("postgres-only SECRET-VALUE"),
    )
    .await;

    assert_eq!(
        fx.get("same").await,
        Some(json!({"a": 1, "b": [2.5]}).into())
    );
    assert_eq!(
        fx.get("differs").await,
        Some(json!("what SQLite holds").into()),
        "shadow answers from SQLite"
    );
    assert_eq!(fx.get("absent").await, None);
    let stats = fx.dual.stats();
    assert_eq!(
        (stats.shadow_compares, stats.shadow_mismatches),
        (3, 1),
        "key order and number form are the same data; a changed value is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_compares_a_sample_of_hits_in_the_background() {
    let fx = Fixture::with_options(
        Stage::Live,
        DualOptions {
            live_compare_every: 4,
            ..DualOptions::default()
        },
    )
    .await;
    let stored = fx.put("k", json!({"v": "fresh"})).await;
    // A background repair may still replay the store, whose copy already arrived (a
    // repair that read the record before it was cleared). The replay keeps the version,
    // and of equal versions the content that sorts later stays, so SQLite's stale value,
    // which sorts after PostgreSQL's, outlives it.
    diverge(&*fx.sqlite, &fx.agent, &stored, json!({"v": "stale"})).await;
    for _ in 0..8 {
        assert_eq!(
            fx.get("k").await,
            Some(json!({"v": "fresh"}).into()),
            "live answers from PostgreSQL"
        );
    }
    let stats = eventually("two sampled compares", || async {
        let stats = fx.dual.stats();
        match stats.shadow_compares {
            2 => Ok(stats),
            n => Err(format!("{n} compares")),
        }
    })
    .await;
    assert_eq!(
        stats.shadow_mismatches, 2,
        "each sampled compare saw the stale SQLite value"
    );
    assert_eq!(stats.postgres.reads, 8);
}

// ---------------------------------------------------------------------------------------
// Stores while SQLite leads
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_failing_while_it_leads_leaves_nothing_on_postgres() {
    for stage in [Stage::DualWrite, Stage::Shadow] {
        let fx = Fixture::new(stage).await;
        fx.put("k", json!("old")).await;
        fx.sqlite_faults.set_writes_failing(true);
        for key in ["k", "fresh"] {
            let failed = fx.try_put(key, json!("told it failed")).await;
            assert!(
                failed.is_err(),
                "{stage}: SQLite leads, so its failure is the agent's"
            );
        }
        fx.sqlite_faults.set_writes_failing(false);
        assert_eq!(
            value_of(&*fx.postgres, &fx.agent, "k").await,
            Some(json!("old").into()),
            "{stage}: PostgreSQL kept a store the agent was told failed"
        );
        assert_eq!(
            value_of(&*fx.postgres, &fx.agent, "fresh").await,
            None,
            "{stage}"
        );
        assert!(
            fx.journal(Side::Postgres).await.is_empty(),
            "{stage}: nothing reached PostgreSQL, so nothing is owed back"
        );
        fx.assert_sides_agree().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undo_never_takes_back_a_newer_store() {
    let fx = Fixture::new(Stage::DualWrite).await;
    fx.put("k", json!("old")).await;
    fx.sqlite_faults.set_down(true);
    assert!(fx.try_put("k", json!("told it failed")).await.is_err());
    fx.sqlite_faults.set_down(false);
    // A newer store lands on both sides before the journaled undo is replayed.
    fx.put("k", json!("newest")).await;
    fx.dual.repair(&fx.agent).await.expect("repair");
    fx.assert_value("k", Some(&json!("newest").into()), BOTH)
        .await;
    fx.assert_sides_agree().await;
}

/// A repair that meets a record whose copy is still under way (the other side's row is
/// locked) waits for that copy instead of replaying the write beside it: the write is
/// delivered once, by itself, and the repair counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_waits_for_a_copy_under_way_instead_of_replaying_it() {
    use sqlx::Connection;
    let fx = Fixture::new(Stage::DualWrite).await;
    let agent = &fx.agent;
    fx.put("k", json!("first")).await;
    fx.dual.flush().await.expect("flush");
    assert!(fx.journal(Side::Sqlite).await.is_empty());

    let mut lock = sqlx::PgConnection::connect(&fx._db.url)
        .await
        .expect("connect");
    sqlx::query("begin").execute(&mut lock).await.unwrap();
    sqlx::query(
        "select 1 from agent_memories m join agents a on a.id = m.agent_id
         where a.name = $1 and m.key = 'k' for update of m",
    )
    .bind(agent.as_str())
    .fetch_one(&mut lock)
    .await
    .expect("lock the row");

    let journaled = || async {
        while fx.journal(Side::Sqlite).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let write = fx.put("k", json!("second"));
    let repair = async {
        journaled().await;
        fx.dual.repair(agent).await.expect("repair")
    };
    let release = async {
        journaled().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query("rollback").execute(&mut lock).await.unwrap();
    };
    let (_, report, ()) = tokio::join!(write, repair, release);

    assert_eq!((report.to_postgres, report.to_sqlite), (0, 0), "{report:?}");
    assert_eq!(fx.dual.stats().owed_replayed, 0);
    fx.assert_value("k", Some(&Json::from(json!("second"))), BOTH)
        .await;
    fx.dual.flush().await.expect("flush");
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);
}

/// A journal record whose copy arrived is not owed, also while another task (a
/// background flush here; a repair or a write alike) is still deleting it: counting
/// what is owed waits for that delete instead of counting the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owed_counts_wait_for_records_being_cleared() {
    use sqlx::Connection;
    const CLEAR: i64 = 7001;
    let fx = Fixture::new(Stage::Live).await;
    let mut hold = sqlx::PgConnection::connect(&fx._db.url)
        .await
        .expect("connect");
    let install = format!(
        "create function test_hold_clear() returns trigger language plpgsql as $$
         begin
             perform pg_advisory_xact_lock_shared({CLEAR});
             return old;
         end $$;
         create trigger test_hold_clear before delete on agent_memory.owed_writes
             for each row execute function test_hold_clear();
         select pg_advisory_lock({CLEAR});"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(install))
        .execute(&mut hold)
        .await
        .expect("install the hold");

    // PostgreSQL leads: the store's record stays in its journal until a flush deletes
    // it, about 100 ms later, and that delete waits for the lock.
    fx.put("k", json!("v")).await;
    wait_for_a_waiter(&mut hold, CLEAR, "the background flush").await;
    assert_eq!(fx.journal(Side::Postgres).await.len(), 1);

    let counted = tokio::spawn({
        let dual = fx.dual.clone();
        async move { dual.owed_pending().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(CLEAR)
        .execute(&mut hold)
        .await
        .unwrap();
    let owed = counted.await.expect("the count ran").expect("count");
    assert_eq!(owed, 0, "a delivered write was counted as owed");
    assert!(fx.journal(Side::Postgres).await.is_empty());
    assert_eq!(fx.dual.stats().owed_recorded, 0);
}

// ---------------------------------------------------------------------------------------
// 9. Listings in `live`
// ---------------------------------------------------------------------------------------

/// In `live`, a listing holds PostgreSQL's records and those only SQLite holds (readable
/// through the fallback), but no key PostgreSQL recorded a delete of; with a limit, a
/// prefix or a `since` it holds exactly the first records of that whole listing, also
/// when deleted keys sort first and fill SQLite's first pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_listings_merge_both_sides_within_their_limit() {
    let fx = Fixture::new(Stage::Live).await;
    let agent = &fx.agent;
    // SQLite only: a0..a9, of which PostgreSQL recorded the delete of a0..a5.
    for i in 0..10 {
        let key = format!("a{i}");
        fx.sqlite
            .put_memory(agent, &Memory::new(&key, json!(i)))
            .await
            .unwrap();
    }
    for i in 0..6 {
        let key = format!("a{i}");
        fx.postgres
            .apply_memory_delete(agent, &key, chrono::Utc::now())
            .await
            .unwrap();
    }
    // PostgreSQL only, and on both sides.
    fx.postgres
        .put_memory(agent, &Memory::new("a7x", json!("pg")))
        .await
        .unwrap();
    fx.put("b", json!("both")).await;
    let visible = ["a6", "a7", "a7x", "a8", "a9", "b"];
    for limit in 0..=visible.len() + 1 {
        let listing = Listing::new().limit(limit as u32);
        let keys = fx.dual.memory_keys(agent, &listing).await.unwrap();
        let want = &visible[..limit.min(visible.len())];
        assert_eq!(keys, want, "keys, limit {limit}");
    }
    let prefixed = Listing::new().prefix("a7").limit(5);
    assert_eq!(
        fx.dual.memory_keys(agent, &prefixed).await.unwrap(),
        ["a7", "a7x"]
    );
    let recent = fx.postgres.get_memory(agent, "a7x").await.unwrap().unwrap();
    let since = Listing::new().since(recent.updated_at);
    assert_eq!(
        fx.dual.memory_keys(agent, &since).await.unwrap(),
        ["a7x", "b"]
    );
    assert_eq!(fx.dual.stats().lazy_copies, 0, "a listing copies nothing");

    // Tools and metrics: each side holds some of them, interleaved in order.
    let mut metrics = Vec::new();
    for i in 0..8 {
        let tool = Tool::new(format!("t{i}"), json!(i));
        let metric = Metric::new(format!("m{i}"), Some(f64::from(i)));
        let side: &dyn Replica = if i % 3 == 0 {
            &*fx.postgres
        } else {
            &*fx.sqlite
        };
        side.put_tool(agent, &tool).await.unwrap();
        side.record_metric(agent, &metric).await.unwrap();
        metrics.push(metric);
    }
    for limit in [1_usize, 3, 8, 9] {
        let listing = Listing::new().limit(limit as u32);
        let tools: Vec<String> = fx
            .dual
            .list_tools(agent, &listing)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        let names: Vec<String> = (0..8).map(|i| format!("t{i}")).take(limit).collect();
        assert_eq!(tools, names, "tools, limit {limit}");
        let listed = fx.dual.list_metrics(agent, &listing).await.unwrap();
        assert_eq!(listed, metrics[..limit.min(8)], "metrics, limit {limit}");
    }
    let since = Listing::new().since(metrics[4].created_at).limit(2);
    assert_eq!(
        fx.dual.list_metrics(agent, &since).await.unwrap(),
        metrics[4..6]
    );

    // PostgreSQL down: SQLite's listing answers alone (deleted keys included, as SQLite
    // has not heard of the delete yet).
    fx.postgres_faults.set_down(true);
    let keys = fx.dual.memory_keys(agent, &Listing::new().limit(2)).await;
    assert_eq!(keys.unwrap(), ["a0", "a1"]);
    fx.postgres_faults.set_down(false);
}

// ---------------------------------------------------------------------------------------
// 10. Tool deletes
// ---------------------------------------------------------------------------------------

impl Fixture {
    /// The names of the tools `backend` lists for the agent.
    async fn tool_names(&self, backend: &dyn MemoryBackend) -> Vec<String> {
        let tools = backend.list_tools(&self.agent, &Listing::default()).await;
        let tools = tools.unwrap_or_else(|e| panic!("{}: list tools: {e:?}", backend.name()));
        tools.into_iter().map(|t| t.name).collect()
    }

    /// The definition of tool `name` that `backend` holds for the agent.
    async fn tool_of(&self, backend: &dyn MemoryBackend, name: &str) -> Option<Json> {
        let tool = backend.get_tool(&self.agent, name).await;
        let tool = tool.unwrap_or_else(|e| panic!("{}: get tool {name:?}: {e:?}", backend.name()));
        tool.map(|t| t.content)
    }
}

/// A tool deleted while PostgreSQL is down (SQLite leads) is journaled and, once
/// PostgreSQL answers, deleted there by repair; a registration after the delete wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tool_delete_while_postgres_is_down_is_repaired() {
    let fx = Fixture::with_retry(Stage::DualWrite, Duration::from_secs(3600)).await;
    let agent = &fx.agent;
    for name in ["gone", "back"] {
        fx.dual
            .put_tool(agent, &Tool::new(name, json!("v1")))
            .await
            .unwrap();
    }
    fx.postgres_faults.set_down(true);
    assert!(fx.dual.delete_tool(agent, "gone").await.unwrap());
    assert!(fx.dual.delete_tool(agent, "back").await.unwrap());
    fx.dual
        .put_tool(agent, &Tool::new("back", json!("v2")))
        .await
        .unwrap();
    assert_eq!(fx.tool_names(&fx.dual).await, ["back"]);
    fx.postgres_faults.set_down(false);
    assert_eq!(
        fx.tool_names(&*fx.postgres).await,
        ["back", "gone"],
        "not yet"
    );
    let report = fx.dual.repair(agent).await.expect("repair");
    assert_eq!(report.to_postgres, 3, "{report:?}");
    assert_eq!(fx.tool_names(&*fx.postgres).await, ["back"]);
    assert_eq!(
        fx.tool_of(&*fx.postgres, "back").await,
        Some(json!("v2").into())
    );
    assert!(
        fx.postgres
            .tool_tombstone(agent, "gone")
            .await
            .unwrap()
            .is_some()
    );
    fx.assert_sides_agree().await;
    // Serving from PostgreSQL now, the deleted tool stays deleted.
    for stage in [Stage::Live, Stage::Postgres] {
        step(&fx.dual, stage).await;
        assert_eq!(fx.tool_of(&fx.dual, "gone").await, None, "at {stage}");
    }
}
