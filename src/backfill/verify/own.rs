//! `--verify` for files of the library's own layout: each record must be in PostgreSQL
//! as itself (same id, key or name, value, metadata, embedding and times), unless a
//! later write there outranks it, as the contract lets the newer version win. A record
//! whose id another agent holds (a copied agent folder) is there under its
//! [`copied_row_id`].

use std::collections::HashMap;

use super::TableCheck;
use crate::backend::dual::same_metadata;
use crate::backend::postgres::copied_row_id;
use crate::backend::{MemoryBackend, PostgresBackend, Replica};
use crate::error::{Chain, Result};
use crate::legacy::{
    ContractRecord, Source, Target, read_own_records, read_own_tombstones, read_own_tool_tombstones,
};
use crate::listing::Listing;
use crate::record::AgentId;

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
    /// Checks the file's four record tables and its deletes of keys and of tools, one
    /// [`TableCheck`] each.
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
        checks.push(self.tombstones(source, false).await?);
        checks.push(self.tombstones(source, true).await?);
        Ok(checks)
    }

    async fn table(&self, source: &mut Source, target: Target) -> Result<TableCheck> {
        // Metrics and executions have no lookup by id: the agent's whole list, by id.
        let mut listed: HashMap<uuid::Uuid, ContractRecord> = match target {
            Target::Metrics => self
                .backend
                .list_metrics(self.agent, &Listing::default())
                .await?
                .into_iter()
                .map(|m| (m.id, ContractRecord::Metric(m)))
                .collect(),
            Target::Executions => self
                .backend
                .list_executions(self.agent, &Listing::default())
                .await?
                .into_iter()
                .map(|e| (e.id, ContractRecord::Execution(e)))
                .collect(),
            Target::Memories | Target::Tools => HashMap::new(),
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
                let own = &row.record;
                let held = match own {
                    ContractRecord::Memory(m) => match &m.key {
                        Some(key) => self
                            .backend
                            .get_memory(self.agent, key)
                            .await?
                            .map(ContractRecord::Memory),
                        None => None,
                    },
                    ContractRecord::Tool(t) => self
                        .backend
                        .get_tool(self.agent, &t.name)
                        .await?
                        .map(ContractRecord::Tool),
                    ContractRecord::Metric(_) | ContractRecord::Execution(_) => listed
                        .remove(&own.id())
                        .or_else(|| listed.remove(&copied_row_id(self.agent, own.id()))),
                };
                let verdict = match held {
                    Some(held) => judge(own, &held, copied_row_id(self.agent, own.id())),
                    None => self.missing(own).await?,
                };
                tally.add(verdict);
            }
        };
        Ok(tally.check(self, target.table(), target.table(), unread))
    }

    /// The verdict on a record PostgreSQL does not hold: outranked when it is a memory
    /// or a tool whose key or name PostgreSQL deleted at or after its version.
    async fn missing(&self, own: &ContractRecord) -> Result<Verdict> {
        let name = name(own);
        let deleted = match own {
            ContractRecord::Memory(memory) => {
                let Some(key) = memory.key.as_deref() else {
                    return Ok(Verdict::Differs(format!(
                        "{name}: stored without a key, so it cannot be looked up"
                    )));
                };
                self.backend.memory_tombstone(self.agent, key).await?
            }
            ContractRecord::Tool(tool) => {
                self.backend.tool_tombstone(self.agent, &tool.name).await?
            }
            ContractRecord::Metric(_) | ContractRecord::Execution(_) => None,
        };
        let version = own.updated_at().unwrap_or_else(|| own.created_at());
        Ok(match deleted {
            Some(deleted) if deleted >= version => Verdict::Outranked,
            Some(deleted) => Verdict::Differs(format!(
                "{name}: missing; its delete in PostgreSQL ({deleted}) is older than this \
                 version ({version})"
            )),
            None => Verdict::Differs(format!("{name}: missing")),
        })
    }

    /// Every key and tool the file records as deleted must not be in PostgreSQL at a
    /// version the delete outranks: a deleted memory or tool never comes back.
    async fn tombstones(&self, source: &mut Source, tools: bool) -> Result<TableCheck> {
        let mut tally = Tally::default();
        let read = match tools {
            false => read_own_tombstones(source).await,
            true => read_own_tool_tombstones(source).await,
        };
        let unread = match read {
            Ok(tombstones) => {
                for (name, deleted) in tombstones {
                    let held = match tools {
                        false => self
                            .backend
                            .get_memory(self.agent, &name)
                            .await?
                            .map(|m| ("memory", m.updated_at)),
                        true => self
                            .backend
                            .get_tool(self.agent, &name)
                            .await?
                            .map(|t| ("tool", t.updated_at)),
                    };
                    let verdict = match held {
                        Some((kind, version)) if version <= deleted => Verdict::Differs(format!(
                            "{kind} {name:?}: deleted here at {deleted}, but PostgreSQL still \
                             holds its version of {version}"
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
        let (table, target) = match tools {
            false => ("agent_memory_tombstones", "agent_memory.memory_tombstones"),
            true => ("agent_tool_tombstones", "agent_memory.tool_tombstones"),
        };
        Ok(tally.check(self, table, target, unread))
    }
}

/// How a difference names a record: memories and tools by key or name, metrics and
/// executions by id.
fn name(record: &ContractRecord) -> String {
    match record {
        ContractRecord::Memory(m) => match &m.key {
            Some(key) => format!("memory {key:?}"),
            None => format!("memory {}", m.id),
        },
        ContractRecord::Tool(t) => format!("tool {:?}", t.name),
        ContractRecord::Metric(m) => format!("metric {:?} {}", m.name, m.id),
        ContractRecord::Execution(e) => format!("execution {}", e.id),
    }
}

/// The verdict on the file's record `own` against PostgreSQL's `held`, found by the
/// same key, name or id. A later version in PostgreSQL outranks it. An earlier version
/// holding the same data is the file's record with its version capped at the migration
/// time (a clock that was ahead); one holding other data is an older version the file's
/// record never replaced. `copied` is the id the record has when another agent holds
/// its own.
fn judge(own: &ContractRecord, held: &ContractRecord, copied: uuid::Uuid) -> Verdict {
    let versions = own.updated_at().zip(held.updated_at());
    if versions.is_some_and(|(own, held)| held > own) {
        return Verdict::Outranked;
    }
    let differ = differing(own, held, copied);
    if differ.is_empty() {
        return Verdict::Same;
    }
    let mut what = format!("{}: differs in {}", name(own), differ.join(", "));
    if let Some((own, held)) = versions.filter(|(own, held)| held < own) {
        what.push_str(&format!(
            "; PostgreSQL holds an older version ({held}, the file {own})"
        ));
    }
    Verdict::Differs(what)
}

/// The fields, other than the version, that differ between two records of one table.
/// Content is compared exactly, as both sides store its text; metadata by value, as
/// PostgreSQL's `jsonb` may rewrite a number's written form.
fn differing(own: &ContractRecord, held: &ContractRecord, copied: uuid::Uuid) -> Vec<&'static str> {
    let mut differ = Vec::new();
    if own.id() != held.id() && held.id() != copied {
        differ.push("id");
    }
    if own.created_at() != held.created_at() {
        differ.push("created_at");
    }
    if own.content() != held.content() {
        differ.push("content");
    }
    if !same_metadata(own.metadata(), held.metadata()) {
        differ.push("metadata");
    }
    match (own, held) {
        // An embedding PostgreSQL has and the file lacks is a later fill, not a change.
        (ContractRecord::Memory(a), ContractRecord::Memory(b))
            if a.embedding.is_some() && a.embedding != b.embedding =>
        {
            differ.push("embedding");
        }
        (ContractRecord::Metric(a), ContractRecord::Metric(b)) => {
            if a.name != b.name {
                differ.push("name");
            }
            if a.value != b.value {
                differ.push("value");
            }
        }
        (ContractRecord::Execution(a), ContractRecord::Execution(b)) if a.status != b.status => {
            differ.push("status");
        }
        _ => {}
    }
    differ
}
