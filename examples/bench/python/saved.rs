//! The suite's saved results read back: its printed tables, its chart, its targets and
//! its section of the results page.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Args, Backend, Call, Client, Run, Size, langgraph_best, median_of};
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, Table, ms};
use crate::results::{Ratio, Summary, repetitions, summary_of};

/// The suite's results as `run` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    /// The values' sizes as JSON text, in bytes, by `small` and `large`.
    value_bytes: BTreeMap<String, usize>,
    /// Python's version and the packages' (memshift, LangGraph's, psycopg, aiosqlite).
    versions: BTreeMap<String, String>,
    /// `PRAGMA journal_mode` and `synchronous` of LangGraph's SQLite connections, read
    /// back after they were set.
    langgraph_sqlite_settings: BTreeMap<String, String>,
    runs: Vec<Run>,
    ratios: Vec<Ratio>,
}

impl Saved {
    fn size_label(&self, size: Size) -> String {
        match self.value_bytes.get(size.name()) {
            Some(bytes) => format!("{} B", thousands(*bytes as f64, 0)),
            None => size.name().to_string(),
        }
    }

    /// The median over the repetitions of a client's p50 of `call`.
    fn p50(&self, client: Client, backend: Backend, size: Size, call: Call) -> Option<f64> {
        median_of(&self.runs, client, backend, size, call, |l| l.p50_us)
    }

    /// Every measured median: one row per backend, value and client.
    fn latency_table(&self) -> Table {
        let mut rows = Vec::new();
        for backend in Backend::ALL {
            for size in Size::ALL {
                for client in Client::ALL {
                    let figure = |call, f: fn(&crate::harness::Latency) -> f64| {
                        median_of(&self.runs, client, backend, size, call, f)
                            .map_or_else(|| "-".into(), ms)
                    };
                    rows.push(vec![
                        backend.name().to_string(),
                        self.size_label(size),
                        client.label().to_string(),
                        figure(Call::Store, |l| l.p50_us),
                        figure(Call::Store, |l| l.p99_us),
                        figure(Call::Retrieve, |l| l.p50_us),
                        figure(Call::Retrieve, |l| l.p99_us),
                    ]);
                }
            }
        }
        Table::new(
            &[
                "backend",
                "value",
                "client",
                "store p50",
                "store p99",
                "retrieve p50",
                "retrieve p99",
            ],
            rows,
        )
    }

    /// The Python call's p50 over each other client's, per backend, value and call.
    fn ratio_table(&self) -> Table {
        let mut rows = Vec::new();
        for backend in Backend::ALL {
            for size in Size::ALL {
                for call in Call::ALL {
                    let p50 = |client| self.p50(client, backend, size, call);
                    let over = |other: Option<f64>| {
                        p50(Client::Python)
                            .zip(other)
                            .map_or_else(|| "-".into(), |(p, o)| format!("{:.2}", p / o))
                    };
                    rows.push(vec![
                        backend.name().to_string(),
                        self.size_label(size),
                        call.name().to_string(),
                        over(p50(Client::Rust)),
                        over(p50(Client::LanggraphAsync)),
                        over(p50(Client::LanggraphSync)),
                        over(langgraph_best(p50)),
                    ]);
                }
            }
        }
        Table::new(
            &[
                "backend",
                "value",
                "call",
                "Python / Rust",
                "Python / LangGraph async",
                "Python / LangGraph sync",
                "Python / LangGraph's faster",
            ],
            rows,
        )
    }

    fn versions_text(&self) -> String {
        listed(&self.versions, " ", ", ")
    }

    fn sqlite_settings_text(&self) -> String {
        listed(&self.langgraph_sqlite_settings, ": ", "; ")
    }
}

/// `map`'s entries as `name<between>value`, joined by `separator`.
fn listed(map: &BTreeMap<String, String>, between: &str, separator: &str) -> String {
    map.iter()
        .map(|(name, value)| format!("{name}{between}{value}"))
        .collect::<Vec<_>>()
        .join(separator)
}

