//! Vector search beyond the conformance scenarios: the two backends agree on exact
//! search, PostgreSQL's HNSW indexes (vector and halfvec) serve searches, dimensions
//! beyond an index are exact, the dual backend's sides, the embedding fill pass, and
//! legacy embeddings from the public corpus.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use memshift::backend::DualBackend;
use memshift::backfill::{self, BackfillOptions};
use memshift::config::Stage;
use memshift::legacy::Target;
use memshift::testing::postgres::TestDatabase;
use memshift::testing::unique_agent;
use memshift::vector::{Embedder, FillOptions, HashEmbedder, fill_embeddings, missing_embeddings};
use memshift::{
    AgentId, DistanceMetric, Error, Memory, MemoryBackend, PostgresBackend, SqliteBackend,
    SqliteOptions, VectorIndex, VectorQuery,
};
use serde_json::json;
use sqlx::{Connection, PgConnection};

mod common;
use common::{legacy_file, memctl, memory_table, stdout};

/// Deterministic vectors with full float32 mantissas, in [-1, 1).
struct Vectors(u64);

impl Vectors {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vector(&mut self, dims: usize) -> Vec<f32> {
        (0..dims).map(|_| self.next()).collect()
    }
}

/// Vectors with few degrees of freedom in many dimensions, as real embeddings have: a
/// random point in `latent` dimensions through a fixed projection, plus a little noise.
/// (Uniform random vectors in thousands of dimensions are all about equally far apart,
/// which no approximate index, and no real model, produces.)
struct Embeddings {
    projection: Vec<Vec<f32>>,
    points: Vectors,
}

impl Embeddings {
    fn new(latent: usize, dims: usize, seed: u64) -> Self {
        let mut rng = Vectors(seed);
        Embeddings {
            projection: (0..latent).map(|_| rng.vector(dims)).collect(),
            points: Vectors(seed ^ 0x9e37_79b9),
        }
    }

    fn vector(&mut self) -> Vec<f32> {
        let dims = self.projection[0].len();
        let z = self.points.vector(self.projection.len());
        (0..dims)
            .map(|d| {
                let signal: f32 = z
                    .iter()
                    .zip(&self.projection)
                    .map(|(z, row)| z * row[d])
                    .sum();
                signal + 0.01 * self.points.next()
            })
            .collect()
    }
}

/// Stores `n` memories `v/0000`.. of `dims` dimensions for `agent` in each backend.
async fn store_all(
    backends: &[&dyn MemoryBackend],
    agent: &AgentId,
    n: usize,
    dims: usize,
    seed: u64,
) {
    let mut vectors = Vectors(seed);
    for i in 0..n {
        let memory = Memory::new(format!("v/{i:04}"), json!({ "i": i }))
            .with_embedding(vectors.vector(dims));
        for backend in backends {
            backend.put_memory(agent, &memory).await.unwrap();
        }
    }
}

/// Loads `n` memories of `dims` dimensions for `agent` straight into PostgreSQL, in one
/// statement (the backends' own writes are tested elsewhere).
async fn bulk_load(backend: &PostgresBackend, agent: &AgentId, n: usize, dims: usize, seed: u64) {
    let mut vectors = Vectors(seed);
    let embeddings = (0..n).map(|_| vectors.vector(dims)).collect();
    bulk_load_vectors(backend, agent, embeddings).await;
}

async fn bulk_load_vectors(backend: &PostgresBackend, agent: &AgentId, vectors: Vec<Vec<f32>>) {
    backend
        .put_memory(agent, &Memory::new("seed", json!(0)))
        .await
        .unwrap();
    let keys: Vec<String> = (0..vectors.len()).map(|i| format!("v/{i:05}")).collect();
    let embeddings: Vec<pgvector::Vector> =
        vectors.into_iter().map(pgvector::Vector::from).collect();
    sqlx::query(
        "insert into agent_memories (id, agent_id, key, content, embedding)
         select gen_random_uuid(), $1, k, '{}', e from unnest($2::text[], $3::vector[]) as t(k, e)",
    )
    .bind(agent.as_str())
    .bind(&keys)
    .bind(&embeddings)
    .execute(backend.pool())
    .await
    .unwrap();
    // As autovacuum would, so the planner knows how many rows the agent has.
    sqlx::query("analyze agent_memories")
        .execute(backend.pool())
        .await
        .unwrap();
}

