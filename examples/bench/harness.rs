//! What every suite shares: the throwaway database and agents folder, the machine's
//! facts, timing and percentiles, workload values, the printed table and the JSON file.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memshift::testing::postgres::with_database;
use memshift::{AgentId, MemoryBackend, redact_url};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::chart::{self, Chart};

/// Any failure; the bench prints it with its causes and exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A result with any failure.
pub type Result<T> = std::result::Result<T, BoxError>;

/// Load average per CPU above which the header warns that the machine is busy.
pub const BUSY_LOAD_PER_CPU: f64 = 0.5;

/// PostgreSQL settings that decide whether an acknowledged commit is on disk.
const DURABILITY_SETTINGS: [&str; 3] = ["fsync", "synchronous_commit", "full_page_writes"];

/// A fresh PostgreSQL database and SQLite agents folder for one run, removed at the end.
pub struct Env {
    admin_url: String,
    /// The bench database's name (`agent_memory_bench_<random>`).
    pub database: String,
    /// Its URL (the admin URL's credentials).
    pub url: String,
    agents: tempfile::TempDir,
    /// Where and on what the run happens.
    pub machine: Machine,
    /// Further databases made by [`Env::fresh_database`] and not dropped yet.
    extra: std::sync::Mutex<Vec<String>>,
}

/// A further empty database of one run (see [`Env::fresh_database`]).
#[derive(Debug, Clone)]
pub struct Database {
    /// Its name (`<bench database>_<label>`).
    pub name: String,
    /// Its URL (the admin URL's credentials).
    pub url: String,
}

impl Env {
    /// Creates the database named after a random suffix from `DATABASE_URL` (a
    /// superuser or database owner), applies the shipped migrations, and makes a temporary
    /// agents folder.
    pub async fn setup() -> Result<Env> {
        let admin_url = std::env::var("DATABASE_URL").map_err(|_| {
            "DATABASE_URL is not set; run `scripts/bench SUITE`, which starts a server, or \
             point it at a PostgreSQL superuser URL"
        })?;
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", redact_url(&admin_url)))?;
        let agents = tempfile::Builder::new()
            .prefix("memshift-bench-")
            .tempdir()?;
        let machine = Machine::probe(&mut conn, agents.path()).await?;
        let database = format!(
            "agent_memory_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {database}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        let env = Env {
            url: with_database(&admin_url, &database),
            admin_url,
            database,
            agents,
            machine,
            extra: std::sync::Mutex::new(Vec::new()),
        };
        if let Err(err) = memshift::migrate_url(&env.url).await {
            env.teardown().await.ok();
            return Err(err.into());
        }
        Ok(env)
    }

    /// The folder SQLite agent files go in.
    pub fn agents_path(&self) -> &Path {
        self.agents.path()
    }

    /// Creates a further empty database, `<database>_<label>` (`label`: lower-case ASCII
    /// letters, digits and `_`), with the shipped migrations applied when `migrate`, for
    /// a suite that needs a fresh one per measurement. [`Env::drop_database`] drops it
    /// early; [`Env::teardown`] drops whatever is left.
    pub async fn fresh_database(&self, label: &str, migrate: bool) -> Result<Database> {
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("database label {label:?} is not [a-z0-9_]+").into());
        }
        let name = format!("{}_{label}", self.database);
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        let url = with_database(&self.admin_url, &name);
        if migrate {
            memshift::migrate_url(&url).await?;
        }
        Ok(Database { name, url })
    }

    /// Drops a database made by [`Env::fresh_database`] (closing any connection still
    /// open), so its disk is free for the next measurement.
    pub async fn drop_database(&self, database: &Database) -> Result<()> {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name| *name != database.name);
        drop_databases(&self.admin_url, std::slice::from_ref(&database.name)).await
    }

    /// Drops the database and every further one still there (closing any connection
    /// still open), and the agents folder.
    pub async fn teardown(self) -> Result<()> {
        let mut names = std::mem::take(&mut *self.extra.lock().unwrap_or_else(|p| p.into_inner()));
        names.push(self.database.clone());
        drop_databases(&self.admin_url, &names).await?;
        self.agents.close()?;
        Ok(())
    }
}

/// Drops the databases `names`, closing any connection still open to them.
async fn drop_databases(admin_url: &str, names: &[String]) -> Result<()> {
    let mut conn = PgConnection::connect(admin_url).await?;
    for name in names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop database if exists {name} with (force)"
        )))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await.ok();
    Ok(())
}

