//! The dual backend: SQLite and PostgreSQL side by side, stepping through the migration
//! [`Stage`]s with dual writes, read fallback, lazy migration and repair of missed writes.

mod central;
mod compare;
mod health;
mod listing;
mod reads;
mod repair;
mod stats;
mod tickets;
mod writes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::backend::replica::OwedWrite;
pub use central::{
    AgentStage, CHANNEL, CentralStages, Cohort, StageChange, StageMove, StageRequest, bucket,
    cache_path, in_percent, matches_pattern, read_stages,
};
pub(crate) use compare::{same_memory, same_metadata, same_tool};
pub use health::DualOptions;
pub use stats::{AgentCounts, DualStats, Latency, SideStats};

use self::health::{Health, unreachable};
use self::stats::{Counters, bump};
use super::MemoryBackend;
use super::replica::{Change, Replica};
use crate::config::Stage;
use crate::error::Result;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Memory, Metric, Tool, now};
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
    pub(crate) fn index(self) -> usize {
        match self {
            Side::Sqlite => 0,
            Side::Postgres => 1,
        }
    }

    pub(crate) fn other(self) -> Side {
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
    /// Owed writes parked by this run: the side they were owed to refuses them for a
    /// reason that will not go away (see [`DualBackend::retry_parked`]).
    pub parked: u64,
}

/// What [`DualBackend::repair_all`] did, agent by agent: one agent that cannot be
/// repaired (its file is corrupt, a side refuses it) does not stop the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairAll {
    /// Agents whose journals were replayed, with what was done.
    pub repaired: BTreeMap<AgentId, RepairReport>,
    /// Agents whose repair stopped, with why (their journals keep what is left).
    pub failed: BTreeMap<AgentId, String>,
}

/// What each call of the dual backend does, decided once from the stage when it starts,
/// so a stage change in the middle of a call cannot send its parts to different sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The stage the call runs under.
    stage: Stage,
    /// The side written first, whose success decides the call's outcome.
    first: Side,
    /// The side written after it, in the stages that write both.
    second: Option<Side>,
}

impl Plan {
    fn of(stage: Stage) -> Plan {
        let first = stage.authoritative();
        Plan {
            stage,
            first,
            second: stage.writes_both().then(|| first.other()),
        }
    }
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
/// - **Writes** go through an outbox. The authoritative side performs the write and, in
///   the same transaction, journals that the other side is owed it; its failure is the
///   caller's error and nothing is written to the other side. Then, in the stages that
///   write both, the other side is written, and its success clears the journal record
///   (soon after, batched with later writes). Whatever happens between (a crash, a
///   `kill -9`, a timeout whose outcome is unknown, a side that refuses), the record
///   stays until [`repair`](Self::repair) replays it (also started automatically on
///   later use). In `sqlite` and `postgres` stages every write is journaled as owed to
///   the side not written, so stepping back loses nothing. The authoritative side gives
///   each write a version later than the one it replaces (see
///   [`replica`](crate::backend::replica)); the other side applies writes only over
///   older versions, so both end in the same state whatever order writes and replays
///   arrive in.
/// - **One plan per call.** Each call reads the stage once and carries that plan
///   through; a stage change applies to calls that start after it.
/// - **Reads** follow the stage. In `live`, a miss in PostgreSQL is answered from SQLite
///   and the row copied into PostgreSQL with its id and times (inserted only where no
///   newer value or delete is there); if PostgreSQL cannot be reached, SQLite answers.
/// - **Deletes** of memories and of tools leave tombstones on both sides, so neither a
///   fallback read, a lazy copy nor a replay brings a deleted key or tool back.
/// - **Shadow compares** (in `shadow`, and in the background in `live`) use
///   one rule for "the same data" (objects whatever their key order, numbers by value:
///   [`Json::same_data`](crate::Json::same_data); ids may differ), and count and log mismatches by key, never by value at info level.
#[derive(Clone)]
pub struct DualBackend {
    inner: Arc<Inner>,
}

struct Inner {
    sides: [Arc<dyn Replica>; 2],
    /// Journal records whose writes reached the other side, per side holding them and
    /// agent: removed with that side's next write for the agent, or by a flush.
    done: Mutex<HashMap<(Side, AgentId), Vec<i64>>>,
    /// Whether a background flush of `done` is scheduled.
    flushing: AtomicBool,
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
    /// Writes and journal clears under way, for repairs and flushes to wait on.
    tickets: tickets::Tickets,
    /// Stages of single agents set in code, over `stage`.
    agent_stages: std::sync::RwLock<HashMap<AgentId, Stage>>,
    /// The stages read from the central table, when this backend follows it: its rows
    /// win over the stages set in code (an agent's row over everything, the default row
    /// over `stage`).
    central: std::sync::RwLock<Option<CentralStages>>,
    /// What each agent's reads met at each stage since the counts were last taken (for
    /// the central stage view).
    agent_counts: Mutex<HashMap<(AgentId, Stage), AgentCounts>>,
    /// The task following the central stages, when one does.
    follower: Mutex<Option<central::Follower>>,
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

fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Stages are replaced whole; a poisoned lock still holds a whole value.
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // These sets only steer repairs; a poisoned one still holds valid names.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DualBackend {
    /// Both sides, at `stage`.
    pub fn new(sqlite: Arc<dyn Replica>, postgres: Arc<dyn Replica>, stage: Stage) -> Self {
        Self::with_options(sqlite, postgres, stage, DualOptions::default())
    }

