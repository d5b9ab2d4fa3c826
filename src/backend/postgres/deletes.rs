//! Deletes of what an agent keeps by name, memories by key and tools by name, in
//! PostgreSQL: the authoritative delete, the copy of a delete from SQLite, and the
//! tombstones (in the library's `agent_memory` schema) that keep a deleted name deleted.

use chrono::{DateTime, Utc};

use super::PostgresBackend;
use crate::backend::replica::Change;
use crate::error::Result;
use crate::record::AgentId;

/// The statements of one kind of record kept by name.
#[derive(Debug, Clone, Copy)]
pub(super) struct Named {
    /// For messages: `memory`, `tool`.
    pub(super) what: &'static str,
    /// As the authoritative side, with its journal record: $1 the agent's row id, $2 the
    /// name, $3 the writer's clock, $4-$8 unused, $9 the agent's name, $10 the record,
    /// $11 records to clear; returns `deleted_at`, `seq` and `held`: whether a value was
    /// there when the tombstone was written (the tombstone outranks it). The value goes
    /// after the tombstone has committed, by `delete_up_to`; by then a repair or a copy
    /// may have taken it already, seeing the tombstone, so `held` is what says the
    /// delete found a value.
    pub(super) commit: &'static str,
    /// Deletes the value unless it is newer than the delete ($1 row id, $2 name, $3 the
    /// delete's version).
    pub(super) delete_up_to: &'static str,
    /// Takes back a value that a delete committed meanwhile outranks ($1 row id, $2 name,
    /// $3 the agent's name): an insert does not see a tombstone committed while it ran,
    /// and that delete may not have seen the new row. Run after every replicated write
    /// of the name, it sees every tombstone committed before it.
    pub(super) drop_deleted: &'static str,
    /// Records a tombstone, never moving one back ($1 the agent's name, $2 name, $3 at).
    tombstone: &'static str,
    /// Reads the tombstone ($1 the agent's name, $2 name).
    read_tombstone: &'static str,
}

/// The statements of `$what` records in `$table`, named by column `$name`, with their
/// tombstones in `agent_memory.$tombstones`.
macro_rules! named {
    ($what:literal, $table:literal, $name:literal, $tombstones:literal) => {
        Named {
            what: $what,
            commit: concat!(
                "with tomb as (
                    insert into agent_memory.", $tombstones, " (agent_id, ", $name, ", deleted_at)
                    values ($9, $2, greatest($3,
                        (select updated_at + interval '1 microsecond' from ", $table, "
                         where agent_id = $1 and ", $name, " = $2)))
                    on conflict (agent_id, ", $name, ") do update
                    set deleted_at = greatest(", $tombstones, ".deleted_at, excluded.deleted_at)
                    returning deleted_at),
                owed as (insert into agent_memory.owed_writes (agent_id, op)
                         select $9, $10 where $10::text is not null returning seq),
                cleared as (delete from agent_memory.owed_writes
                            where agent_id = $9 and seq = any($11))
                select (select deleted_at from tomb) as deleted_at, (select seq from owed) as seq,
                    exists (select 1 from ", $table, " where agent_id = $1 and ", $name, " = $2)
                    as held"
            ),
            delete_up_to: concat!(
                "delete from ", $table, " where agent_id = $1 and ", $name, " = $2
                 and updated_at <= $3"
            ),
            drop_deleted: concat!(
                "delete from ", $table, " v using agent_memory.", $tombstones, " t
                 where v.agent_id = $1 and v.", $name, " = $2 and t.agent_id = $3
                 and t.", $name, " = $2 and v.updated_at <= t.deleted_at"
            ),
            tombstone: concat!(
                "insert into agent_memory.", $tombstones, " (agent_id, ", $name, ", deleted_at)
                 values ($1, $2, $3)
                 on conflict (agent_id, ", $name, ") do update
                 set deleted_at = greatest(", $tombstones, ".deleted_at, excluded.deleted_at)"
            ),
            read_tombstone: concat!(
                "select deleted_at from agent_memory.", $tombstones, "
                 where agent_id = $1 and ", $name, " = $2"
            ),
        }
    };
}

pub(super) const MEMORIES: Named = named!("memory", "agent_memories", "key", "memory_tombstones");

pub(super) const TOOLS: Named = named!("tool", "agent_tools", "name", "tool_tombstones");

impl PostgresBackend {
    /// A delete as this backend's own (journaling nothing); whether there was a value.
    pub(super) async fn delete_own(&self, agent: &AgentId, change: Change<'_>) -> Result<bool> {
        Ok(self
            .commit_change(agent, change, None, &[])
            .await?
            .existed())
    }

    /// A delete copied from SQLite. The tombstone commits first, so any copy that started
    /// before it sees it in its closing check (`drop_deleted`), and any that starts after
    /// it sees it at once.
    pub(super) async fn apply_delete(
        &self,
        agent: &AgentId,
        named: Named,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let fail = || format!("delete {} {name:?} of agent {agent:?}", named.what);
        let row_id = self.agent_row_if_any(agent).await?;
        self.on_lease(fail, async |c| {
            sqlx::query(named.tombstone)
                .bind(agent.as_str())
                .bind(name)
                .bind(at)
                .execute(&mut *c)
                .await?;
            let Some(row_id) = &row_id else {
                return Ok(false);
            };
            let done = sqlx::query(named.delete_up_to)
                .bind(row_id)
                .bind(name)
                .bind(at)
                .execute(c)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// When `name` was last deleted, if this database recorded a delete of it.
    pub(super) async fn tombstone_of(
        &self,
        agent: &AgentId,
        named: Named,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        self.on_lease(
            || {
                format!(
                    "read tombstone of {} {name:?} of agent {agent:?}",
                    named.what
                )
            },
            async |c| {
                sqlx::query_scalar(named.read_tombstone)
                    .bind(agent.as_str())
                    .bind(name)
                    .fetch_optional(c)
                    .await
            },
        )
        .await
    }
}
