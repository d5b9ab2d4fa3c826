//! `--verify`: every legacy table compared with PostgreSQL, by row count and by a
//! checksum of the ids and contents, per agent and table; every record of a file of the
//! library's own layout looked up in PostgreSQL ([`own`]).

mod own;

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use super::BackfillOptions;
use crate::backend::agent_rows::agent_row_id;
use crate::backend::{PostgresBackend, PostgresOptions, Replica};
use crate::error::{Chain, Result};
use crate::legacy::{ContractRecord, Probe, RowOrigin, Source, TableKind, convert_row, discover};

/// One table compared.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    /// The SQLite file, relative to the agents path.
    pub source_db: String,
    /// The agent.
    pub agent: String,
    /// The SQLite table.
    pub table: String,
    /// The contract table its rows went to.
    pub target: String,
    /// Rows in the SQLite table.
    pub legacy_rows: u64,
    /// Rows in PostgreSQL that came from it (for the library's own files: rows found
    /// there as themselves).
    pub postgres_rows: u64,
    /// Rows that PostgreSQL holds a later write or delete of, made through the library
    /// (legacy rows an agent overwrote, or whose memory key or tool name it deleted; rows
    /// of the library's own files with a later version): the newer version wins, so they
    /// count as verified.
    pub newer_in_postgres: u64,
    /// True when every row is in PostgreSQL as itself (or, in the library's own files,
    /// outranked there by a later write).
    pub same: bool,
    /// What differs, naming the rows where it can, or why the table could not be
    /// checked to its end.
    pub difference: Option<String>,
}

/// The verification of a whole agents path.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Every mapped legacy table.
    pub tables: Vec<TableCheck>,
    /// Files that could not be read, with why.
    pub problems: Vec<(String, String)>,
}

impl Verification {
    /// True when every table matches, every file could be read, and at least one table
    /// was compared: finding nothing to compare (a wrong agents path, say) verifies
    /// nothing, so it does not pass.
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && !self.tables.is_empty() && self.tables.iter().all(|t| t.same)
    }

    /// Rows compared, over every table.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.legacy_rows).sum()
    }
}

/// An order-independent checksum of (id, content) pairs: the wrapping sum of each
/// pair's SHA-256, so both sides can be summed in whatever order they are read.
#[derive(Default, PartialEq, Eq)]
struct Sum(u128, u128);

impl Sum {
    fn add(&mut self, id: &uuid::Uuid, content: &str) {
        let digest = Sha256::new()
            .chain_update(id.as_bytes())
            .chain_update(content.as_bytes())
            .finalize();
        let (high, low) = digest.split_at(16);
        self.0 = self
            .0
            .wrapping_add(u128::from_le_bytes(high.try_into().unwrap_or([0; 16])));
        self.1 = self
            .1
            .wrapping_add(u128::from_le_bytes(low.try_into().unwrap_or([0; 16])));
    }
}

/// Compares every mapped legacy table under the agents path with the rows PostgreSQL
/// holds from it (`metadata.source_db` and `source_table`, of the options' source:
/// `metadata.source`, absent for the unnamed one), and checks that those rows
/// hang on the agent's `agents` row (found by name, whatever its id).
///
/// Files of the library's own layout are checked record by record: each memory (by
/// key), tool (by name), metric and execution (by id) must be in PostgreSQL as itself,
/// unless PostgreSQL holds a later write of that key or name, or a later delete; and no
/// key the file records as deleted may be in PostgreSQL at a version its delete
/// outranks. A memory's version in PostgreSQL may be earlier when its data is the same:
/// the backfill caps versions at the migration time.
///
/// # Errors
/// When PostgreSQL cannot be reached or read (never showing the URL's password).
pub async fn verify(url: &str, options: &BackfillOptions) -> Result<Verification> {
    let mut conn = super::engine::connect(url).await?;
    // Reads only: no schema check and no bookkeeping created, unlike a run.
    let backend = PostgresBackend::connect_lazy(
        url,
        PostgresOptions {
            max_connections: 1,
            ..PostgresOptions::default()
        },
    )?;
    let verification = compare(&mut conn, &backend, options).await;
    let _ = sqlx::Connection::close(conn).await;
    backend.close().await;
    verification
}

/// Of `rows` (legacy rows of one target), those PostgreSQL holds a later write or delete
/// of, made through the library: their id is there without the backfill's mark
/// (`migration_run`), or it is not there and their memory key or tool name was deleted.
async fn outranked_in(
    conn: &mut PgConnection,
    backend: &PostgresBackend,
    agent: &crate::record::AgentId,
    target: crate::legacy::Target,
    rows: &[crate::legacy::ContractRow],
) -> Result<std::collections::BTreeSet<uuid::Uuid>> {
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.record.id()).collect();
    let sql = format!(
        "select id, metadata ? 'migration_run' from {} where id = any($1)",
        target.table()
    );
    let present: std::collections::BTreeMap<uuid::Uuid, bool> =
        sqlx::query_as::<_, (uuid::Uuid, bool)>(sqlx::AssertSqlSafe(sql))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| crate::Error::Database {
                backend: "postgres",
                operation: format!("look up rows of {}", target.table()),
                source: Box::new(e),
            })?
            .into_iter()
            .collect();
    let mut out = std::collections::BTreeSet::new();
    for row in rows {
        let id = row.record.id();
        let newer = match (present.get(&id), &row.record) {
            (Some(copy), _) => !copy,
            (None, ContractRecord::Memory(m)) => match &m.key {
                Some(key) => backend.memory_tombstone(agent, key).await?.is_some(),
                None => false,
            },
            (None, ContractRecord::Tool(t)) => {
                backend.tool_tombstone(agent, &t.name).await?.is_some()
            }
            (None, _) => false,
        };
        if newer {
            out.insert(id);
        }
    }
    Ok(out)
}