    /// Like [`new`](Self::new), with explicit settings.
    pub fn with_options(
        sqlite: Arc<dyn Replica>,
        postgres: Arc<dyn Replica>,
        stage: Stage,
        options: DualOptions,
    ) -> Self {
        DualBackend {
            inner: Arc::new(Inner {
                sides: [sqlite, postgres],
                done: Mutex::new(HashMap::new()),
                flushing: AtomicBool::new(false),
                live_hits: std::sync::atomic::AtomicU64::new(0),
                health: [Health::default(), Health::default()],
                options,
                stage: AtomicU8::new(stage as u8),
                counters: Counters::new(),
                owing: Mutex::new(HashSet::new()),
                repairing: Mutex::new(HashSet::new()),
                checked: Mutex::new(HashSet::new()),
                tickets: tickets::Tickets::default(),
                agent_stages: std::sync::RwLock::new(HashMap::new()),
                agent_counts: Mutex::new(HashMap::new()),
                central: std::sync::RwLock::new(None),
                follower: Mutex::new(None),
            }),
        }
    }

    /// The default stage now: that of every agent without a stage of its own (the
    /// central default row when there is one, else the one set in code).
    pub fn stage(&self) -> Stage {
        let central = read(&self.inner.central);
        central
            .as_ref()
            .and_then(|c| c.default)
            .unwrap_or_else(|| self.local_stage())
    }

    /// The default stage set in code (or at construction), whatever the central table
    /// says.
    pub(crate) fn local_stage(&self) -> Stage {
        Stage::ALL[usize::from(self.inner.stage.load(Ordering::SeqCst))]
    }

    /// The stage `agent` is at now: its central row's, else the one set for it in code,
    /// else the default.
    pub fn stage_of(&self, agent: &AgentId) -> Stage {
        if let Some(stage) = read(&self.inner.central)
            .as_ref()
            .and_then(|c| c.agents.get(agent).copied())
        {
            return stage;
        }
        if let Some(stage) = read(&self.inner.agent_stages).get(agent).copied() {
            return stage;
        }
        self.stage()
    }

    /// Moves the default stage (that of every agent without one of its own) to `stage`,
    /// forward or back. Calls already running finish under the stage they started in
    /// (each call decides its plan once, at its start). Run
    /// [`repair_all`](Self::repair_all) before a step that changes the authoritative
    /// side, so its data is complete. While the backend follows central stages, the
    /// central table's rows win over this.
    pub fn set_stage(&self, stage: Stage) {
        let before = self.inner.stage.swap(stage as u8, Ordering::SeqCst);
        if before != stage as u8 {
            tracing::info!(%stage, "dual backend default stage changed");
        }
    }

