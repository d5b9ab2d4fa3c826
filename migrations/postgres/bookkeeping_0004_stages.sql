-- Migration stages held centrally: every process of an agent follows its row here at
-- run time (LISTEN agent_memory_stages for speed, a periodic read as the fallback).
-- Applied with bookkeeping.sql, after it, at connect and by the migrator; idempotent.

-- The stage of each agent named here, by its name; the row of agent '' is the default
-- of every agent not named. An agent with no row and no default row stays at the stage
-- its process started with (MEMORY_STAGE).
create table if not exists agent_memory.stages (
    agent      text primary key,
    stage      text not null,
    changed_at timestamptz not null default now()
);

-- Every change of a stage: when, of which agent ('' for the default), from what (null
-- when there was no row), to what, why, by whom, and whether a guard rail was overridden.
create table if not exists agent_memory.stage_history (
    id         bigserial primary key,
    at         timestamptz not null default now(),
    agent      text not null,
    from_stage text,
    to_stage   text not null,
    reason     text not null default '',
    changed_by text not null,
    forced     boolean not null default false
);
create index if not exists stage_history_agent on agent_memory.stage_history (agent, id);

-- What an agent's reads met at a stage, summed over its processes (each adds what it
-- counted every few seconds): compared reads whose sides disagreed, reads that missed
-- PostgreSQL and found the row in SQLite, and rows those copied. A change of stage
-- starts the new stage's counts from zero.
create table if not exists agent_memory.stage_counters (
    agent             text not null,
    stage             text not null,
    shadow_mismatches bigint not null default 0,
    fallback_reads    bigint not null default 0,
    lazy_copies       bigint not null default 0,
    updated_at        timestamptz not null default now(),
    primary key (agent, stage)
);
