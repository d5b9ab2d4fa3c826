//! A memory read on the calling thread (`SqliteOptions::quick_reads`, the default) gives
//! what a read through the pool gives: the same values, the latest write of any
//! connection, and the same error for a value the library does not write.

use memshift::testing::scenarios::{assert_awkward_values, store_awkward_values};
use memshift::{AgentId, Json, Memory, MemoryBackend, SqliteBackend, SqliteOptions};
use serde_json::json;
use sqlx::Connection;

fn backend(root: &std::path::Path, quick_reads: bool) -> SqliteBackend {
    SqliteBackend::with_options(
        root,
        SqliteOptions {
            quick_reads,
            ..SqliteOptions::default()
        },
    )
}

#[tokio::test]
async fn quick_reads_and_pool_reads_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentId::new("reader").unwrap();
    let quick = backend(dir.path(), true);
    let pooled = backend(dir.path(), false);
    store_awkward_values(&quick, &agent).await;
    assert_awkward_values(&quick, &agent, "quick").await;
    assert_awkward_values(&pooled, &agent, "pool").await;
    for backend in [&quick, &pooled] {
        assert_eq!(backend.get_memory(&agent, "missing").await.unwrap(), None);
    }

    // Each sees the other's latest write, overwrite and delete at once.
    for round in 0..3 {
        let value = json!({"round": round, "text": "x".repeat(round * 3000)});
        let stored = pooled
            .put_memory(&agent, &Memory::new("shared", value.clone()))
            .await
            .unwrap();
        let read = quick.get_memory(&agent, "shared").await.unwrap().unwrap();
        assert_eq!(read.content, Json::from(value));
        assert_eq!(read.updated_at, stored.updated_at);
        let value = json!(["written by the quick side", round]);
        quick
            .put_memory(&agent, &Memory::new("shared", value.clone()))
            .await
            .unwrap();
        let read = pooled.get_memory(&agent, "shared").await.unwrap().unwrap();
        assert_eq!(read.content, Json::from(value));
    }
    assert!(pooled.delete_memory(&agent, "shared").await.unwrap());
    assert_eq!(quick.get_memory(&agent, "shared").await.unwrap(), None);

    // Closed, the backend opens its reads again on the next call.
    quick.close().await;
    let read = quick.get_memory(&agent, "missing").await.unwrap();
    assert_eq!(read, None);
    assert_awkward_values(&quick, &agent, "quick, after close").await;
}

#[tokio::test]
async fn a_value_the_library_does_not_write_is_reported_as_the_pool_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentId::new("edited").unwrap();
    let quick = backend(dir.path(), true);
    let pooled = backend(dir.path(), false);
    for key in ["number", "blob", "not json", "bad time", "bad embedding"] {
        quick
            .put_memory(&agent, &Memory::new(key, json!("as written")))
            .await
            .unwrap();
    }
    // Edited by hand, as another program might.
    let file = quick.file_of(&agent);
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "update agent_memories set content = 42 where key = 'number';
         update agent_memories set content = x'7b7d' where key = 'blob';
         update agent_memories set content = '{not json' where key = 'not json';
         update agent_memories set updated_at = 'yesterday' where key = 'bad time';
         update agent_memories set embedding = x'0102' where key = 'bad embedding';",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    // A number in a text column is text to SQLite: the value 42, read alike.
    let number = quick.get_memory(&agent, "number").await.unwrap().unwrap();
    assert_eq!(number.content, Json::from(json!(42)));
    assert_eq!(
        pooled.get_memory(&agent, "number").await.unwrap(),
        Some(number)
    );
    for key in ["blob", "not json", "bad time", "bad embedding"] {
        let from_quick = quick.get_memory(&agent, key).await;
        let from_pool = pooled.get_memory(&agent, key).await;
        let (Err(quick_err), Err(pool_err)) = (&from_quick, &from_pool) else {
            panic!("{key}: an error from both: {from_quick:?} / {from_pool:?}");
        };
        assert_eq!(quick_err.to_string(), pool_err.to_string(), "{key}");
        assert!(quick_err.to_string().contains(key), "{key}: {quick_err}");
    }
}