    /// Puts `agent` at `stage` (or, with `None`, back on the default), like
    /// [`set_stage`](Self::set_stage) does for every agent.
    pub fn set_agent_stage(&self, agent: &AgentId, stage: Option<Stage>) {
        let mut stages = self
            .inner
            .agent_stages
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = match stage {
            Some(stage) => stages.insert(agent.clone(), stage),
            None => stages.remove(agent),
        };
        if before != stage {
            tracing::info!(agent = %agent, stage = ?stage, "dual backend stage of an agent changed");
        }
    }

    /// Puts the backend on the central `stages` just read, logging each change.
    pub(crate) fn set_central(&self, stages: &CentralStages) {
        let mut central = self
            .inner
            .central
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = central.replace(stages.clone()).unwrap_or_default();
        drop(central);
        if before.default != stages.default {
            tracing::info!(stage = ?stages.default, "default stage changed centrally");
        }
        let agents = before.agents.keys().chain(stages.agents.keys());
        for agent in agents.collect::<std::collections::BTreeSet<_>>() {
            if before.agents.get(agent) != stages.agents.get(agent) {
                tracing::info!(agent = %agent, stage = ?stages.agents.get(agent), "stage of an agent changed centrally");
            }
        }
    }

    /// Takes what each agent's reads met at each stage since the last take (shadow
    /// mismatches, fallback reads, lazy copies).
    pub fn take_agent_counts(&self) -> HashMap<(AgentId, Stage), AgentCounts> {
        std::mem::take(&mut *lock(&self.inner.agent_counts))
    }

    /// Puts counts taken with [`take_agent_counts`](Self::take_agent_counts) back (they
    /// could not be saved).
    pub fn give_back_agent_counts(&self, counts: HashMap<(AgentId, Stage), AgentCounts>) {
        let mut all = lock(&self.inner.agent_counts);
        for (key, counts) in counts {
            all.entry(key).or_default().add(&counts);
        }
    }

    /// Counts an event of `agent`'s reads, at its stage now.
    fn count_for(&self, agent: &AgentId, count: impl FnOnce(&mut AgentCounts)) {
        let key = (agent.clone(), self.stage_of(agent));
        count(lock(&self.inner.agent_counts).entry(key).or_default());
    }

    fn side(&self, side: Side) -> &dyn Replica {
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
        // Records of copies that arrived are not owed: clear them first. A failure
        // here leaves them counted, which errs on the safe side.
        self.flush().await.ok();
        let agents = self
            .timed(side, false, self.side(side).owed_agents())
            .await?;
        Ok(agents.iter().map(|count| count.pending).sum())
    }

    /// Every agent with records in the journal kept on `side`, with how many are pending
    /// and parked (an agent whose journal cannot be read carries the error).
    ///
    /// # Errors
    /// When the journal cannot be listed (for example, `side` is unreachable).
    pub async fn journal_counts(&self, side: Side) -> Result<Vec<super::replica::OwedCount>> {
        self.refresh_health().await;
        self.timed(side, false, self.side(side).owed_agents()).await
    }

    /// Owed writes parked in the journal kept on `side` (see [`repair`](Self::repair)),
    /// for every agent.
    ///
    /// # Errors
    /// When the journal cannot be read.
    pub async fn owed_parked_on(&self, side: Side) -> Result<u64> {
        self.refresh_health().await;
        let agents = self
            .timed(side, false, self.side(side).owed_agents())
            .await?;
        Ok(agents.iter().map(|count| count.parked).sum())
    }

    /// Runs bookkeeping `call` (journal reads, repair's reads) on `side` within the side
    /// timeout, without counting it among the agent's reads.
    async fn quiet<T>(&self, side: Side, call: impl Future<Output = Result<T>>) -> Result<T> {
        if let Some(refused) = self.inner.health[side.index()].refuse(side) {
            return Err(refused);
        }
        self.bounded(side, call).await
    }

