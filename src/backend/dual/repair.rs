//! Repair: replaying the journal records (the outbox) of writes one side is owed,
//! parking the ones that side refuses for good so they block no other.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::stats::bump;
use super::tickets::Kind;
use super::{DualBackend, RepairAll, RepairReport, Side, lock};
use crate::backend::replica::{OwedWrite, Replica};
use crate::config::Stage;
use crate::error::{Error, Result};
use crate::record::{AgentId, Memory, Tool};

/// Records read from a journal at a time.
const BATCH: usize = 256;

impl DualBackend {
    /// On an agent's first use in this process, looks for writes owed from an earlier
    /// run, and repairs them in the background.
    pub(super) fn check_journals(&self, agent: &AgentId, stage: Stage) {
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
    pub(super) fn repair_in_background(&self, agent: &AgentId) {
        if !self.stage_of(agent).writes_both() || !lock(&self.inner.owing).contains(agent) {
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
    /// are empty or a side fails. Safe to run at any time and concurrently with writes
    /// and with other processes' repairs: a replay copies the key's current state from
    /// the side that journaled it, and copies apply only over older versions.
    ///
    /// A record the other side refuses for a reason that will not go away (a value it
    /// cannot hold, a constraint the admin application added) is parked: kept with its
    /// error, counted in [`stats`](Self::stats) and `memctl stats`, skipped from then on
    /// so it blocks no later write, and retried by [`retry_parked`](Self::retry_parked).
    ///
    /// # Errors
    /// The first failure that may pass (the side is down, busy or full); what was
    /// replayed before it stays replayed.
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

    /// Makes `agent`'s parked writes pending again on both sides and repairs it.
    ///
    /// # Errors
    /// As [`repair`](Self::repair), or when a journal cannot be changed.
    pub async fn retry_parked(&self, agent: &AgentId) -> Result<RepairReport> {
        for side in [Side::Sqlite, Side::Postgres] {
            self.timed(side, true, self.side(side).unpark_owed(agent))
                .await?;
        }
        self.repair(agent).await
    }

    /// Asks a side marked down whether it answers again, for explicit calls that should
    /// not trust a stale mark.
    pub(super) async fn refresh_health(&self) {
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
            let mut last_seq = i64::MIN;
            loop {
                let batch = self
                    .quiet(from, self.side(from).owed_writes(agent, BATCH))
                    .await?;
                let Some(first) = batch.first() else { break };
                if first.seq <= last_seq {
                    return Err(Error::invalid(
                        "journal",
                        format!(
                            "owed write {} of agent {agent:?} is still there after it was \
                             replayed and cleared",
                            first.seq
                        ),
                    ));
                }
                // Every write whose record this batch holds began before this mark.
                let mark = self.inner.tickets.mark();
                let mut waited = false;
                let mut done = Vec::with_capacity(batch.len());
                let mut stop = None;
                // Records whose copies already arrived (cleared lazily) need no replay.
                let _clearing = self.inner.tickets.open(Kind::Clear, Some(agent));
                let mut delivered = self.take_done(from, agent);
                let mut cleared = 0;
                for record in &batch {
                    last_seq = record.seq;
                    if !waited && !delivered.contains(&record.seq) {
                        // Its copy may still be under way: let the writes that began
                        // before the batch was read end; each record is then delivered
                        // or owed.
                        let give_up =
                            tokio::time::Instant::now() + self.inner.options.side_timeout * 2;
                        self.inner
                            .tickets
                            .wait_before(mark, Kind::Write, Some(agent), give_up)
                            .await;
                        waited = true;
                    }
                    delivered.extend(self.take_done(from, agent));
                    if delivered.contains(&record.seq) {
                        done.push(record.seq);
                        cleared += 1;
                        continue;
                    }
                    let replayed = match serde_json::from_str::<OwedWrite>(&record.op) {
                        Ok(write) => self.replay_one(from, agent, &write).await,
                        Err(source) => Err(Error::Json {
                            context: format!("owed write {} of agent {agent:?}", record.seq),
                            source,
                        }),
                    };
                    match replayed {
                        Ok(()) => done.push(record.seq),
                        Err(err) if err.is_lasting() => {
                            let why = crate::Chain(&err).to_string();
                            tracing::error!(
                                agent = %agent, seq = record.seq, to = ?from.other(), error = %why,
                                "an owed write is refused for good; parked so it blocks no other \
                                 (memctl stats shows it; memctl repair --retry-parked retries it)"
                            );
                            let parked = self
                                .timed(
                                    from,
                                    true,
                                    self.side(from).park_owed(agent, record.seq, &why),
                                )
                                .await;
                            if let Err(err) = parked {
                                stop = Some(err);
                                break;
                            }
                            bump(&self.inner.counters.owed_parked);
                            report.parked += 1;
                        }
                        Err(err) => {
                            stop = Some(err);
                            break;
                        }
                    }
                }
                // Deliveries of records past this batch (or past a stop) stay known, to
                // be cleared with the next write or flush instead of replayed.
                delivered.retain(|seq| !done.contains(seq));
                self.give_done(from, agent, delivered);
                // Counted before the journal entries go, so that whoever sees the
                // journal empty also sees the count (a failed clear replays them again,
                // and they are counted again: each replay is real).
                let replayed = (done.len() - cleared) as u64;
                self.inner
                    .counters
                    .owed_replayed
                    .fetch_add(replayed, Ordering::Relaxed);
                self.timed(from, true, self.side(from).clear_owed(agent, &done))
                    .await?;
                match from {
                    Side::Sqlite => report.to_postgres += replayed,
                    Side::Postgres => report.to_sqlite += replayed,
                }
                if let Some(err) = stop {
                    return Err(err);
                }
            }
        }
        Ok(report)
    }

    /// Replays one record journaled on `from`: brings the other side to the state
    /// `from` holds now for the record's key, or applies its payload (metrics,
    /// executions, and the restores of earlier versions' journals).
    async fn replay_one(&self, from: Side, agent: &AgentId, write: &OwedWrite) -> Result<()> {
        let (source, target) = (self.side(from), from.other());
        match write {
            OwedWrite::SyncMemory { key } | OwedWrite::DeleteMemory { key, .. } => {
                self.sync::<Memory>(from, agent, key).await
            }
            OwedWrite::PutMemory { memory } => {
                let key = memory.key.as_deref().unwrap_or_default();
                self.sync::<Memory>(from, agent, key).await
            }
            OwedWrite::SyncTool { name } | OwedWrite::DeleteTool { name, .. } => {
                self.sync::<Tool>(from, agent, name).await
            }
            OwedWrite::PutTool { tool } => self.sync::<Tool>(from, agent, &tool.name).await,
            OwedWrite::Metric { metric } => {
                self.timed(target, true, self.side(target).record_metric(agent, metric))
                    .await
            }
            OwedWrite::Execution { execution } => {
                self.timed(
                    target,
                    true,
                    self.side(target).log_execution(agent, execution),
                )
                .await
            }
            OwedWrite::RestoreMemory { key, version } => {
                // Journaled (by earlier versions) on the side holding a version the
                // agent was told failed: the other side is the truth.
                let truth = self
                    .quiet(target, self.side(target).get_memory(agent, key))
                    .await?;
                self.timed(
                    from,
                    true,
                    source.restore_memory(agent, key, *version, truth.as_ref()),
                )
                .await
                .map(drop)
            }
        }
    }

    /// Copies the state `from` holds for `name` (its value, or its delete) to the other
    /// side.
    async fn sync<T: KeptByName>(&self, from: Side, agent: &AgentId, name: &str) -> Result<()> {
        let (source, target) = (self.side(from), self.side(from.other()));
        let value = self.quiet(from, T::get(source, agent, name)).await?;
        let deleted = self.quiet(from, T::tombstone(source, agent, name)).await?;
        match (value, deleted) {
            (Some(value), deleted) if deleted.is_none_or(|at| value.version() > at) => {
                if let Some(at) = deleted {
                    // The delete the value followed goes first, so the other side ends
                    // with this value's id and `created_at`, not those of what was
                    // deleted.
                    self.timed(from.other(), true, T::apply_delete(target, agent, name, at))
                        .await?;
                }
                self.timed(from.other(), true, value.apply(target, agent))
                    .await
            }
            (value, Some(at)) => {
                self.timed(from.other(), true, T::apply_delete(target, agent, name, at))
                    .await?;
                if value.is_some() {
                    // A value the delete outranks, left by a delete cut short between
                    // its two statements, or by one still between them (which answers
                    // from what its tombstone saw): the delete holds on this side too.
                    self.timed(from, true, T::apply_delete(source, agent, name, at))
                        .await?;
                }
                Ok(())
            }
            (None, None) => Ok(()),
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
    }

    /// Repairs every agent with owed writes in either journal, each on its own: an
    /// agent whose repair fails (a corrupt file, a side that refuses) is reported in
    /// [`RepairAll::failed`] and the others are still repaired.
    ///
    /// # Errors
    /// When a side's journal cannot be listed at all (the server is down).
    pub async fn repair_all(&self) -> Result<RepairAll> {
        self.refresh_health().await;
        let mut all = RepairAll::default();
        let mut agents = HashSet::new();
        for side in [Side::Sqlite, Side::Postgres] {
            for count in self
                .timed(side, false, self.side(side).owed_agents())
                .await?
            {
                match count.error {
                    Some(error) => {
                        all.failed.insert(count.agent, error);
                    }
                    None if count.pending > 0 => {
                        agents.insert(count.agent);
                    }
                    None => {}
                }
            }
        }
        for agent in agents {
            if all.failed.contains_key(&agent) {
                continue;
            }
            match self.repair(&agent).await {
                Ok(report) => {
                    all.repaired.insert(agent, report);
                }
                Err(err) => {
                    all.failed.insert(agent, crate::Chain(&err).to_string());
                }
            }
        }
        Ok(all)
    }
}

/// What a side keeps by name, with versions and deletes: memories by key, tools by
/// name. Repair copies either the same way.
trait KeptByName: Sized + Send + Sync {
    /// The version (`updated_at`).
    fn version(&self) -> DateTime<Utc>;

    fn get<'a>(
        side: &'a dyn Replica,
        agent: &'a AgentId,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Self>>> + Send + 'a;

    fn tombstone<'a>(
        side: &'a dyn Replica,
        agent: &'a AgentId,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send + 'a;

    /// Copies this value to `side`, over older versions only.
    fn apply<'a>(
        &'a self,
        side: &'a dyn Replica,
        agent: &'a AgentId,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// Copies a delete to `side`.
    fn apply_delete<'a>(
        side: &'a dyn Replica,
        agent: &'a AgentId,
        name: &'a str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send + 'a;
}

/// Implements [`KeptByName`] for `$record` with the [`Replica`] methods that read, copy
/// and delete it.
macro_rules! kept_by_name {
    ($record:ty, $get:ident, $tombstone:ident, $apply:ident, $apply_delete:ident) => {
        impl KeptByName for $record {
            fn version(&self) -> DateTime<Utc> {
                self.updated_at
            }

            fn get<'a>(
                side: &'a dyn Replica,
                agent: &'a AgentId,
                name: &'a str,
            ) -> impl Future<Output = Result<Option<Self>>> + Send + 'a {
                side.$get(agent, name)
            }

            fn tombstone<'a>(
                side: &'a dyn Replica,
                agent: &'a AgentId,
                name: &'a str,
            ) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send + 'a {
                side.$tombstone(agent, name)
            }

            async fn apply<'a>(&'a self, side: &'a dyn Replica, agent: &'a AgentId) -> Result<()> {
                side.$apply(agent, self).await.map(drop)
            }

            fn apply_delete<'a>(
                side: &'a dyn Replica,
                agent: &'a AgentId,
                name: &'a str,
                at: DateTime<Utc>,
            ) -> impl Future<Output = Result<bool>> + Send + 'a {
                side.$apply_delete(agent, name, at)
            }
        }
    };
}

kept_by_name!(
    Memory,
    get_memory,
    memory_tombstone,
    apply_memory,
    apply_memory_delete
);
kept_by_name!(
    Tool,
    get_tool,
    tool_tombstone,
    apply_tool,
    apply_tool_delete
);
