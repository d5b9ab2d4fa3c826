//! `--verify` for files of the library's own layout: each record must be in PostgreSQL
//! as itself (same id, key or name, value, metadata, embedding and times), unless a
//! later write there outranks it, as the contract lets the newer version win.

use std::collections::HashMap;

use serde_json::Value;

use super::TableCheck;
use crate::backend::dual::same_json;
use crate::backend::{MemoryBackend, PostgresBackend, Replica};
use crate::error::{Chain, Result};
use crate::legacy::{ContractRecord, Source, Target, read_own_records, read_own_tombstones};
use crate::record::{AgentId, Execution, Memory, Metadata, Metric, Tool};

/// Rows named in a table's difference before the rest are only counted.
const NAMED: usize = 5;

/// What PostgreSQL holds for one record of the file.
enum Verdict {
    /// The record itself.
    Same,
    /// A later write of the same key or name, or a later delete: the newer one wins.
    Outranked,
    /// Something else, said in the text, which names the record.
    Differs(String),
}

/// The tally of one table.
#[derive(Default)]
struct Tally {
    rows: u64,
    same: u64,
    outranked: u64,
    differing: u64,
    named: Vec<String>,
}

impl Tally {
    fn add(&mut self, verdict: Verdict) {
        self.rows += 1;
        match verdict {
            Verdict::Same => self.same += 1,
            Verdict::Outranked => self.outranked += 1,
            Verdict::Differs(what) => {
                self.differing += 1;
                if self.named.len() < NAMED {
                    self.named.push(what);
                }
            }
        }
    }

    /// The table's check; `unread` says why reading it stopped early, if it did.
    fn check(
        self,
        file: &OwnFile<'_>,
        table: &str,
        target: &str,
        unread: Option<String>,
    ) -> TableCheck {
        let mut difference = (self.differing > 0).then(|| {
            let more = self.differing - self.named.len() as u64;
            let tail = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            format!(
                "{} of {} rows differ: {}{tail}",
                self.differing,
                self.rows,
                self.named.join("; ")
            )
        });
        if let Some(why) = unread {
            let read = format!("not verified past row {}: {why}", self.rows);
            difference = Some(match difference {
                Some(d) => format!("{d}; {read}"),
                None => read,
            });
        }
        TableCheck {
            source_db: file.source_db.to_string(),
            agent: file.agent.to_string(),
            table: table.to_string(),
            target: target.to_string(),
            legacy_rows: self.rows,
            postgres_rows: self.same,
            newer_in_postgres: self.outranked,
            same: difference.is_none(),
            difference,
        }
    }
}

/// One file of the library's own layout, being verified.
pub(super) struct OwnFile<'a> {
    pub(super) backend: &'a PostgresBackend,
    pub(super) agent: &'a AgentId,
    pub(super) source_db: &'a str,
}

impl OwnFile<'_> {
    /// Checks the file's four record tables and its deletes, one [`TableCheck`] each.
    /// A table that cannot be read to its end is reported as not verified past the rows
    /// read.
    ///
    /// # Errors
    /// When PostgreSQL cannot be read.
    pub(super) async fn check(&self, source: &mut Source) -> Result<Vec<TableCheck>> {
        let mut checks = Vec::new();
        for target in [
            Target::Memories,
            Target::Tools,
            Target::Metrics,
            Target::Executions,
        ] {
            checks.push(self.table(source, target).await?);
        }
        checks.push(self.tombstones(source).await?);
        Ok(checks)
    }

    async fn table(&self, source: &mut Source, target: Target) -> Result<TableCheck> {
        let (metrics, executions) = match target {
            Target::Metrics => (
                by_id(self.backend.list_metrics(self.agent).await?, |m| m.id),
                HashMap::new(),
            ),
            Target::Executions => (
                HashMap::new(),
                by_id(self.backend.list_executions(self.agent).await?, |e| e.id),
            ),
            _ => (HashMap::new(), HashMap::new()),
        };
        let mut tally = Tally::default();
        let mut after = i64::MIN;
        let unread = loop {
            let rows =
                match read_own_records(source, self.agent, self.source_db, target, after).await {
                    Ok(rows) => rows,
                    Err(err) => break Some(Chain(&err).to_string()),
                };
            let Some(last) = rows.last().and_then(|r| r.source.rowid) else {
                break None;
            };
            after = last;
            for row in &rows {
                let verdict = match &row.record {
                    ContractRecord::Memory(m) => self.memory(m).await?,
                    ContractRecord::Tool(t) => self.tool(t).await?,
                    ContractRecord::Metric(m) => metric(m, metrics.get(&m.id)),
                    ContractRecord::Execution(e) => execution(e, executions.get(&e.id)),
                };
                tally.add(verdict);
            }
        };
        Ok(tally.check(self, target.table(), target.table(), unread))
    }

    async fn memory(&self, own: &Memory) -> Result<Verdict> {
        let Some(key) = own.key.as_deref() else {
            return Ok(Verdict::Differs(format!(
                "memory {}: stored without a key, so it cannot be looked up",
                own.id
            )));
        };
        let name = format!("memory {key:?}");
        let Some(held) = self.backend.get_memory(self.agent, key).await? else {
            return Ok(
                match self.backend.memory_tombstone(self.agent, key).await? {
                    Some(deleted) if deleted >= own.updated_at => Verdict::Outranked,
                    Some(deleted) => Verdict::Differs(format!(
                        "{name}: missing; its delete in PostgreSQL ({deleted}) is older than this \
                     version ({})",
                        own.updated_at
                    )),
                    None => Verdict::Differs(format!("{name}: missing")),
                },
            );
        };
        if held.updated_at > own.updated_at {
            return Ok(Verdict::Outranked);
        }
        let mut differ = common(
            (own.id, held.id),
            (own.created_at, held.created_at),
            (&own.content, &held.content),
            (&own.metadata, &held.metadata),
        );
        // An embedding PostgreSQL has and the file lacks is a later fill, not a change.
        if own.embedding.is_some() && held.embedding != own.embedding {
            differ.push("embedding");
        }
        Ok(versioned(&name, own.updated_at, held.updated_at, &differ))
    }

    async fn tool(&self, own: &Tool) -> Result<Verdict> {
        let name = format!("tool {:?}", own.name);
        let Some(held) = self.backend.get_tool(self.agent, &own.name).await? else {
            return Ok(Verdict::Differs(format!("{name}: missing")));
        };
        if held.updated_at > own.updated_at {
            return Ok(Verdict::Outranked);
        }
        let differ = common(
            (own.id, held.id),
            (own.created_at, held.created_at),
            (&own.content, &held.content),
            (&own.metadata, &held.metadata),
        );
        Ok(versioned(&name, own.updated_at, held.updated_at, &differ))
    }

    /// Every key the file records as deleted must not be in PostgreSQL at a version
    /// the delete outranks: a deleted memory never comes back.
    async fn tombstones(&self, source: &mut Source) -> Result<TableCheck> {
        let mut tally = Tally::default();
        let unread = match read_own_tombstones(source).await {
            Ok(tombstones) => {
                for (key, deleted) in tombstones {
                    let verdict = match self.backend.get_memory(self.agent, &key).await? {
                        Some(held) if held.updated_at <= deleted => Verdict::Differs(format!(
                            "memory {key:?}: deleted here at {deleted}, but PostgreSQL still \
                             holds its version of {}",
                            held.updated_at
                        )),
                        Some(_) => Verdict::Outranked,
                        None => Verdict::Same,
                    };
                    tally.add(verdict);
                }
                None
            }
            Err(err) => Some(Chain(&err).to_string()),
        };
        Ok(tally.check(
            self,
            "agent_memory_tombstones",
            "agent_memory.memory_tombstones",
            unread,
        ))
    }
}

