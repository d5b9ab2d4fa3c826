//! The suite's saved results read back: its chart, its targets and its section of the
//! results page.

use serde::Deserialize;
use serde_json::Value;

use super::Args;
use super::client::Stages;
use super::profile::StatementKind;
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, markdown_table};
use crate::results::{Ratio, Summary, mb_text};

/// The suite's results as `report` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    legacy_file: LegacyFile,
    client_side: ClientSide,
    loads: Loads,
    ratios: Vec<Ratio>,
    /// Absent from results saved before catch-up runs were timed.
    #[serde(default)]
    catch_up: Option<CatchUp>,
}

/// The catch-up runs, as `catchup::time_catch_ups` saves them.
#[derive(Debug, Deserialize)]
struct CatchUp {
    first_seconds: f64,
    unchanged_seconds: f64,
    one_percent_changed_seconds: f64,
    changed_rows: usize,
}

#[derive(Debug, Deserialize)]
struct LegacyFile {
    rows: usize,
    bytes: u64,
    mean_content_bytes: f64,
}

#[derive(Debug, Deserialize)]
struct ClientSide {
    stages: Stages,
}

#[derive(Debug, Deserialize)]
struct Loads {
    backfill: Load,
    backfill_quarter: Load,
    backfill_quarter_unix_socket: Option<Load>,
    /// A load, or `{"did_not_run": why}`.
    pgloader: Value,
    copy: Load,
    batch_size_tries: Vec<Load>,
}

/// One load as saved (the timing fields sit beside the others).
#[derive(Debug, Deserialize)]
struct Load {
    name: String,
    rows: usize,
    rows_per_s: f64,
    seconds: f64,
    peak_rss_kb: Option<u64>,
    statements: Option<Vec<StatementKind>>,
}

impl Loads {
    /// pgloader's load, or why it did not run.
    fn pgloader(&self) -> Result<std::result::Result<Load, String>> {
        match self.pgloader.get("did_not_run") {
            Some(why) => Ok(Err(why.as_str().unwrap_or("not known").to_string())),
            None => Ok(Ok(Load::deserialize(&self.pgloader)?)),
        }
    }
}

/// A load's name up to its first space or parenthesis, for a chart's axis.
fn short_name(name: &str) -> String {
    name.split(" (").next().unwrap_or(name).to_string()
}

/// The chart, targets and section of the page of the suite's saved `results`.
pub fn summary(results: &Value) -> Result<Summary> {
    let saved = Saved::deserialize(results)?;
    let pgloader = saved.loads.pgloader()?;
    Ok(Summary {
        chart: chart(&saved, &pgloader),
        targets: saved.ratios.clone(),
        markdown: markdown(&saved, &pgloader),
    })
}

fn chart(saved: &Saved, pgloader: &std::result::Result<Load, String>) -> Chart {
    let (backfill, quarter) = (&saved.loads.backfill, &saved.loads.backfill_quarter);
    let mut loads: Vec<&Load> = vec![backfill];
    loads.extend(pgloader.as_ref().ok());
    loads.push(&saved.loads.copy);
    Chart {
        title: format!(
            "backfill: {} legacy rows into PostgreSQL",
            thousands(saved.legacy_file.rows as f64, 0)
        ),
        panels: vec![
            Panel {
                title: "rows/s (higher is better)".into(),
                categories: loads.iter().map(|l| short_name(&l.name)).collect(),
                series: vec![Series {
                    name: "rows/s".into(),
                    values: loads.iter().map(|l| Some(l.rows_per_s)).collect(),
                }],
            },
            Panel {
                title: "backfill peak RSS, MB (flat is better)".into(),
                categories: vec![
                    format!("{} rows", quarter.rows),
                    format!("{} rows", backfill.rows),
                ],
                series: vec![Series {
                    name: "peak RSS".into(),
                    values: [quarter, backfill]
                        .iter()
                        .map(|l| l.peak_rss_kb.map(|kb| kb as f64 / 1024.0))
                        .collect(),
                }],
            },
        ],
    }
}

