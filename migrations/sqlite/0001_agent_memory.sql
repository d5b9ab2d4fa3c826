-- The library's own layout for one agent's SQLite file (<agents path>/<agent>/memory.db).
-- It mirrors the PostgreSQL contract tables without agent_id (the file is the agent), so
-- its rows move to PostgreSQL as themselves. Ids are UUID text; times are RFC 3339 UTC
-- text with microseconds, which sorts in time order; JSON is stored as text; embeddings
-- as little-endian f32 blobs.

create table if not exists agent_memories (
    id         text primary key,
    key        text unique,
    content    text not null,
    metadata   text not null default '{}',
    embedding  blob,
    created_at text not null,
    updated_at text not null
);

create table if not exists agent_tools (
    id         text primary key,
    name       text not null unique,
    content    text not null,
    metadata   text not null default '{}',
    created_at text not null,
    updated_at text not null
);

create table if not exists agent_metrics (
    id         text primary key,
    name       text not null,
    value      real,
    content    text not null,
    metadata   text not null default '{}',
    created_at text not null
);

create index if not exists agent_metrics_created on agent_metrics (created_at, id);

create table if not exists agent_executions (
    id         text primary key,
    status     text,
    content    text not null,
    metadata   text not null default '{}',
    created_at text not null
);

create index if not exists agent_executions_created on agent_executions (created_at, id);