async fn compare(
    conn: &mut PgConnection,
    backend: &PostgresBackend,
    options: &BackfillOptions,
) -> Result<Verification> {
    let mut out = Verification {
        tables: Vec::new(),
        problems: Vec::new(),
    };
    let migrated_at = crate::record::now();
    for found in discover(&options.agents_path, &options.read).await {
        let (agent, own) = match (&found.probe, &found.agent) {
            (Probe::Problem(why), _) | (_, Err(why)) => {
                out.problems.push((found.source_db.clone(), why.clone()));
                continue;
            }
            (probe, Ok(agent)) => (agent.clone(), *probe == Probe::Own),
        };
        let mut source = match Source::open(&found.path, &options.read).await {
            Ok(source) => source,
            Err(err) => {
                out.problems
                    .push((found.source_db.clone(), Chain(&err).to_string()));
                continue;
            }
        };
        if own {
            let file = own::OwnFile {
                backend,
                agent: &agent,
                source_db: &found.source_db,
            };
            out.tables.extend(file.check(&mut source).await?);
            continue;
        }
        // The rows must hang on the agents row of the agent's name, whatever its id.
        let agent_row = match agent_row_id(conn, &agent, false).await {
            Ok(id) => id,
            Err(err) => {
                out.problems
                    .push((found.source_db.clone(), Chain(&err).to_string()));
                continue;
            }
        };
        let tables = match source.tables().await {
            Ok(tables) => tables,
            Err(err) => {
                out.problems
                    .push((found.source_db.clone(), Chain(&err).to_string()));
                continue;
            }
        };
        for table in tables {
            let (TableKind::Data { .. }, Some(spec)) =
                (&table.kind, options.map.spec(&found.source_db, &table.name))
            else {
                continue;
            };
            let target = spec.target;
            let origin = RowOrigin {
                agent: &agent,
                source: &options.source,
                source_db: &found.source_db,
            };
            let mut legacy = Sum::default();
            let mut legacy_rows = 0;
            let mut outranked = 0;
            let mut problem = None;
            let mut batches = source.rows(&table);
            loop {
                match batches.next_batch().await {
                    Ok(Some(batch)) => {
                        let mut converted = Vec::with_capacity(batch.len());
                        for row in &batch {
                            match convert_row(&origin, &table, &spec, row, migrated_at) {
                                Ok(row) => converted.push(row),
                                Err(err) => problem = Some(Chain(&err).to_string()),
                            }
                        }
                        let newer = outranked_in(conn, backend, &agent, target, &converted).await?;
                        for row in &converted {
                            if newer.contains(&row.record.id()) {
                                outranked += 1;
                                continue;
                            }
                            legacy_rows += 1;
                            legacy.add(&row.record.id(), &row.record.content().to_string());
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        problem = Some(Chain(&err).to_string());
                        break;
                    }
                }
            }
            // Rows of this source only: the unnamed source's rows have no `source` key.
            let sql = format!(
                "select id, content, agent_id from {} where metadata->>'source_db' = $1 and metadata->>'source_table' = $2
                 and coalesce(metadata->>'source', '') = $3",
                target.table()
            );
            let mut postgres = Sum::default();
            let mut postgres_rows = 0;
            let mut elsewhere: Option<(u64, String)> = None;
            {
                let mut rows =
                    sqlx::query_as::<_, (uuid::Uuid, String, String)>(sqlx::AssertSqlSafe(sql))
                        .bind(&found.source_db)
                        .bind(&table.name)
                        .bind(&options.source)
                        .fetch(&mut *conn);
                while let Some(row) = rows.next().await {
                    let (id, content, agent_id) = row.map_err(|e| crate::Error::Database {
                        backend: "postgres",
                        operation: format!(
                            "read the rows of {} from {}",
                            table.name, found.source_db
                        ),
                        source: Box::new(e),
                    })?;
                    postgres_rows += 1;
                    postgres.add(&id, &content);
                    if agent_row.as_deref() != Some(agent_id.as_str()) {
                        elsewhere.get_or_insert((0, agent_id)).0 += 1;
                    }
                }
            }
            let difference = problem
                .or_else(
                    || match (legacy_rows == postgres_rows, legacy == postgres) {
                        (true, true) => None,
                        (false, _) => Some(format!(
                            "{legacy_rows} legacy rows, {postgres_rows} in {}",
                            target.table()
                        )),
                        (true, false) => Some("same row count, but ids or contents differ".into()),
                    },
                )
                .or_else(|| {
                    let (rows, agent_id) = elsewhere?;
                    Some(match &agent_row {
                        Some(id) => format!(
                            "{rows} rows have agent_id {agent_id:?} (first seen), not {id:?}, \
                             the id of the agents row named {:?}",
                            agent.as_str()
                        ),
                        None => format!(
                            "{rows} rows have agent_id {agent_id:?} (first seen), but no agents \
                             row is named {:?}",
                            agent.as_str()
                        ),
                    })
                });
            out.tables.push(TableCheck {
                source_db: found.source_db.clone(),
                agent: agent.to_string(),
                table: table.name.clone(),
                target: target.table().to_string(),
                legacy_rows,
                postgres_rows,
                newer_in_postgres: outranked,
                same: difference.is_none(),
                difference,
            });
        }
    }
    Ok(out)
}
