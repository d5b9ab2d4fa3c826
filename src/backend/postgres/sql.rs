//! The statements of the PostgreSQL backend's calls and of its outbox.

/// Reads one memory of an agent by key.
pub(crate) const GET_MEMORY: &str =
    "select id, key, content, metadata, embedding, created_at, updated_at
     from agent_memories where agent_id = $1 and key = $2";

// The authoritative side's writes (see `replica::Replica::commit`): the change, its
// journal record ($10, none when null) and the removal of replayed records ($11) are one
// statement, so one transaction. A key's new version is past the one it replaces and
// past its last delete. $9 is the agent's name, which the bookkeeping is keyed by.

/// The upsert of [`PUT_MEMORY`], which also runs alone when there is no journal record
/// to write and none to clear.
macro_rules! put_memory_upsert {
    () => {
        "insert into agent_memories
            (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, $7, greatest($8,
            (select deleted_at + interval '1 microsecond' from agent_memory.memory_tombstones
             where agent_id = $9 and key = $3)))
        on conflict (agent_id, key) do update set
            content = excluded.content, metadata = excluded.metadata,
            embedding = excluded.embedding,
            updated_at = greatest(excluded.updated_at,
                                  agent_memories.updated_at + interval '1 microsecond')
        returning id, created_at, updated_at"
    };
}

/// Stores a memory: $1 id, $2 the agent's row id, $3 key, $4 content, $5 metadata, $6
/// embedding, $7 created_at, $8 the writer's clock; returns the id, `created_at` and
/// version now stored, and the journal record's sequence number.
pub(crate) const PUT_MEMORY: &str = concat!(
    "with stored as (",
    put_memory_upsert!(),
    "),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 from stored where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select id, created_at, updated_at, (select seq from owed) as seq from stored"
);

/// [`PUT_MEMORY`] without a journal record or records to clear ($10 and $11 unused).
pub(crate) const PUT_MEMORY_PLAIN: &str = concat!(put_memory_upsert!(), ", null::bigint as seq");

/// Registers a tool ($1 id, $2 row id, $3 name, $4 content, $5 metadata, $6 created_at,
/// $7 the writer's clock); its version is past the one it replaces and the name's last
/// delete.
pub(super) const PUT_TOOL: &str = "with stored as (
        insert into agent_tools
            (id, agent_id, name, content, metadata, created_at, updated_at)
        values ($1, $2, $3, $4, $5, $6, greatest($7,
            (select deleted_at + interval '1 microsecond' from agent_memory.tool_tombstones
             where agent_id = $9 and name = $3)))
        on conflict (agent_id, name) do update set
            content = excluded.content, metadata = excluded.metadata,
            updated_at = greatest(excluded.updated_at,
                                  agent_tools.updated_at + interval '1 microsecond')
        returning id, created_at, updated_at),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 from stored where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select id, created_at, updated_at, (select seq from owed) as seq from stored";

/// The id a row of agent `$2` (its row id) is stored under in `table`: its own, `$1`,
/// unless another agent's row has it (an agent folder copied from another's), then
/// `copied`, the id [`copied_row_id`](super::copied_row_id) gives it. The one rule of
/// every statement that stores a row under an id it did not make itself: a copy between
/// the dual backend's sides (lazy copies included), a backfill of the library's files.
macro_rules! own_id {
    ($table:literal, $copied:literal) => {
        concat!(
            "case when exists (select 1 from ",
            $table,
            " o where o.id = $1 and o.agent_id <> $2) then ",
            $copied,
            " else $1 end"
        )
    };
}
pub(super) use own_id;

/// Records a metric ($8: its [`own_id!`] when another agent holds `$1`); its id makes a
/// second record of it a no-op.
pub(super) const RECORD_METRIC: &str = concat!(
    "with recorded as (
        insert into agent_metrics (id, agent_id, name, value, content, metadata, created_at)
        values (",
    own_id!("agent_metrics", "$8::uuid"),
    ", $2, $3, $4, $5, $6, $7) on conflict (id) do nothing),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select (select seq from owed) as seq"
);

/// Logs an execution ($8 as in [`RECORD_METRIC`]); its id makes a second log of it a
/// no-op.
pub(super) const LOG_EXECUTION: &str = concat!(
    "with logged as (
        insert into agent_executions (id, agent_id, status, content, metadata, created_at)
        values (",
    own_id!("agent_executions", "$8::uuid"),
    ", $2, $3, $4, $5, $6) on conflict (id) do nothing),
    owed as (insert into agent_memory.owed_writes (agent_id, op)
             select $9, $10 where $10::text is not null returning seq),
    cleared as (delete from agent_memory.owed_writes where agent_id = $9 and seq = any($11))
    select (select seq from owed) as seq"
);
