//! Suite `python`: the Python package's `store_memory` and `retrieve_memory` against the
//! same calls from Rust and against LangGraph's stores, on SQLite and on PostgreSQL.
//!
//! Four clients make the same calls with the same values:
//!
//! - `rust`: `memshift::AgentMemory::store_memory` / `retrieve_memory`, timed here on
//!   this process's tokio runtime;
//! - `python`: `await memory.store_memory(key, value)` / `await
//!   memory.retrieve_memory(key)` of the Python package (a release build);
//! - `langgraph_async`: LangGraph's `AsyncSqliteStore` / `AsyncPostgresStore`, `await
//!   aput(namespace, key, value)` / `await aget(namespace, key)`;
//! - `langgraph_sync`: LangGraph's `SqliteStore` / `PostgresStore`, `put` / `get`.
//!
//! The Python clients run in one Python process, driver.py beside this file, started
//! once by the Python `--python` names (scripts/bench makes a virtualenv with the package
//! and LangGraph's stores at the versions of requirements.txt); it times each call
//! itself and hands the times back. LangGraph's SQLite connections get the library's
//! settings (WAL, `synchronous = FULL`); both PostgreSQL clients use the same server and
//! database.
//!
//! One run of a client is `--calls` stores of one value then `--calls` retrieves, one
//! after another, on one agent (a namespace for LangGraph), the keys cycling over
//! `--keys`: every measured store overwrites a key and every retrieve finds one. Each
//! repetition measures every backend and value in turn and, for each, the four clients
//! back to back, both orders rotated every repetition; round 0 writes every key and is
//! not counted. Figures are the medians of the repetitions, and each ratio compares
//! clients measured in the same run.

mod saved;

pub use saved::summary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use memshift::{AgentConfig, AgentMemory, BackendKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::harness::{Env, Latency, Result, Rng, Samples, median, memory_value, ms, timed};
use crate::results::Ratio;

/// Options of the `python` suite.
/// (Read back from saved results too: an option added later needs `#[serde(default)]`,
/// since earlier files lack it.)
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
pub struct Args {
    /// Stores, and as many retrieves, per client, backend, value and repetition.
    #[arg(long, default_value_t = 400)]
    pub calls: usize,
    /// Keys each run cycles over.
    #[arg(long, default_value_t = 200)]
    pub keys: usize,
    /// Approximate size of the larger value, in bytes: the targets' value.
    #[arg(long, default_value_t = 1024)]
    pub large_bytes: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// The Python with memshift and LangGraph's stores installed (default: the
    /// virtualenv scripts/bench makes, target/bench-venv).
    #[arg(long, env = "MEMSHIFT_BENCH_PYTHON")]
    #[serde(skip)]
    pub python: Option<PathBuf>,
}

/// Who makes the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Client {
    Rust,
    Python,
    LanggraphAsync,
    LanggraphSync,
}

impl Client {
    pub(super) const ALL: [Client; 4] = [
        Client::Rust,
        Client::Python,
        Client::LanggraphAsync,
        Client::LanggraphSync,
    ];

    /// As driver.py and the saved results name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Client::Rust => "rust",
            Client::Python => "python",
            Client::LanggraphAsync => "langgraph_async",
            Client::LanggraphSync => "langgraph_sync",
        }
    }

    /// As the tables show it.
    pub(super) fn label(self) -> &'static str {
        match self {
            Client::Rust => "memshift, Rust",
            Client::Python => "memshift, Python",
            Client::LanggraphAsync => "LangGraph async store",
            Client::LanggraphSync => "LangGraph sync store",
        }
    }
}

/// Where the calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(super) const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Which value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Size {
    /// A few fields, as an agent's note: about a hundred bytes.
    Small,
    /// A conversation of about `--large-bytes`.
    Large,
}

impl Size {
    pub(super) const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub(super) fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// One run of one client: its calls' latencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Run {
    pub(super) client: Client,
    pub(super) backend: Backend,
    pub(super) size: Size,
    /// 1 to `--reps`.
    pub(super) rep: usize,
    pub(super) store: Latency,
    pub(super) retrieve: Latency,
}

/// The target of the Python call against the Rust call: at most this much slower.
const PYTHON_OVER_RUST_LIMIT: f64 = 1.3;
/// The target of the Python call against LangGraph's faster store: no slower.
const PYTHON_OVER_LANGGRAPH_LIMIT: f64 = 1.0;
/// The target of the Rust call against LangGraph's faster store: no slower.
const RUST_OVER_LANGGRAPH_LIMIT: f64 = 1.0;
/// The value the targets are judged on: the larger one, of about `--large-bytes`.
pub(super) const TARGET_SIZE: Size = Size::Large;

