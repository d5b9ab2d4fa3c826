-- Deleted tool names, so a copy from SQLite never brings a deleted tool back (as
-- memory_tombstones does for memory keys). Applied with bookkeeping.sql, after it, at
-- connect and by the migrator; idempotent.

create table if not exists agent_memory.tool_tombstones (
    agent_id   text not null,
    name       text not null,
    deleted_at timestamptz not null,
    primary key (agent_id, name)
);
