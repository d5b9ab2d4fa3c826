//! The printed tables and targets of the suite, and its results for the JSON file.

use serde_json::{Value, json};

use super::floor::{FLOOR_BYTES, Floor, floor_table};
use super::scale::{Scale, scale_table};
use super::workload::Step;
use super::{Args, Compression, Kind};
use crate::harness::{Wire, ms, table};
use crate::results::Ratio;

/// A target's line in the printed list of targets.
fn line(target: &Ratio) -> String {
    let reps = &target.per_repetition;
    let range = match (
        reps.iter().copied().reduce(f64::min),
        reps.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) if reps.len() > 1 => format!("  (repetitions {low:.2}-{high:.2})"),
        _ => String::new(),
    };
    format!(
        "  {:<62} {:>6}  target {} {:.2}  {}{range}",
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

/// PostgreSQL's calls/s over SQLite's at `agents` in each repetition of `runs` (the
/// n-th run of each backend at that number of agents belong to repetition n).
pub(super) fn per_repetition(runs: &[Step], agents: usize) -> Vec<f64> {
    let of = |kind: Kind| {
        runs.iter()
            .filter(move |s| s.backend == kind && s.agents == agents)
    };
    of(Kind::Postgres)
        .zip(of(Kind::Sqlite))
        .map(|(p, l)| p.calls_per_s / l.calls_per_s)
        .collect()
}

/// The columns of the table of each repetition's ratio.
pub(super) const REPETITION_COLUMNS: [&str; 5] =
    ["agents", "repetitions", "lowest", "median", "highest"];

/// That table's rows, one per number of agents: each repetition's ratio (joined by
/// `sep`), the lowest, the median and the highest.
pub(super) fn repetition_rows(runs: &[Step], agents: &[usize], sep: &str) -> Vec<Vec<String>> {
    agents
        .iter()
        .map(|&agents| {
            let reps = per_repetition(runs, agents);
            let text = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            let fold = |f: fn(f64, f64) -> f64| text(reps.iter().copied().reduce(f));
            vec![
                agents.to_string(),
                reps.iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(sep),
                fold(f64::min),
                text((!reps.is_empty()).then(|| crate::harness::median(reps.clone()))),
                fold(f64::max),
            ]
        })
        .collect()
}

/// The target at `agents`: PostgreSQL at least as fast as SQLite in every repetition,
/// so the lowest ratio is the one judged.
pub(super) fn postgres_vs_sqlite(agents: usize, per_rep: Vec<f64>) -> Ratio {
    let lowest = per_rep.iter().copied().reduce(f64::min);
    let mut ratio = Ratio::new(
        format!("postgres_vs_sqlite_{agents}"),
        format!(
            "postgres calls/s / sqlite calls/s, {agents} agent{}, lowest of {} repetitions",
            if agents == 1 { "" } else { "s" },
            per_rep.len()
        ),
        lowest,
        1.0,
        true,
    );
    ratio.per_repetition = per_rep;
    ratio
}

/// Prints the tables and targets; returns the results (`steps`: medians of `runs`).
pub(super) fn report(
    args: &Args,
    steps: &[Step],
    runs: &[Step],
    floors: &[Floor],
    scales: &[Scale],
    compression: Option<&Compression>,
    wire: Option<&Wire>,
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
        "\npostgres calls/s / sqlite calls/s in each repetition (the target: >= 1.00 in every one)\n{}",
        table(
            &REPETITION_COLUMNS,
            &repetition_rows(runs, &args.agents, " ")
        )
    );
    if let Some(c) = compression {
        println!(
            "\nvalues ({}): PostgreSQL stored their JSON text {:.2}x smaller over all {} values, \
             {} over the {} of 2 KB and more (pg_column_size against octet_length)",
            args.values.name(),
            c.ratio,
            c.rows,
            c.ratio_2k
                .map_or("-".into(), |r| format!("{r:.2}x smaller")),
            c.rows_2k,
        );
    }
    if let Some(w) = wire {
        println!(
            "postgres, per call of the mix ({} calls, {} agents, counted by a relay, not timed): \
             {:.2} statements, {:.2} round trips, {:.0} B sent, {:.0} B received",
            w.calls,
            args.wire_agents,
            w.statements_per_call,
            w.round_trips_per_call,
            w.bytes_to_server_per_call,
            w.bytes_to_client_per_call,
        );
    }

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
    let mut targets: Vec<Ratio> = args
        .agents
        .iter()
        .map(|&agents| postgres_vs_sqlite(agents, per_repetition(runs, agents)))
        .collect();
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
    for &agents in &args.agents {
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
        "compression": compression,
        "wire": wire,
    })
}
