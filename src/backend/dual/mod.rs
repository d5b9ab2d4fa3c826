//! The dual backend: SQLite and PostgreSQL side by side, stepping through the migration
//! [`Stage`]s with dual writes, read fallback, lazy migration and repair of missed writes.

mod compare;
mod health;
mod stats;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;

pub use compare::{same_json, same_memory, same_tool};
pub use health::DualOptions;
pub use stats::{DualStats, Latency, SideStats};

use self::health::{Health, unreachable};
use self::stats::{Counters, bump};
use super::MemoryBackend;
use crate::config::Stage;
use crate::error::Result;
use crate::record::{AgentId, Execution, Memory, Metric, OwedWrite, Tool, now};
use crate::vector::{Neighbor, VectorQuery};

/// One of the dual backend's two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The embedded SQLite files.
    Sqlite,
    /// The shared PostgreSQL database.
    Postgres,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Sqlite => 0,
            Side::Postgres => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Sqlite => Side::Postgres,
            Side::Postgres => Side::Sqlite,
        }
    }
}

impl Stage {
    /// The side whose success decides a write's outcome and whose data is the truth.
    pub fn authoritative(self) -> Side {
        match self {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => Side::Sqlite,
            Stage::Live | Stage::RampDown | Stage::Postgres => Side::Postgres,
        }
    }

    /// Whether writes go to both sides.
    pub fn writes_both(self) -> bool {
        !matches!(self, Stage::Sqlite | Stage::Postgres)
    }
}

/// What one run of [`DualBackend::repair`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Owed writes replayed into PostgreSQL.
    pub to_postgres: u64,
    /// Owed writes replayed into SQLite.
    pub to_sqlite: u64,
}

/// How far the two sides agree for one agent (see [`DualBackend::compare`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Keys both sides hold with the same data.
    pub same: u64,
    /// Keys only SQLite holds.
    pub only_sqlite: Vec<String>,
    /// Keys only PostgreSQL holds.
    pub only_postgres: Vec<String>,
    /// Keys both hold with different data.
    pub different: Vec<String>,
}

impl Comparison {
    /// True when both sides hold exactly the same memories.
    pub fn agrees(&self) -> bool {
        self.only_sqlite.is_empty() && self.only_postgres.is_empty() && self.different.is_empty()
    }
}

/// SQLite and PostgreSQL behind one [`MemoryBackend`], at a [`Stage`] of the migration.
///
/// - **Writes** go to the authoritative side first; its failure is the caller's error
///   and nothing is written to the other side. Then, in the stages that write both, to
///   the other side; if that fails, the write is journaled on the authoritative side as
///   owed and replayed by [`repair`](Self::repair) (also started automatically on later
///   use). In `sqlite` and `postgres` stages every write is journaled as owed to the
///   side not written, so stepping back loses nothing. Both sides apply writes only over
///   older versions (by `updated_at`), so they end in the same state whatever order
///   writes and replays arrive in.
/// - **Reads** follow the stage. In `live`, a miss in PostgreSQL is answered from SQLite
///   and the row copied into PostgreSQL with its id and times (inserted only where no
///   newer value or delete is there); if PostgreSQL cannot be reached, SQLite answers.
/// - **Deletes** leave tombstones on both sides, so neither a fallback read, a lazy copy
///   nor a replay brings a deleted key back.
/// - **Shadow compares** (in `shadow`, and in the background in `live`) use
///   [`same_memory`], and count and log mismatches by key, never by value at info level.
#[derive(Clone)]
pub struct DualBackend {
    inner: Arc<Inner>,
}

struct Inner {
    sides: [Arc<dyn MemoryBackend>; 2],
    /// `live` reads PostgreSQL answered, for sampling the background compares.
    live_hits: std::sync::atomic::AtomicU64,
    health: [Health; 2],
    options: DualOptions,
    stage: AtomicU8,
    counters: Counters,
    /// Agents that may have owed writes; repaired on their next successful dual write.
    owing: Mutex<HashSet<AgentId>>,
    /// Agents being repaired now, so only one repair per agent runs.
    repairing: Mutex<HashSet<AgentId>>,
    /// Agents whose journals were checked at first use in this process.
    checked: Mutex<HashSet<AgentId>>,
}

