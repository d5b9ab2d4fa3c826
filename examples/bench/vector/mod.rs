//! Suite `vector`: vector search over one agent's memories, in one run.
//!
//! 1. Generates `--memories` embeddings of `--dims` dimensions: points in a
//!    `--latent`-dimensional space through a fixed random projection, plus 1% noise, and
//!    normalised (real embeddings have few degrees of freedom; uniform random vectors in
//!    hundreds of dimensions are all about equally far apart, which no model produces).
//! 2. Loads them as one agent's memories into PostgreSQL (batched array inserts) and
//!    into the agent's SQLite file (one transaction), in the library's own layout; a
//!    sample is read back through both backends.
//! 3. Builds the HNSW index (`create_vector_index`, cosine) and times it.
//! 4. Computes the true 10 nearest of `--queries` fresh query vectors by brute force in
//!    this process (the library's own distance, which equals pgvector's).
//! 5. Times `--queries` searches through the index (one client, after a warm-up), and
//!    `--exact-queries` exact searches on PostgreSQL and on SQLite; reports queries/s
//!    and p50/p99 latency, and recall@k of every kind of search against the truth.
//! 6. Times the same exact queries through SQLite's baselines (see `baselines`):
//!    sqlite-vec's brute force and the in-memory floor, with SQLite exact search's
//!    ratios to each.

mod baselines;
mod saved;

pub use saved::summary;

use std::time::Instant;

