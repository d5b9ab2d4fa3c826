//! The dual backend's listings: by stage, and in `live` PostgreSQL's answer completed
//! with what only SQLite holds, within the listing's limit.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DualBackend, Side};
use crate::backend::replica::Replica;
use crate::config::Stage;
use crate::error::Result;
use crate::listing::Listing;
use crate::record::{AgentId, Execution, Metric, Tool};

/// What a listing lists (memory keys, tools, metrics, executions): how one side lists
/// it, the order it is listed in (which also tells two records apart: a record both
/// sides hold has the same key, name, or time and id, on both), and whether PostgreSQL's
/// bookkeeping hides a record only SQLite holds.
pub(super) trait Listed: Sized + Send + Sync {
    /// The listing's order.
    type Order: Ord + Hash + Send + Sync;

    /// One side's listing.
    fn list<'a>(
        side: &'a dyn Replica,
        agent: &'a AgentId,
        listing: &'a Listing,
    ) -> impl Future<Output = Result<Vec<Self>>> + Send + 'a;

    fn order(&self) -> Self::Order;

    /// Whether PostgreSQL recorded a delete that hides this record of SQLite's.
    fn hidden<'a>(
        &'a self,
        _postgres: &'a dyn Replica,
        _agent: &'a AgentId,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        std::future::ready(Ok(false))
    }
}

/// Implements [`Listed`] for `$record`, listed by the trait method `$list`, in the order
/// of `$by`; further items (`hidden`) follow.
macro_rules! listed {
    ($record:ty, $list:ident, $order:ty, |$it:ident| $by:expr $(, $($extra:tt)*)?) => {
        impl Listed for $record {
            type Order = $order;

            fn list<'a>(
                side: &'a dyn Replica,
                agent: &'a AgentId,
                listing: &'a Listing,
            ) -> impl Future<Output = Result<Vec<Self>>> + Send + 'a {
                side.$list(agent, listing)
            }

            fn order(&self) -> $order {
                let $it = self;
                $by
            }

            $($($extra)*)?
        }
    };
}

listed!(
    String,
    memory_keys,
    String,
    |key| key.clone(),
    /// Keys only SQLite holds are readable through the fallback, so they are listed,
    /// unless PostgreSQL recorded their delete.
    async fn hidden<'a>(&'a self, postgres: &'a dyn Replica, agent: &'a AgentId) -> Result<bool> {
        Ok(postgres.memory_tombstone(agent, self).await?.is_some())
    }
);
listed!(
    Tool,
    list_tools,
    String,
    |tool| tool.name.clone(),
    /// A tool only SQLite holds is readable through the fallback (a lazy copy), unless
    /// PostgreSQL recorded a delete of its name at or after its version.
    async fn hidden<'a>(&'a self, postgres: &'a dyn Replica, agent: &'a AgentId) -> Result<bool> {
        let deleted = postgres.tool_tombstone(agent, &self.name).await?;
        Ok(deleted.is_some_and(|at| at >= self.updated_at))
    }
);
listed!(Metric, list_metrics, (DateTime<Utc>, Uuid), |metric| (
    metric.created_at,
    metric.id
));
listed!(
    Execution,
    list_executions,
    (DateTime<Utc>, Uuid),
    |execution| (execution.created_at, execution.id)
);

impl DualBackend {
    /// A listing by `stage`: the side that serves reads answers; in `live`, see
    /// [`live_listing`](Self::live_listing).
    pub(super) async fn list_planned<T: Listed>(
        &self,
        agent: &AgentId,
        listing: &Listing,
        stage: Stage,
    ) -> Result<Vec<T>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        match stage {
            Stage::Sqlite | Stage::DualWrite | Stage::Shadow => {
                self.read(Side::Sqlite, T::list(sqlite, agent, listing))
                    .await
            }
            Stage::Live => self.live_listing(agent, listing).await,
            Stage::RampDown | Stage::Postgres => {
                self.read(Side::Postgres, T::list(postgres, agent, listing))
                    .await
            }
        }
    }

    /// A `live` listing: PostgreSQL's records, and those only SQLite holds that are
    /// readable through the fallback (not [`hidden`](Listed::hidden)), merged in the
    /// listing's order (PostgreSQL's record wins where both hold it) and cut to its
    /// limit. When PostgreSQL cannot be reached, SQLite's listing answers alone.
    ///
    /// SQLite is read in pages of the limit, doubled while hidden or duplicate records
    /// leave the answer short, and no further than PostgreSQL's last record when
    /// PostgreSQL filled the limit: the first `limit` records of the merge are then
    /// certain to be among those read.
    async fn live_listing<T: Listed>(&self, agent: &AgentId, listing: &Listing) -> Result<Vec<T>> {
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        let (mut merged, side) = self
            .live_read(
                T::list(postgres, agent, listing),
                T::list(sqlite, agent, listing),
            )
            .await?;
        if side == Side::Sqlite {
            return Ok(merged);
        }
        let limit = listing.limit.map(|n| n as usize);
        let last = match limit {
            Some(n) if merged.len() >= n => merged.last().map(T::order),
            _ => None,
        };
        let mut seen: HashSet<T::Order> = merged.iter().map(T::order).collect();
        let mut only_sqlite = Vec::new();
        let mut paged = listing.clone();
        loop {
            let found = self
                .read(Side::Sqlite, T::list(sqlite, agent, &paged))
                .await?;
            let full = paged.limit.is_some_and(|n| found.len() >= n as usize);
            let mut past_last = false;
            for record in found {
                if last.as_ref().is_some_and(|last| record.order() > *last) {
                    past_last = true;
                    break;
                }
                if seen.insert(record.order()) && !record.hidden(postgres, agent).await? {
                    only_sqlite.push(record);
                }
            }
            let enough = limit.is_some_and(|n| only_sqlite.len() >= n);
            match paged.limit {
                Some(n) if full && !past_last && !enough && n < u32::MAX => {
                    paged.limit = Some(n.saturating_mul(2));
                }
                _ => break,
            }
        }
        merged.extend(only_sqlite);
        merged.sort_by_key(T::order);
        if let Some(n) = limit {
            merged.truncate(n);
        }
        Ok(merged)
    }
}
