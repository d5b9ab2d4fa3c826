//! The PostgreSQL backend's connections under load and under a server that drops them.
//!
//! Connections the server drops under a running pool (`pg_terminate_backend`, as an
//! administrator or a failover does): the pool hands out recently used connections
//! without a round trip to check them (see `CHECK_IDLE_AFTER`), so the first call on a
//! dropped one may fail, but only with a connection error, and the calls after it
//! succeed. And calls that pass connections to one another never starve statements that
//! use the pool directly.

use std::time::Duration;

use memshift::backend::postgres::CHECK_IDLE_AFTER;
use memshift::testing::postgres::{TestDatabase, admin_url};
use memshift::testing::unique_agent;
use memshift::{Chain, Memory, MemoryBackend, PostgresBackend, PostgresOptions};
use serde_json::json;
use sqlx::{Connection, PgConnection};

const POOL: u32 = 4;

/// Terminates every connection to `database` but the caller's; returns how many.
async fn terminate_all(database: &str) -> i64 {
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .expect("admin connection");
    let killed: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
         where datname = $1 and pid <> pg_backend_pid()) t",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .expect("terminate the pool's connections");
    admin.close().await.ok();
    killed
}

/// Opens every connection of the pool by running `POOL` reads at once.
async fn fill_pool(backend: &PostgresBackend, agent: &memshift::AgentId) {
    let reads = (0..POOL).map(|_| backend.get_memory(agent, "k"));
    for read in futures_util::future::join_all(reads).await {
        read.expect("a read before anything is dropped");
    }
}

/// Drops every connection of a filled pool, waits `pause`, then makes calls; the first
/// may fail (as a connection error) only when `first_may_fail`.
async fn dropped_then(pause: Duration, first_may_fail: bool) {
    let db = TestDatabase::migrated().await;
    let backend = PostgresBackend::connect_with(
        &db.url,
        PostgresOptions {
            max_connections: POOL,
            ..PostgresOptions::default()
        },
    )
    .await
    .expect("connect");
    let agent = unique_agent("dropped");
    backend
        .put_memory(&agent, &Memory::new("k", json!("kept")))
        .await
        .expect("store");
    fill_pool(&backend, &agent).await;
    assert!(terminate_all(&db.name).await >= 1, "no connection was open");
    tokio::time::sleep(pause).await;

    // The first call may land on a dropped connection: it fails as a connection error
    // that says what happened, or succeeds on another.
    match backend.get_memory(&agent, "k").await {
        Ok(found) => assert_eq!(found.map(|m| m.content), Some(json!("kept").into())),
        Err(err) => {
            assert!(first_may_fail, "the first call failed: {}", Chain(&err));
            assert!(err.is_connection(), "not a connection error: {err:?}");
            let text = Chain(&err).to_string();
            assert!(
                text.contains("retrieve memory \"k\"") && text.contains("terminat"),
                "{text}"
            );
        }
    }
    // Every call after it gets a live connection, reads and writes alike.
    for i in 0..2 * POOL {
        let stored = backend
            .put_memory(&agent, &Memory::new(format!("after/{i}"), json!(i)))
            .await;
        stored.unwrap_or_else(|e| panic!("store {i} after the drop: {}", Chain(&e)));
        let found = backend.get_memory(&agent, "k").await;
        let found = found.unwrap_or_else(|e| panic!("read {i} after the drop: {}", Chain(&e)));
        assert_eq!(found.map(|m| m.content), Some(json!("kept").into()));
    }
    backend.close().await;
}

#[tokio::test]
async fn a_call_right_after_the_server_drops_the_pool_fails_at_most_once() {
    dropped_then(Duration::ZERO, true).await;
}

#[tokio::test]
async fn connections_idle_past_the_check_are_checked_and_replaced() {
    dropped_then(CHECK_IDLE_AFTER + Duration::from_millis(200), false).await;
}

/// Calls pass connections to one another without the pool, yet a statement that uses
/// the pool directly still gets a connection well within the acquire timeout, however
/// busy the calls keep the pool, and no call waits past it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_still_serves_its_own_users_while_calls_pass_connections_on() {
    let db = TestDatabase::migrated().await;
    let backend = std::sync::Arc::new(
        PostgresBackend::connect_with(
            &db.url,
            PostgresOptions {
                max_connections: 2,
                connect_timeout: Duration::from_secs(2),
            },
        )
        .await
        .expect("connect"),
    );
    let agent = unique_agent("busy");
    backend
        .put_memory(&agent, &Memory::new("k", json!("v")))
        .await
        .expect("store");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (backend, agent) = (backend.clone(), agent.clone());
            tokio::spawn(async move {
                let mut calls = 0;
                while std::time::Instant::now() < deadline {
                    let found = backend.get_memory(&agent, "k").await;
                    found.unwrap_or_else(|e| panic!("a call failed: {}", Chain(&e)));
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut direct = 0;
    while std::time::Instant::now() < deadline {
        let started = std::time::Instant::now();
        sqlx::query("select pg_sleep(0.01)")
            .execute(backend.pool())
            .await
            .unwrap_or_else(|e| panic!("the pool's own user waited {:?}: {e}", started.elapsed()));
        direct += 1;
    }
    for caller in callers {
        assert!(
            caller.await.expect("caller task") > 0,
            "a caller never got a turn"
        );
    }
    assert!(direct > 10, "only {direct} direct statements in 3 s");
    backend.close().await;
}

/// Closing the backend while calls run waits for them, then returns: no connection is
/// kept back from the pool once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_while_calls_are_running() {
    let db = TestDatabase::migrated().await;
    let backend = std::sync::Arc::new(db.backend().await);
    let agent = unique_agent("closing");
    backend
        .put_memory(&agent, &Memory::new("k", json!("v")))
        .await
        .expect("store");
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (backend, agent) = (backend.clone(), agent.clone());
            tokio::spawn(async move {
                // Runs until the closed pool refuses a call.
                while backend.get_memory(&agent, "k").await.is_ok() {}
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(10), backend.close())
        .await
        .expect("close() returned while calls were running");
    for caller in callers {
        tokio::time::timeout(Duration::from_secs(10), caller)
            .await
            .expect("every call ends once the pool is closed")
            .expect("caller task");
    }
}