    /// Runs `call` on `side`: cut short after the side timeout on the server, and marking
    /// the server down on a connection error.
    async fn bounded<T>(&self, side: Side, call: impl Future<Output = Result<T>>) -> Result<T> {
        // Only the server's calls are cut short: a SQLite statement keeps running on its
        // worker thread when its future is dropped, so cutting it would report a failure
        // for a write that then lands. SQLite's own busy timeout bounds it instead.
        let result = match side {
            Side::Postgres => {
                match tokio::time::timeout(self.inner.options.side_timeout, call).await {
                    Ok(result) => result,
                    Err(_) => Err(unreachable(
                        side,
                        "no answer within the side timeout; the outcome of a write is \
                         unknown (if it landed, it landed with its journal record, and \
                         repair copies it)",
                    )),
                }
            }
            Side::Sqlite => call.await,
        };
        // Only the server is skipped when down; the embedded side is always tried.
        if side == Side::Postgres && matches!(&result, Err(err) if err.is_connection()) {
            self.side_down(side);
        }
        result
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
        let result = self.bounded(side, call).await;
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
}

#[async_trait]
impl MemoryBackend for DualBackend {
    fn name(&self) -> &'static str {
        "dual"
    }

    async fn flush(&self) -> Result<()> {
        DualBackend::flush(self).await
    }

    /// Flushes, then closes both sides; background repairs still running fail their
    /// attempt and leave the journal as it was.
    async fn close(&self) -> Result<()> {
        self.stop_following().await;
        let flushed = DualBackend::flush(self).await;
        let sqlite = self.side(Side::Sqlite).close().await;
        let postgres = self.side(Side::Postgres).close().await;
        flushed.and(sqlite).and(postgres)
    }

    async fn ping(&self) -> Result<()> {
        self.side(self.stage().authoritative()).ping().await
    }

    async fn put_memory(&self, agent: &AgentId, memory: &Memory) -> Result<Memory> {
        memory.validate()?;
        match self
            .write(
                agent,
                Change::PutMemory(memory),
                Plan::of(self.stage_of(agent)),
            )
            .await?
            .0
        {
            super::replica::Outcome::Memory(stored) => Ok(stored),
            other => unreachable!("a store commits a memory, not {other:?}"),
        }
    }

    async fn get_memory(&self, agent: &AgentId, key: &str) -> Result<Option<Memory>> {
        self.get_memory_planned(agent, key, self.stage_of(agent))
            .await
    }

    async fn delete_memory(&self, agent: &AgentId, key: &str) -> Result<bool> {
        self.delete(agent, Change::DeleteMemory { key, at: now() })
            .await
    }

    async fn memory_keys(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<String>> {
        self.list_planned::<String>(agent, listing, self.stage_of(agent))
            .await
    }

    async fn search_memories(&self, agent: &AgentId, query: &VectorQuery) -> Result<Vec<Neighbor>> {
        self.search_planned(agent, query, self.stage_of(agent))
            .await
    }

    async fn put_tool(&self, agent: &AgentId, tool: &Tool) -> Result<Tool> {
        tool.validate()?;
        match self
            .write(agent, Change::PutTool(tool), Plan::of(self.stage_of(agent)))
            .await?
            .0
        {
            super::replica::Outcome::Tool(stored) => Ok(stored),
            other => unreachable!("a registration commits a tool, not {other:?}"),
        }
    }

    async fn get_tool(&self, agent: &AgentId, name: &str) -> Result<Option<Tool>> {
        self.get_tool_planned(agent, name, self.stage_of(agent))
            .await
    }

    async fn delete_tool(&self, agent: &AgentId, name: &str) -> Result<bool> {
        self.delete(agent, Change::DeleteTool { name, at: now() })
            .await
    }

    async fn list_tools(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Tool>> {
        self.list_planned::<Tool>(agent, listing, self.stage_of(agent))
            .await
    }

    async fn record_metric(&self, agent: &AgentId, metric: &Metric) -> Result<()> {
        metric.validate()?;
        self.write(
            agent,
            Change::Metric(metric),
            Plan::of(self.stage_of(agent)),
        )
        .await
        .map(drop)
    }

    async fn list_metrics(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Metric>> {
        self.list_planned::<Metric>(agent, listing, self.stage_of(agent))
            .await
    }

    async fn log_execution(&self, agent: &AgentId, execution: &Execution) -> Result<()> {
        execution.validate()?;
        self.write(
            agent,
            Change::Execution(execution),
            Plan::of(self.stage_of(agent)),
        )
        .await
        .map(drop)
    }

    async fn list_executions(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<Execution>> {
        self.list_planned::<Execution>(agent, listing, self.stage_of(agent))
            .await
    }
}