/// The facts a result depends on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `select version()`.
    pub postgres_version: String,
    /// The durability settings (and `wal_sync_method`, `shared_buffers`) of the server.
    pub postgres_settings: BTreeMap<String, String>,
    /// File system of PostgreSQL's data directory.
    pub postgres_filesystem: String,
    /// The SQLite backend's settings (the library's defaults).
    pub sqlite_settings: &'static str,
    /// File system of the SQLite agents folder.
    pub sqlite_filesystem: String,
    /// The one-minute load average when the run started (from /proc/loadavg).
    pub load_average: Option<f64>,
}

impl Machine {
    async fn probe(conn: &mut PgConnection, agents: &Path) -> Result<Machine> {
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
            postgres_settings,
            postgres_filesystem: filesystem_of(Path::new(&data)),
            sqlite_settings: "journal_mode=WAL, synchronous=FULL (library default)",
            sqlite_filesystem: filesystem_of(agents),
            load_average: load_average(),
        })
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

    /// The lines printed above every suite's results.
    pub fn header(&self, suite: &str) -> String {
        let settings = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{n}={}", self.postgres_settings.get(*n).map_or("?", |v| v)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let verdict = if self.postgres_durable() {
            "both sides durable: every acknowledged write is on disk"
        } else {
            "WARNING: PostgreSQL is NOT durable here, so its numbers flatter it"
        };
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
             postgres:   {}\n\
             durability: PostgreSQL {} {}, data on {}\n\
             \x20           SQLite {}, files on {}\n\
             \x20           {verdict}{busy}",
            self.nproc,
            self.cpu_model,
            self.postgres_version,
            settings(&DURABILITY_SETTINGS),
            settings(&["wal_sync_method", "shared_buffers"]),
            self.postgres_filesystem,
            self.sqlite_settings,
            self.sqlite_filesystem,
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

/// Latency samples of one kind of call, in a histogram of nanoseconds to three
/// significant figures (values within 0.1%), which grows to the largest sample.
#[derive(Debug)]
pub struct Samples(Histogram<u64>);

/// Significant figures the latency histograms keep.
const SIGNIFICANT_FIGURES: u8 = 3;

impl Default for Samples {
    fn default() -> Self {
        // An auto-resizing histogram with a valid precision (0 to 5 figures) always builds.
        Samples(Histogram::new(SIGNIFICANT_FIGURES).expect("3 significant figures are valid"))
    }
}

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(nanos);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: &Samples) {
        // Cannot fail: this histogram resizes to take `other`'s largest value.
        self.0
            .add(&other.0)
            .expect("an auto-resizing histogram takes any other");
    }

    /// Count, p50, p99 (nearest rank) and mean, in microseconds, within 0.1%.
    pub fn summary(self) -> Latency {
        let micros = |nanos: f64| nanos / 1000.0;
        if self.0.is_empty() {
            return Latency::default();
        }
        Latency {
            count: usize::try_from(self.0.len()).unwrap_or(usize::MAX),
            p50_us: micros(self.0.value_at_quantile(0.50) as f64),
            p99_us: micros(self.0.value_at_quantile(0.99) as f64),
            mean_us: micros(self.0.mean()),
        }
    }
}

/// Percentiles of one kind of call, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Calls measured.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// How long `call` took, and what it returned.
pub async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = call.await;
    (out, started.elapsed())
}

/// Runs `work` on every item at once, one task each, and returns the items (as the
/// tasks hand them back) and the wall time until the last task finished.
pub async fn concurrently<T, F, Fut>(items: Vec<T>, work: F) -> Result<(Vec<T>, Duration)>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = items.into_iter().map(|i| tokio::spawn(work(i))).collect();
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await??);
    }
    Ok((done, started.elapsed()))
}

/// Lets background work of the previous pass (lazy copies, compares, repairs) finish so
/// it does not land in the next one.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Whether a load average is over [`BUSY_LOAD_PER_CPU`] per CPU.
fn busy(load: f64, nproc: usize) -> bool {
    load > BUSY_LOAD_PER_CPU * nproc as f64
}

