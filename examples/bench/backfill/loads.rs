//! The three loads of the same rows, each a child process into a fresh database:
//! the backfill, pgloader and `psql \copy`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Connection;

use super::AGENT;
use super::database::{checkpoint, connect, memories_checksum, scalar};
use super::legacy::Legacy;
use super::process::{Measured, find_program, log_tail, measure, summary_line};
use super::profile::{StatementKind, statement_profile};
use crate::harness::{Env, Result};

/// One load, timed and checked.
#[derive(Debug, Serialize)]
pub(super) struct Load {
    pub(super) name: String,
    pub(super) rows: usize,
    pub(super) rows_per_s: f64,
    #[serde(flatten)]
    pub(super) measured: Measured,
    /// What the load says or the database shows about it.
    pub(super) detail: Value,
    /// Server-side statement durations, when profiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) statements: Option<Vec<StatementKind>>,
}

/// How one backfill run is made.
#[derive(Clone, Copy)]
pub(super) struct Backfill<'a> {
    pub(super) binary: &'a Path,
    pub(super) legacy: &'a Legacy,
    pub(super) batch_size: usize,
    /// Names its database, log and reports.
    pub(super) label: &'a str,
    /// Log the run's statements with their durations to this server's log, and profile
    /// them; connect over its Unix socket too when `socket`.
    pub(super) profile: Option<&'a Server>,
    pub(super) socket: bool,
}

/// The throwaway server `scripts/bench` made: its log and its Unix socket folder.
pub(super) struct Server {
    log: PathBuf,
    socket: PathBuf,
}

impl Server {
    /// From `MEMSHIFT_TEST_PG_DIR` (set by scripts/pg); `None` elsewhere.
    pub(super) fn find() -> Option<Server> {
        let dir = PathBuf::from(std::env::var_os("MEMSHIFT_TEST_PG_DIR")?);
        let server = Server {
            log: dir.join("log"),
            socket: dir.join("socket"),
        };
        (server.log.is_file() && server.socket.is_dir()).then_some(server)
    }
}

