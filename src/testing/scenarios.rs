//! The conformance scenarios: the `# Contract` of [`MemoryBackend`], as code. Each takes
//! a backend and panics with a message saying which promise broke.

use futures_util::future::join_all as futures_join_all;
use serde_json::{Value, json};

pub use super::listing::{
    listings_by_limit_and_since, listings_by_prefix, listings_refuse_and_read_nothing,
};
pub use super::search::{
    search_edge_cases, search_filters, search_finds_nearest, search_follows_writes,
};
use super::unique_agent;
use crate::backend::MemoryBackend;
use crate::error::Error;
use crate::json::Json;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metadata, Metric, Tool};

/// JSON text kept exactly as written: key order, whitespace and every number's form.
fn value(text: &str) -> Json {
    text.parse().expect("scenario JSON is valid")
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("bottom"), |inner, i| {
        if i % 2 == 0 {
            json!([inner, i])
        } else {
            json!({ "level": i, "inner": inner })
        }
    })
}

/// The awkward values every backend must give back unchanged (as the same text), by key.
pub fn awkward_values() -> Vec<(String, Json)> {
    let big_text: String = "agent memory ✓ ".repeat(140_000);
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({"i": i, "s": format!("row {i}")}))
        .collect();
    vec![
        (
            "numbers".into(),
            value(
                r#"{"beyond_u64": 123456789012345678901234567890, "i64_max": 9223372036854775807,
                "i64_min": -9223372036854775808, "u64_max": 18446744073709551615,
                "u64_max_plus_1": 18446744073709551616, "above_2_53": 9007199254740993,
                "tenth": 0.1, "written": 2.50, "tiny": 1.5e-300, "huge": 1.7976931348623157e308,
                "beyond_f64": 1e400, "below_f64": -2.5E-400, "neg_zero": -0.0, "neg_zero_int": -0,
                "float_one": 1.0, "long_fraction": 3.14159265358979323846264338327950288}"#,
            ),
        ),
        ("u64 max plus one".into(), value("18446744073709551616")),
        ("written form".into(), value("2.50")),
        ("negative zero".into(), value("-0")),
        (
            "escapes".into(),
            value(r#"["caf\u00e9", "\ud83d\ude80", "a\/b", "nul \u0000 in text", "\"q\""]"#),
        ),
        (
            "unicode".into(),
            Json::from(json!({
                "latin": "héllo wörld", "cyrillic": "привет", "arabic": "مرحبا بالعالم",
                "cjk": "記憶の移行", "emoji": "👩‍👩‍👧‍👦🚀", "combining": "e\u{301}",
                "zero_width": "a\u{200b}b", "nul": "before\u{0}after", "quotes": "'\"`\\",
                "newlines": "line1\nline2\r\n\ttabbed", "keys are ünïcode too ✓": true
            })),
        ),
        ("empty string".into(), value(r#""""#)),
        (
            "empties".into(),
            value(r#"{"s": "", "a": [], "o": {}, "n": null, "f": false}"#),
        ),
        ("null".into(), value("null")),
        ("nested".into(), Json::from(nested(100))),
        ("big text".into(), Json::from(Value::String(big_text))),
        ("many objects".into(), Json::from(Value::Array(many))),
        ("key order".into(), value(r#"{"b":1,"a":2}"#)),
        (
            "nested key order".into(),
            value(r#"{"z": 1, "a": 2, "m": {"y": 1, "b": [{"d": 4.0, "c": 3}]}}"#),
        ),
        ("whitespace".into(), value("{ \"spaced\" :\t[ 1 ,\n 2 ] }")),
        (String::new(), value(r#""the empty key""#)),
        ("ключ/with\\slashes 'and' \"quotes\" %_".into(), value("42")),
        // The longest key both databases hold: MAX_KEY_BYTES bytes of four-byte chars.
        (
            "🔑".repeat(crate::MAX_KEY_BYTES / 4),
            value(r#""a long unicode key""#),
        ),
    ]
}

/// Stores every awkward value ([`awkward_values`]) for `agent`, for a path that moves
/// them elsewhere (a copy, a backfill) to be checked with [`assert_awkward_values`].
pub async fn store_awkward_values(backend: &dyn MemoryBackend, agent: &AgentId) {
    for (key, content) in awkward_values() {
        let memory = Memory::new(key.clone(), content);
        let stored = backend.put_memory(agent, &memory).await;
        stored.unwrap_or_else(|e| panic!("{}: store {key:?}: {e:?}", backend.name()));
    }
}

/// Asserts that `backend` holds every awkward value for `agent` as the same JSON text;
/// `path` names the way they came, for the message.
pub async fn assert_awkward_values(backend: &dyn MemoryBackend, agent: &AgentId, path: &str) {
    for (key, content) in awkward_values() {
        let found = backend.get_memory(agent, &key).await;
        let found = found.unwrap_or_else(|e| panic!("{path}: read {key:?}: {e:?}"));
        let found = found.unwrap_or_else(|| panic!("{path}: {key:?} is missing"));
        assert_eq!(
            found.content.as_str(),
            content.as_str(),
            "{path}: the value of {key:?} changed on the way"
        );
    }
}

/// Every awkward value comes back as the same JSON text, with its metadata, embedding
/// and times.
pub async fn round_trip_awkward_values(backend: &dyn MemoryBackend) {
    let agent = unique_agent("roundtrip");
    let mut metadata = Metadata::new();
    metadata.insert("source".into(), json!("scenario"));
    metadata.insert(
        "nested".into(),
        json!({"tags": ["α", "β"], "score": 0.5, "n": 12345678901234567_i64}),
    );
    let embedding = vec![0.1_f32, -1e-30, 3.4e38, 0.0, -0.5];
    for (key, content) in awkward_values() {
        let memory = Memory::new(key.clone(), content.clone())
            .with_metadata(metadata.clone())
            .with_embedding(embedding.clone());
        let stored = backend.put_memory(&agent, &memory).await.expect("store");
        assert_eq!(
            stored, memory,
            "put_memory returns what it stored, key {key:?}"
        );
        let got = backend
            .get_memory(&agent, &key)
            .await
            .expect("retrieve")
            .unwrap_or_else(|| panic!("{}: stored key {key:?} is missing", backend.name()));
        assert_eq!(
            got.content.as_str(),
            content.as_str(),
            "{}: value of {key:?} changed on the way",
            backend.name()
        );
        assert_eq!(
            got,
            memory,
            "{}: memory {key:?} changed on the way",
            backend.name()
        );
    }
    let mut keys: Vec<String> = awkward_values().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .unwrap(),
        keys,
        "keys in byte order"
    );
}

/// Storing over a key replaces its value and keeps its id and `created_at`.
pub async fn overwrite_replaces_value_keeps_identity(backend: &dyn MemoryBackend) {
    let agent = unique_agent("overwrite");
    let first = backend
        .put_memory(
            &agent,
            &Memory::new("k", json!({"v": 1})).with_embedding(vec![1.0, 2.0]),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = Memory::new("k", json!({"v": 2}));
    let stored = backend.put_memory(&agent, &second).await.unwrap();
    assert_eq!(stored.id, first.id, "overwrite keeps the id");
    assert_eq!(
        stored.created_at, first.created_at,
        "overwrite keeps created_at"
    );
    assert!(
        stored.updated_at > first.updated_at,
        "overwrite moves updated_at"
    );
    let got = backend.get_memory(&agent, "k").await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(got.content, json!({"v": 2}));
    assert_eq!(got.embedding, None, "overwrite replaces the embedding too");
    assert_eq!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .unwrap(),
        vec!["k".to_string()]
    );
}

/// A deleted key or tool reads as absent and is not listed, for its agent only; deleting
/// it again finds nothing; it can be stored (registered) again, as a new version.
pub async fn delete_is_final(backend: &dyn MemoryBackend) {
    let agent = unique_agent("delete");
    backend
        .put_memory(&agent, &Memory::new("gone", json!(1)))
        .await
        .unwrap();
    backend
        .put_memory(&agent, &Memory::new("kept", json!(2)))
        .await
        .unwrap();
    assert!(
        backend.delete_memory(&agent, "gone").await.unwrap(),
        "delete reports the key existed"
    );
    assert_eq!(
        backend.get_memory(&agent, "gone").await.unwrap(),
        None,
        "deleted key still readable"
    );
    assert!(
        !backend.delete_memory(&agent, "gone").await.unwrap(),
        "second delete finds nothing"
    );
    assert_eq!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .unwrap(),
        vec!["kept".to_string()]
    );
    let again = backend
        .put_memory(&agent, &Memory::new("gone", json!(3)))
        .await
        .unwrap();
    assert_eq!(
        backend.get_memory(&agent, "gone").await.unwrap(),
        Some(again)
    );

    let name = backend.name();
    let other = unique_agent("delete_other");
    let gone = Tool::new("gone", json!({"v": 1}));
    let registrations = [
        (&agent, gone.clone()),
        (&agent, Tool::new("kept", json!(2))),
        (&other, Tool::new("gone", json!("another agent's"))),
    ];
    for (owner, tool) in &registrations {
        backend.put_tool(owner, tool).await.unwrap();
    }
    let deletes = [
        backend.delete_tool(&agent, "gone").await.unwrap(),
        backend.delete_tool(&agent, "gone").await.unwrap(),
    ];
    assert_eq!(deletes, [true, false], "{name}: found once, then nothing");
    assert_eq!(
        backend.get_tool(&agent, "gone").await.unwrap(),
        None,
        "{name}"
    );
    let tools = backend.list_tools(&agent, &Listing::default()).await;
    let listed: Vec<String> = tools.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(listed, ["kept"], "{name}: a deleted tool is not listed");
    let kept = backend.get_tool(&other, "gone").await.unwrap();
    assert!(kept.is_some(), "{name}: the delete reached another agent");
    // Registered again with its old version, it lands past the delete.
    let again = backend.put_tool(&agent, &gone).await.unwrap();
    assert!(again.updated_at > gone.updated_at, "{name}");
    assert_eq!(backend.get_tool(&agent, "gone").await.unwrap(), Some(again));
    let never = unique_agent("never_deleted");
    assert!(!backend.delete_tool(&never, "t").await.unwrap(), "{name}");
}

/// Keys and agents never written read as absent, and deleting them is not an error.
pub async fn missing_keys_read_as_absent(backend: &dyn MemoryBackend) {
    let never = unique_agent("never_written");
    assert_eq!(backend.get_memory(&never, "k").await.unwrap(), None);
    assert!(!backend.delete_memory(&never, "k").await.unwrap());
    assert!(
        backend
            .memory_keys(&never, &Listing::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(backend.get_tool(&never, "t").await.unwrap().is_none());
    assert!(
        backend
            .list_tools(&never, &Listing::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        backend
            .list_metrics(&never, &Listing::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        backend
            .list_executions(&never, &Listing::default())
            .await
            .unwrap()
            .is_empty()
    );
    let agent = unique_agent("missing");
    backend
        .put_memory(&agent, &Memory::new("present", json!(1)))
        .await
        .unwrap();
    assert_eq!(backend.get_memory(&agent, "absent").await.unwrap(), None);
    assert_eq!(
        backend.get_memory(&agent, "Present").await.unwrap(),
        None,
        "keys are case-sensitive"
    );
}

/// One agent's writes and deletes never show in another's data.
pub async fn agents_are_isolated(backend: &dyn MemoryBackend) {
    let a = unique_agent("iso_a");
    let b = unique_agent("iso_b");
    backend
        .put_memory(&a, &Memory::new("shared", json!("A")))
        .await
        .unwrap();
    backend
        .put_memory(&b, &Memory::new("shared", json!("B")))
        .await
        .unwrap();
    backend
        .put_memory(&a, &Memory::new("only_a", json!(1)))
        .await
        .unwrap();
    backend
        .put_tool(&a, &Tool::new("search", json!({"for": "A"})))
        .await
        .unwrap();
    backend
        .record_metric(&a, &Metric::new("latency", Some(1.0)))
        .await
        .unwrap();
    backend
        .log_execution(&a, &Execution::new(Some("ok".into()), json!({})))
        .await
        .unwrap();
    assert_eq!(
        backend
            .get_memory(&b, "shared")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!("B")
    );
    assert_eq!(
        backend.get_memory(&b, "only_a").await.unwrap(),
        None,
        "B sees A's key"
    );
    assert_eq!(
        backend.memory_keys(&b, &Listing::default()).await.unwrap(),
        vec!["shared".to_string()]
    );
    assert!(
        backend.get_tool(&b, "search").await.unwrap().is_none(),
        "B sees A's tool"
    );
    assert!(
        backend
            .list_metrics(&b, &Listing::default())
            .await
            .unwrap()
            .is_empty(),
        "B sees A's metric"
    );
    assert!(
        backend
            .list_executions(&b, &Listing::default())
            .await
            .unwrap()
            .is_empty(),
        "B sees A's execution"
    );
    assert!(backend.delete_memory(&b, "shared").await.unwrap());
    assert_eq!(
        backend
            .get_memory(&a, "shared")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!("A"),
        "B's delete reached A"
    );
}

const TASKS: usize = 16;
const KEYS_PER_TASK: usize = 25;

/// Many tasks writing (and reading) one agent at once lose nothing.
pub async fn concurrent_writers_one_agent(backend: &dyn MemoryBackend) {
    let agent = unique_agent("concurrent");
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let agent = agent.clone();
            async move {
                for i in 0..KEYS_PER_TASK {
                    let key = format!("t{task:02}_k{i:02}");
                    backend
                        .put_memory(
                            &agent,
                            &Memory::new(key.clone(), json!({"task": task, "i": i})),
                        )
                        .await?;
                    backend
                        .put_memory(
                            &agent,
                            &Memory::new("shared", json!({"task": task, "i": i})),
                        )
                        .await?;
                    let read = backend.get_memory(&agent, &key).await?;
                    assert!(
                        read.is_some(),
                        "a task cannot read its own acknowledged write {key}"
                    );
                }
                Ok::<_, Error>(())
            }
        })
        .collect();
    for result in futures_join_all(handles).await {
        result.expect("no concurrent write fails");
    }
    let keys = backend
        .memory_keys(&agent, &Listing::default())
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        TASKS * KEYS_PER_TASK + 1,
        "writes lost under concurrency"
    );
    for task in 0..TASKS {
        for i in 0..KEYS_PER_TASK {
            let got = backend
                .get_memory(&agent, &format!("t{task:02}_k{i:02}"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.content, json!({"task": task, "i": i}));
        }
    }
    let shared = backend
        .get_memory(&agent, "shared")
        .await
        .unwrap()
        .unwrap()
        .content;
    assert_eq!(
        shared.parse::<Value>().unwrap()["i"],
        json!(KEYS_PER_TASK - 1),
        "the shared key holds some task's last write"
    );
}

/// Many agents written at once each end with exactly their own data.
pub async fn concurrent_writers_many_agents(backend: &dyn MemoryBackend) {
    let agents: Vec<_> = (0..12).map(|i| unique_agent(&format!("many{i}"))).collect();
    let work: Vec<_> = agents
        .iter()
        .flat_map(|agent| (0..3).map(move |task| (agent.clone(), task)))
        .map(|(agent, task)| async move {
            for i in 0..15 {
                let memory = Memory::new(
                    format!("k{task}_{i:02}"),
                    json!({"agent": agent.as_str(), "i": i}),
                );
                backend.put_memory(&agent, &memory).await?;
            }
            backend
                .record_metric(&agent, &Metric::new("done", Some(task as f64)))
                .await
        })
        .collect();
    for result in futures_join_all(work).await {
        result.expect("no concurrent write fails");
    }
    for agent in &agents {
        let keys = backend
            .memory_keys(agent, &Listing::default())
            .await
            .unwrap();
        assert_eq!(keys.len(), 45, "agent {agent} lost writes");
        for key in keys {
            let got = backend.get_memory(agent, &key).await.unwrap().unwrap();
            assert_eq!(
                got.content.parse::<Value>().unwrap()["agent"],
                json!(agent.as_str()),
                "agent {agent} holds another's value"
            );
        }
        assert_eq!(
            backend
                .list_metrics(agent, &Listing::default())
                .await
                .unwrap()
                .len(),
            3
        );
    }
}

/// Tools register by name, re-register in place, and list in byte order of name.
pub async fn tools_register_get_list(backend: &dyn MemoryBackend) {
    let agent = unique_agent("tools");
    let definition = value(
        r#"{"type": "function", "parameters": {"q": {"type": "string"}}, "limit": 18446744073709551615}"#,
    );
    let first = backend
        .put_tool(&agent, &Tool::new("web_search", definition.clone()))
        .await
        .unwrap();
    backend
        .put_tool(&agent, &Tool::new("Calculator", json!({"ops": ["+", "-"]})))
        .await
        .unwrap();
    backend
        .put_tool(&agent, &Tool::new("ätsch", json!(null)))
        .await
        .unwrap();
    let got = backend
        .get_tool(&agent, "web_search")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, first);
    assert_eq!(got.content.as_str(), definition.as_str());
    let updated = backend
        .put_tool(&agent, &Tool::new("web_search", json!({"v": 2})))
        .await
        .unwrap();
    assert_eq!(updated.id, first.id, "re-registering keeps the tool's id");
    assert_eq!(updated.created_at, first.created_at);
    assert_eq!(
        backend
            .get_tool(&agent, "web_search")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!({"v": 2})
    );
    let names: Vec<String> = backend
        .list_tools(&agent, &Listing::default())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        ["Calculator", "web_search", "ätsch"],
        "tools in byte order of name"
    );
    assert!(backend.get_tool(&agent, "missing").await.unwrap().is_none());
}

/// Metrics and executions come back complete and oldest first.
pub async fn metrics_and_executions_keep_order(backend: &dyn MemoryBackend) {
    let agent = unique_agent("history");
    let values = [
        Some(1.5),
        None,
        Some(-0.25),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(1e308),
    ];
    let mut metrics = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut metric = Metric::new(format!("m{}", i % 2), *v);
        metric.content = json!({"step": i, "detail": "ü"}).into();
        metric.metadata.insert("run".into(), json!(7));
        backend.record_metric(&agent, &metric).await.unwrap();
        metrics.push(metric);
    }
    assert_eq!(
        backend
            .list_metrics(&agent, &Listing::default())
            .await
            .unwrap(),
        metrics
    );
    let mut executions = Vec::new();
    for (i, status) in [Some("ok"), None, Some("failed")].into_iter().enumerate() {
        let execution = Execution::new(
            status.map(String::from),
            json!({"task": i, "output": "x".repeat(i * 1000)}),
        );
        backend.log_execution(&agent, &execution).await.unwrap();
        executions.push(execution);
    }
    assert_eq!(
        backend
            .list_executions(&agent, &Listing::default())
            .await
            .unwrap(),
        executions
    );
}

/// Values a database cannot hold exactly are refused before anything is written.
pub async fn unstorable_values_are_refused(backend: &dyn MemoryBackend) {
    let agent = unique_agent("refused");
    let refused = |result: Result<_, Error>, what: &str| match result {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!(
            "{}: {what} was not refused as invalid input: {other:?}",
            backend.name()
        ),
    };
    refused(
        backend
            .put_memory(&agent, &Memory::new("nul\0key", json!(1)))
            .await
            .map(drop),
        "a NUL in a key",
    );
    let long = "k".repeat(crate::MAX_KEY_BYTES + 1);
    refused(
        backend
            .put_memory(&agent, &Memory::new(long.clone(), json!(1)))
            .await
            .map(drop),
        "a key longer than PostgreSQL's unique index holds",
    );
    refused(
        backend
            .put_tool(&agent, &crate::record::Tool::new(long.clone(), json!(1)))
            .await
            .map(drop),
        "a tool name longer than PostgreSQL's unique index holds",
    );
    assert_eq!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .expect("keys"),
        Vec::<String>::new(),
        "{}: a refused write wrote nothing",
        backend.name()
    );
    let mut meta = Metadata::new();
    meta.insert("note".into(), json!("nul\u{0}inside"));
    refused(
        backend
            .put_memory(&agent, &Memory::new("k", json!(1)).with_metadata(meta))
            .await
            .map(drop),
        "a NUL in metadata",
    );
    refused(
        backend
            .put_memory(
                &agent,
                &Memory::new("k", json!(1)).with_embedding(vec![f32::NAN]),
            )
            .await
            .map(drop),
        "a NaN embedding",
    );
    refused(
        backend
            .record_metric(&agent, &Metric::new("m", Some(f64::NAN)))
            .await
            .map(drop),
        "a NaN metric",
    );
    refused(
        backend
            .put_tool(&agent, &Tool::new("t\0", json!(1)))
            .await
            .map(drop),
        "a NUL in a tool name",
    );
    assert!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .unwrap()
            .is_empty(),
        "a refused write left a key"
    );
    assert!(
        backend
            .list_metrics(&agent, &Listing::default())
            .await
            .unwrap()
            .is_empty(),
        "a refused write left a metric"
    );
}
