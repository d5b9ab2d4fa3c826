//! The listing scenarios of the conformance suite: a [`Listing`]'s prefix, `since` and
//! limit select the same records, in the same order, on every backend, wrapper and dual
//! stage, as the filtering computed here does.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::unique_agent;
use crate::backend::MemoryBackend;
use crate::error::Error;
use crate::listing::Listing;
use crate::record::{Execution, Memory, Metric, Tool};

/// Keys and names that a `LIKE` without escapes, a case-folding comparison, a
/// locale's collation or a normalising one would list wrongly.
fn awkward_names() -> Vec<String> {
    [
        "a",
        "a%",
        "a%b",
        "a_",
        "a_b",
        "ab",
        "ab%",
        "aXb",
        "a\\",
        "a\\b",
        "a\\\\b",
        "a%_\\",
        "A",
        "b",
        "e",
        "E",
        "é",
        "éa",
        "e\u{301}",
        "ü/x",
        "ключ",
        "ключи",
        "记忆/1",
        "🔑",
        "🔑1",
        "\u{D7FF}",
        "\u{E000}",
        "\u{FFFF}",
        "\u{10000}",
        "\u{10FFFF}",
        "\u{10FFFF}z",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The prefixes listed with: each of SQL's `LIKE` wildcards and its escape, letters that
/// fold or decompose, characters at the edges of UTF-8's lengths, and prefixes that
/// match everything or nothing.
fn awkward_prefixes() -> Vec<String> {
    [
        "",
        "a",
        "a%",
        "a_",
        "a\\",
        "a\\\\",
        "a%_\\",
        "ab",
        "A",
        "e",
        "é",
        "e\u{301}",
        "ключ",
        "记",
        "🔑",
        "\u{D7FF}",
        "\u{FFFF}",
        "\u{10FFFF}",
        "zz",
        "%",
        "_",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The awkward names, each as a memory key, a tool name, a metric name and an execution
/// status (plus an execution without a status), listed by each awkward prefix (alone
/// and with a limit of 2) as [`str::starts_with`] and byte order say.
pub async fn listings_by_prefix(backend: &dyn MemoryBackend) {
    let agent = unique_agent("prefix");
    let names = awkward_names();
    for name in &names {
        backend
            .put_memory(&agent, &Memory::new(name, json!(name)))
            .await
            .expect("store");
        backend
            .put_tool(&agent, &Tool::new(name, json!(name)))
            .await
            .expect("register");
        backend
            .record_metric(&agent, &Metric::new(name, Some(1.0)))
            .await
            .expect("record");
        backend
            .log_execution(&agent, &Execution::new(Some(name.clone()), json!({})))
            .await
            .expect("log");
    }
    backend
        .log_execution(&agent, &Execution::new(None, json!({})))
        .await
        .expect("log");
    let mut sorted = names.clone();
    sorted.sort();
    for prefix in awkward_prefixes() {
        for limit in [None, Some(2)] {
            let mut listing = Listing::new().prefix(&prefix);
            listing.limit = limit;
            let take = limit.map_or(usize::MAX, |n| n as usize);
            let matching = |names: &[String]| -> Vec<String> {
                names
                    .iter()
                    .filter(|name| name.starts_with(prefix.as_str()))
                    .take(take)
                    .cloned()
                    .collect()
            };
            let said = format!("{}: prefix {prefix:?}, limit {limit:?}", backend.name());
            let keys = backend.memory_keys(&agent, &listing).await.expect("keys");
            assert_eq!(keys, matching(&sorted), "memory keys, {said}");
            let tools = backend.list_tools(&agent, &listing).await.expect("tools");
            let tools: Vec<String> = tools.into_iter().map(|t| t.name).collect();
            assert_eq!(tools, matching(&sorted), "tools, {said}");
            let metrics = backend
                .list_metrics(&agent, &listing)
                .await
                .expect("metrics");
            let metrics: Vec<String> = metrics.into_iter().map(|m| m.name).collect();
            assert_eq!(metrics, matching(&names), "metrics (oldest first), {said}");
            let executions = backend.list_executions(&agent, &listing).await;
            let statuses: Vec<Option<String>> = executions
                .expect("executions")
                .into_iter()
                .map(|e| e.status)
                .collect();
            let mut expected: Vec<Option<String>> =
                matching(&names).into_iter().map(Some).collect();
            if prefix.is_empty() && expected.len() < take {
                // An empty prefix filters nothing, not even executions without a status.
                expected.push(None);
            }
            assert_eq!(statuses, expected, "execution statuses, {said}");
        }
    }
}

/// `limit` keeps the first records in the listing's order; `since` keeps those written at
/// or after it (memories and tools by `updated_at`, so a replaced one counts as new;
/// metrics and executions by `created_at`), in whole microseconds; both combine with each
/// other and with a prefix.
pub async fn listings_by_limit_and_since(backend: &dyn MemoryBackend) {
    let agent = unique_agent("since");
    let name = backend.name();
    let mut memories = Vec::new();
    let mut tools = Vec::new();
    let mut metrics = Vec::new();
    let mut executions = Vec::new();
    for i in 0..6 {
        let memory = Memory::new(format!("k{i}"), json!(i));
        memories.push(backend.put_memory(&agent, &memory).await.expect("store"));
        let tool = Tool::new(format!("t{i}"), json!(i));
        tools.push(backend.put_tool(&agent, &tool).await.expect("register"));
        let metric = Metric::new(format!("m{}", i % 2), Some(f64::from(i)));
        backend
            .record_metric(&agent, &metric)
            .await
            .expect("record");
        metrics.push(metric);
        let execution = Execution::new(Some(format!("s{}", i % 2)), json!(i));
        backend
            .log_execution(&agent, &execution)
            .await
            .expect("log");
        executions.push(execution);
    }
    let keys = |listing: Listing| {
        let agent = agent.clone();
        async move {
            backend
                .memory_keys(&agent, &listing)
                .await
                .expect("memory keys")
        }
    };
    let tool_names = |listing: Listing| {
        let agent = agent.clone();
        async move {
            let tools = backend.list_tools(&agent, &listing).await.expect("tools");
            tools.into_iter().map(|t| t.name).collect::<Vec<_>>()
        }
    };
    let metric_values = |listing: Listing| {
        let agent = agent.clone();
        async move {
            let metrics = backend.list_metrics(&agent, &listing).await;
            let metrics = metrics.expect("metrics");
            metrics
                .into_iter()
                .map(|m| m.value.expect("a value") as i64)
                .collect::<Vec<_>>()
        }
    };
    let execution_steps = |listing: Listing| {
        let agent = agent.clone();
        async move {
            let executions = backend.list_executions(&agent, &listing).await;
            let executions = executions.expect("executions");
            executions
                .into_iter()
                .map(|e| e.content.parse::<i64>().expect("a step"))
                .collect::<Vec<_>>()
        }
    };

    // Limits.
    let all = Listing::new();
    assert_eq!(
        keys(all.clone()).await,
        ["k0", "k1", "k2", "k3", "k4", "k5"],
        "{name}"
    );
    assert_eq!(
        keys(all.clone().limit(2)).await,
        ["k0", "k1"],
        "{name}: limit 2"
    );
    assert!(
        keys(all.clone().limit(0)).await.is_empty(),
        "{name}: limit 0"
    );
    assert_eq!(
        keys(all.clone().limit(100)).await.len(),
        6,
        "{name}: limit 100"
    );
    assert_eq!(
        tool_names(all.clone().limit(3)).await,
        ["t0", "t1", "t2"],
        "{name}"
    );
    assert_eq!(
        metric_values(all.clone().limit(4)).await,
        [0, 1, 2, 3],
        "{name}"
    );
    assert_eq!(execution_steps(all.clone().limit(1)).await, [0], "{name}");
    assert!(
        metric_values(all.clone().limit(0)).await.is_empty(),
        "{name}"
    );

    // Since, inclusive, by the time each kind of record is listed by.
    let at = |t: DateTime<Utc>| Listing::new().since(t);
    assert_eq!(
        keys(at(memories[3].updated_at)).await,
        ["k3", "k4", "k5"],
        "{name}"
    );
    assert_eq!(
        tool_names(at(tools[4].updated_at)).await,
        ["t4", "t5"],
        "{name}"
    );
    assert_eq!(
        metric_values(at(metrics[2].created_at)).await,
        [2, 3, 4, 5],
        "{name}"
    );
    assert_eq!(
        execution_steps(at(executions[5].created_at)).await,
        [5],
        "{name}"
    );
    // A nanosecond past a record's microsecond is the next microsecond: it is left out.
    let nanosecond = TimeDelta::nanoseconds(1);
    assert_eq!(
        keys(at(memories[3].updated_at + nanosecond)).await,
        ["k4", "k5"],
        "{name}: since between two microseconds"
    );
    assert_eq!(
        metric_values(at(metrics[2].created_at + nanosecond)).await,
        [3, 4, 5],
        "{name}: since between two microseconds"
    );
    assert_eq!(keys(at(DateTime::<Utc>::MIN_UTC)).await.len(), 6, "{name}");
    assert!(
        keys(at(DateTime::<Utc>::MAX_UTC)).await.is_empty(),
        "{name}"
    );
    assert!(
        execution_steps(at(DateTime::<Utc>::MAX_UTC))
            .await
            .is_empty(),
        "{name}"
    );

    // Replacing a memory or a tool moves its `updated_at`: it counts as new.
    let replaced = backend
        .put_memory(&agent, &Memory::new("k1", json!("again")))
        .await
        .expect("store again");
    backend
        .put_tool(&agent, &Tool::new("t0", json!("again")))
        .await
        .expect("register again");
    assert_eq!(
        keys(at(memories[3].updated_at)).await,
        ["k1", "k3", "k4", "k5"],
        "{name}"
    );
    assert_eq!(keys(at(replaced.updated_at)).await, ["k1"], "{name}");
    assert_eq!(
        tool_names(at(tools[4].updated_at)).await,
        ["t0", "t4", "t5"],
        "{name}"
    );

    // Combined: since, then the first of them in order, within a prefix.
    let since = memories[3].updated_at;
    assert_eq!(keys(at(since).limit(2)).await, ["k1", "k3"], "{name}");
    assert_eq!(
        keys(at(since).prefix("k4").limit(5)).await,
        ["k4"],
        "{name}"
    );
    assert_eq!(
        metric_values(at(metrics[1].created_at).prefix("m1").limit(2)).await,
        [1, 3],
        "{name}"
    );
    assert_eq!(
        execution_steps(at(executions[2].created_at).prefix("s0")).await,
        [2, 4],
        "{name}"
    );
}

/// A prefix holding NUL is refused on every listing (no key can hold it); listings of an
/// agent that never wrote, with any options, find nothing.
pub async fn listings_refuse_and_read_nothing(backend: &dyn MemoryBackend) {
    let never = unique_agent("never_listed");
    let refused = Listing::new().prefix("a\0");
    let check = |result: Result<usize, Error>, what: &str| match result {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!(
            "{}: a NUL prefix for {what} was not refused as invalid input: {other:?}",
            backend.name()
        ),
    };
    check(
        backend.memory_keys(&never, &refused).await.map(|v| v.len()),
        "keys",
    );
    check(
        backend.list_tools(&never, &refused).await.map(|v| v.len()),
        "tools",
    );
    check(
        backend
            .list_metrics(&never, &refused)
            .await
            .map(|v| v.len()),
        "metrics",
    );
    check(
        backend
            .list_executions(&never, &refused)
            .await
            .map(|v| v.len()),
        "executions",
    );
    let filtered = Listing::new().prefix("a").since(Utc::now()).limit(3);
    assert!(
        backend
            .memory_keys(&never, &filtered)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        backend
            .list_tools(&never, &filtered)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        backend
            .list_metrics(&never, &filtered)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        backend
            .list_executions(&never, &filtered)
            .await
            .unwrap()
            .is_empty()
    );
}
