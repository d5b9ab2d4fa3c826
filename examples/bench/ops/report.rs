//! The printed tables and targets of the suite, and its results for the JSON file.

use serde_json::{Value, json};

use super::floor::{FLOOR_BYTES, Floor, floor_table};
use super::scale::{Scale, scale_table};
use super::workload::Step;
use super::{Args, Kind};
use crate::harness::{ms, table};
use crate::results::Ratio;

/// A target's line in the printed list of targets.
fn line(target: &Ratio) -> String {
    format!(
        "  {:<62} {:>6}  target {} {:.2}  {}",
        target.formula,
        target.value.map_or("-".into(), |v| format!("{v:.3}")),
        if target.at_least { ">=" } else { "<=" },
        target.target,
        match target.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        }
    )
}

/// How much slower the library may be than the same statements through sqlx.
const LIBRARY_OVERHEAD_LIMIT: f64 = 1.10;
/// How much slower a retrieve may be at the large scale than at the small one and still
/// count as flat (a B-tree one level deeper and colder pages, not a scan).
const FLAT_LIMIT: f64 = 1.5;

/// Prints the tables and targets; returns the results (`steps`: medians of `runs`).
pub(super) fn report(
    args: &Args,
    steps: &[Step],
    runs: &[Step],
    floors: &[Floor],
    scales: &[Scale],
) -> Value {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                s.backend.name().to_string(),
                s.agents.to_string(),
                s.calls.to_string(),
                format!("{:.0}", s.calls_per_s),
                ms(s.all.p50_us),
                ms(s.all.p99_us),
                ms(s.store.p50_us),
                ms(s.overwrite.p50_us),
                ms(s.retrieve.p50_us),
                ms(s.list_keys.p50_us),
                ms(s.store.p99_us.max(s.overwrite.p99_us)),
                ms(s.retrieve.p99_us),
                s.client_cpu_us_per_call
                    .map_or("-".into(), |us| format!("{us:.0}")),
                s.server_cpu_us_per_call
                    .map_or("-".into(), |us| format!("{us:.0}")),
            ]
        })
        .collect();
    println!(
        "\nmixed workload, median of {} repetitions: calls/s of wall time, latency in ms, \
         CPU time per call in µs (this process; the PostgreSQL server's processes)\n{}",
        args.reps,
        table(
            &[
                "backend",
                "agents",
                "calls",
                "calls/s",
                "p50",
                "p99",
                "store p50",
                "overwrite p50",
                "retrieve p50",
                "list p50",
                "write p99",
                "retrieve p99",
                "client µs/call",
                "server µs/call",
            ],
            &rows
        )
    );

    println!(
        "\nthe library against the same statements through sqlx, one task, values ~{FLOOR_BYTES} B, ms\n{}",
        floor_table(floors).text()
    );

    let (small, large) = (args.scale_small, args.scale_keys);
    println!(
        "\nretrieve of one agent's random keys at {small} and at {large} keys, ms\n{}",
        scale_table(scales, small, large).text()
    );

    let step = |kind: Kind, agents: usize| {
        steps
            .iter()
            .find(|s| s.backend == kind && s.agents == agents)
    };
    let mut targets = Vec::new();
    for agents in [16, 64] {
        let (lite, pg) = (step(Kind::Sqlite, agents), step(Kind::Postgres, agents));
        targets.push(Ratio::new(
            format!("postgres_vs_sqlite_{agents}"),
            format!("postgres calls/s / sqlite calls/s, {agents} agents"),
            lite.zip(pg).map(|(l, p)| p.calls_per_s / l.calls_per_s),
            1.0,
            true,
        ));
    }
    for f in floors {
        let name = f.backend.name();
        targets.push(Ratio::new(
            format!("{name}_store_overhead"),
            format!("{name} store p50, library / sqlx"),
            Some(f.store_ratio()),
            LIBRARY_OVERHEAD_LIMIT,
            false,
        ));
        targets.push(Ratio::new(
            format!("{name}_retrieve_overhead"),
            format!("{name} retrieve p50, library / sqlx"),
            Some(f.retrieve_ratio()),
            LIBRARY_OVERHEAD_LIMIT,
            false,
        ));
    }
    for s in scales.iter().filter(|s| s.variant.is_none()) {
        let name = s.backend.name();
        targets.push(Ratio::new(
            format!("{name}_retrieve_flat"),
            format!("{name} retrieve p50 @{large} keys / @{small} keys"),
            Some(s.ratio()),
            FLAT_LIMIT,
            false,
        ));
    }
    println!("\ntargets");
    for target in &targets {
        println!("{}", line(target));
    }
    for agents in [16, 64] {
        if let (Some(l), Some(p)) = (step(Kind::Sqlite, agents), step(Kind::Postgres, agents)) {
            println!(
                "  p99 at {agents} agents: sqlite {} ms, postgres {} ms",
                ms(l.all.p99_us),
                ms(p.all.p99_us)
            );
        }
    }

    json!({
        "args": args,
        "mixed": steps,
        "mixed_repetitions": runs,
        "floor": floors,
        "scale": scales,
        "ratios": targets,
    })
}
