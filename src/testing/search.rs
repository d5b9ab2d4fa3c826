//! The vector search scenarios of the conformance suite: every backend, every wrapper
//! and every dual stage answers a search as the brute-force answer computed here does.

use serde_json::json;

use super::unique_agent;
use crate::backend::MemoryBackend;
use crate::error::Error;
use crate::json::Json;
use crate::record::{AgentId, Memory, Metadata};
use crate::vector::{DistanceMetric, Neighbor, VectorQuery, distance};

/// A small deterministic generator, so every backend gets the same vectors.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Multiples of 1/64 in [-2, 2): exact in f32, few exact ties in distances.
        ((self.0 >> 40) % 256) as f32 / 64.0 - 2.0
    }

    fn vector(&mut self, dims: usize) -> Vec<f32> {
        (0..dims).map(|_| self.next()).collect()
    }
}

/// `n` memories `m/000`.. of `dims` dimensions, with metadata `{"group": i % 3, "even":
/// i % 2 == 0}` and content whose text only an exact store keeps (key order, a number
/// beyond u64, `2.50`, `-0`), stored for `agent`; returns them as stored.
async fn store_vectors(
    backend: &dyn MemoryBackend,
    agent: &AgentId,
    n: usize,
    dims: usize,
    seed: u64,
) -> Vec<Memory> {
    let mut rng = Lcg(seed);
    let mut stored = Vec::with_capacity(n);
    for i in 0..n {
        let mut meta = Metadata::new();
        meta.insert("group".into(), json!(i % 3));
        meta.insert("even".into(), json!(i % 2 == 0));
        let content = format!(r#"{{"i": {i}, "big": 18446744073709551616, "w": 2.50, "a": -0}}"#);
        let content = Json::from_text(content).expect("valid JSON");
        let memory = Memory::new(format!("m/{i:03}"), content)
            .with_metadata(meta)
            .with_embedding(rng.vector(dims));
        stored.push(backend.put_memory(agent, &memory).await.unwrap());
    }
    stored
}

/// Checks `found` against the brute-force answer over `candidates`: as many as asked
/// (or all), each with its true distance, in order, and none left out that is nearer
/// than the farthest returned (ties at the boundary may go either way).
fn assert_nearest(
    backend: &str,
    what: &str,
    query: &VectorQuery,
    candidates: &[&Memory],
    found: &[Neighbor],
) {
    let truth = |m: &Memory| distance(query.metric, &query.vector, m.embedding.as_ref().unwrap());
    let mut expected: Vec<(f64, &str)> = candidates
        .iter()
        .map(|m| (truth(m), m.key.as_deref().unwrap()))
        .filter(|(d, _)| !d.is_nan())
        .collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0));
    let want = query.k.min(expected.len());
    assert_eq!(
        found.len(),
        want,
        "{backend}: {what}: wrong number of answers"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()));
    for (i, hit) in found.iter().enumerate() {
        let key = hit.memory.key.as_deref().unwrap();
        let (d, _) = expected
            .iter()
            .find(|(_, k)| *k == key)
            .unwrap_or_else(|| panic!("{backend}: {what}: {key} is not a candidate"));
        assert!(
            close(hit.distance, *d),
            "{backend}: {what}: {key} at {} but its distance is {d}",
            hit.distance
        );
        if i > 0 {
            assert!(
                hit.distance >= found[i - 1].distance - 1e-9,
                "{backend}: {what}: answers are not nearest first"
            );
        }
    }
    if want > 0 {
        let farthest = found[want - 1].distance;
        for (d, key) in expected.iter().take_while(|(d, _)| *d < farthest - 1e-5) {
            assert!(
                found.iter().any(|h| h.memory.key.as_deref() == Some(*key)),
                "{backend}: {what}: {key} at {d} is nearer than the farthest answer {farthest} but missing"
            );
        }
    }
}

