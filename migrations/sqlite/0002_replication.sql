-- Bookkeeping for running beside PostgreSQL: deleted keys (so a delete is never undone
-- by a copy from the other side) and the writes owed to PostgreSQL that it missed.

create table if not exists agent_memory_tombstones (
    key        text primary key,
    deleted_at text not null
);

create table if not exists agent_memory_owed (
    seq        integer primary key autoincrement,
    op         text not null,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
