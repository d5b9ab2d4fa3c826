//! The suite's saved results read back: its chart, its targets and its section of the
//! results page.

use serde::Deserialize;
use serde_json::Value;

use super::floor::{FLOOR_BYTES, Floor, floor_table};
use super::report::{REPETITION_COLUMNS, per_repetition, repetition_rows};
use super::scale::{HOT_KEYS, Scale, scale_table};
use super::workload::Step;
use super::{Args, Compression, Kind};
use crate::chart::{Chart, Panel, Series, thousands};
use crate::harness::{Result, Values, Wire, markdown_table};
use crate::results::{Ratio, Summary, ms_text, repetitions};

/// The suite's results as `report` saves them.
#[derive(Debug, Deserialize)]
struct Saved {
    args: Args,
    /// Medians over the repetitions, per backend and number of agents.
    mixed: Vec<Step>,
    /// Every repetition, in the order run.
    mixed_repetitions: Vec<Step>,
    floor: Vec<Floor>,
    scale: Vec<Scale>,
    ratios: Vec<Ratio>,
    /// How much PostgreSQL compressed the stored values (results saved since `--values`).
    #[serde(default)]
    compression: Option<Compression>,
    /// Statements, round trips and bytes per PostgreSQL call (likewise).
    #[serde(default)]
    wire: Option<Wire>,
}

impl Saved {
    fn step(&self, kind: Kind, agents: usize) -> Option<&Step> {
        self.mixed
            .iter()
            .find(|s| s.backend == kind && s.agents == agents)
    }
}

/// The chart, targets and section of the page of the suite's saved `results`.
pub fn summary(results: &Value) -> Result<Summary> {
    let saved = Saved::deserialize(results)?;
    let mut targets = saved.ratios.clone();
    // Results saved before the targets kept their repetitions: judged on the median.
    for ratio in targets.iter_mut().filter(|r| r.per_repetition.is_empty()) {
        let agents = ratio.name.strip_prefix("postgres_vs_sqlite_");
        if let Some(agents) = agents.and_then(|a| a.parse().ok()) {
            ratio.per_repetition = per_repetition(&saved.mixed_repetitions, agents);
        }
    }
    Ok(Summary {
        chart: chart(&saved),
        targets,
        markdown: markdown(&saved),
    })
}

fn chart(saved: &Saved) -> Chart {
    let agents = &saved.args.agents;
    let categories: Vec<String> = agents
        .iter()
        .map(|&a| match a {
            1 => "1 agent".to_string(),
            _ => format!("{a} agents"),
        })
        .collect();
    let series = |value: fn(&Step) -> f64| -> Vec<Series> {
        Kind::ALL
            .iter()
            .map(|&kind| Series {
                name: kind.name().to_string(),
                values: agents
                    .iter()
                    .map(|&a| saved.step(kind, a).map(value))
                    .collect(),
            })
            .collect()
    };
    Chart {
        title: "ops: mixed agent workload (store, retrieve, overwrite, list keys)".into(),
        panels: vec![
            Panel {
                title: "throughput, calls/s (higher is better)".into(),
                categories: categories.clone(),
                series: series(|s| s.calls_per_s),
            },
            Panel {
                title: "p50 latency, ms (lower is better)".into(),
                categories: categories.clone(),
                series: series(|s| s.all.p50_us / 1000.0),
            },
            Panel {
                title: "p99 latency, ms (lower is better)".into(),
                categories,
                series: series(|s| s.all.p99_us / 1000.0),
            },
        ],
    }
}