/// Key number `index` as every client names it (driver.py names them the same).
fn key_name(index: usize) -> String {
    format!("memory/{index:04}")
}

/// The key of store `call`: the keys in turn.
fn store_key(call: usize, keys: usize) -> String {
    key_name(call % keys)
}

/// The key of retrieve `call`: the keys in another order.
fn retrieve_key(call: usize, keys: usize) -> String {
    key_name((call * 7 + 3) % keys)
}

/// The agent (LangGraph: the namespace) of one client, backend and value, the same in
/// every round so that its keys stay written.
fn agent(client: Client, backend: Backend, size: Size) -> String {
    format!("bench-{}-{}-{}", client.name(), backend.name(), size.name())
}

/// The small value: an agent's note.
fn small_value() -> Value {
    json!({
        "q": "customer asked about a refund for order 1042",
        "n": 3,
        "tags": ["refund", "order", "priority"],
        "score": 0.25,
    })
}

/// The Python side: driver.py in a process of its own, one JSON line per message.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Driver {
    /// Starts driver.py with `python` and hands it `settings`; returns it with its
    /// `ready` answer.
    async fn start(python: &Path, settings: &Value) -> Result<(Driver, Value)> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench/python/driver.py");
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {} (scripts/bench makes that Python; or give --python): {e}",
                    python.display()
                )
            })?;
        let stdin = child.stdin.take().ok_or("driver.py has no stdin")?;
        let stdout = child.stdout.take().ok_or("driver.py has no stdout")?;
        let mut driver = Driver {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let ready = driver.ask(settings).await?;
        Ok((driver, ready))
    }

    /// Sends `message` and reads the answer; an `error` answer is a failure.
    async fn ask(&mut self, message: &Value) -> Result<Value> {
        let mut line = serde_json::to_string(message)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = self
            .stdout
            .next_line()
            .await?
            .ok_or("driver.py ended without answering (its error is above)")?;
        let answer: Value = serde_json::from_str(&answer)
            .map_err(|e| format!("driver.py answered {answer:?}, not JSON: {e}"))?;
        if let Some(error) = answer.get("error") {
            let trace = answer.get("trace").and_then(Value::as_str).unwrap_or("");
            return Err(format!("driver.py: {error}\n{trace}").into());
        }
        Ok(answer)
    }

    /// One run of a Python client: its calls' latencies, stores then retrieves.
    async fn calls(
        &mut self,
        client: Client,
        backend: Backend,
        size: Size,
        calls: usize,
        keys: usize,
    ) -> Result<(Samples, Samples)> {
        let answer = self
            .ask(&json!({
                "client": client.name(),
                "backend": backend.name(),
                "agent": agent(client, backend, size),
                "value": size.name(),
                "calls": calls,
                "keys": keys,
            }))
            .await?;
        let samples = |field: &str| -> Result<Samples> {
            let times: Vec<u64> = serde_json::from_value(answer[field].clone())
                .map_err(|e| format!("driver.py's {field}: {e}"))?;
            if times.len() != calls {
                return Err(format!("driver.py timed {} calls, not {calls}", times.len()).into());
            }
            let mut samples = Samples::default();
            for nanos in times {
                samples.push(Duration::from_nanos(nanos));
            }
            Ok(samples)
        };
        Ok((samples("store_ns")?, samples("retrieve_ns")?))
    }

    /// Closes driver.py's stores and waits for it to end.
    async fn finish(mut self) -> Result<()> {
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        drop(self.stdin);
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .map_err(|_| "driver.py did not end within a minute of being told to")??;
        match status.success() {
            true => Ok(()),
            false => Err(format!("driver.py ended with {status}").into()),
        }
    }
}

/// The Rust client's memories, one per backend and value, opened on first use.
struct RustSide<'a> {
    env: &'a Env,
    memories: HashMap<(Backend, Size), AgentMemory>,
}

