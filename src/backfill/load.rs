//! Loading one batch of contract rows into PostgreSQL: into a staging table, settle
//! key and name conflicts, insert what is not there yet, all in one transaction.

use std::borrow::Cow;
use std::collections::BTreeMap;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::backend::agent_rows::{AgentRowError, agent_row_id};
use crate::legacy::{ContractRecord, ContractRow, Target};
use crate::record::AgentId;

/// The per-connection staging table every batch is copied into (emptied at commit).
/// `agent_id` is the id of the agent's `agents` row, `agent_name` its name.
const STAGE: &str = "create temp table if not exists am_stage (
        id uuid not null, agent_id text not null, agent_name text not null, key text, name text,
        value double precision, status text, content text not null,
        metadata jsonb not null, created_at timestamptz not null,
        updated_at timestamptz not null, source_db text not null, source_rowid bigint,
        embedding vector
    ) on commit delete rows";

/// A batch's rows as one array per column, and the columns' names: what the staging
/// insert and the direct insert read their rows from, in a single protocol message.
/// (sqlx 0.9.0's COPY sends its data and its end in two writes without TCP_NODELAY, so
/// every batch waited out the server's delayed acknowledgement: about 40 ms.)
macro_rules! unnest_rows {
    () => {
        " from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::float8[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                $11::timestamptz[], $12::text[], $13::int8[], $14::vector[])
         as t(id, agent_id, agent_name, key, name, value, status, content, metadata,
              created_at, updated_at, source_db, source_rowid, embedding)"
    };
}

/// Fills the staging table from the batch's column arrays.
const STAGE_ROWS: &str = concat!(
    "insert into am_stage (id, agent_id, agent_name, key, name, value,
        status, content, metadata, created_at, updated_at, source_db, source_rowid, embedding)
    select id, agent_id, agent_name, key, name, value, status, content, metadata::jsonb,
           created_at, updated_at, source_db, source_rowid, embedding",
    unnest_rows!()
);

/// The fast path: a batch that conflicts with nothing goes straight into its contract
/// table. A row whose id, memory key or tool name is taken fails the statement on the
/// table's unique index, and the batch takes the staging path instead. Rows whose memory
/// key or tool name was deleted through the library are left out (tombstones matched as
/// in `MEMORY_DELETED`).
fn direct_insert(target: Target) -> &'static str {
    match target {
        Target::Memories => concat!(
            "insert into agent_memories
                (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
            select id, agent_id, key, content, metadata::jsonb, embedding, created_at,
                   updated_at",
            unnest_rows!(),
            " where t.key is null
                or not exists (select 1 from agent_memory.memory_tombstones d
                               where d.agent_id in (t.agent_id, t.agent_name)
                                 and d.key = t.key)"
        ),
        Target::Tools => concat!(
            "insert into agent_tools
                (id, agent_id, name, content, metadata, created_at, updated_at)
            select id, agent_id, name, content, metadata::jsonb, created_at, updated_at",
            unnest_rows!(),
            " where not exists (select 1 from agent_memory.tool_tombstones d
                               where d.agent_id in (t.agent_id, t.agent_name)
                                 and d.name = t.name)"
        ),
        Target::Metrics => concat!(
            "insert into agent_metrics (id, agent_id, name, value, content, metadata, created_at)
            select id, agent_id, name, value, content, metadata::jsonb, created_at",
            unnest_rows!()
        ),
        Target::Executions => concat!(
            "insert into agent_executions (id, agent_id, status, content, metadata, created_at)
            select id, agent_id, status, content, metadata::jsonb, created_at",
            unnest_rows!()
        ),
    }
}

/// The one rule for which of several legacy rows of an agent keeps a key (or a tool
/// name): the greatest `(created_at, source_db, source_rowid, id)`, that is the newest,
/// then the later file, then the later row (a row without a rowid, from a WITHOUT ROWID
/// table, below any with one), then the greater id. Every statement that settles a
/// conflict, within a batch or against rows loaded before, ranks rows by it, so the
/// winner does not depend on how the rows were split into batches.
macro_rules! conflict_rank {
    ($created_at:literal, $source_db:literal, $source_rowid:literal, $id:literal) => {
        concat!(
            "(",
            $created_at,
            ", ",
            $source_db,
            ", coalesce(",
            $source_rowid,
            ", -9223372036854775808), ",
            $id,
            ")"
        )
    };
}

