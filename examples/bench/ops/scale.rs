//! Retrieve latency of one agent at a small and at a large number of keys.

use std::time::Instant;

use memshift::{AgentId, Memory, MemoryBackend};
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::{Args, Kind};
use crate::harness::{Latency, Result, Rng, Samples, Table, memory_value, ms, timed};

/// Retrieve latency of one agent at two sizes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Scale {
    pub(super) backend: Kind,
    /// How the reads were made, when not with the backend's defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) variant: Option<String>,
    pub(super) small_keys: usize,
    /// Retrieves of random keys of all `small_keys`.
    pub(super) small: Latency,
    pub(super) large_keys: usize,
    /// Retrieves of random keys of all `large_keys`.
    pub(super) large: Latency,
    /// Retrieves at `large_keys`, of [`HOT_KEYS`] keys spread over them: a B-tree as
    /// deep as in `large`, with pages that stay in SQLite's page cache.
    pub(super) large_hot: Latency,
    /// Seconds the bulk load to the large size took.
    pub(super) load_seconds: f64,
}

impl Scale {
    /// The backend's name, with the variant.
    pub(super) fn label(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}, {variant}", self.backend.name()),
            None => self.backend.name().to_string(),
        }
    }

    pub(super) fn ratio(&self) -> f64 {
        self.large.p50_us / self.small.p50_us
    }
}

/// Adds keys `scale/<from>` up to `scale/<to - 1>` to the agent in one statement, copies
/// of its key `seed` (so every column is in the backend's own format).
async fn bulk_keys(raw: &Raw, agent: &AgentId, from: usize, to: usize) -> Result<()> {
    let (from, to) = (i64::try_from(from)?, i64::try_from(to)? - 1);
    match raw {
        Raw::Sqlite(pool) => {
            sqlx::query(
                "insert into agent_memories
                     (id, key, content, metadata, embedding, created_at, updated_at)
                 with recursive g(i) as (select ?1 union all select i + 1 from g where i < ?2)
                 select printf('00000000-0000-4000-8000-%012d', g.i), printf('scale/%08d', g.i),
                        m.content, m.metadata, null, m.created_at, m.updated_at
                 from g, agent_memories m where m.key = 'seed'",
            )
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?;
        }
        Raw::Postgres(pool) => {
            sqlx::query(
                "insert into agent_memories
                     (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
                 select gen_random_uuid(), m.agent_id, 'scale/' || lpad(g::text, 8, '0'),
                        m.content, m.metadata, null, m.created_at, m.updated_at
                 from generate_series($2::bigint, $3::bigint) g, agent_memories m
                 where m.agent_id = $1 and m.key = 'seed'",
            )
            .bind(agent.as_str())
            .bind(from)
            .bind(to)
            .execute(pool)
            .await?;
            sqlx::query("analyze agent_memories").execute(pool).await?;
        }
    }
    Ok(())
}

/// Times `reads` retrieves of random keys among `sample` keys spread evenly over the
/// agent's first `keys`, after as many uncounted ones.
async fn scale_reads(
    backend: &dyn MemoryBackend,
    agent: &AgentId,
    keys: usize,
    sample: usize,
    reads: usize,
) -> Result<Latency> {
    let mut rng = Rng::new(keys as u64);
    let mut samples = Samples::default();
    let stride = (keys / sample.max(1)).max(1);
    for i in 0..reads * 2 {
        let key = format!("scale/{:08}", rng.below(keys.min(sample)) * stride);
        let (found, took) = timed(backend.get_memory(agent, &key)).await;
        found?.ok_or_else(|| format!("{key:?} missing"))?;
        if i >= reads {
            samples.push(took);
        }
    }
    Ok(samples.summary())
}

/// Retrieve latency of one agent at `--scale-small` and at `--scale-keys` keys, read
/// through `backend` and through each of `variants` (other backends over the same
/// data); the first result is `backend`'s.
pub(super) async fn scale(
    backend: &dyn MemoryBackend,
    variants: &[(&'static str, &dyn MemoryBackend)],
    raw: &Raw,
    kind: Kind,
    agent: &AgentId,
    args: &Args,
) -> Result<Vec<Scale>> {
    backend
        .put_memory(
            agent,
            &Memory::new("seed", memory_value(200, &mut Rng::new(1))),
        )
        .await?;
    let readers: Vec<(Option<&'static str>, &dyn MemoryBackend)> = std::iter::once((None, backend))
        .chain(variants.iter().map(|(name, b)| (Some(*name), *b)))
        .collect();
    bulk_keys(raw, agent, 0, args.scale_small).await?;
    let mut small = Vec::new();
    for (_, reader) in &readers {
        small.push(
            scale_reads(
                *reader,
                agent,
                args.scale_small,
                args.scale_small,
                args.scale_reads,
            )
            .await?,
        );
    }
    let started = Instant::now();
    bulk_keys(raw, agent, args.scale_small, args.scale_keys).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {:<8} scale: {} keys loaded in {load_seconds:.1} s",
        kind.name(),
        args.scale_keys
    );
    let mut scales = Vec::new();
    for ((variant, reader), small) in readers.into_iter().zip(small) {
        scales.push(Scale {
            backend: kind,
            variant: variant.map(str::to_string),
            small_keys: args.scale_small,
            small,
            large_keys: args.scale_keys,
            large: scale_reads(
                reader,
                agent,
                args.scale_keys,
                args.scale_keys,
                args.scale_reads,
            )
            .await?,
            large_hot: scale_reads(reader, agent, args.scale_keys, HOT_KEYS, args.scale_reads)
                .await?,
            load_seconds,
        });
    }
    Ok(scales)
}

/// Keys the last scale measurement reads over and over: their pages (about 4 per
/// key) fit in SQLite's default 2 MB page cache.
pub(super) const HOT_KEYS: usize = 100;

/// Retrieve latency at `small` and at `large` keys per backend and variant, in ms.
pub(super) fn scale_table(scales: &[Scale], small: usize, large: usize) -> Table {
    let rows = scales
        .iter()
        .map(|s| {
            vec![
                s.label(),
                ms(s.small.p50_us),
                ms(s.small.p99_us),
                ms(s.large.p50_us),
                ms(s.large.p99_us),
                format!("{:.2}", s.ratio()),
                ms(s.large_hot.p50_us),
                format!("{:.1}", s.load_seconds),
            ]
        })
        .collect();
    Table::new(
        &[
            "backend",
            &format!("p50 @{small}"),
            &format!("p99 @{small}"),
            &format!("p50 @{large}"),
            &format!("p99 @{large}"),
            "p50 ratio",
            &format!("p50 @{large}, {HOT_KEYS} keys read"),
            "load s",
        ],
        rows,
    )
}