impl std::fmt::Debug for DualBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualBackend")
            .field("stage", &self.stage())
            .field("sqlite", &self.inner.sides[0])
            .field("postgres", &self.inner.sides[1])
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // These sets only steer repairs; a poisoned one still holds valid names.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DualBackend {
    /// Both sides, at `stage`.
    pub fn new(
        sqlite: Arc<dyn MemoryBackend>,
        postgres: Arc<dyn MemoryBackend>,
        stage: Stage,
    ) -> Self {
        Self::with_options(sqlite, postgres, stage, DualOptions::default())
    }

    /// Like [`new`](Self::new), with explicit settings.
    pub fn with_options(
        sqlite: Arc<dyn MemoryBackend>,
        postgres: Arc<dyn MemoryBackend>,
        stage: Stage,
        options: DualOptions,
    ) -> Self {
        DualBackend {
            inner: Arc::new(Inner {
                sides: [sqlite, postgres],
                live_hits: std::sync::atomic::AtomicU64::new(0),
                health: [Health::default(), Health::default()],
                options,
                stage: AtomicU8::new(stage as u8),
                counters: Counters::new(),
                owing: Mutex::new(HashSet::new()),
                repairing: Mutex::new(HashSet::new()),
                checked: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The stage now.
    pub fn stage(&self) -> Stage {
        Stage::ALL[usize::from(self.inner.stage.load(Ordering::SeqCst))]
    }

    /// Moves to `stage`, forward or back. Calls already running finish under the stage
    /// they started in. Run [`repair_all`](Self::repair_all) before a step that changes
    /// the authoritative side, so its data is complete.
    pub fn set_stage(&self, stage: Stage) {
        self.inner.stage.store(stage as u8, Ordering::SeqCst);
        tracing::info!(%stage, "dual backend stage changed");
    }

    fn side(&self, side: Side) -> &dyn MemoryBackend {
        &*self.inner.sides[side.index()]
    }

    /// Counters since this backend was built (without the journals' size; see
    /// [`owed_pending`](Self::owed_pending)).
    pub fn stats(&self) -> DualStats {
        self.inner.counters.snapshot(self.stage())
    }

    /// Counters with the number of owed writes waiting in both journals.
    ///
    /// # Errors
    /// When a journal cannot be read.
    pub async fn stats_with_pending(&self) -> Result<DualStats> {
        let mut stats = self.stats();
        stats.owed_pending = Some(self.owed_pending().await?);
        Ok(stats)
    }

    /// Owed writes waiting in both journals, for every agent.
    ///
    /// # Errors
    /// When a journal cannot be read.
    pub async fn owed_pending(&self) -> Result<u64> {
        Ok(self.owed_journaled_on(Side::Sqlite).await?
            + self.owed_journaled_on(Side::Postgres).await?)
    }

    /// Owed writes waiting in the journal kept on `side` (writes the other side missed),
    /// for every agent.
    ///
    /// # Errors
    /// When the journal cannot be read (for example, `side` is unreachable).
    pub async fn owed_journaled_on(&self, side: Side) -> Result<u64> {
        self.refresh_health().await;
        let agents = self
            .timed(side, false, self.side(side).owed_agents())
            .await?;
        Ok(agents.iter().map(|(_, n)| n).sum())
    }

    /// Times `call` on `side`, counting its errors.
    async fn timed<T>(
        &self,
        side: Side,
        write: bool,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let counters = &self.inner.counters.sides[side.index()];
        if let Some(refused) = self.inner.health[side.index()].refuse(side) {
            bump(&counters.errors);
            return Err(refused);
        }
        let started = Instant::now();
        // Only the server's calls are cut short: a SQLite statement keeps running on its
        // worker thread when its future is dropped, so cutting it would report a failure
        // for a write that then lands. SQLite's own busy timeout bounds it instead.
        let result = match side {
            Side::Postgres => {
                match tokio::time::timeout(self.inner.options.side_timeout, call).await {
                    Ok(result) => result,
                    Err(_) => Err(unreachable(side, "no answer within the side timeout")),
                }
            }
            Side::Sqlite => call.await,
        };
        // Only the server is skipped when down; the embedded side is always tried.
        if side == Side::Postgres && matches!(&result, Err(err) if err.is_connection()) {
            self.side_down(side);
        }
        let histogram = if write {
            &counters.write_latency
        } else {
            &counters.read_latency
        };
        histogram.record(started.elapsed());
        match &result {
            Ok(_) if !write => bump(&counters.reads),
            Ok(_) => {}
            Err(_) => bump(&counters.errors),
        }
        result
    }

    /// Starts with `side` marked unreachable (it failed to connect at start).
    pub(crate) fn start_without(&self, side: Side) {
        self.side_down(side);
    }

    /// Marks `side` unreachable and, if it was up, pings it in the background until it
    /// answers; then repairs the agents that owe it writes.
    fn side_down(&self, side: Side) {
        if !self.inner.health[side.index()].mark_down() {
            return;
        }
        tracing::warn!(
            ?side,
            "side unreachable; skipping it and journaling its writes until it answers"
        );
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.inner.options.retry_after).await;
                let ping = this.side(side).ping();
                if matches!(
                    tokio::time::timeout(this.inner.options.side_timeout, ping).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            this.inner.health[side.index()].mark_up();
            tracing::info!(?side, "side reachable again; repairing owed writes");
            let owing: Vec<AgentId> = lock(&this.inner.owing).iter().cloned().collect();
            for agent in owing {
                this.repair_in_background(&agent);
            }
        });
    }

    /// Performs `write` on one side; returns whether it changed anything there.
    ///
    /// A [`OwedWrite::RestoreMemory`] is the exception: `side` is the truth, read to undo
    /// a version left on the other side (the side whose journal held the entry).
    async fn apply(&self, side: Side, agent: &AgentId, write: &OwedWrite) -> Result<bool> {
        let backend = self.side(side);
        let call = async {
            match write {
                OwedWrite::PutMemory { memory } => {
                    Ok(backend.apply_memory(agent, memory).await?.is_some())
                }
                OwedWrite::RestoreMemory { key, version } => {
                    let truth = backend.get_memory(agent, key).await?;
                    let other = self.side(side.other());
                    other
                        .restore_memory(agent, key, *version, truth.as_ref())
                        .await
                }
                OwedWrite::DeleteMemory { key, at } => {
                    backend.apply_memory_delete(agent, key, *at).await
                }
                OwedWrite::PutTool { tool } => backend.apply_tool(agent, tool).await,
                OwedWrite::Metric { metric } => {
                    backend.record_metric(agent, metric).await.map(|()| true)
                }
                OwedWrite::Execution { execution } => {
                    backend.log_execution(agent, execution).await.map(|()| true)
                }
            }
        };
        self.timed(side, true, call).await
    }

    /// Journals `write` on `side` as owed to the other side. A failure here cannot undo
    /// the write that succeeded, so it is logged and counted, not returned.
    async fn owe(&self, side: Side, agent: &AgentId, write: &OwedWrite) {
        match self.side(side).push_owed(agent, write).await {
            Ok(()) => {
                bump(&self.inner.counters.owed_recorded);
                lock(&self.inner.owing).insert(agent.clone());
            }
            Err(err) => {
                bump(&self.inner.counters.owed_lost);
                tracing::error!(
                    agent = %agent, write = %write.subject(), to = ?side.other(),
                    error = %crate::Chain(&err),
                    "a write the other side missed could not be journaled; run a backfill to reconcile"
                );
            }
        }
    }

    /// Writes by the stage's rules (see the type's docs); returns what the authoritative
    /// side's call returned.
    async fn write<T>(
        &self,
        agent: &AgentId,
        write: OwedWrite,
        authoritative: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        Ok(self.write_both(agent, write, authoritative).await?.0)
    }

    /// As [`write`](Self::write), also returning whether the write changed anything on
    /// the other side (`None` when that side was not written).
    async fn write_both<T>(
        &self,
        agent: &AgentId,
        write: OwedWrite,
        authoritative: impl Future<Output = Result<T>>,
    ) -> Result<(T, Option<bool>)> {
        let stage = self.stage();
        let first = stage.authoritative();
        self.check_journals(agent, stage);
        // The authoritative side first: its failure is the caller's, and leaves the
        // other side untouched, so no half-write exists that the agent was told failed.
        let out = self.timed(first, true, authoritative).await?;
        if !stage.writes_both() {
            self.owe(first, agent, &write).await;
            return Ok((out, None));
        }
        match self.apply(first.other(), agent, &write).await {
            Ok(changed) => {
                self.repair_in_background(agent);
                Ok((out, Some(changed)))
            }
            Err(err) => {
                tracing::warn!(
                    agent = %agent, write = %write.subject(), side = ?first.other(),
                    error = %crate::Chain(&err), "write missed one side; journaled for repair"
                );
                self.owe(first, agent, &write).await;
                Ok((out, None))
            }
        }
    }

    /// On an agent's first use in this process, looks for writes owed from an earlier
    /// run, and repairs them in the background.
    fn check_journals(&self, agent: &AgentId, stage: Stage) {
        if !stage.writes_both() || !lock(&self.inner.checked).insert(agent.clone()) {
            return;
        }
        let this = self.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut owing = false;
            for side in [Side::Sqlite, Side::Postgres] {
                owing |=
                    matches!(this.side(side).owed_writes(&agent, 1).await, Ok(w) if !w.is_empty());
            }
            if owing {
                lock(&this.inner.owing).insert(agent.clone());
                this.repair_in_background(&agent);
            }
        });
    }

    /// Starts a repair of `agent` if it may owe writes and none is running.
    fn repair_in_background(&self, agent: &AgentId) {
        if !self.stage().writes_both() || !lock(&self.inner.owing).contains(agent) {
            return;
        }
        if !lock(&self.inner.repairing).insert(agent.clone()) {
            return;
        }
        let this = self.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            match this.repair(&agent).await {
                Ok(report) => tracing::info!(agent = %agent, ?report, "repaired owed writes"),
                Err(err) => {
                    tracing::warn!(agent = %agent, error = %crate::Chain(&err), "repair stopped; will retry on later use")
                }
            }
            lock(&this.inner.repairing).remove(&agent);
        });
    }

    /// Replays every write `agent` owes either side, oldest first, until both journals
    /// are empty or a side fails. Safe to run at any time and concurrently with writes:
    /// replays apply only over older versions.
    ///
    /// # Errors
    /// The first failure of the side being written (it is probably still down); what
    /// was replayed before it stays replayed.
    pub async fn repair(&self, agent: &AgentId) -> Result<RepairReport> {
        self.refresh_health().await;
        // Cleared before reading the journals: a write journaled while this runs marks
        // the agent again, so its repair is not lost; a failure below marks it again.
        lock(&self.inner.owing).remove(agent);
        let result = self.replay(agent).await;
        if result.is_err() {
            lock(&self.inner.owing).insert(agent.clone());
        }
        result
    }

    /// Asks a side marked down whether it answers again, for explicit calls that should
    /// not trust a stale mark.
    async fn refresh_health(&self) {
        let side = Side::Postgres;
        if !self.inner.health[side.index()].is_down() {
            return;
        }
        // A quick look: a server still down must not hold up the call for long.
        let ping = tokio::time::timeout(self.inner.options.retry_after, self.side(side).ping());
        if matches!(ping.await, Ok(Ok(()))) {
            self.inner.health[side.index()].mark_up();
        }
    }

    async fn replay(&self, agent: &AgentId) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        for from in [Side::Sqlite, Side::Postgres] {
            loop {
                let batch = self.side(from).owed_writes(agent, 256).await?;
                if batch.is_empty() {
                    break;
                }
                let mut done = Vec::with_capacity(batch.len());
                let mut failure = None;
                for (seq, write) in &batch {
                    match self.apply(from.other(), agent, write).await {
                        Ok(_) => done.push(*seq),
                        Err(err) => {
                            failure = Some(err);
                            break;
                        }
                    }
                }
                // Counted before the journal entries go, so that whoever sees the
                // journal empty also sees the count (a failed clear replays them again,
                // and they are counted again: each replay is real).
                let replayed = done.len() as u64;
                self.inner
                    .counters
                    .owed_replayed
                    .fetch_add(replayed, Ordering::Relaxed);
                self.side(from).clear_owed(agent, &done).await?;
                match from {
                    Side::Sqlite => report.to_postgres += replayed,
                    Side::Postgres => report.to_sqlite += replayed,
                }
                if let Some(err) = failure {
                    return Err(err);
                }
            }
        }
        Ok(report)
    }

    /// Repairs every agent with owed writes in either journal.
    ///
    /// # Errors
    /// As [`repair`](Self::repair), for the first agent that fails.
    pub async fn repair_all(&self) -> Result<BTreeMap<AgentId, RepairReport>> {
        let mut agents = HashSet::new();
        for side in [Side::Sqlite, Side::Postgres] {
            agents.extend(
                self.side(side)
                    .owed_agents()
                    .await?
                    .into_iter()
                    .map(|(a, _)| a),
            );
        }
        let mut reports = BTreeMap::new();
        for agent in agents {
            let report = self.repair(&agent).await?;
            reports.insert(agent, report);
        }
        Ok(reports)
    }

    /// Compares every memory of `agent` between the sides.
    ///
    /// # Errors
    /// When either side cannot be read.
    pub async fn compare(&self, agent: &AgentId) -> Result<Comparison> {
        self.refresh_health().await;
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        let mut keys: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for key in sqlite.memory_keys(agent).await? {
            keys.entry(key).or_default().0 = true;
        }
        for key in postgres.memory_keys(agent).await? {
            keys.entry(key).or_default().1 = true;
        }
        let mut comparison = Comparison::default();
        for (key, held) in keys {
            match held {
                (true, false) => comparison.only_sqlite.push(key),
                (false, true) => comparison.only_postgres.push(key),
                _ => {
                    let a = sqlite.get_memory(agent, &key).await?;
                    let b = postgres.get_memory(agent, &key).await?;
                    match (a, b) {
                        (Some(a), Some(b)) if same_memory(&a, &b) => comparison.same += 1,
                        (Some(_), None) => comparison.only_sqlite.push(key),
                        (None, Some(_)) => comparison.only_postgres.push(key),
                        (None, None) => {}
                        _ => comparison.different.push(key),
                    }
                }
            }
        }
        Ok(comparison)
    }

    /// Counts and logs a compared read.
    fn record_comparison(&self, agent: &AgentId, what: &str, same: bool) {
        bump(&self.inner.counters.shadow_compares);
        if !same {
            bump(&self.inner.counters.shadow_mismatches);
            tracing::info!(agent = %agent, what, "shadow read mismatch between SQLite and PostgreSQL");
        }
    }

    /// A `live` read that missed PostgreSQL: SQLite's row, copied into PostgreSQL unless
    /// a newer value or a delete is there (then PostgreSQL's answer stands).
    async fn lazy_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let Some(found) = self
            .timed(
                Side::Sqlite,
                false,
                self.side(Side::Sqlite).get_memory(agent, key),
            )
            .await?
        else {
            return Ok(None);
        };
        bump(&self.inner.counters.fallback_hits);
        // Insert-only-over-older: a store that raced this copy, or a delete, wins.
        let copied = self
            .timed(
                Side::Postgres,
                true,
                self.side(Side::Postgres).apply_memory(agent, &found),
            )
            .await?;
        match copied {
            Some(stored) => {
                bump(&self.inner.counters.lazy_copies);
                Ok(Some(stored))
            }
            None => self.side(Side::Postgres).get_memory(agent, key).await,
        }
    }

    async fn lazy_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let Some(found) = self
            .timed(
                Side::Sqlite,
                false,
                self.side(Side::Sqlite).get_tool(agent, name),
            )
            .await?
        else {
            return Ok(None);
        };
        bump(&self.inner.counters.fallback_hits);
        if self
            .timed(
                Side::Postgres,
                true,
                self.side(Side::Postgres).apply_tool(agent, &found),
            )
            .await?
        {
            bump(&self.inner.counters.lazy_copies);
        }
        self.side(Side::Postgres).get_tool(agent, name).await
    }

    /// Reads from `side` only, counted and timed.
    async fn read<T>(&self, side: Side, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.timed(side, false, call).await
    }

    /// A `live` read of PostgreSQL; if PostgreSQL cannot be reached, `fallback` answers.
    /// Returns the answer and the side that gave it.
    async fn live_read<T>(
        &self,
        primary: impl Future<Output = Result<T>>,
        fallback: impl Future<Output = Result<T>>,
    ) -> Result<(T, Side)> {
        match self.read(Side::Postgres, primary).await {
            Ok(found) => Ok((found, Side::Postgres)),
            Err(err) if err.is_connection() => {
                bump(&self.inner.counters.fallback_on_error);
                tracing::warn!(error = %crate::Chain(&err), "PostgreSQL unreachable; SQLite answers");
                Ok((self.read(Side::Sqlite, fallback).await?, Side::Sqlite))
            }
            Err(err) => Err(err),
        }
    }
}