fn keys(found: &[memshift::Neighbor]) -> Vec<String> {
    found
        .iter()
        .map(|h| h.memory.key.clone().unwrap())
        .collect()
}

/// Share of `exact`'s keys that `approximate` found.
fn recall(approximate: &[memshift::Neighbor], exact: &[memshift::Neighbor]) -> f64 {
    let wanted = keys(exact);
    let hits = keys(approximate)
        .iter()
        .filter(|k| wanted.contains(k))
        .count();
    hits as f64 / wanted.len().max(1) as f64
}

/// Runs each query through the index and exactly, checks that `k` came back and what
/// `check` asserts of the approximate answer, and returns the mean recall.
async fn mean_recall(
    backend: &PostgresBackend,
    agent: &AgentId,
    queries: impl IntoIterator<Item = VectorQuery>,
    check: impl Fn(&VectorQuery, &[memshift::Neighbor]),
) -> f64 {
    let (mut total, mut n) = (0.0, 0);
    for query in queries {
        let approximate = backend.search_memories(agent, &query).await.unwrap();
        let exact = backend
            .search_memories(agent, &query.clone().exact())
            .await
            .unwrap();
        assert_eq!(approximate.len(), query.k, "k answers through the index");
        check(&query, &approximate);
        total += recall(&approximate, &exact);
        n += 1;
    }
    total / f64::from(n.max(1))
}

#[tokio::test]
async fn exact_search_is_the_same_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    let sqlite = SqliteBackend::new(dir.path());
    let postgres = db.backend().await;
    let agent = unique_agent("same");
    store_all(&[&sqlite, &postgres], &agent, 400, 48, 7).await;
    let mut queries = Vectors(11);
    let mut worst = 0f64;
    for metric in DistanceMetric::ALL {
        for _ in 0..8 {
            let query = VectorQuery::new(queries.vector(48), 25)
                .metric(metric)
                .exact();
            let a = sqlite.search_memories(&agent, &query).await.unwrap();
            let b = postgres.search_memories(&agent, &query).await.unwrap();
            assert_eq!(
                keys(&a),
                keys(&b),
                "{metric}: the backends rank differently"
            );
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max((x.distance - y.distance).abs());
                assert_eq!(x.memory, y.memory);
            }
        }
    }
    // On the CPUs where pgvector runs its AVX-512 + FMA code (this project's machines),
    // the distances are bit for bit the same; elsewhere they agree to float32 rounding.
    let allowed = if pgvector_path_is_mirrored() {
        0.0
    } else {
        1e-5
    };
    assert!(worst <= allowed, "distances differ by up to {worst}");
}

/// SQLite's search from the copy of the embeddings in memory answers exactly as the scan
/// of the file: the same memories, the same distances bit for bit, ties broken by id,
/// memories without a defined distance left out, also with k beyond the count and when
/// the copy would exceed its limit (then the scan answers).
#[tokio::test]
async fn sqlite_search_from_memory_answers_exactly_as_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let with_limit = |bytes: u64| {
        let options = SqliteOptions {
            search_cache_bytes: bytes,
            ..SqliteOptions::default()
        };
        SqliteBackend::with_options(dir.path(), options)
    };
    let (cached, scan, small) = (
        SqliteBackend::new(dir.path()),
        with_limit(0),
        with_limit(1000),
    );
    let agent = unique_agent("cache");
    store_all(&[&cached], &agent, 300, 24, 3).await;
    // Ties (the same vector under several keys, and its negation), a zero vector (no
    // cosine distance), and embeddings of another dimension.
    let mut vectors = Vectors(5);
    let twin = vectors.vector(24);
    for (i, v) in [
        twin.clone(),
        twin.clone(),
        twin.iter().map(|x| -x).collect(),
        vec![0.0; 24],
    ]
    .into_iter()
    .enumerate()
    {
        let memory = Memory::new(format!("tie/{i}"), json!(i)).with_embedding(v);
        cached.put_memory(&agent, &memory).await.unwrap();
    }
    for i in 0..5 {
        let memory = Memory::new(format!("other/{i}"), json!(i)).with_embedding(vectors.vector(8));
        cached.put_memory(&agent, &memory).await.unwrap();
    }
    let mut queries: Vec<Vec<f32>> = (0..6).map(|_| vectors.vector(24)).collect();
    queries.push(twin.clone());
    queries.push(vec![0.0; 24]);
    for metric in DistanceMetric::ALL {
        for query in &queries {
            for k in [1, 10, 400] {
                let query = VectorQuery::new(query.clone(), k).metric(metric).exact();
                let Ok(want) = scan.search_memories(&agent, &query).await else {
                    // A zero query has no cosine direction: refused by both.
                    assert!(cached.search_memories(&agent, &query).await.is_err());
                    continue;
                };
                for backend in [&cached, &small] {
                    let got = backend.search_memories(&agent, &query).await.unwrap();
                    assert_eq!(got.len(), want.len(), "{metric} k={k}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g.memory, w.memory, "{metric} k={k}");
                        assert_eq!(g.distance.to_bits(), w.distance.to_bits(), "{metric} k={k}");
                    }
                }
            }
        }
    }
}

