//! The suite's saved results read back: its chart, its target and its section of the
//! results page.

use serde::Deserialize;
use serde_json::Value;

use super::{Args, Measured};
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, markdown_table};
use crate::results::{Ratio, Summary, ms_text};

/// The suite's results as `run` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    load_seconds: Loads,
    index: Index,
    /// The default search first: HNSW with the default `ef_search`.
    searches: Vec<Measured>,
    target: Target,
    /// SQLite exact search against its baselines (absent from earlier runs).
    #[serde(default)]
    search_ratios: Option<SearchRatios>,
}

#[derive(Debug, Deserialize)]
struct SearchRatios {
    sqlite_exact_over_floor: f64,
    sqlite_vec_over_sqlite_exact: f64,
}

#[derive(Debug, Deserialize)]
struct Loads {
    postgres: f64,
    sqlite: f64,
}

#[derive(Debug, Deserialize)]
struct Index {
    seconds: f64,
}

#[derive(Debug, Deserialize)]
struct Target {
    recall_at_k: f64,
    measured: f64,
}

/// `search` with its `ef_search`, as the chart labels it.
fn label(search: &Measured) -> String {
    match search.ef_search {
        Some(ef) => format!("{} ef={ef}", search.name),
        None => search.name.clone(),
    }
}

/// The chart, target and section of the page of the suite's saved `results`.
pub fn summary(results: &Value) -> Result<Summary> {
    let saved = Saved::deserialize(results)?;
    let k = saved.args.k;
    let target = Ratio::new(
        "recall_at_k",
        format!("recall@{k} through HNSW with the default ef_search"),
        Some(saved.target.measured),
        saved.target.recall_at_k,
        true,
    );
    let mut targets = vec![target];
    if let Some(ratios) = &saved.search_ratios {
        targets.push(Ratio::new(
            "sqlite_exact_over_floor",
            "SQLite exact p50 / in-memory matrix-vector floor p50",
            Some(ratios.sqlite_exact_over_floor),
            2.0,
            false,
        ));
        targets.push(Ratio::new(
            "sqlite_vec_over_sqlite_exact",
            "sqlite-vec brute force p50 / SQLite exact p50",
            Some(ratios.sqlite_vec_over_sqlite_exact),
            3.0,
            true,
        ));
    }
    Ok(Summary {
        chart: chart(&saved),
        targets,
        markdown: markdown(&saved),
    })
}

fn chart(saved: &Saved) -> Chart {
    let args = &saved.args;
    let categories: Vec<String> = saved.searches.iter().map(label).collect();
    Chart {
        title: format!(
            "vector: {} memories of {} dimensions, k = {}",
            thousands(args.memories as f64, 0),
            args.dims,
            args.k
        ),
        panels: vec![
            Panel {
                title: "queries/s (higher is better)".into(),
                categories: categories.clone(),
                series: vec![Series {
                    name: "queries/s".into(),
                    values: saved
                        .searches
                        .iter()
                        .map(|m| Some(m.queries_per_s))
                        .collect(),
                }],
            },
            Panel {
                title: format!("recall@{} (higher is better)", args.k),
                categories,
                series: vec![Series {
                    name: "recall".into(),
                    values: saved.searches.iter().map(|m| Some(m.recall_at_k)).collect(),
                }],
            },
        ],
    }
}

fn markdown(saved: &Saved) -> String {
    let args = &saved.args;
    let mut out = format!(
        "{} memories of one agent with embeddings of {} dimensions ({} degrees of freedom), \
         cosine, k = {}; {} searches through the HNSW index and {} exact searches per \
         backend, from one client, one after another; recall@{} against the true nearest \
         neighbours found by brute force.\n\n",
        thousands(args.memories as f64, 0),
        args.dims,
        args.latent,
        args.k,
        thousands(args.queries as f64, 0),
        args.exact_queries,
        args.k,
    );
    let default_ef = saved.searches.first().and_then(|m| m.ef_search);
    let rows: Vec<Vec<String>> = saved
        .searches
        .iter()
        .map(|m| {
            vec![
                format!("`{}`", m.name),
                match m.ef_search {
                    Some(ef) if Some(ef) == default_ef => format!("default ({ef})"),
                    Some(ef) => ef.to_string(),
                    None => "-".into(),
                },
                format!("{:.4}", m.recall_at_k),
                thousands(m.queries_per_s, 1),
                ms_text(m.latency.p50_us),
                ms_text(m.latency.p99_us),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "search",
            "ef_search",
            &format!("recall@{}", args.k),
            "queries/s",
            "p50",
            "p99",
        ],
        &rows,
    ));
    out.push_str(&format!(
        "\nIndex build: {:.1} s (`maintenance_work_mem` {}). Loading the embeddings took \
         {:.1} s into PostgreSQL and {:.1} s into SQLite.\n",
        saved.index.seconds,
        args.maintenance_work_mem,
        saved.load_seconds.postgres,
        saved.load_seconds.sqlite,
    ));
    out
}