/// A target's line in the printed list: the ratio, the verdict, each repetition's ratio.
fn line(ratio: &Ratio) -> String {
    let reps: Vec<String> = ratio
        .per_repetition
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect();
    format!(
        "  {:<58} {:>5}  target <= {:.1}  {}   (per repetition: {})",
        ratio.formula,
        ratio.value.map_or("-".into(), |v| format!("{v:.2}")),
        ratio.target,
        match ratio.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        },
        reps.join(" "),
    )
}

/// Prints the tables and targets of the suite's `results`, as the results page reads
/// them.
pub(super) fn print(results: &Value) -> Result<()> {
    let saved = Saved::deserialize(results)?;
    println!(
        "\nlatency in ms, one call at a time, {}\n{}",
        repetitions(saved.args.reps),
        saved.latency_table().text()
    );
    println!(
        "\nthe Python call's p50 over the others' (below 1: the Python call is faster)\n{}",
        saved.ratio_table().text()
    );
    println!("\nLangGraph's SQLite: {}", saved.sqlite_settings_text());
    println!(
        "\ntargets (value of {})",
        saved.size_label(super::TARGET_SIZE)
    );
    for ratio in &saved.ratios {
        println!("{}", line(ratio));
    }
    Ok(())
}

/// The chart, targets and section of the page of the suite's saved `results`.
pub fn summary(results: &Value) -> Result<Summary> {
    summary_of(results, chart, |saved: &Saved| &saved.ratios, markdown)
}

fn chart(saved: &Saved) -> Chart {
    let cells: Vec<(Backend, Size)> = Backend::ALL
        .iter()
        .flat_map(|b| Size::ALL.iter().map(move |s| (*b, *s)))
        .collect();
    let categories: Vec<String> = cells
        .iter()
        .map(|(backend, size)| format!("{} {}", backend.name(), saved.size_label(*size)))
        .collect();
    let series = |call: Call| -> Vec<Series> {
        Client::ALL
            .iter()
            .map(|&client| Series {
                name: client.label().to_string(),
                values: cells
                    .iter()
                    .map(|&(backend, size)| {
                        saved.p50(client, backend, size, call).map(|us| us / 1000.0)
                    })
                    .collect(),
            })
            .collect()
    };
    Chart {
        title: "peers: memshift from Rust and Python against LangGraph's stores".into(),
        panels: Call::ALL
            .iter()
            .map(|&call| Panel {
                title: format!("{} p50, ms (lower is better)", call.name()),
                categories: categories.clone(),
                series: series(call),
            })
            .collect(),
    }
}

fn markdown(saved: &Saved) -> String {
    let args = &saved.args;
    let mut out = format!(
        "The Python package's `await memory.store_memory(key, value)` and `await \
         memory.retrieve_memory(key)` (a release build) against the same calls of \
         `memshift::AgentMemory` from Rust, and against LangGraph's stores doing \
         `put`/`get` (`aput`/`aget` for the async ones) of the same values: \
         `SqliteStore`/`AsyncSqliteStore` and `PostgresStore`/`AsyncPostgresStore`. Each \
         client makes {calls} stores then {calls} retrieves, one after another, on one \
         agent (a namespace for LangGraph) with keys cycling over {keys}, so every store \
         overwrites a key and every retrieve finds one; values of {small} and {large}; \
         {reps}, the clients measured back to back and their order rotated each time. \
         LangGraph's SQLite connections have the library's settings ({settings}); both \
         PostgreSQL clients use the same server and database. Versions: {versions}.\n\n",
        calls = thousands(args.calls as f64, 0),
        keys = args.keys,
        small = saved.size_label(Size::Small),
        large = saved.size_label(Size::Large),
        reps = repetitions(args.reps),
        settings = saved.sqlite_settings_text(),
        versions = saved.versions_text(),
    );
    out.push_str(&saved.ratio_table().markdown());
    out.push_str("\nLatency in ms, one call at a time:\n\n");
    out.push_str(&saved.latency_table().markdown());
    out
}