/// The copy in memory follows every write to the file: through the same backend, and
/// from another process (memctl), a store, a changed embedding and a delete each show
/// in the next search.
#[tokio::test]
async fn sqlite_search_from_memory_follows_writes_of_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::new(dir.path());
    let agent = unique_agent("follow");
    store_all(&[&backend], &agent, 200, 16, 9).await;
    let target = Vectors(77).vector(16);
    let query = VectorQuery::new(target.clone(), 3).exact();
    let first = |found: Vec<memshift::Neighbor>| found[0].memory.key.clone().unwrap();
    let before = first(backend.search_memories(&agent, &query).await.unwrap());
    assert!(before.starts_with("v/"));

    let agents = dir.path().to_str().unwrap();
    let env = [("AGENTS_PATH", agents)];
    let embedding = serde_json::to_string(&target).unwrap();
    let run = |args: &[&str]| {
        let out = memctl(&env, args);
        assert!(out.status.success(), "{out:?}");
    };
    run(&[
        "--agent",
        agent.as_str(),
        "store",
        "near",
        "1",
        "--embedding",
        &embedding,
    ]);
    let found = backend.search_memories(&agent, &query).await.unwrap();
    assert_eq!(
        (first(found.clone()), found[0].distance),
        ("near".into(), 0.0)
    );

    // Its embedding moves away (another process again): it is no longer the nearest.
    let far: Vec<f32> = target.iter().map(|x| -x).collect();
    let far = serde_json::to_string(&far).unwrap();
    run(&[
        "--agent",
        agent.as_str(),
        "store",
        "near",
        "2",
        "--embedding",
        &far,
    ]);
    assert_eq!(
        first(backend.search_memories(&agent, &query).await.unwrap()),
        before
    );

    // Back through this backend, then deleted by the other process.
    let memory = Memory::new("near", json!(3)).with_embedding(target.clone());
    backend.put_memory(&agent, &memory).await.unwrap();
    assert_eq!(
        first(backend.search_memories(&agent, &query).await.unwrap()),
        "near"
    );
    run(&["--agent", agent.as_str(), "delete", "near"]);
    assert_eq!(
        first(backend.search_memories(&agent, &query).await.unwrap()),
        before
    );
}

/// Whether this CPU runs pgvector's AVX-512 + FMA code, whose order of sums the
/// library's distances follow.
#[cfg(target_arch = "x86_64")]
fn pgvector_path_is_mirrored() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn pgvector_path_is_mirrored() -> bool {
    false
}