use memshift::vector::{self, DistanceMetric, Neighbor, VectorIndex, VectorQuery};
use memshift::{
    AgentId, Memory, MemoryBackend, PostgresBackend, PostgresOptions, SqliteBackend, SqliteOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::harness::{Env, Latency, Result, Rng, Samples, ms, table};

/// Options of the `vector` suite.
/// (Read back from saved results too: an option added later needs `#[serde(default)]`,
/// since earlier files lack it.)
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Args {
    /// Memories of the one agent searched.
    #[arg(long, default_value_t = 100_000)]
    pub memories: usize,
    /// Dimensions of each embedding.
    #[arg(long, default_value_t = 384)]
    pub dims: usize,
    /// Degrees of freedom of the generated embeddings.
    #[arg(long, default_value_t = 24)]
    pub latent: usize,
    /// Index searches timed (and the queries whose recall is measured).
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Exact searches timed on each backend.
    #[arg(long, default_value_t = 30)]
    pub exact_queries: usize,
    /// Neighbours asked for.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Further hnsw.ef_search values to measure beside the default for k.
    #[arg(long, value_delimiter = ',', default_value = "100,200")]
    pub ef_search: Vec<u32>,
    /// maintenance_work_mem for the index build.
    #[arg(long, default_value = "1GB")]
    pub maintenance_work_mem: String,
}

/// Embeddings with `latent` degrees of freedom in `dims` dimensions, unit length.
struct Model {
    projection: Vec<Vec<f32>>,
    rng: Rng,
}

impl Model {
    fn new(latent: usize, dims: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let projection = (0..latent)
            .map(|_| (0..dims).map(|_| uniform(&mut rng)).collect())
            .collect();
        Model {
            projection,
            rng: Rng::new(seed ^ 0x5eed),
        }
    }

    fn embedding(&mut self) -> Vec<f32> {
        let dims = self.projection[0].len();
        let z: Vec<f32> = (0..self.projection.len())
            .map(|_| uniform(&mut self.rng))
            .collect();
        let mut v: Vec<f32> = (0..dims)
            .map(|d| z.iter().zip(&self.projection).map(|(z, p)| z * p[d]).sum())
            .collect();
        let scale = v.iter().map(|x| x * x).sum::<f32>().sqrt() / dims as f32;
        for x in &mut v {
            *x += 0.01 * scale * dims as f32 * uniform(&mut self.rng) / (dims as f32).sqrt();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

/// A number in [-1, 1).
fn uniform(rng: &mut Rng) -> f32 {
    (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn key(i: usize) -> String {
    format!("doc/{i:07}")
}

/// Loads the embeddings as `agent`'s memories into PostgreSQL, 2,000 per statement.
async fn load_postgres(
    backend: &PostgresBackend,
    agent: &AgentId,
    vectors: &[Vec<f32>],
) -> Result<()> {
    backend
        .put_memory(agent, &Memory::new("first", json!("creates the agent")))
        .await?;
    backend.delete_memory(agent, "first").await?;
    for (chunk_no, chunk) in vectors.chunks(2000).enumerate() {
        let start = chunk_no * 2000;
        let keys: Vec<String> = (start..start + chunk.len()).map(key).collect();
        let contents: Vec<String> = (start..start + chunk.len())
            .map(|i| json!({ "text": format!("document {i}") }).to_string())
            .collect();
        let embeddings: Vec<pgvector::Vector> =
            chunk.iter().cloned().map(pgvector::Vector::from).collect();
        sqlx::query(
            "insert into agent_memories (id, agent_id, key, content, metadata, embedding)
             select gen_random_uuid(), $1, k, c, '{}', e
             from unnest($2::text[], $3::text[], $4::vector[]) as t(k, c, e)",
        )
        .bind(agent.as_str())
        .bind(&keys)
        .bind(&contents)
        .bind(&embeddings)
        .execute(backend.pool())
        .await?;
    }
    sqlx::query("vacuum analyze agent_memories")
        .execute(backend.pool())
        .await?;
    Ok(())
}

/// Loads the embeddings into the agent's SQLite file in the backend's layout, in one
/// transaction.
async fn load_sqlite(backend: &SqliteBackend, agent: &AgentId, vectors: &[Vec<f32>]) -> Result<()> {
    backend
        .put_memory(agent, &Memory::new("first", json!("creates the file")))
        .await?;
    backend.delete_memory(agent, "first").await?;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(backend.file_of(agent));
    let mut conn = sqlx::ConnectOptions::connect(&options).await?;
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    let at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    for (i, v) in vectors.iter().enumerate() {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        sqlx::query(
            "insert into agent_memories (id, key, content, metadata, embedding, created_at, updated_at)
             values (?, ?, ?, '{}', ?, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(key(i))
        .bind(json!({ "text": format!("document {i}") }).to_string())
        .bind(bytes)
        .bind(&at)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The true `k` nearest keys of `query` among `vectors`, by brute force.
fn truth(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<String> {
    let mut all: Vec<(f64, usize)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (vector::distance(DistanceMetric::Cosine, query, v), i))
        .collect();
    let k = k.min(all.len());
    all.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
    });
    let mut top: Vec<(f64, usize)> = all[..k].to_vec();
    top.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    top.into_iter().map(|(_, i)| key(i)).collect()
}

/// Share of `truth` found.
fn recall(found: &[Neighbor], truth: &[String]) -> f64 {
    let keys: Vec<String> = found.iter().filter_map(|h| h.memory.key.clone()).collect();
    recall_keys(&keys, truth)
}

/// Share of `truth` among the keys `found`.
fn recall_keys(found: &[String], truth: &[String]) -> f64 {
    let hits = found.iter().filter(|k| truth.contains(k)).count();
    hits as f64 / truth.len().max(1) as f64
}

/// One kind of search, measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Measured {
    name: String,
    ef_search: Option<u32>,
    queries: usize,
    latency: Latency,
    queries_per_s: f64,
    recall_at_k: f64,
}

/// Times `queries` through `backend`, checking each against its truth.
async fn measure(
    name: &str,
    backend: &dyn MemoryBackend,
    agent: &AgentId,
    queries: &[(VectorQuery, Vec<String>)],
) -> Result<Measured> {
    let mut samples = Samples::default();
    let mut recall_sum = 0.0;
    let started = Instant::now();
    for (query, truth) in queries {
        let t = Instant::now();
        let found = backend.search_memories(agent, query).await?;
        samples.push(t.elapsed());
        if found.len() != query.k {
            return Err(format!("{name}: {} answers for k = {}", found.len(), query.k).into());
        }
        recall_sum += recall(&found, truth);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured {
        name: name.to_string(),
        ef_search: queries
            .first()
            .and_then(|(q, _)| (!q.exact).then(|| q.effective_ef_search())),
        queries: queries.len(),
        latency: samples.summary(),
        queries_per_s: queries.len() as f64 / seconds,
        recall_at_k: recall_sum / queries.len().max(1) as f64,
    })
}

/// Runs the suite.
pub async fn run(env: &Env, args: &Args) -> Result<Value> {
    if args.memories == 0 || args.dims == 0 || args.queries == 0 || args.k == 0 || args.latent == 0
    {
        return Err("--memories, --dims, --latent, --queries and --k must be at least 1".into());
    }
    println!(
        "plan:       {} memories x {} dims (latent {}), cosine, k = {}; {} index searches, \
         {} exact searches per backend, one client",
        args.memories, args.dims, args.latent, args.k, args.queries, args.exact_queries
    );
    let agent = AgentId::new("vector_bench")?;
    let mut model = Model::new(args.latent, args.dims, 42);
    let vectors: Vec<Vec<f32>> = (0..args.memories).map(|_| model.embedding()).collect();
    let query_vectors: Vec<Vec<f32>> = (0..args.queries).map(|_| model.embedding()).collect();

    let postgres = PostgresBackend::connect_with(
        &env.url,
        PostgresOptions {
            max_connections: 4,
            ..PostgresOptions::default()
        },
    )
    .await?;
    let sqlite = SqliteBackend::new(env.agents_path());
    let t = Instant::now();
    load_postgres(&postgres, &agent, &vectors).await?;
    let load_postgres_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    load_sqlite(&sqlite, &agent, &vectors).await?;
    let load_sqlite_s = t.elapsed().as_secs_f64();
    eprintln!("  loaded: PostgreSQL {load_postgres_s:.1} s, SQLite {load_sqlite_s:.1} s");
    for backend in [&postgres as &dyn MemoryBackend, &sqlite] {
        let sample = backend.get_memory(&agent, &key(args.memories / 2)).await?;
        if sample.and_then(|m| m.embedding) != Some(vectors[args.memories / 2].clone()) {
            return Err(format!(
                "{} does not read back the loaded embeddings",
                backend.name()
            )
            .into());
        }
    }

    let t = Instant::now();
    let truths: Vec<Vec<String>> = query_vectors
        .iter()
        .map(|q| truth(&vectors, q, args.k))
        .collect();
    eprintln!("  truth by brute force: {:.1} s", t.elapsed().as_secs_f64());

    let mut index = VectorIndex::new(args.dims, DistanceMetric::Cosine);
    index.maintenance_work_mem = Some(args.maintenance_work_mem.clone());
    let built = postgres.create_vector_index(&index).await?;
    eprintln!("  index {} built in {:.1} s", built.name, built.seconds);

    let approximate = |ef: Option<u32>| -> Vec<(VectorQuery, Vec<String>)> {
        query_vectors
            .iter()
            .zip(&truths)
            .map(|(q, t)| {
                let mut query = VectorQuery::new(q.clone(), args.k);
                query.ef_search = ef;
                (query, t.clone())
            })
            .collect()
    };
    let exact: Vec<(VectorQuery, Vec<String>)> = approximate(None)
        .into_iter()
        .take(args.exact_queries)
        .map(|(q, t)| (q.exact(), t))
        .collect();

    // Warm-up: pages of the index and the table into memory.
    for (query, _) in approximate(None).iter().take(50) {
        postgres.search_memories(&agent, query).await?;
    }
    let mut results = vec![measure("postgres hnsw", &postgres, &agent, &approximate(None)).await?];
    for ef in &args.ef_search {
        results.push(measure("postgres hnsw", &postgres, &agent, &approximate(Some(*ef))).await?);
    }
    if !exact.is_empty() {
        postgres.search_memories(&agent, &exact[0].0).await?;
        results.push(measure("postgres exact", &postgres, &agent, &exact).await?);
        sqlite.search_memories(&agent, &exact[0].0).await?;
        results.push(measure("sqlite exact", &sqlite, &agent, &exact).await?);
        // The same file read through a memory map (SqliteOptions::mmap_size).
        let mapped = SqliteBackend::with_options(
            env.agents_path(),
            SqliteOptions {
                mmap_size: 1 << 30,
                ..SqliteOptions::default()
            },
        );
        mapped.search_memories(&agent, &exact[0].0).await?;
        results.push(measure("sqlite exact, mmap", &mapped, &agent, &exact).await?);
    }
    // The baselines of SQLite exact search, on the same queries.
    let mut sqlite_vec_load_s = None;
    if !exact.is_empty() {
        let n = exact.len();
        let (queries, truths) = (&query_vectors[..n], &truths[..n]);
        let (measured, load_s) =
            baselines::sqlite_vec(env.agents_path(), &vectors, queries, truths, args.k).await?;
        eprintln!("  sqlite-vec loaded in {load_s:.1} s");
        sqlite_vec_load_s = Some(load_s);
        results.push(measured);
        results.push(baselines::in_memory_floor(
            &vectors, queries, truths, args.k,
        ));
    }

    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.ef_search.map_or("-".into(), |e| e.to_string()),
                m.queries.to_string(),
                format!("{:.4}", m.recall_at_k),
                format!("{:.1}", m.queries_per_s),
                ms(m.latency.p50_us),
                ms(m.latency.p99_us),
            ]
        })
        .collect();
    println!(
        "\n{}",
        table(
            &[
                "search",
                "ef_search",
                "queries",
                "recall@k",
                "queries/s",
                "p50 ms",
                "p99 ms"
            ],
            &rows
        )
    );
    let default = &results[0];
    let verdict = if default.recall_at_k >= 0.95 {
        "PASS"
    } else {
        "MISS"
    };
    println!(
        "\nindex build: {:.1} s for {} embeddings (maintenance_work_mem {})",
        built.seconds, args.memories, args.maintenance_work_mem
    );
    println!(
        "recall@{} through HNSW with the default ef_search ({}): {:.4} (target 0.95: {verdict})",
        args.k,
        default.ef_search.unwrap_or_default(),
        default.recall_at_k
    );
    if let (Some(pg), Some(lite)) = (
        results.iter().find(|m| m.name == "postgres exact"),
        results.iter().find(|m| m.name == "sqlite exact"),
    ) {
        println!(
            "HNSW p50 is {:.0}x faster than PostgreSQL exact and {:.0}x faster than SQLite exact; \
             SQLite exact p50 is {:.2}x PostgreSQL exact",
            pg.latency.p50_us / default.latency.p50_us,
            lite.latency.p50_us / default.latency.p50_us,
            lite.latency.p50_us / pg.latency.p50_us
        );
    }
    let p50 = |name: &str| {
        results
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.latency.p50_us)
    };
    let search_targets = match (
        p50("sqlite exact"),
        p50("sqlite-vec brute force"),
        p50("in-memory floor"),
    ) {
        (Some(lite), Some(vec0), Some(floor)) => {
            let (over_floor, ahead_of_vec0) = (lite / floor, vec0 / lite);
            let verdict = |pass: bool| if pass { "PASS" } else { "MISS" };
            println!(
                "SQLite exact p50 is {over_floor:.1}x the in-memory floor (target at most 2: {}) \
                 and {ahead_of_vec0:.2}x as fast as sqlite-vec's brute force (target at least 3: {})",
                verdict(over_floor <= 2.0),
                verdict(ahead_of_vec0 >= 3.0)
            );
            json!({ "sqlite_exact_over_floor": over_floor, "sqlite_vec_over_sqlite_exact": ahead_of_vec0 })
        }
        _ => Value::Null,
    };
    let results = json!({
        "args": args,
        "search_ratios": search_targets,
        "load_seconds": { "postgres": load_postgres_s, "sqlite": load_sqlite_s, "sqlite_vec": sqlite_vec_load_s },
        "index": built,
        "searches": results,
        "target": { "recall_at_k": 0.95, "measured": default.recall_at_k, "pass": default.recall_at_k >= 0.95 },
    });
    Ok(results)
}