/// `conflict_rank!` of a staged row.
macro_rules! staged_rank {
    () => {
        conflict_rank!("created_at", "source_db", "source_rowid", "id")
    };
}

/// Legacy rows of one agent that share a key: the first by `conflict_rank!` keeps it;
/// the others arrive with no key and `metadata.key_conflict`. Step 1, within the batch.
const MEMORY_RANK_IN_BATCH: &str = concat!(
    "update am_stage s
    set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key)
    from (select id, row_number() over (
              partition by agent_id, key order by ",
    staged_rank!(),
    " desc) as rank
          from am_stage where key is not null) r
    where s.id = r.id and r.rank > 1"
);

/// Step 2: a legacy row holding the key in PostgreSQL that ranks below the staged one
/// gives it up.
const MEMORY_DEMOTE_OLDER: &str = concat!(
    "update agent_memories m
    set key = null, metadata = m.metadata || jsonb_build_object('key_conflict', m.key)
    from am_stage s
    where m.agent_id = s.agent_id and m.key = s.key and m.id <> s.id
      and m.metadata ? 'source_table' and m.metadata ? 'source_db'
      and ",
    conflict_rank!(
        "m.created_at",
        "m.metadata->>'source_db'",
        "(m.metadata->>'source_rowid')::bigint",
        "m.id"
    ),
    " < ",
    conflict_rank!("s.created_at", "s.source_db", "s.source_rowid", "s.id"),
    "
      and not exists (select 1 from agent_memories x where x.id = s.id)"
);

/// Step 3: a key still held by another row (a newer legacy row, or one the agents
/// wrote) is not taken.
///
/// Written as a scalar subquery with `limit 1`, which the planner keeps as one probe of
/// the (agent_id, key) index per staged row. As a plain `exists`, which the planner may
/// turn into a join over the whole growing table, a first run of 250,000 rows took about
/// a quarter longer (measured against this form, same file, same server).
const MEMORY_KEEP_OUT: &str = "update am_stage s
    set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key)
    where s.key is not null
      and coalesce((select true from agent_memories m
                    where m.agent_id = s.agent_id and m.key = s.key and m.id <> s.id
                    limit 1), false)";

/// A legacy row whose memory key was deleted through the library never comes back,
/// with or without its key: the delete outranks every legacy row of the key. Tombstones
/// are the library's bookkeeping: matched under the agent's row id or its name,
/// whichever the backend records them by.
const MEMORY_DELETED: &str = "delete from am_stage s
    where s.key is not null
      and exists (select 1 from agent_memory.memory_tombstones t
                  where t.agent_id in (s.agent_id, s.agent_name) and t.key = s.key)";

