//! The printed tables and targets of the suite, and its results for the JSON file.

use serde_json::{Value, json};

use super::Args;
use super::client::Stages;
use super::legacy::Legacy;
use super::loads::Load;
use super::process::mb;
use super::profile::StatementKind;
use crate::harness::table;
use crate::results::Ratio;

/// `peak(N) / peak(N/4)` at most this is flat; memory growing with the rows would be ~4.
const FLAT_LIMIT: f64 = 1.5;

/// Prints the tables and ratios, and returns everything as JSON.
#[allow(clippy::too_many_arguments)]
pub(super) fn report(
    args: &Args,
    legacy: &Legacy,
    stages: &Stages,
    backfill: &Load,
    quarter: &Load,
    quarter_socket: Option<&Load>,
    pgloader: &std::result::Result<Load, String>,
    copy: &Load,
    tries: &[Load],
) -> Value {
    let row = |load: &Load, what: &str| {
        vec![
            load.name.clone(),
            load.rows.to_string(),
            format!("{:.1}", load.measured.seconds),
            format!("{:.0}", load.rows_per_s),
            load.measured.peak_rss_kb.map_or("?".into(), mb),
            what.to_string(),
        ]
    };
    let mut rows = vec![row(backfill, "the timed run: contract tables, every check")];
    match pgloader {
        Ok(load) => rows.push(row(load, "raw rows, table made by pgloader")),
        Err(_) => rows.push(vec![
            "pgloader".into(),
            legacy.rows.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "did not run (see below)".into(),
        ]),
    }
    rows.push(row(copy, "rows already transformed, indexed table"));
    rows.push(row(quarter, "memory flatness; statements profiled"));
    if let Some(load) = quarter_socket {
        rows.push(row(load, "diagnosis: no TCP (Nagle) delay"));
    }
    for load in tries {
        rows.push(row(load, "batch size try"));
    }
    println!(
        "\nloads of the same {} legacy rows ({:.0} MB SQLite file), each a child process into a fresh database\n{}",
        legacy.rows,
        legacy.bytes as f64 / 1e6,
        table(
            &["load", "rows", "seconds", "rows/s", "peak RSS", "what"],
            &rows
        )
    );
    if let Err(why) = pgloader {
        println!("\npgloader did not run: {why}");
    }

    let client = stages.read_seconds + stages.convert_seconds + stages.encode_seconds;
    println!(
        "\nthe backfill's client side alone, in-process over the same file (batches of {}), rows/s\n{}",
        args.batch_size,
        stages.table().text()
    );

    println!("\ntargets");
    let mut ratios = Vec::new();
    let mut target = |name: &str, formula: &str, value: Option<f64>, limit: f64, at_least: bool| {
        let ratio = Ratio::new(name, formula, value, limit, at_least);
        let verdict = match ratio.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        println!(
            "  {formula:<58} {:>6}  target {} {limit:.1}  {verdict}",
            value.map_or("-".into(), |v| format!("{v:.2}")),
            if at_least { ">=" } else { "<=" },
        );
        ratios.push(ratio);
    };
    target(
        "backfill_vs_pgloader",
        "backfill rows/s / pgloader rows/s",
        pgloader
            .as_ref()
            .ok()
            .map(|p| backfill.rows_per_s / p.rows_per_s),
        1.0,
        true,
    );
    target(
        "backfill_vs_copy",
        "backfill rows/s / psql \\copy rows/s",
        Some(backfill.rows_per_s / copy.rows_per_s),
        1.0,
        true,
    );
    let memory_ratio = backfill
        .measured
        .peak_rss_kb
        .zip(quarter.measured.peak_rss_kb)
        .map(|(full, quarter)| full as f64 / quarter as f64);
    target(
        "memory_flat",
        &format!(
            "backfill peak RSS at {} rows / at {} rows",
            backfill.rows, quarter.rows
        ),
        memory_ratio,
        FLAT_LIMIT,
        false,
    );
    println!(
        "  backfill peak RSS: {} at {} rows, {} at {} rows (memory growing with the rows would be ~4x)",
        backfill.measured.peak_rss_kb.map_or("?".into(), mb),
        backfill.rows,
        quarter.measured.peak_rss_kb.map_or("?".into(), mb),
        quarter.rows,
    );

    if let Some(socket) = quarter_socket {
        print_profile(args, quarter, socket);
    }

    json!({
        "args": args,
        "legacy_file": {
            "rows": legacy.rows,
            "bytes": legacy.bytes,
            "mean_content_bytes": legacy.mean_content_bytes,
            "build_seconds": legacy.seconds,
        },
        "client_side": {
            "stages": stages,
            "read_rows_per_s": stages.rate(stages.read_seconds),
            "convert_rows_per_s": stages.rate(stages.convert_seconds),
            "encode_rows_per_s": stages.rate(stages.encode_seconds),
            "all_rows_per_s": stages.rate(client),
        },
        "loads": {
            "backfill": backfill,
            "backfill_quarter": quarter,
            "backfill_quarter_unix_socket": quarter_socket,
            "pgloader": match pgloader {
                Ok(load) => json!(load),
                Err(why) => json!({"did_not_run": why}),
            },
            "copy": copy,
            "batch_size_tries": tries,
        },
        "ratios": ratios,
    })
}

/// Where the time of the N/4 runs went, statement by statement, over TCP and over the
/// Unix socket.
fn print_profile(args: &Args, tcp: &Load, socket: &Load) {
    let (over_tcp, over_socket) = (
        tcp.statements.as_deref().unwrap_or_default(),
        socket.statements.as_deref().unwrap_or_default(),
    );
    let rows: Vec<Vec<String>> = over_tcp
        .iter()
        .filter(|k| k.total_s >= 0.05)
        .map(|k| {
            let other = over_socket.iter().find(|o| o.statement == k.statement);
            let cell = |f: fn(&StatementKind) -> f64, digits: usize| {
                other.map_or("-".into(), |o| format!("{:.*}", digits, f(o)))
            };
            vec![
                k.statement.clone(),
                k.count.to_string(),
                format!("{:.1}", k.total_s),
                format!("{:.1}", k.first_tenth_ms),
                format!("{:.1}", k.peak_tenth_ms),
                format!("{:.1}", k.last_tenth_ms),
                cell(|o| o.total_s, 1),
                cell(|o| o.first_tenth_ms, 1),
                cell(|o| o.peak_tenth_ms, 1),
                cell(|o| o.last_tenth_ms, 1),
            ]
        })
        .collect();
    let sum = |p: &[StatementKind]| p.iter().map(|k| k.total_s).sum::<f64>();
    println!(
        "\nwhere the backfill's time goes: server-side durations of its statements \
         (log_min_duration_statement = 0), {} rows in batches of {}, over TCP (as timed above) \
         and over the server's Unix socket (same binary, same rows; no Nagle delay); \
         ms per execution in the first, the slowest and the last tenth of the run\n{}",
        tcp.rows,
        args.batch_size,
        table(
            &[
                "statement",
                "count",
                "TCP s",
                "TCP ms first",
                "peak",
                "last",
                "socket s",
                "socket ms first",
                "peak",
                "last",
            ],
            &rows
        )
    );
    println!(
        "  wall time: TCP {:.1}s ({:.0} rows/s), of which statements {:.1}s; \
         Unix socket {:.1}s ({:.0} rows/s), of which statements {:.1}s; \
         the rest is the client (read, convert, encode) and round trips",
        tcp.measured.seconds,
        tcp.rows_per_s,
        sum(over_tcp),
        socket.measured.seconds,
        socket.rows_per_s,
        sum(over_socket),
    );
}
