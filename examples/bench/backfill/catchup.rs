//! Catch-up runs: the backfill run again over the same legacy file, once unchanged and
//! once with 1% of its rows changed in place, against the first run into the same
//! database, each a child process as a user runs it.

use std::path::Path;

use serde_json::{Value, json};

use super::legacy::Legacy;
use super::process::{log_tail, measure, summary_line};
use crate::harness::{Env, Result, table};
use crate::results::Ratio;

/// A catch-up over an unchanged file at most this fraction of the first run.
const UNCHANGED_LIMIT: f64 = 0.1;

/// One run of the backfill binary into `url`; its seconds and report totals.
async fn one_run(
    env: &Env,
    binary: &Path,
    url: &str,
    legacy: &Legacy,
    batch_size: usize,
    label: &str,
) -> Result<(f64, Value)> {
    let reports = env.agents_path().join(format!("reports_{label}"));
    std::fs::create_dir_all(&reports)?;
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--postgres-url")
        .arg(url)
        .arg("--agents-path")
        .arg(&legacy.root)
        .arg("--batch-size")
        .arg(batch_size.to_string())
        .arg("--report-dir")
        .arg(&reports)
        .env_remove("RUST_LOG")
        .env_remove("MIGRATION_BATCH_SIZE")
        .env_remove("MIGRATION_TIMEOUT");
    let measured = measure(command, env.agents_path().join(format!("{label}.log"))).await?;
    if !measured.success {
        return Err(format!("{label}: the backfill failed:\n{}", log_tail(&measured.log)).into());
    }
    eprintln!("  {label}: {}", summary_line(legacy.rows, &measured));
    let mut totals = Value::Null;
    for entry in std::fs::read_dir(&reports)?.flatten() {
        let report: Value = serde_json::from_slice(&std::fs::read(entry.path())?)?;
        totals = report["totals"].clone();
    }
    std::fs::remove_dir_all(&reports)?;
    Ok((measured.seconds, totals))
}

/// Sets the file's modification time back, as for a file no agent wrote in the last
/// seconds (a stamp younger than two seconds is not trusted).
fn settle(path: &Path) -> Result<()> {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(past)?;
    Ok(())
}

/// Times the first run, a catch-up over the unchanged file and one after 1% of the
/// rows changed, into one fresh database; checks what each report says; prints a table
/// and returns the figures and ratios. Changes `legacy`'s file.
pub(super) async fn time_catch_ups(
    env: &Env,
    binary: &Path,
    legacy: &Legacy,
    batch_size: usize,
) -> Result<(Value, Vec<Ratio>)> {
    let db = env.fresh_database("catch_up", true).await?;
    settle(&legacy.file)?;
    let (first, _) = one_run(env, binary, &db.url, legacy, batch_size, "catch_up_first").await?;
    let (unchanged, totals) = one_run(
        env,
        binary,
        &db.url,
        legacy,
        batch_size,
        "catch_up_unchanged",
    )
    .await?;
    if totals["read"].as_u64() != Some(0) {
        return Err(format!("the unchanged catch-up read rows: {totals}").into());
    }
    // Every 100th row changes in place, as an agent updating memories would.
    let changed_rows = legacy.rows / 100;
    {
        use sqlx::Connection;
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&legacy.file);
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        sqlx::query("update memory set content = content || ' (changed)' where id % 100 = 0")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
    }
    settle(&legacy.file)?;
    let (one_percent, totals) =
        one_run(env, binary, &db.url, legacy, batch_size, "catch_up_1pct").await?;
    if totals["updated"].as_u64() != Some(changed_rows as u64) {
        return Err(format!("the 1% catch-up did not update {changed_rows} rows: {totals}").into());
    }
    env.drop_database(&db).await?;

    let rate = |s: f64| format!("{:.0}", legacy.rows as f64 / s);
    println!(
        "\ncatch-up runs over the same {} rows, into the database of the first run\n{}",
        legacy.rows,
        table(
            &["run", "seconds", "rows/s read", "vs first run"],
            &[
                vec![
                    "first run".into(),
                    format!("{first:.1}"),
                    rate(first),
                    "1.00".into()
                ],
                vec![
                    "catch-up, file unchanged".into(),
                    format!("{unchanged:.2}"),
                    "-".into(),
                    format!("{:.3}", unchanged / first)
                ],
                vec![
                    format!("catch-up, {changed_rows} rows (1%) changed"),
                    format!("{one_percent:.1}"),
                    rate(one_percent),
                    format!("{:.3}", one_percent / first)
                ],
            ]
        )
    );
    let ratio = Ratio::new(
        "catch_up_unchanged_vs_first",
        "catch-up over the unchanged file s / first run s",
        Some(unchanged / first),
        UNCHANGED_LIMIT,
        false,
    );
    println!(
        "  {:<58} {:>6.3}  target <= {UNCHANGED_LIMIT:.1}  {}",
        ratio.formula,
        unchanged / first,
        if ratio.pass == Some(true) {
            "PASS"
        } else {
            "MISS"
        }
    );
    Ok((
        json!({
            "first_seconds": first,
            "unchanged_seconds": unchanged,
            "one_percent_changed_seconds": one_percent,
            "changed_rows": changed_rows,
            "one_percent_vs_first": one_percent / first,
        }),
        vec![ratio],
    ))
}
