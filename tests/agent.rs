//! The agent's handle and the operator CLI, end to end on both backends, chosen by
//! configuration the way agents choose them.

mod common;

use common::{memctl, stdout};
use memshift::testing::postgres::TestDatabase;
use memshift::{AgentConfig, AgentMemory, BackendKind, Error, Listing, VectorQuery};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Conversation {
    topic: String,
    turns: u64,
    scores: Vec<f64>,
}

async fn typed_round_trip(config: AgentConfig) {
    let memory = AgentMemory::open(&config)
        .await
        .expect("open the configured backend");
    let conversation = Conversation {
        topic: "pricing ✓".into(),
        turns: u64::MAX,
        scores: vec![0.1, -2.5e-10],
    };
    memory
        .store_memory("conversation", &conversation)
        .await
        .unwrap();
    let back: Option<Conversation> = memory.retrieve_memory("conversation").await.unwrap();
    assert_eq!(back, Some(conversation), "{}", config.memory_backend);
    let missing: Option<Conversation> = memory.retrieve_memory("nothing here").await.unwrap();
    assert_eq!(missing, None);

    // A value of another shape is a clear error that names the key, not a panic.
    memory.store_memory("count", 3).await.unwrap();
    match memory.retrieve_memory::<Conversation>("count").await {
        Err(err @ Error::Json { .. }) => assert!(err.to_string().contains("\"count\""), "{err}"),
        other => panic!("expected a JSON error, got {other:?}"),
    }

    let tool = memory
        .register_tool("search", json!({"k": 5}))
        .await
        .unwrap();
    assert_eq!(memory.tool("search").await.unwrap(), Some(tool));
    memory.register_tool("scratch", json!({})).await.unwrap();
    assert!(memory.delete_tool("scratch").await.unwrap());
    assert!(!memory.delete_tool("scratch").await.unwrap());
    assert_eq!(memory.tool("scratch").await.unwrap(), None);
    memory
        .record_metric("latency", 0.25, json!({"unit": "s"}))
        .await
        .unwrap();
    memory
        .log_execution("ok", json!({"task": "t"}))
        .await
        .unwrap();
    let metrics = memory.metrics().await.unwrap();
    assert_eq!((metrics.len(), metrics[0].value), (1, Some(0.25)));
    assert_eq!(
        memory.executions().await.unwrap()[0].status.as_deref(),
        Some("ok")
    );
    assert_eq!(
        memory.memory_keys().await.unwrap(),
        ["conversation", "count"]
    );

    // Typed values with embeddings, found by a search and read back as their type.
    let near = Conversation {
        topic: "refunds".into(),
        turns: 9_007_199_254_740_993,
        scores: vec![1.5],
    };
    let far = Conversation {
        topic: "weather".into(),
        turns: 1,
        scores: vec![],
    };
    let stored = memory
        .store_with_embedding("notes/near", &near, vec![1.0, 0.0])
        .await
        .unwrap();
    assert_eq!(stored.embedding.as_deref(), Some(&[1.0, 0.0][..]));
    assert_eq!(stored.content_as::<Conversation>().unwrap(), near);
    memory
        .store_with_embedding("notes/far", &far, vec![0.0, 1.0])
        .await
        .unwrap();
    let other = json!({"shape": "not a conversation"});
    memory
        .store_with_embedding("notes/other", &other, vec![-1.0, 0.0])
        .await
        .unwrap();
    let query = VectorQuery::new(vec![0.9, 0.1], 2).key_prefix("notes/");
    let hits = memory.search_as::<Conversation>(&query).await.unwrap();
    let found: Vec<(&Conversation, Option<&str>)> = hits
        .iter()
        .map(|hit| (&hit.value, hit.memory.key.as_deref()))
        .collect();
    assert_eq!(
        found,
        [(&near, Some("notes/near")), (&far, Some("notes/far"))]
    );
    assert!(hits[0].distance < hits[1].distance);
    let plain = memory.search(&query).await.unwrap();
    assert_eq!(plain[0].content_as::<Conversation>().unwrap(), near);
    assert_eq!(plain[0].distance, hits[0].distance);
    // A found value of another shape is an error naming its key.
    let nearest_other = VectorQuery::new(vec![-1.0, 0.0], 1);
    match memory.search_as::<Conversation>(&nearest_other).await {
        Err(err @ Error::Json { .. }) => {
            assert!(err.to_string().contains("\"notes/other\""), "{err}")
        }
        other => panic!("expected a JSON error, got {other:?}"),
    }
    assert_eq!(
        memory
            .search_as::<serde_json::Value>(&nearest_other)
            .await
            .unwrap()[0]
            .value,
        other
    );

    // Listings with options, through the handle.
    let counted = Listing::new().prefix("co").limit(1);
    assert_eq!(
        memory.memory_keys_with(&counted).await.unwrap(),
        ["conversation"]
    );
    let later = Listing::new().since(chrono::Utc::now());
    assert!(memory.memory_keys_with(&later).await.unwrap().is_empty());
    assert_eq!(
        memory
            .tools_with(&Listing::new().prefix("s"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        memory
            .tools_with(&Listing::new().prefix("x"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        memory
            .metrics_with(&Listing::new().limit(1))
            .await
            .unwrap()
            .len(),
        1
    );
    let statuses = Listing::new().prefix("failed");
    assert!(memory.executions_with(&statuses).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_is_the_default_and_round_trips_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        name: "typed".into(),
        agents_path: dir.path().to_path_buf(),
        ..AgentConfig::default()
    };
    assert_eq!(config.memory_backend, BackendKind::Sqlite);
    typed_round_trip(config).await;
    assert!(
        dir.path().join("typed").join("memory.db").is_file(),
        "the agent's file is <agents>/<agent>/memory.db"
    );
}

#[tokio::test]
async fn postgres_config_switch_round_trips_typed_values() {
    let db = TestDatabase::migrated().await;
    let config = AgentConfig::from_lookup("typed", |var| match var {
        "MEMORY_BACKEND" => Some("postgres".into()),
        "DATABASE_URL" => Some(db.url.clone()),
        _ => None,
    })
    .unwrap();
    typed_round_trip(config).await;
}

#[tokio::test]
async fn disabled_memory_stores_nothing_and_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        name: "forgetful".into(),
        memory_enabled: false,
        agents_path: dir.path().to_path_buf(),
        // Would fail to connect if anything were opened.
        memory_backend: BackendKind::Postgres,
        ..AgentConfig::default()
    };
    let memory = AgentMemory::open(&config)
        .await
        .expect("disabled memory opens nothing");
    memory.store_memory("k", json!(1)).await.unwrap();
    assert_eq!(
        memory
            .retrieve_memory::<serde_json::Value>("k")
            .await
            .unwrap(),
        None
    );
    assert!(memory.memory_keys().await.unwrap().is_empty());
    let unstored = memory
        .store_with_embedding("e", &json!(2), vec![1.0])
        .await
        .unwrap();
    assert_eq!(unstored.embedding, Some(vec![1.0]));
    let query = VectorQuery::new(vec![1.0], 1);
    assert!(memory.search_as::<i64>(&query).await.unwrap().is_empty());
    memory.register_tool("t", json!({})).await.unwrap();
    assert!(memory.tools().await.unwrap().is_empty());
    assert!(!memory.delete_tool("t").await.unwrap());
    memory.record_metric("m", 1.0, json!({})).await.unwrap();
    assert!(memory.metrics().await.unwrap().is_empty());
    assert!(!memory.delete_memory("k").await.unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "disabled memory wrote files"
    );
}

fn memctl_session(env: &[(&str, &str)]) {
    let stored = memctl(env, &["--agent", "a", "store", "k", r#"{"x":1}"#]);
    assert!(
        stored.status.success(),
        "store failed: {}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let got = memctl(env, &["--agent", "a", "get", "k"]);
    assert_eq!(
        (got.status.code(), stdout(&got).as_str()),
        (Some(0), "{\"x\":1}\n")
    );
    let absent = memctl(env, &["--agent", "a", "get", "nope"]);
    assert_eq!(
        absent.status.code(),
        Some(1),
        "get of a missing key exits 1"
    );
    assert!(String::from_utf8_lossy(&absent.stderr).contains("\"nope\""));
    memctl(env, &["--agent", "a", "store", "j", "[1, 2.50, \"three\"]"]);
    assert_eq!(stdout(&memctl(env, &["--agent", "a", "keys"])), "j\nk\n");
    assert_eq!(
        stdout(&memctl(env, &["--agent", "a", "get", "j"])),
        "[1, 2.50, \"three\"]\n",
        "the value as it was given"
    );
    assert_eq!(
        memctl(env, &["--agent", "a", "delete", "k"]).status.code(),
        Some(0)
    );
    assert_eq!(
        memctl(env, &["--agent", "a", "get", "k"]).status.code(),
        Some(1)
    );
    assert_eq!(
        memctl(env, &["--agent", "a", "delete", "k"]).status.code(),
        Some(1)
    );
    let bad = memctl(env, &["--agent", "a", "store", "k", "{not json"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid JSON"));
}

#[test]
fn memctl_store_get_delete_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    memctl_session(&[("AGENTS_PATH", agents)]);
    assert!(dir.path().join("a/memory.db").is_file());
}

#[tokio::test]
async fn memctl_migrates_then_stores_on_postgres() {
    let db = TestDatabase::empty().await;
    let env = [
        ("MEMORY_BACKEND", "postgres"),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let before = memctl(&env, &["--agent", "a", "keys"]);
    assert_eq!(
        before.status.code(),
        Some(2),
        "an unmigrated database is an error"
    );
    let message = String::from_utf8_lossy(&before.stderr);
    assert!(
        message.contains("table agent_memories") && message.contains("memctl migrate"),
        "{message}"
    );
    let migrated = memctl(&env, &["migrate"]);
    assert_eq!(stdout(&migrated), "applied migrations [1]\n");
    assert_eq!(
        stdout(&memctl(&env, &["migrate"])),
        "schema already up to date\n"
    );
    memctl_session(&env);
}

#[test]
fn quickstart_says_where_the_data_went_and_its_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::example_path("quickstart"))
        .env_remove("MEMORY_BACKEND")
        .env_remove("DATABASE_URL")
        .env("AGENTS_PATH", dir.path())
        .output()
        .unwrap();
    let said = stdout(&out);
    assert!(out.status.success(), "{said}");
    let file = dir.path().join("quickstart_agent/memory.db");
    assert!(
        said.contains(&format!("the SQLite file {}.", file.display())),
        "{said}"
    );
    assert!(file.is_file());
    // Each memctl command it suggests, run as printed but without AGENTS_PATH: the
    // command itself must carry the agents path.
    let suggested: Vec<Vec<&str>> = said
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cargo run --example memctl -- "))
        .map(|args| args.split_whitespace().collect())
        .collect();
    assert_eq!(suggested.len(), 2, "{said}");
    let outputs: Vec<String> = suggested
        .iter()
        .map(|args| {
            let ran = memctl(&[], args);
            assert!(
                ran.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&ran.stderr)
            );
            stdout(&ran)
        })
        .collect();
    assert!(outputs[0].contains("billed per seat"), "{outputs:?}");
    assert_eq!(outputs[1], "conversation\n");
}

#[test]
fn memctl_unknown_backend_lists_the_valid_ones() {
    let out = memctl(&[("MEMORY_BACKEND", "mongo")], &["--agent", "a", "keys"]);
    assert_eq!(out.status.code(), Some(2));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("sqlite, postgres"), "{message}");
}

#[tokio::test]
async fn memctl_turns_content_compression_off_and_on() {
    let db = TestDatabase::migrated().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let shown = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    let on = "{\"content_compression\":true}\n";
    let off = "{\"content_compression\":false}\n";
    assert_eq!(shown(memctl(&env, &["compression"])), on);
    assert_eq!(shown(memctl(&env, &["compression", "off"])), off);
    assert_eq!(
        shown(memctl(&env, &["compression"])),
        off,
        "the switch holds"
    );
    assert_eq!(shown(memctl(&env, &["compression", "on"])), on);
    let bad = memctl(&env, &["compression", "maybe"]);
    assert_eq!(bad.status.code(), Some(2));
    let none = memctl(&[], &["compression"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("DATABASE_URL"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}
