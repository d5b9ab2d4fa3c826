//! The dry run's inventory: per agent, file and table, where its rows would go and how many there are.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::discover::{Probe, discover};
use super::open::{ReadOptions, Source};
use super::read::TableKind;
use super::row::{RowOrigin, convert_row};
use super::{TableMap, Target};
use crate::backend::codec::time_text;
use crate::error::{Chain, Result};

/// What a dry run found under an agents path.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// Every file found, in path order.
    pub files: Vec<FileInventory>,
}

/// One file of the inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct FileInventory {
    /// The file.
    pub path: PathBuf,
    /// Relative to the agents path, `/`-separated.
    pub source_db: String,
    /// The agent id, or why the path gives none.
    pub agent: std::result::Result<String, String>,
    /// What the file is.
    pub probe: Probe,
    /// Its tables (empty for a problem file).
    pub tables: Vec<TableInventory>,
    /// A problem met while reading it after a successful probe.
    pub problem: Option<String>,
}

/// One table of the inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInventory {
    /// The table's name.
    pub name: String,
    /// Where its rows go, or why they do not.
    pub outcome: TableOutcome,
    /// Its rows (0 for skipped tables, which are not read).
    pub rows: u64,
    /// Rows whose time column holds a value that is not a time (`created_at` falls back
    /// to the migration time), with the first few as `rowid: reason`.
    pub unreadable_times: u64,
    /// Up to five examples of unreadable times.
    pub time_examples: Vec<String>,
    /// Rows whose own time lies after the moment the dry run read them (a migration
    /// would keep it as `created_at` but cap `updated_at` at the migration time).
    pub future_times: u64,
    /// The first of them, as `rowid N: <time>`.
    pub future_example: Option<String>,
}

/// Where a table's rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableOutcome {
    /// Into this contract table.
    Target(Target),
    /// Not mapped: no contract name and no `--map`; reported, never dropped silently.
    Unmapped,
    /// Not data, for the reason given.
    Skipped(String),
}

/// Reads every file under `agents_path` as a migration would, writing nothing: per
/// file and table its target (or why none), its row count, and the rows whose time could
/// not be read. Library-layout files list their four tables with the row counts.
///
/// Problems are recorded per file; this function itself does not fail.
pub async fn inventory(agents_path: &Path, map: &TableMap, options: &ReadOptions) -> Inventory {
    let mut files = Vec::new();
    for found in discover(agents_path, options).await {
        let mut file = FileInventory {
            path: found.path.clone(),
            source_db: found.source_db.clone(),
            agent: found
                .agent
                .as_ref()
                .map(|a| a.to_string())
                .map_err(Clone::clone),
            probe: found.probe.clone(),
            tables: Vec::new(),
            problem: None,
        };
        if !matches!(found.probe, Probe::Problem(_)) {
            let agent = found.agent.as_ref().ok();
            if let Err(e) = inventory_file(&mut file, agent, map, options).await {
                file.problem = Some(Chain(&e).to_string());
            }
        }
        files.push(file);
    }
    Inventory { files }
}

async fn inventory_file(
    file: &mut FileInventory,
    agent: Option<&crate::record::AgentId>,
    map: &TableMap,
    options: &ReadOptions,
) -> Result<()> {
    let mut source = Source::open(&file.path, options).await?;
    let own = file.probe == Probe::Own;
    for table in source.tables().await? {
        let outcome = match (&table.kind, own) {
            (TableKind::Skipped { reason }, _) => TableOutcome::Skipped(reason.clone()),
            (_, true) => [
                Target::Memories,
                Target::Tools,
                Target::Metrics,
                Target::Executions,
            ]
            .into_iter()
            .find(|t| t.table() == table.name)
            .map(TableOutcome::Target)
            .unwrap_or_else(|| {
                TableOutcome::Skipped("the library's own bookkeeping, not agent data".into())
            }),
            (_, false) => map
                .spec(&file.source_db, &table.name)
                .map_or(TableOutcome::Unmapped, |spec| {
                    TableOutcome::Target(spec.target)
                }),
        };
        let mut entry = TableInventory {
            name: table.name.clone(),
            outcome: outcome.clone(),
            rows: 0,
            unreadable_times: 0,
            time_examples: Vec::new(),
            future_times: 0,
            future_example: None,
        };
        match outcome {
            TableOutcome::Skipped(_) => {}
            TableOutcome::Target(target) if !own => match agent {
                // Converting is the only way to know which times cannot be read.
                Some(agent) => {
                    let at = Utc::now();
                    let mut batches = source.rows(&table);
                    while let Some(batch) = batches.next_batch().await? {
                        for row in &batch {
                            entry.rows += 1;
                            let origin = RowOrigin {
                                agent,
                                source: "",
                                source_db: &file.source_db,
                            };
                            let converted = convert_row(&origin, &table, &target.into(), row, at)?;
                            let place = || {
                                converted
                                    .source
                                    .rowid
                                    .map_or("row".to_string(), |r| format!("rowid {r}"))
                            };
                            if converted.future_time {
                                entry.future_times += 1;
                                if entry.future_example.is_none() {
                                    entry.future_example = Some(format!(
                                        "{}: {}",
                                        place(),
                                        time_text(&converted.record.created_at())
                                    ));
                                }
                            }
                            if let Some(problem) = converted.time_problem {
                                entry.unreadable_times += 1;
                                if entry.time_examples.len() < 5 {
                                    entry.time_examples.push(format!("{}: {problem}", place()));
                                }
                            }
                        }
                    }
                }
                None => entry.rows = source.count(&table.name).await?,
            },
            _ => entry.rows = source.count(&table.name).await?,
        }
        file.tables.push(entry);
    }
    Ok(())
}
