//! The suite's saved results read back: its chart, its targets and its section of the
//! results page.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::disk::Disk;
use super::parts::{Parts, StoreWire};
use super::{Args, Config, Derived, Figures};
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, Table, markdown_table, median, ms};
use crate::results::{Ratio, Summary, ms_text, repetitions, summary_of};

/// The suite's results as `report` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    configs: BTreeMap<String, SavedConfig>,
    ratios: Vec<Ratio>,
    /// The store taken apart, the disk alone, and the figures derived from them
    /// (results saved since they were measured).
    #[serde(default)]
    parts: Option<Medians<Parts>>,
    #[serde(default)]
    disk: Option<SavedDisk>,
    #[serde(default)]
    derived: Option<Medians<Derived>>,
    #[serde(default)]
    wire: Option<StoreWire>,
}

#[derive(Debug, Deserialize)]
struct Medians<T> {
    median: T,
}

#[derive(Debug, Deserialize)]
struct SavedDisk {
    median: Disk,
    same_filesystem_as_postgres: bool,
}

/// One configuration: the medians, and what the dual backend timed per side.
#[derive(Debug, Deserialize)]
struct SavedConfig {
    median: Figures,
    repetitions: Vec<Repetition>,
}

#[derive(Debug, Deserialize)]
struct Repetition {
    /// `DualBackend::stats()` after the latency pass (dual configurations only).
    dual: Option<DualSides>,
}

#[derive(Debug, Deserialize)]
struct DualSides {
    sqlite: Side,
    postgres: Side,
    shadow_compares: u64,
}

#[derive(Debug, Deserialize)]
struct Side {
    read_latency: P50,
    write_latency: P50,
}

#[derive(Debug, Deserialize)]
struct P50 {
    p50_us: Option<u64>,
}

/// The configurations in `configs`, in the suite's order.
fn in_order(configs: &BTreeMap<String, SavedConfig>) -> Vec<(&'static str, &SavedConfig)> {
    Config::ALL
        .iter()
        .filter_map(|c| Some((c.name(), configs.get(c.name())?)))
        .collect()
}

/// The chart, targets and section of the page of the suite's saved `results`.
pub fn summary(results: &Value) -> Result<Summary> {
    summary_of(results, chart, |saved: &Saved| &saved.ratios, markdown)
}

fn chart(saved: &Saved) -> Chart {
    // One bar per configuration in each group: its store figure, then its retrieve one.
    let series = |store: fn(&Figures) -> f64, retrieve: fn(&Figures) -> f64| -> Vec<Series> {
        in_order(&saved.configs)
            .iter()
            .map(|(name, c)| Series {
                name: name.to_string(),
                values: vec![Some(store(&c.median)), Some(retrieve(&c.median))],
            })
            .collect()
    };
    Chart {
        title: "dual: the dual backend against SQLite and PostgreSQL alone".into(),
        panels: vec![
            Panel {
                title: "p50 latency, one task, ms (lower is better)".into(),
                categories: vec!["store".into(), "retrieve".into()],
                series: series(|f| f.store_p50_us / 1000.0, |f| f.retrieve_p50_us / 1000.0),
            },
            Panel {
                title: format!(
                    "calls/s, {} tasks (higher is better)",
                    saved.args.concurrency
                ),
                categories: vec!["store".into(), "retrieve".into()],
                series: series(|f| f.store_ops_per_s, |f| f.retrieve_ops_per_s),
            },
        ],
    }
}

