//! What the library logs: never a password, never a stored value, and the key of a
//! shadow mismatch. Log capture is per thread and tracing caches per call site, so the
//! tests here run one at a time, each on a current-thread runtime.

use std::sync::Arc;
use std::time::Duration;

use memshift::backend::DualBackend;
use memshift::config::Stage;
use memshift::testing::postgres::TestDatabase;
use memshift::testing::unique_agent;
use memshift::{
    AgentConfig, AgentMemory, BackendKind, Memory, MemoryBackend, SqliteBackend, migrate_url,
};
use serde_json::json;
use tokio::sync::Mutex;

mod common;
use common::{captured_logs, closed_port, real_password, with_password};

const WRONG_PASSWORD: &str = "Wr0ng-S3cret-pw";

/// One log-capturing test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[tokio::test]
async fn logs_never_show_a_password() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temporary folder");
    let port = closed_port();
    let logs = captured_logs(async {
        // A dual backend whose PostgreSQL is down logs the connection failure, the
        // skipped side and each journaled write, all naming the database.
        let config = AgentConfig {
            name: "logged".into(),
            memory_backend: BackendKind::Dual,
            database_url: Some(format!(
                "postgres://agent:{WRONG_PASSWORD}@127.0.0.1:{port}/db"
            )),
            agents_path: dir.path().to_path_buf(),
            connect_timeout: Duration::from_secs(1),
            ..AgentConfig::default()
        };
        let memory = AgentMemory::open(&config)
            .await
            .expect("dual starts without PostgreSQL");
        memory
            .store_memory("k", json!({"v": 1}))
            .await
            .expect("dualwrite works without PostgreSQL");
        tokio::time::sleep(Duration::from_millis(1500)).await; // let the background ping log
        // And a refused login against the real server, through the migration path.
        let db = TestDatabase::empty().await;
        let _ = migrate_url(&with_password(&db.url, WRONG_PASSWORD)).await;
    })
    .await;
    assert!(
        logs.contains("postgres://agent:***@127.0.0.1"),
        "the database is named, redacted:\n{logs}"
    );
    assert!(
        !logs.contains(WRONG_PASSWORD),
        "a password reached the logs:\n{logs}"
    );
    assert!(
        !logs.contains(&real_password()),
        "the server's password reached the logs"
    );
}

#[tokio::test]
async fn a_shadow_mismatch_is_logged_by_key_without_values() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    let postgres = Arc::new(db.backend().await);
    let dual = DualBackend::new(
        Arc::new(SqliteBackend::new(dir.path())),
        postgres.clone(),
        Stage::Shadow,
    );
    let agent = unique_agent("logged");
    let stored = dual
        .put_memory(&agent, &Memory::new("differs", json!("what SQLite holds")))
        .await
        .unwrap();
    let changed = Memory {
        content: json!("postgres-only SECRET-VALUE").into(),
        ..stored
    };
    postgres.put_memory(&agent, &changed).await.unwrap();

    let logs = captured_logs(async {
        let read = dual.get_memory(&agent, "differs").await.unwrap().unwrap();
        assert_eq!(read.content, json!("what SQLite holds"));
    })
    .await;
    assert_eq!(dual.stats().shadow_mismatches, 1);
    let line = logs
        .lines()
        .find(|l| l.contains("mismatch"))
        .unwrap_or_else(|| panic!("no mismatch logged:\n{logs}"));
    assert!(
        line.contains(" INFO ") && line.contains("differs"),
        "logged at info, by key: {line}"
    );
    assert!(
        !logs.contains("SECRET-VALUE") && !logs.contains("what SQLite holds"),
        "a value reached the logs:\n{logs}"
    );
}

#[tokio::test]
async fn a_database_url_without_a_backend_says_memory_stays_in_sqlite() {
    let _one_at_a_time = SERIAL.lock().await;
    let env = |url: Option<String>, backend: Option<&'static str>| {
        move |var: &str| match var {
            "DATABASE_URL" => url.clone(),
            "MEMORY_BACKEND" => backend.map(String::from),
            _ => None,
        }
    };
    let urls = [
        format!("postgres://agent:{WRONG_PASSWORD}@db.example/agents"),
        // No `//`: a form a redactor could miss; the line shows no URL at all.
        format!("postgres:{WRONG_PASSWORD}@db.example/agents"),
    ];
    let mut kinds = Vec::new();
    let logs = captured_logs(async {
        for url in &urls {
            let config = AgentConfig::from_lookup("told", env(Some(url.clone()), None)).unwrap();
            kinds.push(config.memory_backend);
        }
    })
    .await;
    assert_eq!(kinds, [BackendKind::Sqlite, BackendKind::Sqlite]);
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("MEMORY_BACKEND"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per configuration read:\n{logs}");
    for line in lines {
        assert!(
            line.contains(" INFO ")
                && line.contains("stays in SQLite")
                && line.contains("MEMORY_BACKEND=postgres")
                && line.contains("MEMORY_BACKEND=dual")
                && line.contains("told"),
            "says where memory goes and how to move it: {line}"
        );
    }
    assert!(
        !logs.contains(WRONG_PASSWORD),
        "a password reached the logs:\n{logs}"
    );

    // A backend chosen explicitly, or no URL at all, leaves nothing to explain.
    let quiet = captured_logs(async {
        let url = Some(urls[0].clone());
        for (url, backend) in [
            (url.clone(), Some("sqlite")),
            (url, Some("postgres")),
            (None, None),
        ] {
            AgentConfig::from_lookup("told", env(url, backend)).unwrap();
        }
    })
    .await;
    assert!(!quiet.contains("MEMORY_BACKEND"), "{quiet}");
}
