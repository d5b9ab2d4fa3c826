//! The floor: the library against the same statements through sqlx, one task.

use memshift::{AgentId, Memory, MemoryBackend};
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::{Args, Kind};
use crate::harness::{Latency, Result, Rng, Samples, Table, ms, timed};

/// Library and sqlx latencies of a single store and a single retrieve on one backend.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Floor {
    pub(super) backend: Kind,
    pub(super) library_store: Latency,
    pub(super) sqlx_store: Latency,
    pub(super) library_retrieve: Latency,
    pub(super) sqlx_retrieve: Latency,
}

impl Floor {
    pub(super) fn store_ratio(&self) -> f64 {
        self.library_store.p50_us / self.sqlx_store.p50_us
    }

    pub(super) fn retrieve_ratio(&self) -> f64 {
        self.library_retrieve.p50_us / self.sqlx_retrieve.p50_us
    }
}

/// Blocks the floor's calls are cut into; the library and sqlx take turns going first.
pub(super) const FLOOR_BLOCKS: usize = 10;
/// Approximate size of the floor's values.
pub(super) const FLOOR_BYTES: usize = 2000;

pub(super) async fn floor(
    backend: &dyn MemoryBackend,
    raw: &Raw,
    kind: Kind,
    agent: &AgentId,
    args: &Args,
) -> Result<Floor> {
    let mut rng = Rng::new(7);
    let per_block = (args.floor_calls / FLOOR_BLOCKS).max(1);
    let (mut lib_store, mut raw_store) = (Samples::default(), Samples::default());
    let (mut lib_get, mut raw_get) = (Samples::default(), Samples::default());
    let mut keys: Vec<String> = Vec::new();
    // Warm-up, not counted: statements prepared on every pooled connection, pages cached.
    for i in 0..per_block.min(50) {
        let memory = Memory::new(
            format!("warm/{i}"),
            args.values.value(FLOOR_BYTES, &mut rng),
        );
        backend.put_memory(agent, &memory).await?;
        let raw_memory = Memory::new(
            format!("warm/raw/{i}"),
            args.values.value(FLOOR_BYTES, &mut rng),
        );
        raw.store(agent, &raw_memory).await?;
        backend.get_memory(agent, &format!("warm/{i}")).await?;
        raw.retrieve(agent, &format!("warm/raw/{i}")).await?;
    }
    for block in 0..FLOOR_BLOCKS {
        for turn in 0..2 {
            let library = (block + turn) % 2 == 0;
            for _ in 0..per_block {
                let key = format!("floor/{:06}", keys.len());
                let memory = Memory::new(key.clone(), args.values.value(FLOOR_BYTES, &mut rng));
                if library {
                    let (stored, took) = timed(backend.put_memory(agent, &memory)).await;
                    stored?;
                    lib_store.push(took);
                } else {
                    raw_store.push(raw.store(agent, &memory).await?);
                }
                keys.push(key);
            }
        }
        for turn in 0..2 {
            let library = (block + turn) % 2 == 0;
            for _ in 0..per_block {
                let key = &keys[rng.below(keys.len())];
                if library {
                    let (found, took) = timed(backend.get_memory(agent, key)).await;
                    found?.ok_or_else(|| format!("library lost {key:?}"))?;
                    lib_get.push(took);
                } else {
                    raw_get.push(raw.retrieve(agent, key).await?);
                }
            }
        }
    }
    Ok(Floor {
        backend: kind,
        library_store: lib_store.summary(),
        sqlx_store: raw_store.summary(),
        library_retrieve: lib_get.summary(),
        sqlx_retrieve: raw_get.summary(),
    })
}

/// Each backend's store and retrieve, the library against sqlx, in ms.
pub(super) fn floor_table(floors: &[Floor]) -> Table {
    let rows = floors
        .iter()
        .flat_map(|f| {
            [
                ("store", &f.library_store, &f.sqlx_store, f.store_ratio()),
                (
                    "retrieve",
                    &f.library_retrieve,
                    &f.sqlx_retrieve,
                    f.retrieve_ratio(),
                ),
            ]
            .map(|(call, library, sqlx, ratio)| {
                vec![
                    format!("{} {call}", f.backend.name()),
                    ms(library.p50_us),
                    ms(sqlx.p50_us),
                    format!("{ratio:.2}"),
                    ms(library.p99_us),
                    ms(sqlx.p99_us),
                ]
            })
        })
        .collect();
    Table::new(
        &[
            "call",
            "library p50",
            "sqlx p50",
            "ratio",
            "library p99",
            "sqlx p99",
        ],
        rows,
    )
}