fn markdown(saved: &Saved, pgloader: &std::result::Result<Load, String>) -> String {
    let (legacy, loads) = (&saved.legacy_file, &saved.loads);
    let mut out = format!(
        "A generated legacy SQLite file of {} `memory` rows (contents of {:.0} B on \
         average, {:.0} MB), loaded three ways, each a child process into a fresh database \
         after a `CHECKPOINT`, start-up included: this backfill into the contract tables \
         (every check, batches of {}), pgloader (raw rows into a table it makes, no \
         transformation) and `psql \\copy` of the rows already transformed into the indexed \
         contract table. Peak memory is the process's resident-set high-water mark.\n\n",
        thousands(legacy.rows as f64, 0),
        legacy.mean_content_bytes,
        legacy.bytes as f64 / 1e6,
        thousands(saved.args.batch_size as f64, 0),
    );
    let row = |load: &Load, what: &str| {
        vec![
            load.name.replace('\\', "\\\\"),
            thousands(load.rows as f64, 0),
            format!("{:.1}", load.seconds),
            thousands(load.rows_per_s, 0),
            load.peak_rss_kb.map_or("-".into(), mb_text),
            what.to_string(),
        ]
    };
    let mut rows = vec![row(&loads.backfill, "the timed run")];
    match pgloader {
        Ok(load) => rows.push(row(load, "raw rows, table made by pgloader")),
        Err(why) => rows.push(vec![
            "pgloader".into(),
            thousands(legacy.rows as f64, 0),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("did not run: {why}"),
        ]),
    }
    rows.push(row(&loads.copy, "rows already transformed, indexed table"));
    rows.push(row(
        &loads.backfill_quarter,
        "memory flatness; statements profiled",
    ));
    if let Some(load) = &loads.backfill_quarter_unix_socket {
        rows.push(row(load, "over the Unix socket: no TCP delay"));
    }
    for load in &loads.batch_size_tries {
        rows.push(row(load, "another batch size"));
    }
    out.push_str(&markdown_table(
        &["load", "rows", "seconds", "rows/s", "peak memory", "what"],
        &rows,
    ));

    out.push_str(
        "\nThe backfill's client side alone, in-process over the same file: reading, \
         converting and encoding the rows as COPY text, without a database.\n\n",
    );
    out.push_str(&saved.client_side.stages.table().markdown());

    if let Some(c) = &saved.catch_up {
        out.push_str(&format!(
            "\nCatch-up runs: the backfill run again over the same file into the database of a \
             first run, once unchanged (nothing is read) and once after {} rows (1%) changed \
             in place (every row read and digested, the changed ones sent):\n\n",
            thousands(c.changed_rows as f64, 0)
        ));
        let ratio = |s: f64| format!("{:.3}", s / c.first_seconds);
        out.push_str(&markdown_table(
            &["run", "seconds", "of the first run"],
            &[
                vec![
                    "first run".into(),
                    format!("{:.1}", c.first_seconds),
                    "1.000".into(),
                ],
                vec![
                    "catch-up, file unchanged".into(),
                    format!("{:.2}", c.unchanged_seconds),
                    ratio(c.unchanged_seconds),
                ],
                vec![
                    "catch-up, 1% of rows changed".into(),
                    format!("{:.1}", c.one_percent_changed_seconds),
                    ratio(c.one_percent_changed_seconds),
                ],
            ],
        ));
    }

    let quarter = &loads.backfill_quarter;
    if let Some(statements) = quarter.statements.as_deref().filter(|s| !s.is_empty()) {
        out.push_str(&format!(
            "\nWhere the backfill's time goes on the server, over the {} rows of the \
             profiled run (statement durations from the server's log), in ms per execution \
             over the first tenth of the run, the slowest tenth and the last:\n\n",
            thousands(quarter.rows as f64, 0),
        ));
        let rows: Vec<Vec<String>> = statements
            .iter()
            .filter(|k| k.total_s >= 0.05)
            .map(|k| {
                vec![
                    k.statement.clone(),
                    thousands(k.count as f64, 0),
                    format!("{:.1}", k.total_s),
                    format!("{:.2}", k.first_tenth_ms),
                    format!("{:.2}", k.peak_tenth_ms),
                    format!("{:.2}", k.last_tenth_ms),
                ]
            })
            .collect();
        out.push_str(&markdown_table(
            &[
                "statement",
                "count",
                "total s",
                "ms, first tenth",
                "slowest tenth",
                "last tenth",
            ],
            &rows,
        ));
    }
    out
}
