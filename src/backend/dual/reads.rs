//! The dual backend's reads: by stage, with the `live` fallback to SQLite, lazy copies
//! of what only SQLite holds, and the compared reads of `shadow` and `live`.

use std::future::Future;
use std::sync::atomic::Ordering;

use super::stats::bump;
use super::{DualBackend, Side, same_memory, same_tool};
use crate::config::Stage;
use crate::error::Result;
use crate::record::{AgentId, Memory, Tool};
use crate::vector::{Neighbor, VectorQuery};

impl DualBackend {
    pub(super) async fn get_memory_planned(
        &self,
        agent: &AgentId,
        key: &str,
        stage: Stage,
    ) -> Result<Option<Memory>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match stage {
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

    pub(super) async fn search_planned(
        &self,
        agent: &AgentId,
        query: &VectorQuery,
        stage: Stage,
    ) -> Result<Vec<Neighbor>> {
        // The authoritative side answers; in `live`, SQLite only when PostgreSQL cannot
        // be reached (memories not yet copied are found after the backfill has run).
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match stage {
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

    pub(super) async fn get_tool_planned(
        &self,
        agent: &AgentId,
        name: &str,
        stage: Stage,
    ) -> Result<Option<Tool>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match stage {
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

    // Replication calls on the dual backend itself go to its authoritative side: a dual
    // backend can be the target of a backfill or of another replica.

    /// Counts and logs a compared read.
    fn record_comparison(&self, agent: &AgentId, what: &str, same: bool) {
        bump(&self.inner.counters.shadow_compares);
        if !same {
            bump(&self.inner.counters.shadow_mismatches);
            self.count_for(agent, |c| c.shadow_mismatches += 1);
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
        self.count_for(agent, |c| c.fallback_reads += 1);
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
                self.count_for(agent, |c| c.lazy_copies += 1);
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
        self.count_for(agent, |c| c.fallback_reads += 1);
        match self
            .timed(
                Side::Postgres,
                true,
                self.side(Side::Postgres).apply_tool(agent, &found),
            )
            .await?
        {
            Some(copied) => {
                bump(&self.inner.counters.lazy_copies);
                self.count_for(agent, |c| c.lazy_copies += 1);
                Ok(Some(copied))
            }
            // A newer registration is there: it stands.
            None => self.side(Side::Postgres).get_tool(agent, name).await,
        }
    }

    /// Reads from `side` only, counted and timed.
    pub(super) async fn read<T>(
        &self,
        side: Side,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.timed(side, false, call).await
    }

    /// A `live` read of PostgreSQL; if PostgreSQL cannot be reached, `fallback` answers.
    /// Returns the answer and the side that gave it.
    pub(super) async fn live_read<T>(
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
