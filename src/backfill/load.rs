//! Loading one batch of contract rows into PostgreSQL: into a staging table, settle
//! key and name conflicts, insert what is not there yet, all in one transaction.

use std::collections::BTreeMap;

use sqlx::{Connection, PgConnection};

use crate::backend::agent_rows::{AgentRowError, agent_row_id};
use crate::legacy::{ContractRecord, ContractRow, Target};

/// The per-connection staging table every batch is copied into (emptied at commit).
/// `agent_id` is the id of the agent's `agents` row, `agent_name` its name.
const STAGE: &str = "create temp table if not exists am_stage (
        id uuid not null, agent_id text not null, agent_name text not null, key text, name text,
        value double precision, status text, content text not null,
        metadata jsonb not null, created_at timestamptz not null,
        updated_at timestamptz not null, source_db text not null, source_rowid bigint,
        embedding vector
    ) on commit delete rows";

/// Fills the staging table from one array per column, in a single protocol message.
/// (sqlx 0.9.0's COPY sends its data and its end in two writes without TCP_NODELAY, so
/// every batch waited out the server's delayed acknowledgement: about 40 ms.)
const STAGE_ROWS: &str = "insert into am_stage (id, agent_id, agent_name, key, name, value,
        status, content, metadata, created_at, updated_at, source_db, source_rowid, embedding)
    select id, agent_id, agent_name, key, name, value, status, content, metadata::jsonb,
           created_at, updated_at, source_db, source_rowid, embedding
    from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[],
                $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
                $12::text[], $13::int8[], $14::vector[])
         as t(id, agent_id, agent_name, key, name, value, status, content, metadata,
              created_at, updated_at, source_db, source_rowid, embedding)";

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

/// Step 3: a key still held by another row (a newer legacy row, or one the agents wrote),
/// or deleted since this row was written, is not taken. Tombstones are the library's
/// bookkeeping: matched under the agent's row id or its name, whichever the backend
/// records them by.
const MEMORY_KEEP_OUT: &str = "update am_stage s
    set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key)
    where s.key is not null
      and (exists (select 1 from agent_memories m
                   where m.agent_id = s.agent_id and m.key = s.key and m.id <> s.id)
           or exists (select 1 from agent_memory.memory_tombstones t
                      where t.agent_id in (s.agent_id, s.agent_name) and t.key = s.key
                        and t.deleted_at >= s.created_at))";

const MEMORY_INSERT: &str = "insert into agent_memories
        (id, agent_id, key, content, metadata, embedding, created_at, updated_at)
    select id, agent_id, key, content, metadata, embedding, created_at, updated_at from am_stage
    on conflict (id) do nothing";

/// A tool whose name was deleted at or after this row's version is not registered
/// again: the delete outranks it, as it does a copy between the dual backend's sides.
/// Tombstones are matched as in `MEMORY_KEEP_OUT`.
const TOOL_KEEP_OUT: &str = "delete from am_stage s
    where exists (select 1 from agent_memory.tool_tombstones t
                  where t.agent_id in (s.agent_id, s.agent_name) and t.name = s.name
                    and t.deleted_at >= s.updated_at)";

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

const PROGRESS: &str =
    "insert into agent_memory.backfill_progress (source_db, source_table, rows_done)
    values ($1, $2, $3)
    on conflict (source_db, source_table)
    do update set rows_done = backfill_progress.rows_done + excluded.rows_done";

/// Prepares `conn` for loading: its staging table.
pub(crate) async fn prepare(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(STAGE).execute(conn).await.map(drop)
}

