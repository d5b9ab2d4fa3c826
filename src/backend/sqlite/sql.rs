//! The statements of the SQLite backend's calls and copies.

// A write of the authoritative side is one `begin immediate` transaction (it takes the
// write lock at once, so reading the replaced version first never fails on an upgrade
// to a write lock); a copy from the other side is one statement. Statements with
// `returning` are stepped to their end (`fetch_all`): SQLite finishes, and in autocommit
// commits, a statement only then, and an error there (a full disk) must reach the
// caller. Times are fixed-width text, so text order is time order.

/// Reads one memory by key.
pub(crate) const GET_MEMORY: &str =
    "select id, key, content, metadata, embedding, created_at, updated_at
     from agent_memories where key = ?";

/// The version a write as the authoritative side takes (SQL for `Replica::commit`): the
/// writer's clock `?7` (`?6` for tools), or one microsecond past `r`, the later of the
/// replaced version and the key's last delete, when `r` is as late or later. Times are
/// fixed-width text (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), so text order is time order and the
/// microseconds are characters 21-26.
macro_rules! next_version_sql {
    ($clock:literal, $replaced:literal) => {
        concat!(
            "(select case
                when r is null or r < ",
            $clock,
            " then ",
            $clock,
            "
                when substr(r, 21, 6) = '999999'
                    then strftime('%Y-%m-%dT%H:%M:%S', substr(r, 1, 19), '+1 seconds')
                         || '.000000Z'
                else substr(r, 1, 20) || printf('%06d', substr(r, 21, 6) + 1) || 'Z'
              end
              from (select nullif(max(",
            $replaced,
            "), '') as r))"
        )
    };
}

pub(super) use next_version_sql;

/// Stores a memory as the authoritative side: its version moves past the replaced one
/// and the key's last delete (see `next_version_sql`); returns the id, `created_at` and
/// version now stored.
pub(crate) const PUT_MEMORY: &str = concat!(
    "insert into agent_memories
        (id, key, content, metadata, embedding, created_at, updated_at)
    values (?1, ?2, ?3, ?4, ?5, ?6, ",
    next_version_sql!(
        "?7",
        "coalesce((select updated_at from agent_memories where key = ?2), ''),
         coalesce((select deleted_at from agent_memory_tombstones where key = ?2), '')"
    ),
    ")
    on conflict (key) do update set
        content = excluded.content, metadata = excluded.metadata,
        embedding = excluded.embedding, updated_at = excluded.updated_at
    returning id, created_at, updated_at"
);

/// Stores a memory over older versions only: the select's WHERE skips keys deleted at
/// or after this version, the upsert's WHERE skips newer values; of two values with the
/// same version, the one whose content sorts later (by bytes) wins, as in PostgreSQL.
pub(super) const APPLY_MEMORY: &str = "insert into agent_memories
        (id, key, content, metadata, embedding, created_at, updated_at)
    select ?1, ?2, ?3, ?4, ?5, ?6, ?7
    where not exists (select 1 from agent_memory_tombstones
                      where key = ?2 and deleted_at >= ?7)
    on conflict (key) do update set
        content = excluded.content, metadata = excluded.metadata,
        embedding = excluded.embedding, updated_at = excluded.updated_at
    where agent_memories.updated_at < excluded.updated_at
       or (agent_memories.updated_at = excluded.updated_at
           and agent_memories.content < excluded.content)
    returning id, created_at";

/// Registers a tool as the authoritative side, its version moving past the replaced
/// one and the name's last delete; returns the id, `created_at` and version now stored.
pub(super) const PUT_TOOL: &str = concat!(
    "insert into agent_tools (id, name, content, metadata, created_at, updated_at)
    values (?1, ?2, ?3, ?4, ?5, ",
    next_version_sql!(
        "?6",
        "coalesce((select updated_at from agent_tools where name = ?2), ''),
         coalesce((select deleted_at from agent_tool_tombstones where name = ?2), '')"
    ),
    ")
    on conflict (name) do update set
        content = excluded.content, metadata = excluded.metadata,
        updated_at = excluded.updated_at
    returning id, created_at, updated_at"
);

/// Registers a tool over older versions only, and not over a delete at or after it.
pub(super) const APPLY_TOOL: &str =
    "insert into agent_tools (id, name, content, metadata, created_at, updated_at)
    select ?1, ?2, ?3, ?4, ?5, ?6
    where not exists (select 1 from agent_tool_tombstones
                      where name = ?2 and deleted_at >= ?6)
    on conflict (name) do update set
        content = excluded.content, metadata = excluded.metadata,
        updated_at = excluded.updated_at
    where agent_tools.updated_at < excluded.updated_at
       or (agent_tools.updated_at = excluded.updated_at
           and agent_tools.content < excluded.content)
    returning id, created_at";

/// Records a delete as the authoritative side ($1 key, $2 the writer's clock): a
/// tombstone past the value it deletes (and never earlier than one already there);
/// returns its time. The rows go in a second statement of the same transaction.
pub(super) const DELETE_MEMORY: &str = concat!(
    "insert into agent_memory_tombstones (key, deleted_at) values (?1, ",
    next_version_sql!(
        "?2",
        "coalesce((select updated_at from agent_memories where key = ?1), ''), ''"
    ),
    ")
    on conflict (key) do update set deleted_at = max(deleted_at, excluded.deleted_at)
    returning deleted_at"
);

/// Records a metric; its id makes a second record of it a no-op.
pub(super) const RECORD_METRIC: &str = "insert into agent_metrics
        (id, name, value, content, metadata, created_at)
    values (?, ?, ?, ?, ?, ?) on conflict (id) do nothing";

/// Logs an execution; its id makes a second log of it a no-op.
pub(super) const LOG_EXECUTION: &str = "insert into agent_executions
        (id, status, content, metadata, created_at)
    values (?, ?, ?, ?, ?) on conflict (id) do nothing";