/// Merges two lists by `id` (PostgreSQL's version wins), ordered by time then id.
fn merge_by_id<T: Clone>(
    primary: Vec<T>,
    secondary: Vec<T>,
    id: impl Fn(&T) -> uuid::Uuid,
    at: impl Fn(&T) -> chrono::DateTime<chrono::Utc>,
) -> Vec<T> {
    let mut seen: HashSet<uuid::Uuid> = primary.iter().map(&id).collect();
    let mut all = primary;
    all.extend(secondary.into_iter().filter(|item| seen.insert(id(item))));
    all.sort_by_key(|item| (at(item), id(item)));
    all
}

#[async_trait]
impl MemoryBackend for DualBackend {
    fn name(&self) -> &'static str {
        "dual"
    }

    async fn ping(&self) -> Result<()> {
        self.side(self.stage().authoritative()).ping().await
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        memory.validate()?;
        let stage = self.stage();
        if matches!(stage, Stage::DualWrite | Stage::Shadow) {
            return self.put_memory_overlapped(agent, memory, stage).await;
        }
        let first = self.side(stage.authoritative());
        let stored = self
            .write(
                agent,
                OwedWrite::PutMemory {
                    memory: memory.clone(),
                },
                first.apply_memory(agent, memory),
            )
            .await?;
        // None: a newer write of this key, from elsewhere, already stands.
        Ok(stored.unwrap_or_else(|| memory.clone()))
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite => {
                self.read(Side::Sqlite, sqlite.get_memory(agent, key)).await
            }
            Stage::Shadow => {
                let (a, b) = tokio::join!(
                    self.read(Side::Sqlite, sqlite.get_memory(agent, key)),
                    self.read(Side::Postgres, postgres.get_memory(agent, key)),
                );
                if let Ok(b) = &b {
                    let same = match (&a, b) {
                        (Ok(Some(a)), Some(b)) => same_memory(a, b),
                        (Ok(None), None) => true,
                        _ => false,
                    };
                    self.record_comparison(agent, key, same);
                }
                a
            }
            Stage::Live => {
                let found = self
                    .live_read(
                        postgres.get_memory(agent, key),
                        sqlite.get_memory(agent, key),
                    )
                    .await?;
                match found {
                    (Some(memory), Side::Postgres) => {
                        self.compare_in_background(agent, memory.clone());
                        Ok(Some(memory))
                    }
                    (None, Side::Postgres) => self.lazy_memory(agent, key).await,
                    (answer, Side::Sqlite) => Ok(answer),
                }
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.get_memory(agent, key))
                    .await
            }
        }
    }

    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        let at = now();
        let stage = self.stage();
        let first = self.side(stage.authoritative());
        let (existed, on_sqlite) = self
            .write_both(
                agent,
                OwedWrite::DeleteMemory {
                    key: key.to_string(),
                    at,
                },
                first.apply_memory_delete(agent, key, at),
            )
            .await?;
        // In `live` a key only SQLite held was readable (through the fallback), so it
        // existed for the agent even though PostgreSQL had no row to delete.
        Ok(existed || (stage == Stage::Live && on_sqlite == Some(true)))
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        // The authoritative side answers; in `live`, SQLite only when PostgreSQL cannot
        // be reached (memories not yet copied are found after the backfill has run).
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, sqlite.search_memories(agent, query))
                    .await
            }
            Stage::Live => Ok(self
                .live_read(
                    postgres.search_memories(agent, query),
                    sqlite.search_memories(agent, query),
                )
                .await?
                .0),
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.search_memories(agent, query))
                    .await
            }
        }
    }

    async fn memory_keys(&self, agent: &AgentId) -> Result<Vec<String>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, sqlite.memory_keys(agent)).await
            }
            Stage::Live => {
                let (keys, side) = self
                    .live_read(postgres.memory_keys(agent), sqlite.memory_keys(agent))
                    .await?;
                if side == Side::Sqlite {
                    return Ok(keys);
                }
                let mut all: std::collections::BTreeSet<String> = keys.into_iter().collect();
                // Keys only SQLite holds are readable through the fallback, so they are
                // listed, unless PostgreSQL recorded their delete.
                for key in self.read(Side::Sqlite, sqlite.memory_keys(agent)).await? {
                    if !all.contains(&key)
                        && postgres.memory_tombstone(agent, &key).await?.is_none()
                    {
                        all.insert(key);
                    }
                }
                Ok(all.into_iter().collect())
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.memory_keys(agent)).await
            }
        }
    }

    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        tool.validate()?;
        let side = self.stage().authoritative();
        let first = self.side(side);
        self.write(
            agent,
            OwedWrite::PutTool { tool: tool.clone() },
            first.apply_tool(agent, tool),
        )
        .await?;
        Ok(first
            .get_tool(agent, &tool.name)
            .await?
            .unwrap_or_else(|| tool.clone()))
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite => {
                self.read(Side::Sqlite, sqlite.get_tool(agent, name)).await
            }
            Stage::Shadow => {
                let (a, b) = tokio::join!(
                    self.read(Side::Sqlite, sqlite.get_tool(agent, name)),
                    self.read(Side::Postgres, postgres.get_tool(agent, name)),
                );
                if let Ok(b) = &b {
                    let same = match (&a, b) {
                        (Ok(Some(a)), Some(b)) => same_tool(a, b),
                        (Ok(None), None) => true,
                        _ => false,
                    };
                    self.record_comparison(agent, name, same);
                }
                a
            }
            Stage::Live => {
                match self
                    .live_read(postgres.get_tool(agent, name), sqlite.get_tool(agent, name))
                    .await?
                {
                    (None, Side::Postgres) => self.lazy_tool(agent, name).await,
                    (answer, _) => Ok(answer),
                }
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.get_tool(agent, name))
                    .await
            }
        }
    }

    async fn list_tools(&self, agent: &AgentId) -> Result<Vec<Tool>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, sqlite.list_tools(agent)).await
            }
            Stage::Live => {
                let (mut tools, side) = self
                    .live_read(postgres.list_tools(agent), sqlite.list_tools(agent))
                    .await?;
                if side == Side::Sqlite {
                    return Ok(tools);
                }
                let mut names: HashSet<String> = tools.iter().map(|t| t.name.clone()).collect();
                for tool in self.read(Side::Sqlite, sqlite.list_tools(agent)).await? {
                    if names.insert(tool.name.clone()) {
                        tools.push(tool);
                    }
                }
                tools.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(tools)
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.list_tools(agent)).await
            }
        }
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        metric.validate()?;
        let first = self.side(self.stage().authoritative());
        self.write(
            agent,
            OwedWrite::Metric {
                metric: metric.clone(),
            },
            first.record_metric(agent, metric),
        )
        .await
    }

    async fn list_metrics(&self, agent: &AgentId) -> Result<Vec<Metric>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, sqlite.list_metrics(agent)).await
            }
            Stage::Live => {
                let (primary, side) = self
                    .live_read(postgres.list_metrics(agent), sqlite.list_metrics(agent))
                    .await?;
                if side == Side::Sqlite {
                    return Ok(primary);
                }
                let secondary = self.read(Side::Sqlite, sqlite.list_metrics(agent)).await?;
                Ok(merge_by_id(primary, secondary, |m| m.id, |m| m.created_at))
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.list_metrics(agent))
                    .await
            }
        }
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        execution.validate()?;
        let first = self.side(self.stage().authoritative());
        self.write(
            agent,
            OwedWrite::Execution {
                execution: execution.clone(),
            },
            first.log_execution(agent, execution),
        )
        .await
    }

    async fn list_executions(&self, agent: &AgentId) -> Result<Vec<Execution>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match self.stage() {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, sqlite.list_executions(agent)).await
            }
            Stage::Live => {
                let (primary, side) = self
                    .live_read(
                        postgres.list_executions(agent),
                        sqlite.list_executions(agent),
                    )
                    .await?;
                if side == Side::Sqlite {
                    return Ok(primary);
                }
                let secondary = self
                    .read(Side::Sqlite, sqlite.list_executions(agent))
                    .await?;
                Ok(merge_by_id(primary, secondary, |e| e.id, |e| e.created_at))
            }
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, postgres.list_executions(agent))
                    .await
            }
        }
    }

    // Replication calls on the dual backend itself go to its authoritative side: a dual
    // backend can be the target of a backfill or of another replica.

    async fn apply_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Option<Memory>> {
        self.side(self.stage().authoritative())
            .apply_memory(agent, memory)
            .await
    }

    async fn apply_memory_delete(
        &self,
        agent: &AgentId,
        key: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        self.side(self.stage().authoritative())
            .apply_memory_delete(agent, key, at)
            .await
    }

    async fn restore_memory(
        &self,
        agent: &AgentId,
        key: &str,
        version: chrono::DateTime<chrono::Utc>,
        to: Option<&Memory>,
    ) -> Result<bool> {
        self.side(self.stage().authoritative())
            .restore_memory(agent, key, version, to)
            .await
    }

    async fn memory_tombstone(
        &self,
        agent: &AgentId,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.side(self.stage().authoritative())
            .memory_tombstone(agent, key)
            .await
    }

    async fn apply_tool(&self, agent: &AgentId, tool: &Tool) -> Result<bool> {
        self.side(self.stage().authoritative())
            .apply_tool(agent, tool)
            .await
    }

    async fn push_owed(&self, agent: &AgentId, write: &OwedWrite) -> Result<()> {
        self.side(self.stage().authoritative())
            .push_owed(agent, write)
            .await
    }

    async fn owed_writes(&self, agent: &AgentId, limit: usize) -> Result<Vec<(i64, OwedWrite)>> {
        self.side(self.stage().authoritative())
            .owed_writes(agent, limit)
            .await
    }

    async fn clear_owed(&self, agent: &AgentId, seqs: &[i64]) -> Result<()> {
        self.side(self.stage().authoritative())
            .clear_owed(agent, seqs)
            .await
    }

    async fn owed_agents(&self) -> Result<Vec<(AgentId, u64)>> {
        self.side(self.stage().authoritative()).owed_agents().await
    }
}

