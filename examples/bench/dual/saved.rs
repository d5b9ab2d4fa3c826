//! The suite's saved results read back: its chart, its targets and its section of the
//! results page.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Args, Config, Figures};
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, Table, markdown_table, median, ms};
use crate::results::{Ratio, Summary, ms_text, repetitions, summary_of};

/// The suite's results as `report` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    configs: BTreeMap<String, SavedConfig>,
    ratios: Vec<Ratio>,
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
    out
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