/// Waits until the statistics show a scan of `index` (they are flushed asynchronously).
async fn index_scans(conn: &mut PgConnection, index: &str) -> i64 {
    for _ in 0..50 {
        let scans: Option<i64> =
            sqlx::query_scalar("select idx_scan from pg_stat_user_indexes where indexrelname = $1")
                .bind(index)
                .fetch_optional(&mut *conn)
                .await
                .unwrap();
        if let Some(scans) = scans.filter(|s| *s > 0) {
            return scans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    0
}

#[tokio::test]
async fn an_hnsw_index_serves_searches_with_k_answers() {
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    let (agent, other) = (unique_agent("hnsw"), unique_agent("hnsw_other"));
    bulk_load(&backend, &agent, 3000, 24, 3).await;
    bulk_load(&backend, &other, 1000, 24, 4).await;

    let index = VectorIndex::new(24, DistanceMetric::Cosine);
    let built = backend.create_vector_index(&index).await.unwrap();
    assert!(built.created && !built.replaced_invalid, "{built:?}");
    assert_eq!(built.name, "agent_memories_embedding_cosine_24");
    let again = backend.create_vector_index(&index).await.unwrap();
    assert!(!again.created, "a valid index is kept: {again:?}");

    let mut queries = Vectors(5);
    let ten: Vec<_> = (0..20)
        .map(|_| VectorQuery::new(queries.vector(24), 10))
        .collect();
    let mean = mean_recall(&backend, &agent, ten, |_, approximate| {
        assert!(
            approximate
                .iter()
                .all(|h| h.memory.key.as_deref() != Some("seed")),
            "a memory without an embedding was found"
        );
    })
    .await;
    assert!(mean >= 0.9, "recall@10 through the index: {mean}");
    // Closing the pool makes its sessions report their statistics.
    backend.close().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    assert!(
        index_scans(&mut conn, &built.name).await > 0,
        "searches did not use the index"
    );
    let backend = db.backend().await;

    // More than pgvector's default ef_search (40), and filters that leave few rows.
    let query = VectorQuery::new(queries.vector(24), 100);
    let hundred = backend.search_memories(&agent, &query).await.unwrap();
    assert_eq!(hundred.len(), 100, "a search for 100 gets 100");
    let exact = backend
        .search_memories(&agent, &query.clone().exact())
        .await
        .unwrap();
    assert!(
        recall(&hundred, &exact) >= 0.9,
        "recall@100: {}",
        recall(&hundred, &exact)
    );
    let filtered = VectorQuery::new(queries.vector(24), 10).key_prefix("v/0012");
    let found = backend.search_memories(&agent, &filtered).await.unwrap();
    assert_eq!(
        found.len(),
        10,
        "a filtered index search still gets k answers"
    );
    assert!(
        found
            .iter()
            .all(|h| h.memory.key.as_deref().unwrap().starts_with("v/0012"))
    );
    let theirs = backend.search_memories(&other, &query).await.unwrap();
    assert_eq!(theirs.len(), 100);
    assert!(
        theirs
            .iter()
            .all(|h| h.memory.key.as_deref() != Some("seed"))
            && !theirs.is_empty(),
        "each agent searches its own memories"
    );

    assert!(
        backend
            .drop_vector_index(24, DistanceMetric::Cosine)
            .await
            .unwrap()
    );
    assert!(
        !backend
            .drop_vector_index(24, DistanceMetric::Cosine)
            .await
            .unwrap()
    );
    let after = backend.search_memories(&agent, &query).await.unwrap();
    assert_eq!(
        keys(&after),
        keys(&exact),
        "without the index a search is exact"
    );
}

#[tokio::test]
async fn above_2000_dimensions_the_index_holds_halfvec_and_answers_rank_by_full_distances() {
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    let agent = unique_agent("halfvec");
    let mut model = Embeddings::new(12, 2500, 9);
    bulk_load_vectors(
        &backend,
        &agent,
        (0..2000).map(|_| model.vector()).collect(),
    )
    .await;
    let built = backend
        .create_vector_index(&VectorIndex::new(2500, DistanceMetric::L2))
        .await
        .unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let definition: String =
        sqlx::query_scalar("select indexdef from pg_indexes where indexname = $1")
            .bind(&built.name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(definition.contains("halfvec(2500)"), "{definition}");
    let queries: Vec<_> = (0..10)
        .map(|_| VectorQuery::new(model.vector(), 10).metric(DistanceMetric::L2))
        .collect();
    let mean = mean_recall(&backend, &agent, queries, |query, approximate| {
        for hit in approximate {
            let truth = memshift::vector::distance(
                DistanceMetric::L2,
                &query.vector,
                hit.memory.embedding.as_ref().unwrap(),
            );
            assert!(
                (hit.distance - truth).abs() < 1e-4,
                "{} vs {truth}",
                hit.distance
            );
        }
        assert!(
            approximate
                .windows(2)
                .all(|w| w[0].distance <= w[1].distance)
        );
    })
    .await;
    assert!(mean >= 0.9, "recall@10 through halfvec: {mean}");
    backend.close().await;
    assert!(
        index_scans(&mut conn, &built.name).await > 0,
        "the halfvec index was not used"
    );
}

#[tokio::test]
async fn beyond_4000_dimensions_there_is_no_index_and_search_is_exact() {
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    match backend
        .create_vector_index(&VectorIndex::new(4001, DistanceMetric::Cosine))
        .await
    {
        Err(Error::InvalidInput { reason, .. }) => {
            assert!(
                reason.contains("4001") && reason.contains("exact"),
                "{reason}"
            )
        }
        other => panic!("an index of 4,001 dimensions was not refused: {other:?}"),
    }
    let agent = unique_agent("wide");
    store_all(&[&backend], &agent, 12, 4500, 2).await;
    let query = VectorQuery::new(Vectors(3).vector(4500), 3);
    let found = backend.search_memories(&agent, &query).await.unwrap();
    let exact = backend
        .search_memories(&agent, &query.clone().exact())
        .await
        .unwrap();
    assert_eq!(found, exact);
    assert_eq!(found.len(), 3);
    match backend
        .put_memory(
            &agent,
            &Memory::new("too", json!(1)).with_embedding(vec![0.5; 16_001]),
        )
        .await
    {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("16,001 dimensions were stored: {other:?}"),
    }
}

#[tokio::test]
async fn an_index_left_invalid_by_a_failed_build_is_rebuilt() {
    let db = TestDatabase::migrated().await;
    let backend = db.backend().await;
    let agent = unique_agent("invalid");
    bulk_load(&backend, &agent, 200, 8, 1).await;
    let index = VectorIndex::new(8, DistanceMetric::InnerProduct);
    let built = backend.create_vector_index(&index).await.unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("update pg_index set indisvalid = false where indexrelid = to_regclass($1)")
        .bind(&built.name)
        .execute(&mut conn)
        .await
        .unwrap();
    let rebuilt = backend.create_vector_index(&index).await.unwrap();
    assert!(rebuilt.created && rebuilt.replaced_invalid, "{rebuilt:?}");
    let valid: bool =
        sqlx::query_scalar("select indisvalid from pg_index where indexrelid = to_regclass($1)")
            .bind(&built.name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(valid);
    let mut bad = index.clone();
    bad.m = 1;
    assert!(matches!(
        backend.create_vector_index(&bad).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn the_dual_backend_writes_embeddings_to_both_sides_and_searches_the_authoritative_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    let sqlite = Arc::new(SqliteBackend::new(dir.path()));
    let postgres = Arc::new(db.backend().await);
    let dual = DualBackend::new(sqlite.clone(), postgres.clone(), Stage::DualWrite);
    let agent = unique_agent("dual_vec");
    let memory = Memory::new("both", json!("x")).with_embedding(vec![0.25, -0.5, 1.0]);
    dual.put_memory(&agent, &memory).await.unwrap();
    for side in [&*sqlite as &dyn MemoryBackend, &*postgres] {
        let stored = side.get_memory(&agent, "both").await.unwrap().unwrap();
        assert_eq!(
            stored.embedding,
            memory.embedding,
            "{} lacks the embedding",
            side.name()
        );
    }
    // A memory only SQLite holds shows which side answers.
    sqlite
        .put_memory(
            &agent,
            &Memory::new("only_sqlite", json!(1)).with_embedding(vec![0.25, -0.5, 1.0]),
        )
        .await
        .unwrap();
    let query = VectorQuery::new(vec![0.25, -0.5, 1.0], 5);
    for (stage, sides) in [
        (Stage::Sqlite, 2),
        (Stage::DualWrite, 2),
        (Stage::Shadow, 2),
        (Stage::Live, 1),
        (Stage::RampDown, 1),
        (Stage::Postgres, 1),
    ] {
        dual.set_stage(stage);
        let found = dual.search_memories(&agent, &query).await.unwrap();
        assert_eq!(
            found.len(),
            sides,
            "{stage:?} answered from the wrong side: {found:?}"
        );
    }
}

/// An embedder that, on its first call, has an agent overwrite one of the memories it
/// is embedding, as a running agent may.
struct Meddling {
    inner: HashEmbedder,
    backend: Arc<PostgresBackend>,
    agent: AgentId,
    key: String,
    done: AtomicBool,
}

#[async_trait]
impl Embedder for Meddling {
    fn name(&self) -> String {
        "meddling".into()
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    async fn embed(&self, texts: &[String]) -> memshift::Result<Vec<Vec<f32>>> {
        if !self.done.swap(true, Ordering::SeqCst) {
            let mut memory = self
                .backend
                .get_memory(&self.agent, &self.key)
                .await?
                .unwrap();
            memory.content = json!({"content": "rewritten while embedding"}).into();
            memory.updated_at = chrono::Utc::now();
            self.backend.put_memory(&self.agent, &memory).await?;
        }
        self.inner.embed(texts).await
    }
}

/// An embedder that returns vectors of the wrong dimension.
struct Wrong;

#[async_trait]
impl Embedder for Wrong {
    fn name(&self) -> String {
        "wrong".into()
    }
    fn dimensions(&self) -> usize {
        8
    }
    async fn embed(&self, texts: &[String]) -> memshift::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|_| vec![1.0; 7]).collect())
    }
}

async fn migrated_agent(root: &Path, db: &TestDatabase, rows: usize) -> AgentId {
    legacy_file(&root.join("filler/legacy.db"), &memory_table(rows)).await;
    let report = backfill::run(&db.url, &BackfillOptions::new(root), &())
        .await
        .unwrap();
    assert!(report.succeeded());
    AgentId::new("filler").unwrap()
}

#[tokio::test]
async fn the_fill_pass_fills_every_null_embedding_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    let agent = migrated_agent(dir.path(), &db, 250).await;
    let backend = Arc::new(db.backend().await);
    assert_eq!(
        missing_embeddings(&backend, Some(&agent)).await.unwrap(),
        250
    );
    let embedder = HashEmbedder::new(64).unwrap();

    match fill_embeddings(&backend, &Wrong, &FillOptions::default(), &()).await {
        Err(Error::InvalidInput { reason, .. }) => {
            assert!(
                reason.contains("7 dimensions") && reason.contains("memory"),
                "{reason}"
            )
        }
        other => panic!("a wrong-dimension embedder was not stopped: {other:?}"),
    }
    assert_eq!(
        missing_embeddings(&backend, None).await.unwrap(),
        250,
        "nothing written"
    );

    // The memory the pass reads first, so the agent's change lands between its read and
    // its write.
    let first_key: String = sqlx::query_scalar(
        "select key from agent_memories where agent_id = $1 order by id limit 1",
    )
    .bind(agent.as_str())
    .fetch_one(backend.pool())
    .await
    .unwrap();
    let meddling = Meddling {
        inner: embedder,
        backend: backend.clone(),
        agent: agent.clone(),
        key: first_key.clone(),
        done: AtomicBool::new(false),
    };
    let options = FillOptions {
        batch_size: 40,
        agent: Some(agent.clone()),
        ..FillOptions::default()
    };
    let first = fill_embeddings(&backend, &meddling, &options, &())
        .await
        .unwrap();
    assert_eq!(first.read, 250);
    assert_eq!(first.changed_meanwhile, 1, "{first:?}");
    assert_eq!(first.filled, 249);
    assert_eq!(first.batches, 7);
    let changed = backend
        .get_memory(&agent, &first_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed.embedding, None,
        "a memory changed meanwhile got the old text's vector"
    );

    let second = fill_embeddings(&backend, &embedder, &options, &())
        .await
        .unwrap();
    assert_eq!((second.read, second.filled), (1, 1), "{second:?}");
    let changed = backend
        .get_memory(&agent, &first_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed.embedding,
        Some(embedder.embed_one("rewritten while embedding"))
    );
    let third = fill_embeddings(&backend, &embedder, &options, &())
        .await
        .unwrap();
    assert_eq!(
        (third.read, third.filled, third.batches),
        (0, 0, 0),
        "{third:?}"
    );
    assert_eq!(missing_embeddings(&backend, Some(&agent)).await.unwrap(), 0);

    // Each memory holds the vector of its own text ("value 123" for k123).
    let query = VectorQuery::new(embedder.embed_one("value 123"), 5);
    let found = backend.search_memories(&agent, &query).await.unwrap();
    let k123 = found
        .iter()
        .find(|h| h.memory.key.as_deref() == Some("k123"));
    assert!(k123.is_some_and(|h| h.distance < 1e-6), "{found:?}");
    let other_key = if first_key == "k7" { "k8" } else { "k7" };
    let row = backend
        .get_memory(&agent, other_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.created_at, row.updated_at,
        "the fill pass made a new version"
    );
}

/// The raw `embedding` value of the first row of `table` in the corpus file `file`, and
/// the embedding PostgreSQL holds for that row.
async fn first_embedding(
    corpus: &Path,
    file: &str,
    table: &str,
    conn: &mut PgConnection,
) -> (Vec<u8>, Vec<f32>) {
    let url = format!("sqlite://{}?mode=ro", corpus.join(file).display());
    let mut legacy = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (rowid, raw): (i64, Vec<u8>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select rowid, cast(embedding as blob) from {table} order by rowid limit 1"
    )))
    .fetch_one(&mut legacy)
    .await
    .unwrap();
    let stored: pgvector::Vector = sqlx::query_scalar(
        "select embedding from agent_memories
         where metadata->>'source_table' = $1 and (metadata->>'source_rowid')::bigint = $2",
    )
    .bind(table)
    .bind(rowid)
    .fetch_one(conn)
    .await
    .unwrap();
    (raw, stored.to_vec())
}

#[tokio::test]
async fn legacy_embeddings_in_the_public_corpus_are_decoded_on_request() {
    let Some(corpus) =
        common::corpus("legacy_embeddings_in_the_public_corpus_are_decoded_on_request")
    else {
        return;
    };
    let db = TestDatabase::migrated().await;
    let mut options = BackfillOptions::new(&corpus);
    options.map = options
        .map
        .with("memories", Target::Memories)
        .with("episodes", Target::Memories);
    options.legacy_embeddings = true;
    let report = backfill::run(&db.url, &options, &()).await.unwrap();
    assert!(report.succeeded(), "{:#?}", report.totals);
    let table = |file: &str, table: &str| {
        report
            .files
            .iter()
            .filter(|f| f.source_db.ends_with(file))
            .flat_map(|f| &f.tables)
            .find(|t| t.table == table)
            .unwrap_or_else(|| panic!("{file} {table} not in the report"))
            .clone()
    };
    let memories = table("comparison_test.db", "memories");
    assert_eq!(
        (memories.embeddings_decoded, memories.embeddings_undecodable),
        (13, 0)
    );
    let episodes = table("memory_phase_agent/memory.db", "episodes");
    assert_eq!(
        (episodes.embeddings_decoded, episodes.embeddings_undecodable),
        (90, 0)
    );

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let dims: Vec<(String, i32, i64)> = sqlx::query_as(
        "select metadata->>'source_table', vector_dims(embedding), count(*)
         from agent_memories where embedding is not null group by 1, 2 order by 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    // The BLOBs are 1,536 bytes: 384 float32. The JSON arrays come from two models.
    assert_eq!(
        dims,
        [
            ("episodes".to_string(), 384, 90),
            ("memories".to_string(), 384, 7),
            ("memories".to_string(), 1024, 6)
        ]
    );

    // Value for value: the first episode's BLOB and the first memory's JSON array.
    let (blob, stored) = first_embedding(
        &corpus,
        "ElasRamanauskas__memory_phase_agent/memory.db",
        "episodes",
        &mut conn,
    )
    .await;
    let expected: Vec<f32> = blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(stored, expected);
    let (text, stored) = first_embedding(
        &corpus,
        "buzzwin__agent-memory-os/comparison_test.db",
        "memories",
        &mut conn,
    )
    .await;
    let numbers: Vec<f64> = serde_json::from_slice(&text).unwrap();
    let expected: Vec<f32> = numbers.iter().map(|x| *x as f32).collect();
    assert_eq!(stored, expected);

    // Without the option the contract's default holds: no embedding.
    let plain = TestDatabase::migrated().await;
    options.legacy_embeddings = false;
    backfill::run(&plain.url, &options, &()).await.unwrap();
    let mut conn = PgConnection::connect(&plain.url).await.unwrap();
    let with: i64 =
        sqlx::query_scalar("select count(*) from agent_memories where embedding is not null")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(with, 0);
}

/// `memctl store --embedding` then `memctl search`: nearest first, filtered, and the
/// wrong dimension refused with exit status 2.
fn memctl_search_session(env: &[(&str, &str)]) {
    for (key, vector) in [
        ("north", "[0, 1]"),
        ("east", "[1, 0]"),
        ("north-east", "[0.7, 0.7]"),
        ("south", "[0, -1]"),
    ] {
        let value = format!(r#"{{"name": "{key}"}}"#);
        let stored = memctl(
            env,
            &["--agent", "a", "store", key, &value, "--embedding", vector],
        );
        assert!(
            stored.status.success(),
            "{}",
            String::from_utf8_lossy(&stored.stderr)
        );
    }
    let found = memctl(env, &["--agent", "a", "search", "[0.1, 1]", "-k", "2"]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout(&found)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "north");
    assert_eq!(lines[1]["key"], "north-east");
    assert_eq!(lines[0]["value"], json!({"name": "north"}));
    assert!(lines[0]["distance"].as_f64().unwrap() < lines[1]["distance"].as_f64().unwrap());

    let l2 = memctl(
        env,
        &[
            "--agent", "a", "search", "[1, 0.1]", "-k", "1", "--metric", "l2", "--prefix", "north",
        ],
    );
    let hit: serde_json::Value = serde_json::from_str(stdout(&l2).trim()).unwrap();
    assert_eq!(hit["key"], "north-east", "the prefix filter was ignored");

    let wrong = memctl(env, &["--agent", "a", "search", "[1, 0, 0]"]);
    assert_eq!(wrong.status.code(), Some(2));
    let message = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        message.contains("3 dimensions") && message.contains('2'),
        "{message}"
    );
}

#[test]
fn memctl_search_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    memctl_search_session(&[("AGENTS_PATH", dir.path().to_str().unwrap())]);
}

#[tokio::test]
async fn memctl_search_and_index_on_postgres() {
    let db = TestDatabase::migrated().await;
    let env = [
        ("MEMORY_BACKEND", "postgres"),
        ("DATABASE_URL", db.url.as_str()),
    ];
    memctl_search_session(&env);
    let built = memctl(&env, &["index", "--dimensions", "2", "--metric", "l2"]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let built: serde_json::Value = serde_json::from_str(stdout(&built).trim()).unwrap();
    assert_eq!(built["name"], "agent_memories_embedding_l2_2");
    assert_eq!(built["created"], true);
    let l2 = memctl(
        &env,
        &[
            "--agent",
            "a",
            "search",
            "[0, -0.9]",
            "-k",
            "1",
            "--metric",
            "l2",
        ],
    );
    assert!(stdout(&l2).contains("\"south\""), "{}", stdout(&l2));
    let dropped = memctl(
        &env,
        &["index", "--dimensions", "2", "--metric", "l2", "--drop"],
    );
    assert_eq!(stdout(&dropped).trim(), r#"{"dropped":true}"#);
    let too_wide = memctl(&env, &["index", "--dimensions", "5000"]);
    assert_eq!(too_wide.status.code(), Some(2));
}

#[tokio::test]
async fn the_backfill_binary_fills_embeddings_and_a_second_run_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::migrated().await;
    legacy_file(&dir.path().join("binary/legacy.db"), &memory_table(300)).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::example_path("backfill"))
            .args(["--postgres-url", &db.url, "--report-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    run(&["--agents-path", dir.path().to_str().unwrap()]);
    let first = run(&["--fill-embeddings", "hash:32", "--fill-batch-size", "64"]).unwrap();
    assert_eq!(
        (first["filled"].as_u64(), first["batches"].as_u64()),
        (Some(300), Some(5))
    );
    let second = run(&["--fill-embeddings", "hash:32"]).unwrap();
    assert_eq!(
        (second["read"].as_u64(), second["filled"].as_u64()),
        (Some(0), Some(0))
    );
    let backend = db.backend().await;
    assert_eq!(missing_embeddings(&backend, None).await.unwrap(), 0);
    let bad = std::process::Command::new(common::example_path("backfill"))
        .args(["--postgres-url", &db.url, "--fill-embeddings", "openai"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hash:DIMS"));
}