/// Search finds the nearest memories by each metric, with their distances, and only the
/// agent's own memories that have an embedding of the query's dimension.
pub async fn search_finds_nearest(backend: &dyn MemoryBackend) {
    let agent = unique_agent("search");
    let other = unique_agent("search_other");
    let stored = store_vectors(backend, &agent, 40, 8, 1).await;
    store_vectors(backend, &other, 10, 8, 2).await;
    backend
        .put_memory(&agent, &Memory::new("plain", json!("no embedding")))
        .await
        .unwrap();
    backend
        .put_memory(
            &agent,
            &Memory::new("wide", json!("another model")).with_embedding(vec![0.5; 12]),
        )
        .await
        .unwrap();
    let candidates: Vec<&Memory> = stored.iter().collect();
    let mut rng = Lcg(99);
    for metric in DistanceMetric::ALL {
        for k in [1, 5, 17] {
            let query = VectorQuery::new(rng.vector(8), k).metric(metric);
            let found = backend.search_memories(&agent, &query).await.unwrap();
            assert_nearest(
                backend.name(),
                &format!("{metric} k={k}"),
                &query,
                &candidates,
                &found,
            );
            let whole = backend
                .get_memory(&agent, found[0].memory.key.as_deref().unwrap())
                .await;
            assert_eq!(
                Some(found[0].memory.clone()),
                whole.unwrap(),
                "{}: a search answer differs from the stored memory",
                backend.name()
            );
            for hit in &found {
                let put = stored.iter().find(|m| m.key == hit.memory.key).unwrap();
                assert_eq!(
                    hit.memory.content.as_str(),
                    put.content.as_str(),
                    "{}: a search answer's value changed on the way",
                    backend.name()
                );
            }
        }
    }
}

/// The defined answers: k = 0, k beyond the data, bad vectors, the wrong dimension, an
/// agent without memories, zero vectors under cosine.
pub async fn search_edge_cases(backend: &dyn MemoryBackend) {
    let name = backend.name();
    let agent = unique_agent("search_edges");
    let stored = store_vectors(backend, &agent, 6, 4, 3).await;
    let query = |k| VectorQuery::new(vec![1.0, 0.5, -0.5, 0.25], k);
    assert!(
        backend
            .search_memories(&agent, &query(0))
            .await
            .unwrap()
            .is_empty(),
        "{name}: k = 0 must answer nothing"
    );
    let all = backend.search_memories(&agent, &query(1000)).await.unwrap();
    let candidates: Vec<&Memory> = stored.iter().collect();
    assert_nearest(name, "k beyond the data", &query(1000), &candidates, &all);

    let invalid = |result: crate::Result<Vec<Neighbor>>, what: &str| match result {
        Err(Error::InvalidInput { reason, .. }) => reason,
        other => panic!("{name}: {what} was not refused as invalid input: {other:?}"),
    };
    invalid(
        backend
            .search_memories(&agent, &VectorQuery::new(vec![], 3))
            .await,
        "an empty vector",
    );
    invalid(
        backend
            .search_memories(&agent, &VectorQuery::new(vec![1.0, f32::NAN, 0.0, 0.0], 3))
            .await,
        "NaN in the vector",
    );
    invalid(
        backend
            .search_memories(&agent, &VectorQuery::new(vec![0.0; 4], 3))
            .await,
        "an all-zero cosine query",
    );
    invalid(
        backend
            .search_memories(&agent, &query(3).metadata_eq("group", json!([1])))
            .await,
        "an array as a metadata filter",
    );
    let reason = invalid(
        backend
            .search_memories(&agent, &VectorQuery::new(vec![1.0; 5], 3))
            .await,
        "a query of the wrong dimension",
    );
    assert!(
        reason.contains("5 dimensions") && reason.contains('4'),
        "{name}: the dimension error must name both dimensions: {reason}"
    );

    let nobody = unique_agent("search_nobody");
    assert!(
        backend
            .search_memories(&nobody, &query(3))
            .await
            .unwrap()
            .is_empty(),
        "{name}: an agent without memories has no answers"
    );

    // A stored zero vector has no cosine distance, but an L2 one.
    backend
        .put_memory(
            &agent,
            &Memory::new("zero", json!(0)).with_embedding(vec![0.0; 4]),
        )
        .await
        .unwrap();
    let cosine = backend.search_memories(&agent, &query(100)).await.unwrap();
    assert!(
        cosine
            .iter()
            .all(|h| h.memory.key.as_deref() != Some("zero")),
        "{name}: a zero embedding was returned by a cosine search"
    );
    assert_eq!(cosine.len(), stored.len(), "{name}: cosine lost a memory");
    let l2 = backend
        .search_memories(&agent, &query(100).metric(DistanceMetric::L2))
        .await
        .unwrap();
    assert_eq!(
        l2.len(),
        stored.len() + 1,
        "{name}: L2 must reach the zero embedding"
    );
}

