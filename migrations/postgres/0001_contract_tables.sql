-- The five tables of the data contract, shared with the admin application, plus the
-- library's own schema for its bookkeeping. Every statement is idempotent, so applying
-- this over a database that the admin application already created changes nothing.

create extension if not exists vector;

create schema if not exists agent_memory;

create table if not exists agents (
    id         text primary key,
    name       text not null unique,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists agent_memories (
    id         uuid primary key,
    agent_id   text not null references agents (id),
    key        text null,
    content    text not null,
    metadata   jsonb not null default '{}',
    embedding  vector null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (agent_id, key)
);

create table if not exists agent_tools (
    id         uuid primary key,
    agent_id   text not null references agents (id),
    name       text not null,
    content    text not null,
    metadata   jsonb not null default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (agent_id, name)
);

create table if not exists agent_metrics (
    id         uuid primary key,
    agent_id   text not null references agents (id),
    name       text not null,
    value      double precision null,
    content    text not null,
    metadata   jsonb not null default '{}',
    created_at timestamptz not null default now()
);

create index if not exists agent_metrics_agent_created
    on agent_metrics (agent_id, created_at);

create table if not exists agent_executions (
    id         uuid primary key,
    agent_id   text not null references agents (id),
    status     text null,
    content    text not null,
    metadata   jsonb not null default '{}',
    created_at timestamptz not null default now()
);

create index if not exists agent_executions_agent_created
    on agent_executions (agent_id, created_at);
