-- The library's own bookkeeping, in its own schema so the admin application's Prisma
-- schema sees no drift in public. Applied by the library at connect; idempotent.

create schema if not exists agent_memory;

create table if not exists agent_memory.schema_migrations (
    version    bigint primary key,
    name       text not null,
    applied_at timestamptz not null default now()
);

-- Deleted memory keys, so a copy from SQLite never brings a deleted key back.
create table if not exists agent_memory.memory_tombstones (
    agent_id   text not null,
    key        text not null,
    deleted_at timestamptz not null,
    primary key (agent_id, key)
);

-- Writes owed to the SQLite side that it missed, replayed by repair.
create table if not exists agent_memory.owed_writes (
    seq        bigserial primary key,
    agent_id   text not null,
    op         text not null,
    created_at timestamptz not null default now()
);

create index if not exists owed_writes_agent on agent_memory.owed_writes (agent_id, seq);
