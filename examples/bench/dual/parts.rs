//! A `dualwrite` store taken apart: the two writes the dual backend makes, made by hand
//! one after the other through the sides' `Replica` calls, each timed.
//!
//! As `DualBackend` at `dualwrite`: SQLite (the authoritative side) commits the memory
//! with its journal record in one transaction, clearing the record of the previous
//! write, whose copy arrived; then PostgreSQL applies the stored version. What the dual
//! backend takes beyond this sequence is its own cost.

use std::sync::Arc;
use std::time::Instant;

use memshift::backend::DualBackend;
use memshift::backend::replica::{Change, Outcome, Replica};
use memshift::config::Stage;
use memshift::{AgentId, Memory, MemoryBackend, PostgresBackend, PostgresOptions, SqliteBackend};
use serde::{Deserialize, Serialize};

use crate::harness::{Result, Rng, Samples, Wire, memory_value, relay, settle, through_relay};

/// p50s in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Parts {
    /// Stores timed.
    pub(super) stores: usize,
    /// SQLite's commit with the journal record (and the clearing of the previous one).
    pub(super) sqlite_outbox_p50_us: f64,
    /// PostgreSQL's apply of the committed version.
    pub(super) postgres_apply_p50_us: f64,
    /// Both, one after the other.
    pub(super) both_p50_us: f64,
}

impl Parts {
    /// The median of each figure over `runs`.
    pub(super) fn median(runs: &[Parts]) -> Parts {
        let m = |f: fn(&Parts) -> f64| crate::harness::median(runs.iter().map(f).collect());
        Parts {
            stores: runs.iter().map(|p| p.stores).sum(),
            sqlite_outbox_p50_us: m(|p| p.sqlite_outbox_p50_us),
            postgres_apply_p50_us: m(|p| p.postgres_apply_p50_us),
            both_p50_us: m(|p| p.both_p50_us),
        }
    }
}

/// `stores` stores (fresh keys and overwrites alternating, values of about
/// `value_bytes`, as the latency pass) after an uncounted warm-up, on a fresh agent.
pub(super) async fn measure(
    sqlite: &SqliteBackend,
    postgres: &PostgresBackend,
    agent: &str,
    stores: usize,
    value_bytes: usize,
    seed: u64,
) -> Result<Parts> {
    let agent = AgentId::new(agent)?;
    let mut rng = Rng::new(seed);
    let mut keys: Vec<String> = Vec::new();
    let (mut outbox, mut apply, mut both) =
        (Samples::default(), Samples::default(), Samples::default());
    let mut clear: Vec<i64> = Vec::new();
    let warm = (stores / 10).clamp(5, 100);
    for i in 0..warm + stores {
        let key = if i % 2 == 0 || keys.is_empty() {
            keys.push(format!("conversation/{:06}", keys.len()));
            keys[keys.len() - 1].clone()
        } else {
            keys[rng.below(keys.len())].clone()
        };
        let memory = Memory::new(key, memory_value(value_bytes, &mut rng));
        let started = Instant::now();
        let committed = sqlite
            .commit(&agent, Change::PutMemory(&memory), true, &clear)
            .await?;
        let committed_at = Instant::now();
        let Outcome::Memory(stored) = &committed.outcome else {
            return Err("a store committed something else than a memory".into());
        };
        if postgres.apply_memory(&agent, stored).await?.is_none() {
            return Err("PostgreSQL kept out a newer version".into());
        }
        let applied_at = Instant::now();
        // The copy arrived: its record goes with the next commit.
        clear = committed.seq.into_iter().collect();
        if i >= warm {
            outbox.push(committed_at - started);
            apply.push(applied_at - committed_at);
            both.push(applied_at - started);
        }
    }
    // No record left behind.
    sqlite.clear_owed(&agent, &clear).await?;
    Ok(Parts {
        stores,
        sqlite_outbox_p50_us: outbox.summary().p50_us,
        postgres_apply_p50_us: apply.summary().p50_us,
        both_p50_us: both.summary().p50_us,
    })
}

/// Statements and round trips to PostgreSQL per store, counted through a relay (not
/// timed): a plain `postgres` store, PostgreSQL's apply in the store taken apart, and a
/// `dualwrite` store by the dual backend.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct StoreWire {
    pub(super) postgres_store: Wire,
    pub(super) postgres_apply: Wire,
    pub(super) dualwrite_store: Wire,
}

/// Counts `stores` of each kind on fresh agents through a relay to the server of `url`
/// (`None`: the URL is not one the relay can stand in for).
pub(super) async fn store_wire(
    sqlite: &Arc<SqliteBackend>,
    url: &str,
    options: PostgresOptions,
    stores: usize,
    value_bytes: usize,
) -> Result<Option<StoreWire>> {
    let Some((server, url_to)) = through_relay(url) else {
        return Ok(None);
    };
    let (port, counters) = relay(server).await?;
    let postgres = Arc::new(PostgresBackend::connect_with(&url_to(port), options).await?);
    let dual = DualBackend::new(sqlite.clone(), postgres.clone(), Stage::DualWrite);
    let mut rng = Rng::new(0x5717);
    let mut value = || memory_value(value_bytes, &mut rng);
    let (plain, by_dual) = (
        AgentId::new("bench-wire-postgres")?,
        AgentId::new("bench-wire-dual")?,
    );
    // First calls (agent rows, prepared statements), not counted.
    postgres
        .put_memory(&plain, &Memory::new("first", value()))
        .await?;
    dual.put_memory(&by_dual, &Memory::new("first", value()))
        .await?;
    settle().await;

    let before = counters.snapshot();
    for i in 0..stores {
        let memory = Memory::new(format!("k{:04}", i % 100), value());
        postgres.put_memory(&plain, &memory).await?;
    }
    let postgres_store = Wire::between(before, counters.snapshot(), stores);

    let parts = AgentId::new("bench-wire-parts")?;
    let mut apply = Wire::between(before, before, stores);
    let mut clear: Vec<i64> = Vec::new();
    for i in 0..stores + 1 {
        let memory = Memory::new(format!("k{:04}", i % 100), value());
        let committed = sqlite
            .commit(&parts, Change::PutMemory(&memory), true, &clear)
            .await?;
        let Outcome::Memory(stored) = &committed.outcome else {
            return Err("a store committed something else than a memory".into());
        };
        // The first apply makes the agent's row: not counted.
        let before = counters.snapshot();
        postgres.apply_memory(&parts, stored).await?;
        if i > 0 {
            let one = Wire::between(before, counters.snapshot(), 1);
            apply.statements_per_call += one.statements_per_call / stores as f64;
            apply.round_trips_per_call += one.round_trips_per_call / stores as f64;
            apply.bytes_to_server_per_call += one.bytes_to_server_per_call / stores as f64;
            apply.bytes_to_client_per_call += one.bytes_to_client_per_call / stores as f64;
        }
        clear = committed.seq.into_iter().collect();
    }
    sqlite.clear_owed(&parts, &clear).await?;

    settle().await;
    let before = counters.snapshot();
    for i in 0..stores {
        let memory = Memory::new(format!("k{:04}", i % 100), value());
        dual.put_memory(&by_dual, &memory).await?;
    }
    let dualwrite_store = Wire::between(before, counters.snapshot(), stores);
    dual.flush().await?;
    postgres.close().await;
    Ok(Some(StoreWire {
        postgres_store,
        postgres_apply: apply,
        dualwrite_store,
    }))
}
