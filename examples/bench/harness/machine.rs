//! The facts a result depends on: CPUs, the server, durability, file systems, load.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection};

use super::Result;

/// Load average per CPU above which the header warns that the machine is busy.
const BUSY_LOAD_PER_CPU: f64 = 0.5;

/// PostgreSQL settings that decide whether an acknowledged commit is on disk.
const DURABILITY_SETTINGS: [&str; 3] = ["fsync", "synchronous_commit", "full_page_writes"];

/// The facts a result depends on, as each suite's JSON file keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `select version()`.
    pub postgres_version: String,
    /// The `vector` extension's version in the bench database (not recorded by runs
    /// before it was).
    #[serde(default)]
    pub pgvector_version: Option<String>,
    /// The durability settings (and `wal_sync_method`, `shared_buffers`) of the server.
    pub postgres_settings: BTreeMap<String, String>,
    /// File system of PostgreSQL's data directory.
    pub postgres_filesystem: String,
    /// The SQLite backend's settings (the library's defaults).
    pub sqlite_settings: String,
    /// File system of the SQLite agents folder.
    pub sqlite_filesystem: String,
    /// The one-minute load average when the run started (from /proc/loadavg).
    pub load_average: Option<f64>,
}

impl Machine {
    pub(super) async fn probe(conn: &mut PgConnection, agents: &Path) -> Result<Machine> {
        let postgres_version: String = sqlx::query_scalar("select version()")
            .fetch_one(&mut *conn)
            .await?;
        let wanted: Vec<&str> = DURABILITY_SETTINGS
            .iter()
            .copied()
            .chain(["wal_sync_method", "shared_buffers", "data_directory"])
            .collect();
        let mut postgres_settings: BTreeMap<String, String> = sqlx::query_as(
            "select name, current_setting(name) from pg_settings where name = any($1)",
        )
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        let data = postgres_settings
            .remove("data_directory")
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            postgres_version,
            pgvector_version: None,
            postgres_settings,
            postgres_filesystem: filesystem_of(Path::new(&data)),
            sqlite_settings: "journal_mode=WAL, synchronous=FULL (library default)".into(),
            sqlite_filesystem: filesystem_of(agents),
            load_average: load_average(),
        })
    }

    /// Records the version of the `vector` extension in the database at `url`, when it
    /// can be read.
    pub(super) async fn probe_pgvector(&mut self, url: &str) {
        let version = async {
            let mut conn = PgConnection::connect(url).await.ok()?;
            let version: Option<String> =
                sqlx::query_scalar("select extversion from pg_extension where extname = 'vector'")
                    .fetch_optional(&mut conn)
                    .await
                    .ok()?;
            conn.close().await.ok();
            version
        };
        self.pgvector_version = version.await;
    }

    /// The server's product and version, with pgvector's: `PostgreSQL 18.3, pgvector
    /// 0.8.2` (the words of `select version()` before ` on <platform>`).
    pub fn server(&self) -> String {
        let postgres = self
            .postgres_version
            .split(" on ")
            .next()
            .unwrap_or(&self.postgres_version);
        match &self.pgvector_version {
            Some(vector) => format!("{postgres}, pgvector {vector}"),
            None => postgres.to_string(),
        }
    }

    /// Whether PostgreSQL waits for the disk on every commit.
    pub fn postgres_durable(&self) -> bool {
        DURABILITY_SETTINGS
            .iter()
            .all(|name| self.postgres_settings.get(*name).map(String::as_str) == Some("on"))
    }

    /// Whether other work kept the machine's CPUs busy when the run started (a load
    /// average over [`BUSY_LOAD_PER_CPU`] per CPU), which makes the numbers noisy.
    pub fn busy(&self) -> bool {
        self.load_average.is_some_and(|load| busy(load, self.nproc))
    }

    /// The server's durability settings, then `wal_sync_method` and `shared_buffers`:
    /// `fsync=on synchronous_commit=on full_page_writes=on wal_sync_method=fdatasync
    /// shared_buffers=256MB`.
    pub fn postgres_settings_text(&self) -> String {
        DURABILITY_SETTINGS
            .iter()
            .chain(&["wal_sync_method", "shared_buffers"])
            .map(|n| format!("{n}={}", self.postgres_settings.get(*n).map_or("?", |v| v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether both sides are durable, in words.
    pub fn verdict(&self) -> &'static str {
        if self.postgres_durable() {
            "both sides durable: every acknowledged write is on disk"
        } else {
            "WARNING: PostgreSQL is NOT durable here, so its numbers flatter it"
        }
    }

    /// The lines printed above every suite's results.
    pub fn header(&self, suite: &str) -> String {
        let busy = match self.load_average {
            Some(load) if self.busy() => format!(
                "\nWARNING:    the machine was busy at the start (load average {load:.2} on {} CPUs); \
                 other work competes for the CPUs and disk, so these numbers are noisy",
                self.nproc
            ),
            _ => String::new(),
        };
        format!(
            "memshift bench: {suite}\n\
             machine:    {} CPUs, {}\n\
             postgres:   {}{}\n\
             durability: PostgreSQL {}, data on {}\n\
             \x20           SQLite {}, files on {}\n\
             \x20           {}{busy}",
            self.nproc,
            self.cpu_model,
            self.postgres_version,
            self.pgvector_version
                .as_ref()
                .map_or_else(String::new, |v| format!(", pgvector {v}")),
            self.postgres_settings_text(),
            self.postgres_filesystem,
            self.sqlite_settings,
            self.sqlite_filesystem,
            self.verdict(),
        )
    }
}

/// The type and device of the mount holding `path` (longest mount point that prefixes
/// it), from /proc/mounts.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                [device, point, kind, ..] if path.starts_with(point) => {
                    Some((point.len(), format!("{kind} ({device})")))
                }
                _ => None,
            }
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// Whether a load average is over [`BUSY_LOAD_PER_CPU`] per CPU.
fn busy(load: f64, nproc: usize) -> bool {
    load > BUSY_LOAD_PER_CPU * nproc as f64
}

/// The machine's one-minute load average, when the system reports it.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// Between the suites of `all`: waits, up to `limit`, until the load the previous suite
/// left behind has decayed below the busy mark, so that the next suite's header warns
/// only about other work. Returns the load average it stopped at.
pub async fn quiet_down(limit: Duration) -> Option<f64> {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    loop {
        let load = load_average()?;
        if !busy(load, nproc) || started.elapsed() >= limit {
            return Some(load);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
