//! The dual backend's writes: the authoritative side's outbox transaction, the copy to
//! the other side, and clearing the journal records of copies that arrived.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::stats::bump;
use super::tickets::Kind;
use super::{DualBackend, Plan, Side, lock};
use crate::backend::replica::{Change, Outcome};
use crate::config::Stage;
use crate::error::Result;
use crate::record::AgentId;

/// How long a journal record whose copy arrived may wait for the side's next write
/// before a background flush removes it.
const FLUSH_AFTER: Duration = Duration::from_millis(100);

impl DualBackend {
    /// Performs `change` by `plan`: the authoritative side commits it with its journal
    /// record, then the other side (when the stage writes both) gets a copy. Returns the
    /// authoritative side's outcome and, when the other side was written, whether the
    /// copy changed anything there.
    ///
    /// # Errors
    /// The authoritative side's error; the other side's failure is not the caller's
    /// (the record stays for repair).
    pub(super) async fn write(
        &self,
        agent: &AgentId,
        change: Change<'_>,
        plan: Plan,
    ) -> Result<(Outcome, Option<bool>)> {
        self.check_journals(agent, plan.stage);
        let first = plan.first;
        // Opened before the commit, so a repair that reads its journal record also
        // finds the write under way, and waits for its copy instead of replaying it.
        let _writing = self.inner.tickets.open(Kind::Write, Some(agent));
        let clearing = self.inner.tickets.open(Kind::Clear, Some(agent));
        let clear = self.take_done(first, agent);
        let committed = self
            .timed(
                first,
                true,
                self.side(first).commit(agent, change, true, &clear),
            )
            .await;
        if committed.is_err() {
            // Whether they went with it or not, clearing them again is harmless.
            self.give_done(first, agent, clear);
        }
        drop(clearing);
        let committed = match committed {
            Ok(committed) => committed,
            Err(err) => {
                if err.is_connection() {
                    // The outcome is unknown: the change and its record may have
                    // committed. Repair looks when the side answers again.
                    lock(&self.inner.owing).insert(agent.clone());
                }
                return Err(err);
            }
        };
        let Some(second) = plan.second else {
            bump(&self.inner.counters.owed_recorded);
            lock(&self.inner.owing).insert(agent.clone());
            return Ok((committed.outcome, None));
        };
        let copied = self
            .timed(
                second,
                true,
                self.copy(second, agent, change, &committed.outcome),
            )
            .await;
        if let (Ok(_), Some(seq)) = (&copied, committed.seq) {
            // Marked arrived before the write's ticket closes, so a repair waiting on
            // it finds the record delivered.
            self.give_done(first, agent, vec![seq]);
        }
        match copied {
            Ok(changed) => {
                self.repair_in_background(agent);
                Ok((committed.outcome, Some(changed)))
            }
            Err(err) => {
                bump(&self.inner.counters.owed_recorded);
                lock(&self.inner.owing).insert(agent.clone());
                tracing::warn!(
                    agent = %agent, write = %change.describe(), side = ?second,
                    error = %crate::Chain(&err),
                    "write missed one side (or its outcome there is unknown); journaled for repair"
                );
                Ok((committed.outcome, None))
            }
        }
    }

    /// Deletes a memory or a tool (`change`) by the stage's plan; returns whether the
    /// agent could read it before.
    pub(super) async fn delete(&self, agent: &AgentId, change: Change<'_>) -> Result<bool> {
        let plan = Plan::of(self.stage_of(agent));
        let (outcome, on_second) = self.write(agent, change, plan).await?;
        let existed = matches!(outcome, Outcome::Deleted { existed: true, .. });
        // In `live` what only SQLite held was readable (through the fallback), so it
        // existed for the agent even though PostgreSQL had no row to delete.
        Ok(existed || (plan.stage == Stage::Live && on_second == Some(true)))
    }

    /// Copies what the authoritative side committed to `side`, keeping its version;
    /// returns whether it changed anything there.
    async fn copy(
        &self,
        side: Side,
        agent: &AgentId,
        change: Change<'_>,
        outcome: &Outcome,
    ) -> Result<bool> {
        let backend = self.side(side);
        match (change, outcome) {
            (_, Outcome::Memory(stored)) => {
                Ok(backend.apply_memory(agent, stored).await?.is_some())
            }
            (Change::DeleteMemory { key, .. }, Outcome::Deleted { at, .. }) => {
                backend.apply_memory_delete(agent, key, *at).await
            }
            (_, Outcome::Tool(stored)) => Ok(backend.apply_tool(agent, stored).await?.is_some()),
            (Change::DeleteTool { name, .. }, Outcome::Deleted { at, .. }) => {
                backend.apply_tool_delete(agent, name, *at).await
            }
            (Change::Metric(metric), Outcome::Recorded) => {
                backend.record_metric(agent, metric).await.map(|()| true)
            }
            (Change::Execution(execution), Outcome::Recorded) => {
                backend.log_execution(agent, execution).await.map(|()| true)
            }
            (change, outcome) => unreachable!("{} cannot end in {outcome:?}", change.describe()),
        }
    }

    /// The records of `side` for `agent` whose copies arrived, to clear with its next
    /// write.
    pub(super) fn take_done(&self, side: Side, agent: &AgentId) -> Vec<i64> {
        lock(&self.inner.done)
            .remove(&(side, agent.clone()))
            .unwrap_or_default()
    }

    /// Marks records of `side` for `agent` as arrived, and makes sure a flush follows.
    pub(super) fn give_done(&self, side: Side, agent: &AgentId, seqs: Vec<i64>) {
        if seqs.is_empty() {
            return;
        }
        lock(&self.inner.done)
            .entry((side, agent.clone()))
            .or_default()
            .extend(seqs);
        if self.inner.flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_AFTER).await;
            this.inner.flushing.store(false, Ordering::SeqCst);
            if let Err(err) = this.flush().await {
                tracing::debug!(error = %crate::Chain(&err), "journal flush failed; records replay later");
            }
        });
    }

    /// Removes now the journal records of every write that reached both sides. Records
    /// left behind (the process ended first) are only replayed again, which changes
    /// nothing; call this before a short-lived process exits to leave the journals
    /// empty.
    ///
    /// # Errors
    /// The first journal that could not be cleared (its records stay, and are cleared
    /// by a later write or flush).
    pub async fn flush(&self) -> Result<()> {
        let tickets = &self.inner.tickets;
        let clearing = tickets.open(Kind::Clear, None);
        let mark = tickets.mark();
        let done: Vec<((Side, AgentId), Vec<i64>)> = lock(&self.inner.done).drain().collect();
        let mut first_error = None;
        for ((side, agent), seqs) in done {
            let cleared = self
                .timed(side, true, self.side(side).clear_owed(&agent, &seqs))
                .await;
            if let Err(err) = cleared {
                self.give_back_quietly(side, &agent, seqs);
                first_error.get_or_insert(err);
            }
        }
        drop(clearing);
        // Records a write, a repair or another flush took out of the list before this
        // call are on their way out too: they are gone (or back) when it returns.
        let give_up = tokio::time::Instant::now() + self.inner.options.side_timeout * 2;
        tickets.wait_before(mark, Kind::Clear, None, give_up).await;
        first_error.map_or(Ok(()), Err)
    }

    /// Puts records back without scheduling a flush (after a failed one).
    fn give_back_quietly(&self, side: Side, agent: &AgentId, seqs: Vec<i64>) {
        lock(&self.inner.done)
            .entry((side, agent.clone()))
            .or_default()
            .extend(seqs);
    }
}
