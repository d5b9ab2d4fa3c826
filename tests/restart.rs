//! The dual backend against a real PostgreSQL that is stopped and started again
//! mid-test. Stopping the server breaks every other test using it, so this file holds a
//! single test (cargo runs test binaries one after another), and a guard starts the
//! server again even when an assertion fails.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RestartOnDrop, pg};
use memshift::backend::DualBackend;
use memshift::config::Stage;
use memshift::testing::postgres::TestDatabase;
use memshift::testing::unique_agent;
use memshift::{AgentId, Memory, MemoryBackend, SqliteBackend};
use serde_json::{Value, json};

/// Retries `attempt` every 100 ms until it succeeds (the pool reconnects, the dual
/// backend's ping finds the server back); fails after 30 s.
async fn eventually<T, F>(what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = memshift::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(err) if Instant::now() > deadline => panic!("{what}: still failing: {err:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn value_of(backend: &dyn MemoryBackend, agent: &AgentId, key: &str) -> Option<Value> {
    let found = backend.get_memory(agent, key).await;
    let found = found.unwrap_or_else(|e| panic!("{}: read {key:?}: {e:?}", backend.name()));
    found.map(|m| m.content.parse().expect("stored JSON reads back"))
}

/// Both sides hold the same memories and nothing is owed.
async fn assert_consistent(dual: &DualBackend, agent: &AgentId) {
    let comparison = dual.compare(agent).await.expect("compare the sides");
    assert!(comparison.agrees(), "the sides disagree: {comparison:?}");
    // Records of copies that arrived are cleared in batches; clear them now.
    dual.flush().await.expect("clear the journals");
    assert_eq!(dual.owed_pending().await.expect("count owed writes"), 0);
}

/// Runs `f`, returning what it returned and how long it took.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_backend_survives_a_postgres_restart() {
    let dir = tempfile::tempdir().expect("temporary agents folder");
    let db = TestDatabase::migrated().await;
    let sqlite: Arc<dyn memshift::backend::Replica> = Arc::new(SqliteBackend::new(dir.path()));
    let postgres: Arc<dyn memshift::backend::Replica> = Arc::new(db.backend().await);
    let dual = DualBackend::new(sqlite.clone(), postgres.clone(), Stage::DualWrite);
    let agent = unique_agent("restart");
    let put = |key: &'static str, content: Value| {
        let (dual, agent) = (dual.clone(), agent.clone());
        async move { dual.put_memory(&agent, &Memory::new(key, content)).await }
    };
    put("before", json!("stored while up"))
        .await
        .expect("store");
    let _restart = RestartOnDrop;

    // dualwrite: with the server down the agent still stores; PostgreSQL's copy is owed.
    pg("stop");
    let (stored, took) = timed(put("k", json!({"while": "down"}))).await;
    stored.expect("a store while PostgreSQL is down succeeds");
    println!("dualwrite store with the server down took {took:?}");
    // The first failure marks PostgreSQL unreachable: later stores do not wait for it.
    let (stored, took) = timed(put("k2", json!(2))).await;
    stored.expect("a second store while PostgreSQL is down succeeds");
    assert!(
        took < Duration::from_secs(1),
        "the second store took {took:?}"
    );
    assert_eq!(
        value_of(&*sqlite, &agent, "k").await,
        Some(json!({"while": "down"}))
    );
    let stats = dual.stats();
    assert!(
        stats.owed_recorded >= 2 && stats.postgres.errors >= 2,
        "{stats:?}"
    );
    pg("start-existing");
    let (report, took) = timed(eventually("repair", || dual.repair(&agent))).await;
    println!("repair after the restart: {report:?} after {took:?}");
    assert_eq!(
        value_of(&*postgres, &agent, "k").await,
        Some(json!({"while": "down"}))
    );
    assert_eq!(value_of(&*postgres, &agent, "k2").await, Some(json!(2)));
    assert_consistent(&dual, &agent).await;

    // live: with the server down stores fail and change nothing; reads fall back.
    dual.repair_all().await.expect("repair before the step");
    dual.set_stage(Stage::Live);
    put("k", json!("live value")).await.expect("store");
    pg("stop");
    let (failed, took) = timed(put("k", json!("lost"))).await;
    let err = failed.expect_err("a live store with PostgreSQL down fails");
    println!("live store with the server down failed after {took:?}");
    assert!(err.is_connection(), "{err:?}");
    assert_eq!(
        value_of(&*sqlite, &agent, "k").await,
        Some(json!("live value"))
    );
    let read = dual.get_memory(&agent, "k").await.expect("reads fall back");
    assert_eq!(read.map(|m| m.content), Some(json!("live value").into()));
    assert!(dual.stats().fallback_on_error >= 1, "{:?}", dual.stats());
    pg("start-existing");
    let (newer, took) = timed(eventually("a store after the restart", || {
        put("k", json!("after restart"))
    }))
    .await;
    println!("live store accepted {took:?} after the restart");
    assert_eq!(newer.content, json!("after restart"));
    for side in [&sqlite, &postgres] {
        assert_eq!(
            value_of(&**side, &agent, "k").await,
            Some(json!("after restart"))
        );
    }
    assert_eq!(
        value_of(&dual, &agent, "k").await,
        Some(json!("after restart"))
    );
    assert_consistent(&dual, &agent).await;
}