const MEMORY_INSERT: &str = "insert into agent_memories
        (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
    select id, agent_id, key, content, metadata, embedding, created_at, updated_at from am_stage
    on conflict (id) do nothing";

/// A tool whose name was deleted through the library is not registered again by a
/// legacy row. Tombstones are matched as in `MEMORY_DELETED`.
const TOOL_DELETED: &str = "delete from am_stage s
    where exists (select 1 from agent_memory.tool_tombstones t
                  where t.agent_id in (s.agent_id, s.agent_name) and t.name = s.name)";

/// Tool names are unique per agent too: of the rows of a name in a batch, the first by
/// `conflict_rank!` keeps it, and every other row, and a row whose name a tool already
/// has, arrives renamed, with `metadata.name_conflict` holding the name. A new name
/// longer than the library's limit (`MAX_KEY_BYTES`, 1024 bytes) is the row's id instead.
const TOOL_RENAME: &str = concat!(
    "update am_stage s
    set name = case
            when octet_length(s.name || ' (' || s.source_db || ':'
                              || coalesce(s.source_rowid::text, s.id::text) || ')') <= 1024
            then s.name || ' (' || s.source_db || ':'
                 || coalesce(s.source_rowid::text, s.id::text) || ')'
            else s.id::text
        end,
        metadata = s.metadata || jsonb_build_object('name_conflict', s.name)
    from (select id, row_number() over (partition by agent_id, name order by ",
    staged_rank!(),
    " desc) as rank
          from am_stage) r
    where s.id = r.id
      and (r.rank > 1 or exists (select 1 from agent_tools t
                                 where t.agent_id = s.agent_id and t.name = s.name
                                   and t.id <> s.id))"
);

// TOOL_RENAME's limit is the library's.
const _: () = assert!(crate::record::MAX_KEY_BYTES == 1024);

const TOOL_INSERT: &str = "insert into agent_tools
        (id, agent_id, name, content, metadata, created_at, updated_at)
    select id, agent_id, name, content, metadata, created_at, updated_at from am_stage
    on conflict (id) do nothing";

const METRIC_INSERT: &str = "insert into agent_metrics
        (id, agent_id, name, value, content, metadata, created_at)
    select id, agent_id, name, value, content, metadata, created_at from am_stage
    on conflict (id) do nothing";

const EXECUTION_INSERT: &str = "insert into agent_executions
        (id, agent_id, status, content, metadata, created_at)
    select id, agent_id, status, content, metadata, created_at from am_stage
    on conflict (id) do nothing";

/// Staged rows whose row in PostgreSQL an agent has written through the library since
/// (its metadata no longer carries `migration_run`) are left alone: the library's write
/// wins. Counts them by whether the data was the same anyway.
fn library_kept(target: Target) -> String {
    format!(
        "with kept as (delete from am_stage s using {} m
                       where m.id = s.id and not (m.metadata ? 'migration_run')
                       returning m.content = s.content as same)
         select count(*) filter (where same), count(*) filter (where not same) from kept",
        target.table()
    )
}

/// Staged rows whose copy in PostgreSQL holds the same data are already present: the
/// same content and the same typed columns (a key or name given up to a conflict counts
/// as the one it had). Times are not compared: a row without a time of its own gets the
/// run's, which is no change of its data.
fn unchanged(target: Target) -> String {
    let typed = match target {
        Target::Memories => {
            " and coalesce(m.key, m.metadata->>'key_conflict') is not distinct from s.key"
        }
        Target::Tools => " and coalesce(m.metadata->>'name_conflict', m.name) = s.name",
        Target::Metrics => " and m.name = s.name and m.value is not distinct from s.value",
        Target::Executions => " and m.status is not distinct from s.status",
    };
    format!(
        "delete from am_stage s using {} m where m.id = s.id and m.content = s.content{typed}",
        target.table()
    )
}

/// Memory keys that staged rows are about to give up (their key changed at the source),
/// so the next legacy row of the key can take it.
const MEMORY_KEYS_LEFT: &str = "select m.agent_id, m.key from agent_memories m
    join am_stage s on s.id = m.id
    where m.key is not null and m.key is distinct from s.key";

/// A row changed at the source replaces the backfill's copy under the same id; its
/// version moves forward (never back), and stays at or before the run's time.
const MEMORY_UPDATE: &str = "update agent_memories m
    set key = s.key, content = s.content, metadata = s.metadata, embedding = s.embedding,
        created_at = s.created_at,
        updated_at = greatest(s.updated_at, m.updated_at + interval '1 microsecond')
    from am_stage s where m.id = s.id";

const TOOL_UPDATE: &str = "update agent_tools m
    set name = s.name, content = s.content, metadata = s.metadata, created_at = s.created_at,
        updated_at = greatest(s.updated_at, m.updated_at + interval '1 microsecond')
    from am_stage s where m.id = s.id";

const METRIC_UPDATE: &str = "update agent_metrics m
    set name = s.name, value = s.value, content = s.content, metadata = s.metadata,
        created_at = s.created_at
    from am_stage s where m.id = s.id";

const EXECUTION_UPDATE: &str = "update agent_executions m
    set status = s.status, content = s.content, metadata = s.metadata,
        created_at = s.created_at
    from am_stage s where m.id = s.id";

/// Rows deleted at the source are deleted where PostgreSQL still holds the backfill's
/// copy (a row an agent wrote since through the library stays).
fn deleted(target: Target) -> String {
    let key = match target {
        Target::Memories => "key",
        _ => "null::text",
    };
    format!(
        "delete from {} where id = any($1) and metadata ? 'migration_run'
         returning agent_id, {key}",
        target.table()
    )
}

/// Keys that rows left (deleted or changed at the source) go to the next legacy row of
/// the key by `conflict_rank!`, unless a row holds the key or it was deleted through the
/// library.
const MEMORY_KEY_TAKEN_OVER: &str = concat!(
    "update agent_memories m
    set key = m.metadata->>'key_conflict', metadata = m.metadata - 'key_conflict'
    from (select distinct on (c.agent_id, c.metadata->>'key_conflict') c.id
          from agent_memories c
          join unnest($1::text[], $2::text[]) as f(agent_id, key)
            on c.agent_id = f.agent_id and c.metadata->>'key_conflict' = f.key
          where c.metadata ? 'source_table' and c.metadata ? 'source_db'
          order by c.agent_id, c.metadata->>'key_conflict', ",
    conflict_rank!(
        "c.created_at",
        "c.metadata->>'source_db'",
        "(c.metadata->>'source_rowid')::bigint",
        "c.id"
    ),
    " desc) w
    where m.id = w.id
      and not exists (select 1 from agent_memories x
                      where x.agent_id = m.agent_id and x.key = m.metadata->>'key_conflict')
      and not exists (select 1 from agent_memory.memory_tombstones t
                      join agents a on a.id = m.agent_id
                      where t.agent_id in (m.agent_id, a.name)
                        and t.key = m.metadata->>'key_conflict')"
);

/// Chunks of the source table as now loaded; chunks in `$4` not loaded again are gone.
const CHUNKS: &str = "with gone as (
        delete from agent_memory.backfill_chunks
        where source = $1 and source_db = $2 and source_table = $3
          and chunk = any($4) and chunk <> all($5)),
    kept as (
        insert into agent_memory.backfill_chunks
            (source, source_db, source_table, chunk, rows, digest, members)
        select $1, $2, $3, c, r, d, m
        from unnest($5::int8[], $6::int4[], $7::bytea[], $8::bytea[]) as t(c, r, d, m)
        on conflict (source, source_db, source_table, chunk) do update
            set rows = excluded.rows, digest = excluded.digest, members = excluded.members)
    select 1";

/// The source table a batch belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableKey<'a> {
    pub(crate) source: &'a str,
    pub(crate) source_db: &'a str,
    pub(crate) source_table: &'a str,
}

