-- Deleted tool names, so a delete is never undone by a copy from the other side, as
-- agent_memory_tombstones does for memory keys.

create table if not exists agent_tool_tombstones (
    name       text primary key,
    deleted_at text not null
);