fn by_id<T>(records: Vec<T>, id: impl Fn(&T) -> uuid::Uuid) -> HashMap<uuid::Uuid, T> {
    records.into_iter().map(|r| (id(&r), r)).collect()
}

fn metric(own: &Metric, held: Option<&Metric>) -> Verdict {
    let name = format!("metric {:?} {}", own.name, own.id);
    let Some(held) = held else {
        return Verdict::Differs(format!("{name}: missing"));
    };
    let mut differ = common(
        (own.id, held.id),
        (own.created_at, held.created_at),
        (&own.content, &held.content),
        (&own.metadata, &held.metadata),
    );
    if own.name != held.name {
        differ.push("name");
    }
    if own.value != held.value {
        differ.push("value");
    }
    listed(&name, &differ)
}

fn execution(own: &Execution, held: Option<&Execution>) -> Verdict {
    let name = format!("execution {}", own.id);
    let Some(held) = held else {
        return Verdict::Differs(format!("{name}: missing"));
    };
    let mut differ = common(
        (own.id, held.id),
        (own.created_at, held.created_at),
        (&own.content, &held.content),
        (&own.metadata, &held.metadata),
    );
    if own.status != held.status {
        differ.push("status");
    }
    listed(&name, &differ)
}

/// The fields every record has that differ between the file's (first) and
/// PostgreSQL's (second). Content is compared exactly, as it is stored as text on both
/// sides; metadata by value, as PostgreSQL's `jsonb` may rewrite a number's form.
fn common(
    id: (uuid::Uuid, uuid::Uuid),
    created_at: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    content: (&Value, &Value),
    metadata: (&Metadata, &Metadata),
) -> Vec<&'static str> {
    let mut differ = Vec::new();
    if id.0 != id.1 {
        differ.push("id");
    }
    if created_at.0 != created_at.1 {
        differ.push("created_at");
    }
    if content.0 != content.1 {
        differ.push("content");
    }
    if !same_json(
        &Value::Object(metadata.0.clone()),
        &Value::Object(metadata.1.clone()),
    ) {
        differ.push("metadata");
    }
    differ
}

/// The verdict on a versioned record PostgreSQL holds at `held`, no later than the
/// file's `own`. An earlier version holding the same data is the file's row with its
/// version capped at the migration time (a clock that was ahead); one holding other
/// data is an older version the file's row never replaced.
fn versioned(
    name: &str,
    own: chrono::DateTime<chrono::Utc>,
    held: chrono::DateTime<chrono::Utc>,
    differ: &[&str],
) -> Verdict {
    match listed(name, differ) {
        Verdict::Differs(what) if held < own => Verdict::Differs(format!(
            "{what}; PostgreSQL holds an older version ({held}, the file {own})"
        )),
        verdict => verdict,
    }
}

fn listed(name: &str, differ: &[&str]) -> Verdict {
    if differ.is_empty() {
        Verdict::Same
    } else {
        Verdict::Differs(format!("{name}: differs in {}", differ.join(", ")))
    }
}