impl RustSide<'_> {
    async fn memory(&mut self, backend: Backend, size: Size) -> Result<AgentMemory> {
        if let Some(memory) = self.memories.get(&(backend, size)) {
            return Ok(memory.clone());
        }
        // As the Python client opens its memory: AgentConfig's defaults otherwise.
        let mut config = AgentConfig::new(agent(Client::Rust, backend, size));
        config.agents_path = self.env.agents_path().to_path_buf();
        config.memory_backend = match backend {
            Backend::Sqlite => BackendKind::Sqlite,
            Backend::Postgres => BackendKind::Postgres,
        };
        if backend == Backend::Postgres {
            config.database_url = Some(self.env.url.clone());
        }
        let memory = AgentMemory::open(&config).await?;
        self.memories.insert((backend, size), memory.clone());
        Ok(memory)
    }

    /// One run of the Rust client.
    async fn calls(
        &mut self,
        backend: Backend,
        size: Size,
        value: &Value,
        calls: usize,
        keys: usize,
    ) -> Result<(Samples, Samples)> {
        let memory = self.memory(backend, size).await?;
        let (mut store, mut retrieve) = (Samples::default(), Samples::default());
        for call in 0..calls {
            let key = store_key(call, keys);
            let (stored, took) = timed(memory.store_memory(&key, value)).await;
            stored?;
            store.push(took);
        }
        for call in 0..calls {
            let key = retrieve_key(call, keys);
            let (found, took) = timed(memory.retrieve_memory::<Value>(&key)).await;
            if found?.is_none() {
                return Err(format!("rust {}: {key} not found", backend.name()).into());
            }
            retrieve.push(took);
        }
        let back: Option<Value> = memory.retrieve_memory(&store_key(calls - 1, keys)).await?;
        if back.as_ref() != Some(value) {
            return Err(format!(
                "rust {}: the value read back is not the one stored",
                backend.name()
            )
            .into());
        }
        Ok((store, retrieve))
    }

    async fn close(self) {
        for memory in self.memories.values() {
            if let Err(err) = memory.close().await {
                eprintln!("bench: closing {}: {err}", memory.agent());
            }
        }
    }
}

/// The Python that runs driver.py: `--python`, else the virtualenv scripts/bench makes.
fn python(args: &Args) -> PathBuf {
    args.python.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv/bin/python")
    })
}