/// The backfill example into a fresh migrated database, checked.
pub(super) async fn time_backfill(env: &Env, run: &Backfill<'_>) -> Result<Load> {
    let (legacy, label) = (run.legacy, run.label);
    let db = env.fresh_database(label, true).await?;
    let reports = env.agents_path().join(format!("reports_{label}"));
    std::fs::create_dir_all(&reports)?;
    let mut url = db.url.clone();
    let mut log_start = 0;
    if let Some(server) = run.profile {
        let mut conn = connect(&db.url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter database {} set log_min_duration_statement = 0",
            db.name
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await.ok();
        if run.socket {
            let socket = server.socket.to_str().ok_or("socket path is not UTF-8")?;
            let joint = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{joint}host={socket}");
        }
    }
    checkpoint(&db.url).await?;
    if let Some(server) = run.profile {
        log_start = std::fs::metadata(&server.log)?.len();
    }
    let mut command = tokio::process::Command::new(run.binary);
    command
        .arg("--postgres-url")
        .arg(&url)
        .arg("--agents-path")
        .arg(&legacy.root)
        .arg("--batch-size")
        .arg(run.batch_size.to_string())
        .arg("--report-dir")
        .arg(&reports)
        // The run a user makes: the binary's own log level and settings.
        .env_remove("RUST_LOG")
        .env_remove("MIGRATION_BATCH_SIZE")
        .env_remove("MIGRATION_TIMEOUT");
    let measured = measure(command, env.agents_path().join(format!("{label}.log"))).await?;
    if !measured.success {
        return Err(format!("{label}: the backfill failed:\n{}", log_tail(&measured.log)).into());
    }
    let statements = match run.profile {
        Some(server) => Some(statement_profile(&server.log, log_start)?),
        None => None,
    };
    let totals = read_report_totals(&reports)?;
    let (count, checksum) = memories_checksum(&db.url).await?;
    let inserted = totals["inserted"].as_u64().unwrap_or(0);
    if count != legacy.rows as i64 || inserted != legacy.rows as u64 {
        return Err(format!(
            "{label}: {count} rows in agent_memories, {inserted} inserted by the report, of {}",
            legacy.rows
        )
        .into());
    }
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    let name = format!(
        "backfill ({} rows, batch {}{})",
        legacy.rows,
        run.batch_size,
        if run.socket { ", Unix socket" } else { "" }
    );
    eprintln!("  {name}: {}", summary_line(legacy.rows, &measured));
    Ok(Load {
        name,
        rows: legacy.rows,
        rows_per_s: legacy.rows as f64 / measured.seconds,
        measured,
        detail: json!({
            "batch_size": run.batch_size,
            "unix_socket": run.socket,
            "report_totals": totals,
            "checksum": checksum,
        }),
        statements,
    })
}

/// `totals` of the one `migration_report_*.json` in `folder`.
fn read_report_totals(folder: &Path) -> Result<Value> {
    let mut reports = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"));
    let path = reports.next().ok_or("the backfill wrote no report")?;
    let report: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    Ok(report["totals"].clone())
}

/// pgloader with the legacy file into a fresh empty database; why not, when it cannot.
pub(super) async fn time_pgloader(
    env: &Env,
    legacy: &Legacy,
) -> Result<std::result::Result<Load, String>> {
    let Some(pgloader) = find_program("pgloader") else {
        return Ok(Err(
            "pgloader is not installed (scripts/bench installs Debian's package with apt-get)"
                .into(),
        ));
    };
    let db = env.fresh_database("pgloader", false).await?;
    checkpoint(&db.url).await?;
    // pgloader reads postgresql:// (or pgsql://) URLs; its logs go to our folder.
    let target = db
        .url
        .strip_prefix("postgres://")
        .map_or_else(|| db.url.clone(), |rest| format!("postgresql://{rest}"));
    let mut source = OsString::from("sqlite://");
    source.push(legacy.file.canonicalize()?);
    let mut command = tokio::process::Command::new(pgloader);
    command
        .arg("--root-dir")
        .arg(env.agents_path().join("pgloader"))
        .arg(source)
        .arg(target);
    let measured = measure(command, env.agents_path().join("pgloader.log")).await?;
    let count = scalar(&db.url, "select count(*) from memory").await;
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    match count {
        Ok(n) if measured.success && n == legacy.rows as i64 => {}
        other => {
            return Ok(Err(format!(
                "pgloader {} with {} rows loaded ({other:?}):\n{}",
                if measured.success {
                    "succeeded"
                } else {
                    "failed"
                },
                other.as_ref().map_or(-1, |n| *n),
                log_tail(&measured.log)
            )));
        }
    }
    eprintln!("  pgloader: {}", summary_line(legacy.rows, &measured));
    Ok(Ok(Load {
        name: "pgloader (into an empty database)".into(),
        rows: legacy.rows,
        rows_per_s: legacy.rows as f64 / measured.seconds,
        measured,
        detail: json!({"table": "public.memory, created by pgloader"}),
        statements: None,
    }))
}

/// `psql \copy` of the transformed rows into a fresh migrated database, checked.
pub(super) async fn time_copy(env: &Env, psql: &Path, file: &Path, rows: usize) -> Result<Load> {
    let db = env.fresh_database("copy", true).await?;
    {
        let mut conn = connect(&db.url).await?;
        sqlx::query(
            "insert into agents (id, name, created_at, updated_at) values ($1, $1, now(), now())",
        )
        .bind(AGENT)
        .execute(&mut conn)
        .await?;
        conn.close().await.ok();
    }
    checkpoint(&db.url).await?;
    let path = file.to_str().ok_or("the COPY file's path is not UTF-8")?;
    let mut command = tokio::process::Command::new(psql);
    command.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &db.url,
        "-c",
        &format!(
            "\\copy agent_memories (id, agent_id, key, content, metadata, created_at, updated_at) from '{}'",
            path.replace('\'', "''")
        ),
    ]);
    let measured = measure(command, env.agents_path().join("copy.log")).await?;
    if !measured.success {
        return Err(format!("psql \\copy failed:\n{}", log_tail(&measured.log)).into());
    }
    let (count, checksum) = memories_checksum(&db.url).await?;
    // Dropped now, so the next load has the disk and the caches to itself.
    env.drop_database(&db).await?;
    if count != rows as i64 {
        return Err(format!("\\copy loaded {count} rows of {rows}").into());
    }
    eprintln!("  psql \\copy: {}", summary_line(rows, &measured));
    Ok(Load {
        name: "psql \\copy (transformed rows)".into(),
        rows,
        rows_per_s: rows as f64 / measured.seconds,
        measured,
        detail: json!({"checksum": checksum}),
        statements: None,
    })
}