impl DualBackend {
    /// A memory store while SQLite leads (`dualwrite`, `shadow`): both sides are written
    /// at once, so a store costs the slower side rather than the sum. If SQLite fails
    /// where PostgreSQL succeeded, the agent gets SQLite's error and the version it was
    /// told failed is undone on PostgreSQL (or, if SQLite cannot even be read, journaled
    /// there for repair to undo). In `live` and `rampdown` writes stay one after the
    /// other: an unacknowledged version left in SQLite could only be undone by reading
    /// PostgreSQL, the side that just failed, and the fallback read would serve it.
    async fn put_memory_overlapped(
        &self,
        agent: &AgentId,
        memory: &Memory,
        stage: Stage,
    ) -> Result<Memory> {
        self.check_journals(agent, stage);
        let write = OwedWrite::PutMemory {
            memory: memory.clone(),
        };
        let sqlite = self.side(Side::Sqlite);
        let (first, second) = tokio::join!(
            self.timed(Side::Sqlite, true, sqlite.apply_memory(agent, memory)),
            self.apply(Side::Postgres, agent, &write),
        );
        match (first, second) {
            (Ok(stored), outcome) => {
                match outcome {
                    Ok(_) => self.repair_in_background(agent),
                    Err(err) => {
                        tracing::warn!(
                            agent = %agent, write = %write.subject(), side = ?Side::Postgres,
                            error = %crate::Chain(&err), "write missed one side; journaled for repair"
                        );
                        self.owe(Side::Sqlite, agent, &write).await;
                    }
                }
                // None: a newer write of this key, from elsewhere, already stands.
                Ok(stored.unwrap_or_else(|| memory.clone()))
            }
            (Err(err), Ok(true)) => {
                self.undo_on_postgres(agent, memory).await;
                Err(err)
            }
            (Err(err), _) => Err(err),
        }
    }

