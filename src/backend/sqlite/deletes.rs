//! Deletes of what an agent keeps by name, memories by key and tools by name, in its
//! SQLite file: the authoritative delete, the copy of a delete from the other side, and
//! the tombstones that keep a deleted name deleted.

use chrono::{DateTime, Utc};
use sqlx::{Connection, Row, SqliteConnection};

use super::SqliteBackend;
use super::sql::{DELETE_MEMORY, next_version_sql};
use crate::backend::codec::{parse_time, time_text};
use crate::backend::replica::{Change, Outcome, Replica};
use crate::error::Result;
use crate::record::AgentId;

/// The statements of one kind of record kept by name; each takes the name as `?1`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Named {
    /// For messages: `memory`, `tool`.
    what: &'static str,
    /// As the authoritative side (`?2` the writer's clock): a tombstone past the value it
    /// deletes, never earlier than one already there; returns `deleted_at`.
    commit_tombstone: &'static str,
    /// Deletes the value, whatever its version (after `commit_tombstone`).
    delete: &'static str,
    /// Deletes the value unless it is newer than `?2`.
    delete_up_to: &'static str,
    /// Records a tombstone at `?2`, never moving one back.
    tombstone: &'static str,
    /// Reads the tombstone.
    read_tombstone: &'static str,
}

pub(super) const MEMORIES: Named = Named {
    what: "memory",
    commit_tombstone: DELETE_MEMORY,
    delete: "delete from agent_memories where key = ?1",
    delete_up_to: "delete from agent_memories where key = ?1 and updated_at <= ?2",
    tombstone: "insert into agent_memory_tombstones (key, deleted_at) values (?1, ?2)
        on conflict (key) do update set deleted_at = max(deleted_at, excluded.deleted_at)",
    read_tombstone: "select deleted_at from agent_memory_tombstones where key = ?1",
};

pub(super) const TOOLS: Named = Named {
    what: "tool",
    commit_tombstone: concat!(
        "insert into agent_tool_tombstones (name, deleted_at) values (?1, ",
        next_version_sql!(
            "?2",
            "coalesce((select updated_at from agent_tools where name = ?1), ''), ''"
        ),
        ")
        on conflict (name) do update set deleted_at = max(deleted_at, excluded.deleted_at)
        returning deleted_at"
    ),
    delete: "delete from agent_tools where name = ?1",
    delete_up_to: "delete from agent_tools where name = ?1 and updated_at <= ?2",
    tombstone: "insert into agent_tool_tombstones (name, deleted_at) values (?1, ?2)
        on conflict (name) do update set deleted_at = max(deleted_at, excluded.deleted_at)",
    read_tombstone: "select deleted_at from agent_tool_tombstones where name = ?1",
};

impl SqliteBackend {
    /// A delete as this backend's own (journaling nothing); whether there was a value.
    /// Without a file there is nothing to delete and no replay to guard against, so a
    /// delete for an unknown agent creates nothing (replicated deletes do record one).
    pub(super) async fn delete_own(&self, agent: &AgentId, change: Change<'_>) -> Result<bool> {
        if self.reader(agent).await?.is_none() {
            return Ok(false);
        }
        Ok(self.commit(agent, change, false, &[]).await?.existed())
    }

    /// The body of a delete in [`Replica::commit`], inside its transaction: the
    /// tombstone first, while the value it deletes is there to be past, then the value.
    pub(super) async fn delete_in(
        conn: &mut SqliteConnection,
        named: Named,
        name: &str,
        at: DateTime<Utc>,
    ) -> std::result::Result<Outcome, sqlx::Error> {
        let rows = sqlx::query(named.commit_tombstone)
            .bind(name)
            .bind(time_text(&at))
            .fetch_all(&mut *conn)
            .await?;
        let Some(row) = rows.first() else {
            return Err(sqlx::Error::RowNotFound);
        };
        let at = parse_time(row.get("deleted_at"), || "stored version".to_string())
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let done = sqlx::query(named.delete)
            .bind(name)
            .execute(&mut *conn)
            .await?;
        Ok(Outcome::Deleted {
            existed: done.rows_affected() > 0,
            at,
        })
    }

    /// A delete copied from the other side ([`Replica::apply_memory_delete`],
    /// [`Replica::apply_tool_delete`]). The tombstone is needed even when nothing is
    /// stored yet: an older write still owed to this side (in the other side's journal)
    /// may be replayed after it.
    pub(super) async fn apply_delete(
        &self,
        agent: &AgentId,
        named: Named,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let pool = self.writer(agent).await?;
        let at = time_text(&at);
        let deleted = async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with("begin immediate").await?;
            let done = sqlx::query(named.delete_up_to)
                .bind(name)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(named.tombstone)
                .bind(name)
                .bind(&at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(done.rows_affected() > 0)
        };
        deleted
            .await
            .map_err(self.fail(|| format!("delete {} {name:?} of agent {agent:?}", named.what)))
    }

    /// When `name` was last deleted, if this file recorded a delete of it.
    pub(super) async fn tombstone_of(
        &self,
        agent: &AgentId,
        named: Named,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let Some(pool) = self.reader(agent).await? else {
            return Ok(None);
        };
        let what = || format!("tombstone of {} {name:?} of agent {agent:?}", named.what);
        let at: Option<String> = sqlx::query_scalar(named.read_tombstone)
            .bind(name)
            .fetch_optional(&pool)
            .await
            .map_err(self.fail(|| format!("read {}", what())))?;
        at.map(|t| parse_time(&t, what)).transpose()
    }
}