fn markdown(saved: &Saved) -> String {
    let args = &saved.args;
    let tasks = args.concurrency;
    let mut out = format!(
        "`sqlite`, `postgres`, and the dual backend at `dualwrite` and at `live` over the \
         same two: {} stores and {} retrieves of values of about {} B per pass; latency \
         from one task, throughput from {tasks} tasks on distinct agents; {}, the \
         order of the configurations rotated each time.\n\n",
        thousands(args.ops as f64, 0),
        thousands(args.ops as f64, 0),
        thousands(args.value_bytes as f64, 0),
        repetitions(args.reps),
    );
    let rows: Vec<Vec<String>> = in_order(&saved.configs)
        .iter()
        .map(|(name, c)| {
            let f = &c.median;
            vec![
                format!("`{name}`"),
                ms_text(f.store_p50_us),
                ms_text(f.store_p99_us),
                ms_text(f.retrieve_p50_us),
                ms_text(f.retrieve_p99_us),
                thousands(f.store_ops_per_s, 0),
                thousands(f.retrieve_ops_per_s, 0),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "config",
            "store p50",
            "store p99",
            "retrieve p50",
            "retrieve p99",
            &format!("stores/s, {tasks} tasks"),
            &format!("retrieves/s, {tasks} tasks"),
        ],
        &rows,
    ));

    if let Some(table) = breakdown_table(&saved.configs) {
        out.push_str(
            "\nWhere a dual call's time goes: p50 of each side as `DualBackend::stats()` timed \
             it over the latency pass (histograms, within 9%), medians of the repetitions, in \
             ms.\n\n",
        );
        out.push_str(&table.markdown());
    }
    if let (Some(parts), Some(disk), Some(derived)) = (&saved.parts, &saved.disk, &saved.derived) {
        let stores = [Config::Sqlite, Config::Postgres, Config::DualWrite].map(|c| {
            saved
                .configs
                .get(c.name())
                .map_or(f64::NAN, |s| s.median.store_p50_us)
        });
        out.push_str(&format!("\n{}\n\n", PARTS_HEADING));
        out.push_str(&parts_table(&parts.median, &disk.median, &stores).markdown());
        out.push_str(&format!(
            "\n{}\n",
            derived_text(
                &derived.median,
                &disk.median,
                disk.same_filesystem_as_postgres
            )
        ));
    }
    if let Some(w) = &saved.wire {
        out.push_str(&format!("\n{}\n", wire_text(w)));
    }
    out
}

/// Statements and round trips to PostgreSQL per store, in a sentence.
pub(super) fn wire_text(w: &StoreWire) -> String {
    let each = |w: &crate::harness::Wire| {
        format!(
            "{:.2} statements in {:.2} round trips",
            w.statements_per_call, w.round_trips_per_call
        )
    };
    format!(
        "Sent to PostgreSQL per store, counted by a relay between the backend and the server \
         ({} stores each, not timed): a `postgres` store {}; PostgreSQL's apply in a \
         `dualwrite` store {} (the versioned upsert, then the check for a delete that \
         committed while it ran); a `dualwrite` store by the dual backend {}.",
        w.postgres_store.calls,
        each(&w.postgres_store),
        each(&w.postgres_apply),
        each(&w.dualwrite_store),
    )
}

const PARTS_HEADING: &str = "A `dualwrite` store taken apart (medians of the repetitions, p50 in ms): \
     the two writes the dual backend makes, made by hand through the sides' `Replica` calls \
     one after the other (SQLite's commit with its journal record, then PostgreSQL's apply \
     of that version), and the disk alone: a 2 KB write with its `fdatasync` to a file of \
     its own, two such writes to two files issued at once from two threads, and two one \
     after the other.";

/// The store taken apart and the disk alone, against the stores of `sqlite`,
/// `postgres` and `dualwrite` (`stores`, p50 in microseconds).
fn parts_table(parts: &Parts, disk: &Disk, stores: &[f64; 3]) -> Table {
    let [lite, pg, dual] = *stores;
    let row = |what: &str, us: f64, over: String| vec![what.to_string(), ms(us), over];
    let ratio = |a: f64, b: f64, of: &str| format!("{:.2}x {of}", a / b);
    Table::new(
        &["what", "p50", "against"],
        vec![
            row("sqlite store, alone", lite, String::new()),
            row("postgres store, alone", pg, String::new()),
            row(
                "sqlite commit with journal record",
                parts.sqlite_outbox_p50_us,
                ratio(parts.sqlite_outbox_p50_us, lite, "sqlite store"),
            ),
            row(
                "postgres apply of that version",
                parts.postgres_apply_p50_us,
                ratio(parts.postgres_apply_p50_us, pg, "postgres store"),
            ),
            row(
                "both, one after the other",
                parts.both_p50_us,
                ratio(parts.both_p50_us, lite + pg, "sqlite + postgres stores"),
            ),
            row(
                "dualwrite store",
                dual,
                ratio(dual, parts.both_p50_us, "both by hand"),
            ),
            row("disk: one sync alone", disk.alone_p50_us, String::new()),
            row(
                "disk: two syncs at once, each",
                disk.concurrent_each_p50_us,
                ratio(disk.concurrent_each_p50_us, disk.alone_p50_us, "one alone"),
            ),
            row(
                "disk: two syncs at once, both done",
                disk.concurrent_both_p50_us,
                ratio(disk.concurrent_both_p50_us, disk.alone_p50_us, "one alone"),
            ),
            row(
                "disk: two syncs in a row",
                disk.sequential_both_p50_us,
                ratio(disk.sequential_both_p50_us, disk.alone_p50_us, "one alone"),
            ),
        ],
    )
}