/// One chunk of a source table as loaded: see `agent_memory.backfill_chunks`.
#[derive(Debug, Clone)]
pub(crate) struct ChunkRecord {
    pub(crate) chunk: i64,
    pub(crate) rows: i32,
    pub(crate) digest: [u8; 16],
    pub(crate) members: Vec<u8>,
}

/// One transaction's worth of catching up a source table.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub(crate) target: Target,
    pub(crate) table: TableKey<'a>,
    /// The source's current rows (of some chunks).
    pub(crate) rows: &'a [ContractRow],
    /// The same rows as column arrays.
    pub(crate) columns: &'a Columns,
    /// Ids of rows the source no longer has.
    pub(crate) deletes: &'a [uuid::Uuid],
    /// Chunks now loaded, recorded with the rows.
    pub(crate) chunks: &'a [ChunkRecord],
    /// Chunks recorded before that the source no longer has (forgotten unless in
    /// `chunks`).
    pub(crate) gone: &'a [i64],
    /// Replace every copy, also of rows whose data is the same (the table's map
    /// changed, so its typed columns or times may have).
    pub(crate) force: bool,
    /// How long the batch may take (`MIGRATION_TIMEOUT`): also each statement's
    /// `statement_timeout`, so that the server stops a statement the client has given
    /// up on instead of leaving it waiting (on a lock, say) on the connection the next
    /// attempt uses.
    pub(crate) timeout: std::time::Duration,
    /// Try the fast path first: rows inserted straight into the contract table, the
    /// staging path only if they conflict. For rows that are most likely not there yet
    /// (chunks no earlier run loaded).
    pub(crate) direct: bool,
}