fn markdown(saved: &Saved) -> String {
    let args = &saved.args;
    let mut out = format!(
        "A mixed agent workload: 50% retrieve, 20% store of a new key, 20% overwrite, 10% \
         list keys; JSON values of {} B to {} B ({}). Each agent has its own memory (its own \
         SQLite file; its own rows in the shared PostgreSQL database), is given {} keys \
         first, and makes its calls one after another: {} calls per backend and number of \
         agents. Figures are {} on fresh agents.{}\n\n",
        thousands(args.min_bytes as f64, 0),
        thousands(args.max_bytes as f64, 0),
        match args.values {
            Values::Text => "`--values text`: generated text that compresses like agents' own",
            Values::Vocab =>
                "`--values vocab`: messages of a 24-word vocabulary, which compress 4-5x",
        },
        args.preload,
        thousands(args.calls as f64, 0),
        repetitions(args.reps),
        if args.no_content_compression {
            " PostgreSQL stored memory contents uncompressed (`--no-content-compression`)."
        } else {
            ""
        },
    );
    let cpu = |s: &Step| match (s.client_cpu_us_per_call, s.server_cpu_us_per_call) {
        (Some(client), Some(server)) if server > 0.0 => format!("{client:.0} + {server:.0} µs"),
        (Some(client), _) => format!("{client:.0} µs"),
        (None, _) => "-".into(),
    };
    let rows: Vec<Vec<String>> = saved
        .mixed
        .iter()
        .map(|s| {
            vec![
                format!("`{}`", s.backend.name()),
                s.agents.to_string(),
                thousands(s.calls_per_s, 0),
                ms_text(s.all.p50_us),
                ms_text(s.all.p99_us),
                cpu(s),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "backend",
            "agents",
            "calls/s",
            "p50",
            "p99",
            "CPU per call (client + server)",
        ],
        &rows,
    ));

    out.push_str(
        "\nPostgreSQL's calls/s over SQLite's in each repetition, the two run back to back \
         (the target: at least 1.00 in every one).\n\n",
    );
    out.push_str(&markdown_table(
        &REPETITION_COLUMNS,
        &repetition_rows(&saved.mixed_repetitions, &saved.args.agents, ", "),
    ));
    if let Some(c) = &saved.compression {
        out.push_str(&format!(
            "\nPostgreSQL stored the values' JSON text {:.2}x smaller over all {} values the \
             workload left, {} over the {} of 2 KB and more, which it compresses with pglz \
             (`octet_length` over `pg_column_size`).\n",
            c.ratio,
            thousands(c.rows as f64, 0),
            c.ratio_2k
                .map_or("-".into(), |r| format!("{r:.2}x smaller")),
            thousands(c.rows_2k as f64, 0),
        ));
    }
    if let Some(w) = &saved.wire {
        out.push_str(&format!(
            "\nWhat a PostgreSQL call of the mix sends, counted by a relay between the backend \
             and the server in a pass of its own ({} calls, {} agents, not timed): {:.2} \
             statements and {:.2} round trips per call, {} B sent and {} B received.\n",
            thousands(w.calls as f64, 0),
            args.wire_agents,
            w.statements_per_call,
            w.round_trips_per_call,
            thousands(w.bytes_to_server_per_call, 0),
            thousands(w.bytes_to_client_per_call, 0),
        ));
    }

    out.push_str(&format!(
        "\nThe floor: the library against the very statements it issues, bound and decoded \
         by hand through sqlx on a pool with the library's settings; one task, {} stores and \
         as many retrieves each, values of about {} B, the two alternating in blocks; in \
         ms.\n\n",
        thousands(args.floor_calls as f64, 0),
        thousands(FLOOR_BYTES as f64, 0),
    ));
    out.push_str(&floor_table(&saved.floor).markdown());

    let (small, large) = (
        thousands(args.scale_small as f64, 0),
        thousands(args.scale_keys as f64, 0),
    );
    out.push_str(&format!(
        "\nData size: {} retrieves of one agent's random keys when it holds {small} keys and \
         when it holds {large} (loaded in bulk inside the database); the last column reads \
         {HOT_KEYS} keys spread over the {large}, whose pages stay cached; in ms.\n\n",
        thousands(args.scale_reads as f64, 0),
    ));
    out.push_str(&scale_table(&saved.scale, args.scale_small, args.scale_keys).markdown());
    out
}