/// What the derived figures say, in a sentence.
fn derived_text(derived: &Derived, disk: &Disk, same_disk: bool) -> String {
    format!(
        "The dual backend writes its two sides one after the other, so a `dualwrite` store \
         is at least the two writes in a row: it takes {:.2}x the sum of the two sides' \
         stores and {:.2}x its two writes made by hand. With the disk's own time taken out \
         of both (two syncs in a row from the `dualwrite` store, one sync from the slower \
         side's), the target's ratio is {:.2}; were the two syncs issued at once, {:.2}. Two \
         syncs at once take each {:.2}x one alone{}.",
        derived.dualwrite_vs_sum_of_sides,
        derived.dualwrite_vs_parts,
        derived.dualwrite_vs_slower_without_disk,
        derived.dualwrite_vs_slower_without_concurrent_disk,
        disk.concurrency_ratio(),
        if same_disk {
            " (the SQLite files and PostgreSQL's data share this filesystem)"
        } else {
            " (measured in the SQLite agents folder; PostgreSQL's data is on another filesystem)"
        },
    )
}

/// The printed form of the store taken apart, the disk alone, and the derived figures.
pub(super) fn parts_text(
    parts: &Parts,
    disk: &Disk,
    stores: &[f64; 3],
    derived: &Derived,
    same_disk: bool,
) -> String {
    format!(
        "{PARTS_HEADING}\n{}\n{}",
        parts_table(parts, disk, stores).text(),
        derived_text(derived, disk, same_disk)
    )
}

/// Each side's share of the dual configurations' calls in the saved `configs`, as the
/// dual backend's own histograms timed it: p50 in ms, medians of the repetitions.
pub(super) fn breakdown(configs: &Value) -> Result<Table> {
    let configs = BTreeMap::<String, SavedConfig>::deserialize(configs)?;
    breakdown_table(&configs).ok_or_else(|| "no dual configuration saved its statistics".into())
}

fn breakdown_table(configs: &BTreeMap<String, SavedConfig>) -> Option<Table> {
    let rows: Vec<Vec<String>> = in_order(configs)
        .iter()
        .filter_map(|(name, c)| {
            let sides: Vec<&DualSides> = c
                .repetitions
                .iter()
                .filter_map(|r| r.dual.as_ref())
                .collect();
            if sides.is_empty() {
                return None;
            }
            // A side with no such calls (PostgreSQL reads at `dualwrite`) has no p50.
            let m = |f: fn(&DualSides) -> Option<u64>| {
                let values: Vec<f64> = sides
                    .iter()
                    .filter_map(|s| f(s))
                    .map(|us| us as f64)
                    .collect();
                match values.is_empty() {
                    true => "-".to_string(),
                    false => ms(median(values)),
                }
            };
            Some(vec![
                name.to_string(),
                ms(c.median.store_p50_us),
                m(|s| s.sqlite.write_latency.p50_us),
                m(|s| s.postgres.write_latency.p50_us),
                ms(c.median.retrieve_p50_us),
                m(|s| s.sqlite.read_latency.p50_us),
                m(|s| s.postgres.read_latency.p50_us),
                format!(
                    "{:.0}",
                    median(sides.iter().map(|s| s.shadow_compares as f64).collect())
                ),
            ])
        })
        .collect();
    (!rows.is_empty()).then(|| {
        Table::new(
            &[
                "config",
                "store",
                "sqlite write",
                "postgres write",
                "retrieve",
                "sqlite read",
                "postgres read",
                "compares",
            ],
            rows,
        )
    })
}