/// Which memories a filter keeps, computed here.
type Keep = Box<dyn Fn(&Memory) -> bool>;

/// Filters by key prefix and by metadata values (numbers by value, booleans, strings,
/// null) narrow the candidates before the nearest are taken.
pub async fn search_filters(backend: &dyn MemoryBackend) {
    let name = backend.name();
    let agent = unique_agent("search_filters");
    let mut stored = store_vectors(backend, &agent, 30, 6, 4).await;
    let mut meta = Metadata::new();
    meta.insert("group".into(), json!(1.0));
    meta.insert("label".into(), json!("x"));
    meta.insert("gone".into(), json!(null));
    stored.push(
        backend
            .put_memory(
                &agent,
                &Memory::new("other/one", json!("o"))
                    .with_metadata(meta)
                    .with_embedding(Lcg(5).vector(6)),
            )
            .await
            .unwrap(),
    );
    let base = VectorQuery::new(Lcg(6).vector(6), 8);
    let group = |m: &Memory| m.metadata.get("group").and_then(|v| v.as_f64());
    let cases: Vec<(&str, VectorQuery, Keep)> = vec![
        (
            "prefix m/01",
            base.clone().key_prefix("m/01"),
            Box::new(|m: &Memory| m.key.as_deref().unwrap().starts_with("m/01")),
        ),
        (
            "group = 1 (1 and 1.0 alike)",
            base.clone().metadata_eq("group", 1),
            Box::new(move |m: &Memory| group(m) == Some(1.0)),
        ),
        (
            "even = true and group = 2",
            base.clone()
                .metadata_eq("even", true)
                .metadata_eq("group", 2),
            Box::new(move |m: &Memory| {
                m.metadata.get("even") == Some(&json!(true)) && group(m) == Some(2.0)
            }),
        ),
        (
            "label = \"x\"",
            base.clone().metadata_eq("label", "x"),
            Box::new(|m: &Memory| m.metadata.get("label") == Some(&json!("x"))),
        ),
        (
            "gone = null",
            base.clone().metadata_eq("gone", json!(null)),
            Box::new(|m: &Memory| m.metadata.get("gone") == Some(&json!(null))),
        ),
        (
            "prefix with no match",
            base.clone().key_prefix("nothing/"),
            Box::new(|_: &Memory| false),
        ),
    ];
    for (what, query, keep) in cases {
        let candidates: Vec<&Memory> = stored.iter().filter(|m| keep(m)).collect();
        let found = backend.search_memories(&agent, &query).await.unwrap();
        assert_nearest(name, what, &query, &candidates, &found);
    }
}

/// Search sees the latest write: a new embedding moves a memory, a delete or a store
/// without an embedding removes it.
pub async fn search_follows_writes(backend: &dyn MemoryBackend) {
    let name = backend.name();
    let agent = unique_agent("search_writes");
    store_vectors(backend, &agent, 10, 3, 7).await;
    let target = vec![10.0, 10.0, 10.0];
    let query = VectorQuery::new(target.clone(), 1).metric(DistanceMetric::L2);
    backend
        .put_memory(
            &agent,
            &Memory::new("m/004", json!("moved")).with_embedding(target),
        )
        .await
        .unwrap();
    let found = backend.search_memories(&agent, &query).await.unwrap();
    assert_eq!(
        found[0].memory.key.as_deref(),
        Some("m/004"),
        "{name}: new embedding unseen"
    );
    assert_eq!(found[0].distance, 0.0);
    backend
        .put_memory(&agent, &Memory::new("m/004", json!("no vector now")))
        .await
        .unwrap();
    let found = backend
        .search_memories(&agent, &query.clone())
        .await
        .unwrap();
    assert_ne!(
        found[0].memory.key.as_deref(),
        Some("m/004"),
        "{name}: dropped embedding still found"
    );
    backend.delete_memory(&agent, "m/005").await.unwrap();
    let all = backend
        .search_memories(&agent, &VectorQuery::new(vec![1.0, 1.0, 1.0], 100))
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        8,
        "{name}: deleted or embedding-less memories returned"
    );
    assert!(all.iter().all(|h| h.memory.key.as_deref() != Some("m/005")));
}