/// The machine's one-minute load average, when the system reports it.
pub fn load_average() -> Option<f64> {
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

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A small deterministic generator (splitmix64), so runs pick the same keys and values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: [&str; 24] = [
    "the",
    "customer",
    "asked",
    "about",
    "refund",
    "order",
    "shipping",
    "delayed",
    "invoice",
    "account",
    "agent",
    "checked",
    "status",
    "warehouse",
    "tomorrow",
    "confirmed",
    "payment",
    "card",
    "address",
    "updated",
    "ticket",
    "escalated",
    "resolved",
    "thanks",
];

/// A JSON value like an agent's conversation memory, about `bytes` bytes long as text:
/// a few scalar fields, tags, and messages of generated words.
pub fn memory_value(bytes: usize, rng: &mut Rng) -> Value {
    let mut messages = Vec::new();
    let mut size = 160; // the fixed fields below, as text
    while size < bytes {
        let mut text = String::new();
        while text.len() < 100.min(bytes.saturating_sub(size).max(8)) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[rng.below(WORDS.len())]);
        }
        let role = if messages.len() % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        size += text.len() + 32;
        messages.push(json!({"role": role, "text": text}));
    }
    json!({
        "topic": format!("ticket #{}", rng.below(1_000_000)),
        "turns": messages.len(),
        "confidence": rng.below(1000) as f64 / 1000.0,
        "resolved": rng.below(2) == 1,
        "tags": [WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]],
        "messages": messages,
    })
}

/// One agent's stream of calls: stores alternate between fresh keys and overwrites of a
/// random earlier key; retrieves read a random stored key and must find it.
pub struct AgentLoad {
    backend: std::sync::Arc<dyn MemoryBackend>,
    agent: AgentId,
    keys: Vec<String>,
    stores: usize,
    value_bytes: usize,
    rng: Rng,
}

impl AgentLoad {
    /// Calls to `backend` as agent `agent`, with values of about `value_bytes` bytes.
    pub fn new(
        backend: std::sync::Arc<dyn MemoryBackend>,
        agent: &str,
        value_bytes: usize,
        seed: u64,
    ) -> Result<Self> {
        Ok(AgentLoad {
            backend,
            agent: AgentId::new(agent)?,
            keys: Vec::new(),
            stores: 0,
            value_bytes,
            rng: Rng::new(seed),
        })
    }

    /// Stores one value (built before the clock starts); returns how long the call took.
    pub async fn store(&mut self) -> Result<Duration> {
        let key = if self.stores.is_multiple_of(2) || self.keys.is_empty() {
            self.keys
                .push(format!("conversation/{:06}", self.keys.len()));
            self.keys[self.keys.len() - 1].clone()
        } else {
            self.keys[self.rng.below(self.keys.len())].clone()
        };
        self.stores += 1;
        let memory = memshift::Memory::new(key, memory_value(self.value_bytes, &mut self.rng));
        let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
        stored?;
        Ok(took)
    }

    /// Retrieves one stored key; returns how long the call took.
    pub async fn retrieve(&mut self) -> Result<Duration> {
        if self.keys.is_empty() {
            return Err("retrieve before any store".into());
        }
        let key = &self.keys[self.rng.below(self.keys.len())];
        let (found, took) = timed(self.backend.get_memory(&self.agent, key)).await;
        if found?.is_none() {
            return Err(format!("agent {} lost key {key:?}", self.agent).into());
        }
        Ok(took)
    }

    /// `n` stores then `n` retrieves, unmeasured: opens files, pools and caches.
    pub async fn warm_up(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.store().await?;
        }
        for _ in 0..n {
            self.retrieve().await?;
        }
        Ok(())
    }
}

/// A text table with right-aligned columns after the first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(c, cell)| match c {
                0 => format!("{cell:<w$}", w = widths[c]),
                _ => format!("{cell:>w$}", w = widths[c]),
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = vec![
        line(headers.to_vec()),
        line(rule.iter().map(String::as_str).collect()),
    ];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// Microseconds as milliseconds with three decimals.
pub fn ms(micros: f64) -> String {
    format!("{:.3}", micros / 1000.0)
}

/// Writes a suite's results, with the machine's facts, as pretty JSON to
/// `<out>/<suite>.json`, and its chart to `<out>/<suite>.svg`; returns both paths.
pub fn write_results(
    out: &Path,
    suite: &str,
    machine: &Machine,
    results: Value,
    chart: &Chart,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create the results folder {}: {e}", out.display()))?;
    let document = json!({
        "suite": suite,
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "machine": machine,
        "results": results,
    });
    let (json_path, svg_path) = (
        out.join(format!("{suite}.json")),
        out.join(format!("{suite}.svg")),
    );
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&json_path, serde_json::to_string_pretty(&document)? + "\n")?;
    write(&svg_path, chart::svg(chart)?)?;
    Ok((json_path, svg_path))
}
