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

-- Bulk backfill runs: one row per run, with its report.
create table if not exists agent_memory.backfill_runs (
    id          text primary key,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    status      text not null,
    report      jsonb
);

-- Tables a backfill has finished, so a re-run skips them.
create table if not exists agent_memory.backfill_progress (
    source_db    text not null,
    source_table text not null,
    rows_done    bigint not null default 0,
    finished_at  timestamptz,
    primary key (source_db, source_table)
);

-- An owed write that failed for a reason that will not go away (the side refuses it) is
-- parked: kept with its error, skipped by repair so it blocks no other write, and
-- retried only on request.
alter table agent_memory.owed_writes add column if not exists parked text;
alter table agent_memory.owed_writes add column if not exists parked_at timestamptz;
