-- What a backfill needs to bring PostgreSQL to a legacy table's current state on a later
-- run, cheaply: per table, the map it was moved with and a stamp of its file; per chunk
-- of rows, a digest and the rowids it held. Applied with bookkeeping.sql, after it, at
-- connect and by the migrator; idempotent.

-- One row per legacy table a backfill has brought up to date. `source` is the name the
-- operator gave the agents tree (`--source`), '' when none.
create table if not exists agent_memory.backfill_tables (
    source       text not null default '',
    source_db    text not null,
    source_table text not null,
    -- The contract table its rows went to, and the map that converted them (JSON);
    -- a later run with another map moves the rows again.
    target       text not null,
    spec         jsonb not null,
    -- The file's size, times and change counters when the table was last read whole; a
    -- later run that finds the same stamp (and the same spec) reads nothing.
    file_stamp   text,
    rows         bigint not null default 0,
    max_rowid    bigint,
    run_id       text not null,
    caught_up_at timestamptz not null default now(),
    primary key (source, source_db, source_table)
);

-- Rows of a legacy table in chunks (rowids chunk * 1024 .. chunk * 1024 + 1023; a
-- WITHOUT ROWID table is one chunk, -2^63): how many, an order-independent digest of
-- their ids and contents, and each row's rowid (a little-endian int8; in a WITHOUT ROWID
-- table its 16-byte id) followed by its own 8-byte digest, so a later run finds which
-- rows changed and which were deleted.
create table if not exists agent_memory.backfill_chunks (
    source       text not null default '',
    source_db    text not null,
    source_table text not null,
    chunk        bigint not null,
    rows         integer not null,
    digest       bytea not null,
    members      bytea not null,
    primary key (source, source_db, source_table, chunk)
);

-- What each run was asked to do: its source, the agents path it read (absolute, on
-- which host), its maps and options, so --verify and later runs can reuse them and a
-- run can say when the same paths come from another tree.
alter table agent_memory.backfill_runs add column if not exists source text not null default '';
alter table agent_memory.backfill_runs add column if not exists host text;
alter table agent_memory.backfill_runs add column if not exists agents_path text;
alter table agent_memory.backfill_runs add column if not exists options jsonb;