/// What one batch did to PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Synced {
    /// Rows that were not there.
    pub(crate) inserted: u64,
    /// Rows whose copy held other data, replaced.
    pub(crate) updated: u64,
    /// Rows already there with the same data.
    pub(crate) unchanged: u64,
    /// Rows PostgreSQL holds a later write or a delete of, made through the library.
    pub(crate) outranked: u64,
    /// Rows deleted because the source deleted them.
    pub(crate) deleted: u64,
    /// The fast path was tried and a row's id, key or name was taken: the batch took the
    /// staging path.
    pub(crate) fell_back: bool,
}

/// Prepares `conn` for loading: its staging table.
pub(crate) async fn prepare(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(STAGE).execute(conn).await.map(drop)
}

/// Brings PostgreSQL's copy of some chunks of one source table to the source's state in
/// one transaction: inserts rows that are new, replaces rows whose data changed, leaves
/// rows with the same data, deletes rows the source deleted, and records the chunks.
/// A row an agent wrote through the library since (or whose memory key or tool name it
/// deleted) outranks the legacy row. Every row written records `run` in
/// `metadata.migration_run`.
///
/// Each row's `agent_id` is the id of the `agents` row named as its agent (the admin
/// application may have registered it under an id of its own); the row is made, with
/// `id` = the name, only when none has the name.
///
/// # Errors
/// [`AgentRowError::IdTaken`] when no row has an agent's name and its id is another
/// agent's; the database's errors. Nothing of the batch is written then.
pub(crate) async fn sync_batch(
    conn: &mut PgConnection,
    batch: &Batch<'_>,
    known: &mut BTreeMap<String, String>,
) -> Result<Synced, AgentRowError> {
    let target = batch.target;
    let mut done = Synced::default();
    let timeout_ms = batch.timeout.as_millis().clamp(1, i32::MAX as u128);
    let direct_rows = batch.direct && !batch.rows.is_empty();
    let mut agents: Vec<&AgentId> = batch.rows.iter().map(|row| &row.source.agent).collect();
    agents.dedup();
    let all_known = agents
        .iter()
        .all(|agent| known.contains_key(agent.as_str()));
    // One round trip: the transaction, its timeout, and the fast path's savepoint when
    // no agent's row is to be made (a row made after it would be undone with the rows).
    let savepoint = direct_rows && all_known;
    let mut tx = conn
        .begin_with(AssertSqlSafe(format!(
            "begin; set local statement_timeout = {timeout_ms};{}",
            if savepoint { " savepoint direct" } else { "" }
        )))
        .await?;
    let mut agent_ids = BTreeMap::new();
    for agent in agents {
        if agent_ids.contains_key(agent.as_str()) {
            continue;
        }
        let id = match known.get(agent.as_str()) {
            Some(id) => id.clone(),
            None => agent_row_id(&mut tx, agent, true)
                .await?
                .unwrap_or_default(),
        };
        agent_ids.insert(agent.as_str().to_string(), id);
    }
    let mut keys_left: Vec<(String, String)> = Vec::new();
    let columns = batch.columns.for_agents(&agent_ids);
    let direct = if direct_rows {
        direct(&mut tx, target, &columns, !savepoint).await?
    } else {
        None
    };
    done.fell_back = direct.is_none() && direct_rows;
    if let Some(inserted) = direct {
        done.inserted += inserted;
        // The rows it left out hold a memory key or tool name deleted through the
        // library.
        done.outranked += batch.rows.len() as u64 - inserted;
    } else if !batch.rows.is_empty() {
        columns.insert(&mut tx, STAGE_ROWS).await?;
        // Statistics for the staging table, so the statements below join it to the
        // growing contract tables through their indexes instead of scanning them.
        sqlx::raw_sql("analyze am_stage").execute(&mut *tx).await?;
        let deletes = match target {
            Target::Memories => Some(MEMORY_DELETED),
            Target::Tools => Some(TOOL_DELETED),
            Target::Metrics | Target::Executions => None,
        };
        if let Some(sql) = deletes {
            done.outranked += sqlx::raw_sql(sql).execute(&mut *tx).await?.rows_affected();
        }
        // On a first load none of the ids is there yet: one probe of the id index spares
        // the statements that compare with rows already there.
        let present: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "select exists (select 1 from am_stage s join {} m on m.id = s.id)",
            target.table()
        )))
        .fetch_one(&mut *tx)
        .await?;
        if present {
            let (same, other): (i64, i64) = sqlx::query_as(AssertSqlSafe(library_kept(target)))
                .fetch_one(&mut *tx)
                .await?;
            done.unchanged += same.unsigned_abs();
            done.outranked += other.unsigned_abs();
            if !batch.force {
                done.unchanged += sqlx::query(AssertSqlSafe(unchanged(target)))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        let steps: &[&'static str] = match target {
            Target::Memories => &[MEMORY_RANK_IN_BATCH, MEMORY_DEMOTE_OLDER, MEMORY_KEEP_OUT],
            Target::Tools => &[TOOL_RENAME],
            Target::Metrics | Target::Executions => &[],
        };
        for step in steps {
            sqlx::raw_sql(*step).execute(&mut *tx).await?;
        }
        if present && target == Target::Memories {
            keys_left = sqlx::query_as(MEMORY_KEYS_LEFT).fetch_all(&mut *tx).await?;
        }
        let (update, insert) = match target {
            Target::Memories => (MEMORY_UPDATE, MEMORY_INSERT),
            Target::Tools => (TOOL_UPDATE, TOOL_INSERT),
            Target::Metrics => (METRIC_UPDATE, METRIC_INSERT),
            Target::Executions => (EXECUTION_UPDATE, EXECUTION_INSERT),
        };
        if present {
            done.updated += sqlx::raw_sql(update)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        let staged = batch.rows.len() as u64 - done.unchanged - done.outranked;
        done.inserted += sqlx::raw_sql(insert)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // What remains was inserted by someone else between the statements above: there.
        done.unchanged += staged.saturating_sub(done.updated + done.inserted);
    }
    if !batch.deletes.is_empty() {
        let gone: Vec<(String, Option<String>)> = sqlx::query_as(AssertSqlSafe(deleted(target)))
            .bind(batch.deletes)
            .fetch_all(&mut *tx)
            .await?;
        done.deleted += gone.len() as u64;
        let kept: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "select count(*) from {} where id = any($1)",
            target.table()
        )))
        .bind(batch.deletes)
        .fetch_one(&mut *tx)
        .await?;
        done.outranked += kept.unsigned_abs();
        keys_left.extend(
            gone.into_iter()
                .filter_map(|(agent, key)| Some((agent, key?))),
        );
    }
    if !keys_left.is_empty() {
        let (agents, keys): (Vec<String>, Vec<String>) = keys_left.into_iter().unzip();
        sqlx::query(MEMORY_KEY_TAKEN_OVER)
            .bind(agents)
            .bind(keys)
            .execute(&mut *tx)
            .await?;
    }
    if !batch.chunks.is_empty() || !batch.gone.is_empty() {
        let chunks = batch.chunks;
        sqlx::query(CHUNKS)
            .bind(batch.table.source)
            .bind(batch.table.source_db)
            .bind(batch.table.source_table)
            .bind(batch.gone)
            .bind(chunks.iter().map(|c| c.chunk).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.rows).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.digest.to_vec()).collect::<Vec<_>>())
            .bind(chunks.iter().map(|c| c.members.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // Their rows are there now; a batch that fails forgets them (the caller clears
    // `known`), in case a row was removed meanwhile.
    known.extend(agent_ids);
    Ok(done)
}

/// The fast path: the batch's rows inserted straight into the contract table, but for
/// rows whose memory key or tool name was deleted through the library (left out, as the
/// staging path leaves them out); the number inserted. `None` when a row conflicts with
/// one there (its id, key or name taken: the unique index refuses it, and what the
/// statement did is undone to the savepoint `direct`, made here when `savepoint`); the
/// batch then takes the staging path.
async fn direct(
    tx: &mut PgConnection,
    target: Target,
    columns: &AgentColumns<'_>,
    savepoint: bool,
) -> Result<Option<u64>, sqlx::Error> {
    // After the agents' rows are made: those stay.
    if savepoint {
        sqlx::raw_sql("savepoint direct").execute(&mut *tx).await?;
    }
    match columns.insert(tx, direct_insert(target)).await {
        Ok(inserted) => Ok(Some(inserted)),
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("23505") => {
            sqlx::raw_sql("rollback to savepoint direct")
                .execute(&mut *tx)
                .await?;
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// A batch's rows as the column arrays of `unnest_rows!`, with `migration_run` added to
/// each row's metadata; made while the batch before loads. Rows name their agent;
/// [`Columns::for_agents`] binds the ids of the agents' rows as `agent_id`.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    ids: Vec<uuid::Uuid>,
    agent_names: Vec<String>,
    keys: Vec<Option<String>>,
    names: Vec<Option<String>>,
    values: Vec<Option<f64>>,
    statuses: Vec<Option<String>>,
    contents: Vec<String>,
    metadatas: Vec<String>,
    created: Vec<chrono::DateTime<chrono::Utc>>,
    updated: Vec<chrono::DateTime<chrono::Utc>>,
    source_dbs: Vec<String>,
    rowids: Vec<Option<i64>>,
    embeddings: Vec<Option<pgvector::Vector>>,
}

impl Columns {
    pub(crate) fn new(rows: &[ContractRow], run: &str) -> Self {
        let n = rows.len();
        let mut c = Columns {
            ids: Vec::with_capacity(n),
            agent_names: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            names: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            contents: Vec::with_capacity(n),
            metadatas: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
            source_dbs: Vec::with_capacity(n),
            rowids: Vec::with_capacity(n),
            embeddings: Vec::with_capacity(n),
        };
        for row in rows {
            let mut metadata = row.record.metadata().clone();
            metadata.insert("migration_run".into(), run.into());
            let (key, name, value, status, updated_at) = match &row.record {
                ContractRecord::Memory(m) => (m.key.clone(), None, None, None, m.updated_at),
                ContractRecord::Tool(t) => (None, Some(t.name.clone()), None, None, t.updated_at),
                ContractRecord::Metric(m) => {
                    (None, Some(m.name.clone()), m.value, None, m.created_at)
                }
                ContractRecord::Execution(e) => (None, None, None, e.status.clone(), e.created_at),
            };
            c.ids.push(row.record.id());
            c.agent_names.push(row.source.agent.as_str().to_string());
            c.keys.push(key);
            c.names.push(name);
            c.values.push(value);
            c.statuses.push(status);
            c.contents.push(row.record.content().to_string());
            c.metadatas
                .push(serde_json::Value::Object(metadata).to_string());
            c.created.push(row.record.created_at());
            c.updated.push(updated_at);
            c.source_dbs.push(row.source.source_db.clone());
            c.rowids.push(row.source.rowid);
            c.embeddings.push(match &row.record {
                ContractRecord::Memory(m) => m.embedding.clone().map(pgvector::Vector::from),
                _ => None,
            });
        }
        c
    }

    /// The same rows with `agent_id` the id of each agent's row (by name): only that
    /// column is made again, and only when an id is not the agent's name (the admin
    /// application registered the agent).
    fn for_agents(&self, agent_ids: &BTreeMap<String, String>) -> AgentColumns<'_> {
        let agents = if agent_ids.iter().any(|(name, id)| name != id) {
            Cow::Owned(
                self.agent_names
                    .iter()
                    .map(|name| agent_ids.get(name).unwrap_or(name).clone())
                    .collect(),
            )
        } else {
            Cow::Borrowed(self.agent_names.as_slice())
        };
        AgentColumns {
            columns: self,
            agents,
        }
    }
}

/// A batch's [`Columns`] with the `agent_id` column its statements bind.
struct AgentColumns<'c> {
    columns: &'c Columns,
    agents: Cow<'c, [String]>,
}

impl AgentColumns<'_> {
    /// Runs `sql` (reading `unnest_rows!`) with the arrays bound.
    async fn insert(&self, conn: &mut PgConnection, sql: &'static str) -> Result<u64, sqlx::Error> {
        let c = self.columns;
        sqlx::query(sql)
            .bind(&c.ids)
            .bind(self.agents.as_ref())
            .bind(&c.agent_names)
            .bind(&c.keys)
            .bind(&c.names)
            .bind(&c.values)
            .bind(&c.statuses)
            .bind(&c.contents)
            .bind(&c.metadatas)
            .bind(&c.created)
            .bind(&c.updated)
            .bind(&c.source_dbs)
            .bind(&c.rowids)
            .bind(&c.embeddings)
            .execute(conn)
            .await
            .map(|done| done.rows_affected())
    }
}