/// Runs the suite, prints its tables, and returns its results for the JSON file.
pub async fn run(env: &Env, args: &Args) -> Result<Value> {
    if args.calls == 0 || args.keys == 0 || args.reps == 0 {
        return Err("--calls, --keys and --reps must be at least 1".into());
    }
    let values = [
        (Size::Small, small_value()),
        (
            Size::Large,
            memory_value(args.large_bytes, &mut Rng::new(0x7079)),
        ),
    ];
    let texts: HashMap<Size, String> = values
        .iter()
        .map(|(size, value)| Ok((*size, serde_json::to_string(value)?)))
        .collect::<Result<_>>()?;
    let value_bytes: HashMap<&str, usize> = texts
        .iter()
        .map(|(size, text)| (size.name(), text.len()))
        .collect();
    println!(
        "plan:       {} stores + {} retrieves per client, backend and value (keys cycling over \
         {}), values of {} B and {} B, clients {}, {} repetitions after an uncounted round \
         that writes every key (orders rotated), medians shown",
        args.calls,
        args.calls,
        args.keys,
        value_bytes["small"],
        value_bytes["large"],
        Client::ALL.map(Client::name).join(", "),
        args.reps,
    );

    let langgraph = tempfile::Builder::new()
        .prefix("memshift-bench-langgraph-")
        .tempdir()?;
    let python = python(args);
    let (mut driver, ready) = Driver::start(
        &python,
        &json!({
            "database_url": env.url,
            "agents_path": env.agents_path(),
            "langgraph_path": langgraph.path(),
            "values": texts.iter().map(|(size, text)| (size.name(), text)).collect::<HashMap<_, _>>(),
        }),
    )
    .await?;
    let versions = ready["versions"].clone();
    println!(
        "python:     {} ({})",
        python.display(),
        versions
            .as_object()
            .map(|v| v
                .iter()
                .map(|(name, version)| format!("{name} {}", version.as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );

    let mut rust = RustSide {
        env,
        memories: HashMap::new(),
    };
    let outcome = measure(args, &values, &mut rust, &mut driver).await;
    rust.close().await;
    // On a failure the driver goes with its handle (killed on drop).
    let runs = outcome?;
    let settings = driver.ask(&json!({"settings": true})).await?;
    driver.finish().await?;
    let results = results(
        args,
        json!(value_bytes),
        versions,
        settings["sqlite_settings"].clone(),
        &runs,
    );
    // Printed from the results as saved, as the results page shows them.
    saved::print(&results)?;
    Ok(results)
}

/// The suite's results as the JSON file keeps them.
fn results(
    args: &Args,
    value_bytes: Value,
    versions: Value,
    langgraph_sqlite_settings: Value,
    runs: &[Run],
) -> Value {
    json!({
        "args": args,
        "value_bytes": value_bytes,
        "versions": versions,
        "langgraph_sqlite_settings": langgraph_sqlite_settings,
        "runs": runs,
        "ratios": ratios(args, runs),
    })
}

/// Every round: round 0 uncounted, then `--reps` repetitions.
async fn measure(
    args: &Args,
    values: &[(Size, Value)],
    rust: &mut RustSide<'_>,
    driver: &mut Driver,
) -> Result<Vec<Run>> {
    let cells: Vec<(Backend, Size)> = Backend::ALL
        .iter()
        .flat_map(|b| Size::ALL.iter().map(move |s| (*b, *s)))
        .collect();
    let mut runs = Vec::new();
    for round in 0..=args.reps {
        // Round 0 writes every key, so that every later store overwrites one.
        let calls = match round {
            0 => args.calls.max(args.keys),
            _ => args.calls,
        };
        let label = match round {
            0 => "warm-up".to_string(),
            _ => format!("rep {round}/{}", args.reps),
        };
        for c in 0..cells.len() {
            let (backend, size) = cells[(c + round) % cells.len()];
            let value = &values
                .iter()
                .find(|(s, _)| *s == size)
                .ok_or("no value of that size")?
                .1;
            for i in 0..Client::ALL.len() {
                let client = Client::ALL[(i + round) % Client::ALL.len()];
                let started = Instant::now();
                let (store, retrieve) = match client {
                    Client::Rust => rust.calls(backend, size, value, calls, args.keys).await?,
                    _ => {
                        driver
                            .calls(client, backend, size, calls, args.keys)
                            .await?
                    }
                };
                let (store, retrieve) = (store.summary(), retrieve.summary());
                eprintln!(
                    "  {label:<8} {:<8} {:<5} {:<15} {:>5.1}s  store p50 {} ms, retrieve p50 {} ms",
                    backend.name(),
                    size.name(),
                    client.name(),
                    started.elapsed().as_secs_f64(),
                    ms(store.p50_us),
                    ms(retrieve.p50_us),
                );
                if round > 0 {
                    runs.push(Run {
                        client,
                        backend,
                        size,
                        rep: round,
                        store,
                        retrieve,
                    });
                }
            }
        }
    }
    Ok(runs)
}

/// Which call a figure is of.
#[derive(Debug, Clone, Copy)]
pub(super) enum Call {
    Store,
    Retrieve,
}

impl Call {
    pub(super) const ALL: [Call; 2] = [Call::Store, Call::Retrieve];

    pub(super) fn name(self) -> &'static str {
        match self {
            Call::Store => "store",
            Call::Retrieve => "retrieve",
        }
    }

    pub(super) fn of(self, run: &Run) -> &Latency {
        match self {
            Call::Store => &run.store,
            Call::Retrieve => &run.retrieve,
        }
    }
}

/// The p50 of `call` by `client` on `backend` with `size` in repetition `rep`.
pub(super) fn p50(
    runs: &[Run],
    client: Client,
    backend: Backend,
    size: Size,
    call: Call,
    rep: usize,
) -> Option<f64> {
    runs.iter()
        .find(|r| r.client == client && r.backend == backend && r.size == size && r.rep == rep)
        .map(|r| call.of(r).p50_us)
}

/// The median over the repetitions of `figure` of `call` by `client` on `backend` with
/// `size`.
pub(super) fn median_of(
    runs: &[Run],
    client: Client,
    backend: Backend,
    size: Size,
    call: Call,
    figure: fn(&Latency) -> f64,
) -> Option<f64> {
    let values: Vec<f64> = runs
        .iter()
        .filter(|r| r.client == client && r.backend == backend && r.size == size)
        .map(|r| figure(call.of(r)))
        .collect();
    (!values.is_empty()).then(|| median(values))
}

/// The p50 of LangGraph's faster store (of the async and the sync one).
pub(super) fn langgraph_best(p50: impl Fn(Client) -> Option<f64>) -> Option<f64> {
    match (p50(Client::LanggraphAsync), p50(Client::LanggraphSync)) {
        (Some(a), Some(s)) => Some(a.min(s)),
        (a, s) => a.or(s),
    }
}

/// The targets, on the value of about `--large-bytes`: the Rust and the Python call over
/// LangGraph's faster store, and the Python call over the Rust call, per backend and
/// call; each the ratio of the medians, with the ratio within each repetition beside it.
fn ratios(args: &Args, runs: &[Run]) -> Vec<Ratio> {
    let size = TARGET_SIZE;
    let mut out = Vec::new();
    for backend in Backend::ALL {
        for call in Call::ALL {
            let med = |client| median_of(runs, client, backend, size, call, |l| l.p50_us);
            let rep = |client, rep| p50(runs, client, backend, size, call, rep);
            let (b, c) = (backend.name(), call.name());
            let versus = |ours: Client, name: &str, label: &str, best: bool, limit: f64| {
                let theirs = |at: &dyn Fn(Client) -> Option<f64>| match best {
                    true => langgraph_best(at),
                    false => at(Client::Rust),
                };
                let mut ratio = Ratio::new(
                    format!("{}_vs_{name}_{b}_{c}", ours.name()),
                    format!("{b} {c} p50, {label}"),
                    med(ours).zip(theirs(&med)).map(|(o, t)| o / t),
                    limit,
                    false,
                );
                ratio.per_repetition = (1..=args.reps)
                    .filter_map(|n| Some(rep(ours, n)? / theirs(&|c| rep(c, n))?))
                    .collect();
                ratio
            };
            out.push(versus(
                Client::Rust,
                "langgraph",
                "Rust / LangGraph's faster store",
                true,
                RUST_OVER_LANGGRAPH_LIMIT,
            ));
            out.push(versus(
                Client::Python,
                "langgraph",
                "Python / LangGraph's faster store",
                true,
                PYTHON_OVER_LANGGRAPH_LIMIT,
            ));
            out.push(versus(
                Client::Python,
                "rust",
                "Python / Rust",
                false,
                PYTHON_OVER_RUST_LIMIT,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(p50_us: f64) -> Latency {
        Latency {
            count: 10,
            p50_us,
            p99_us: p50_us * 3.0,
            mean_us: p50_us * 1.2,
        }
    }

    /// Results as `run` makes them, from made-up runs: Python twice Rust's time, LangGraph
    /// async four times, sync three times, on every backend and value.
    fn made_up(reps: usize) -> Value {
        let args = Args {
            calls: 10,
            keys: 5,
            large_bytes: 4096,
            reps,
            python: None,
        };
        let factor = |client| match client {
            Client::Rust => 1.0,
            Client::Python => 2.0,
            Client::LanggraphAsync => 4.0,
            Client::LanggraphSync => 3.0,
        };
        let mut runs = Vec::new();
        for rep in 1..=reps {
            for backend in Backend::ALL {
                for size in Size::ALL {
                    for client in Client::ALL {
                        runs.push(Run {
                            client,
                            backend,
                            size,
                            rep,
                            store: latency(500.0 * factor(client)),
                            retrieve: latency(20.0 * factor(client)),
                        });
                    }
                }
            }
        }
        results(
            &args,
            json!({"small": 108, "large": 3986}),
            json!({"python": "3.11.7", "langgraph-checkpoint-sqlite": "3.1.2"}),
            json!({"langgraph_async": "journal_mode=wal synchronous=2"}),
            &runs,
        )
    }

    #[test]
    fn targets_compare_python_with_rust_and_the_faster_langgraph_store() -> Result<()> {
        let results = made_up(3);
        let summary = summary(&results)?;
        assert_eq!(summary.targets.len(), 12);
        for ratio in &summary.targets {
            let expected = match ratio.name.split('_').take(3).collect::<Vec<_>>()[..] {
                ["python", "vs", "rust"] => 2.0,
                ["python", "vs", "langgraph"] => 2.0 / 3.0,
                ["rust", "vs", "langgraph"] => 1.0 / 3.0,
                _ => return Err(format!("unexpected target {}", ratio.name).into()),
            };
            let value = ratio.value.ok_or("not measured")?;
            assert!((value - expected).abs() < 1e-9, "{ratio:?}");
            assert_eq!(ratio.per_repetition.len(), 3, "{ratio:?}");
            assert_eq!(ratio.pass, Some(expected <= ratio.target), "{ratio:?}");
        }
        assert!(
            summary
                .markdown
                .contains("| postgres | 3,986 B | retrieve | 2.00 | 0.50 | 0.67 | 0.67 |"),
            "{}",
            summary.markdown
        );
        assert_eq!(summary.chart.panels.len(), 2);
        saved::print(&results)
    }
}