/// Loads `rows` (all of one target, from one source table) in one transaction, recording
/// `run` on every row it inserts and the batch in the progress table. Returns how many
/// rows were inserted; the rest were already there.
///
/// Each row's `agent_id` is the id of the `agents` row named as its agent (the admin
/// application may have registered it under an id of its own); the row is made, with
/// `id` = the name, only when none has the name.
///
/// # Errors
/// [`AgentRowError::IdTaken`] when no row has an agent's name and its id is another
/// agent's; the database's errors.
pub(crate) async fn load_batch(
    conn: &mut PgConnection,
    target: Target,
    rows: &[ContractRow],
    run: &str,
    source: (&str, &str),
) -> Result<u64, AgentRowError> {
    let mut tx = conn.begin().await?;
    let mut agent_ids = BTreeMap::new();
    for row in rows {
        let agent = &row.source.agent;
        if !agent_ids.contains_key(agent.as_str()) {
            let id = agent_row_id(&mut tx, agent, true)
                .await?
                .unwrap_or_default();
            agent_ids.insert(agent.as_str().to_string(), id);
        }
    }
    stage(&mut tx, rows, &agent_ids, run).await?;
    // Statistics for the staging table, so the conflict statements join it to the
    // growing contract tables through their indexes instead of scanning them per batch.
    sqlx::raw_sql("analyze am_stage").execute(&mut *tx).await?;
    let steps: &[&'static str] = match target {
        Target::Memories => &[MEMORY_RANK_IN_BATCH, MEMORY_DEMOTE_OLDER, MEMORY_KEEP_OUT],
        Target::Tools => &[TOOL_KEEP_OUT, TOOL_RENAME],
        Target::Metrics | Target::Executions => &[],
    };
    for step in steps {
        sqlx::raw_sql(*step).execute(&mut *tx).await?;
    }
    let insert = match target {
        Target::Memories => MEMORY_INSERT,
        Target::Tools => TOOL_INSERT,
        Target::Metrics => METRIC_INSERT,
        Target::Executions => EXECUTION_INSERT,
    };
    let inserted = sqlx::raw_sql(insert)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(PROGRESS)
        .bind(source.0)
        .bind(source.1)
        .bind(i64::try_from(rows.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Puts `rows` into the staging table, with `migration_run` added to each row's metadata
/// and `agent_id` the agent's row id from `agent_ids` (by name).
async fn stage(
    conn: &mut PgConnection,
    rows: &[ContractRow],
    agent_ids: &BTreeMap<String, String>,
    run: &str,
) -> Result<(), sqlx::Error> {
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    let mut agent_names = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    let mut metadatas = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut source_dbs = Vec::with_capacity(n);
    let mut rowids = Vec::with_capacity(n);
    let mut embeddings: Vec<Option<pgvector::Vector>> = Vec::with_capacity(n);
    for row in rows {
        let mut metadata = row.record.metadata().clone();
        metadata.insert("migration_run".into(), run.into());
        let (key, name, value, status, updated_at) = match &row.record {
            ContractRecord::Memory(m) => (m.key.clone(), None, None, None, m.updated_at),
            ContractRecord::Tool(t) => (None, Some(t.name.clone()), None, None, t.updated_at),
            ContractRecord::Metric(m) => (None, Some(m.name.clone()), m.value, None, m.created_at),
            ContractRecord::Execution(e) => (None, None, None, e.status.clone(), e.created_at),
        };
        ids.push(row.record.id());
        let agent = row.source.agent.as_str();
        agents.push(
            agent_ids
                .get(agent)
                .cloned()
                .unwrap_or_else(|| agent.to_string()),
        );
        agent_names.push(agent.to_string());
        keys.push(key);
        names.push(name);
        values.push(value);
        statuses.push(status);
        contents.push(row.record.content().to_string());
        metadatas.push(serde_json::Value::Object(metadata).to_string());
        created.push(row.record.created_at());
        updated.push(updated_at);
        source_dbs.push(row.source.source_db.clone());
        rowids.push(row.source.rowid);
        embeddings.push(match &row.record {
            ContractRecord::Memory(m) => m.embedding.clone().map(pgvector::Vector::from),
            _ => None,
        });
    }
    sqlx::query(STAGE_ROWS)
        .bind(ids)
        .bind(agents)
        .bind(agent_names)
        .bind(keys)
        .bind(names)
        .bind(values)
        .bind(statuses)
        .bind(contents)
        .bind(metadatas)
        .bind(created)
        .bind(updated)
        .bind(source_dbs)
        .bind(rowids)
        .bind(embeddings)
        .execute(conn)
        .await
        .map(drop)
}