    /// Takes back from PostgreSQL a version the agent was told failed, making the key
    /// match SQLite's; journals the undo on PostgreSQL when SQLite cannot be read now.
    async fn undo_on_postgres(&self, agent: &AgentId, memory: &Memory) {
        let key = memory.key.clone().unwrap_or_default();
        let undo = OwedWrite::RestoreMemory {
            key,
            version: memory.updated_at,
        };
        match self.apply(Side::Sqlite, agent, &undo).await {
            Ok(_) => bump(&self.inner.counters.writes_undone),
            Err(err) => {
                tracing::warn!(
                    agent = %agent, write = %undo.subject(), error = %crate::Chain(&err),
                    "a failed write could not be undone on PostgreSQL yet; journaled for repair"
                );
                self.owe(Side::Postgres, agent, &undo).await;
            }
        }
    }

    /// In `live`, compares a sample of PostgreSQL hits (one in
    /// [`DualOptions::live_compare_every`]) with SQLite, off the caller's path.
    fn compare_in_background(&self, agent: &AgentId, found: Memory) {
        let every = u64::from(self.inner.options.live_compare_every.max(1));
        if !self
            .inner
            .live_hits
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
        {
            return;
        }
        let this = self.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let Some(key) = found.key.clone() else { return };
            if let Ok(other) = this
                .read(
                    Side::Sqlite,
                    this.side(Side::Sqlite).get_memory(&agent, &key),
                )
                .await
            {
                let same = other.as_ref().is_some_and(|o| same_memory(o, &found));
                this.record_comparison(&agent, &key, same);
            }
        });
    }
}
