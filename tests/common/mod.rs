//! Helpers shared by the integration tests: running memctl, stopping and starting the
//! test server, capturing log lines, finding the public corpus (or saying it is absent).

#![allow(dead_code)] // each test file uses its own subset

pub mod agent_process;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The memctl example binary, which `cargo test` builds beside the test binaries.
pub fn memctl_path() -> PathBuf {
    example_path("memctl")
}

/// An example binary, which `cargo test` builds beside the test binaries.
pub fn example_path(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with cargo test, which builds the examples",
        path.display()
    );
    path
}

pub fn memctl(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(memctl_path());
    command
        .args(args)
        .env_remove("MEMORY_BACKEND")
        .env_remove("DATABASE_URL")
        .env_remove("AGENTS_PATH")
        .env_remove("MEMORY_STAGE");
    command.envs(env.iter().copied());
    command.output().expect("run memctl")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops (`stop`) or starts again (`start-existing`) the test server, on the same port.
pub fn pg(action: &str) {
    let dir = std::env::var("MEMSHIFT_TEST_PG_DIR")
        .expect("MEMSHIFT_TEST_PG_DIR is not set: run the tests with scripts/test");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg");
    let status = Command::new(script)
        .args([action, &dir])
        .output()
        .expect("run scripts/pg");
    assert!(
        status.status.success(),
        "scripts/pg {action} failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Starts the test server again when dropped, so a failing test cannot leave it down
/// for the test binaries after it.
pub struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        pg("start-existing");
    }
}

/// Log lines written while `work` runs on this thread (a current-thread runtime runs
/// spawned tasks here too).
pub async fn captured_logs<F: std::future::Future<Output = ()>>(work: F) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    work.await;
    drop(guard);
    String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
}

/// The test server's real password, from its superuser URL.
pub fn real_password() -> String {
    let url = url::Url::parse(&memshift::testing::postgres::admin_url())
        .expect("the test URL is a valid URL");
    let password = url.password().expect("the test URL has a password");
    assert!(
        password.len() >= 8,
        "the test password is too short to search for"
    );
    password.to_string()
}

/// `url` with its password replaced by `password`.
pub fn with_password(url: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a valid URL");
    parsed
        .set_password(Some(password))
        .expect("a URL with a host");
    parsed.to_string()
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("bound address").port();
    drop(listener);
    port
}

/// Creates a legacy SQLite file at `path` (and its folders) with `sql`.
pub async fn legacy_file(path: &Path, sql: &str) {
    use sqlx::Connection;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// SQL for a legacy `memory(key, content)` table of `rows` rows with distinct keys.
pub fn memory_table(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("('k{i}', 'value {i}')"))
        .collect();
    format!(
        "create table memory (key text, content text); insert into memory values {};",
        values.join(",")
    )
}

/// (rows, distinct legacy source rows) in `agent_memories`: equal when no legacy row
/// arrived twice.
pub async fn memory_rows_once(conn: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct (metadata->>'source_db', metadata->>'source_rowid'))
         from agent_memories",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The variable naming the public corpus's folder, when it is not at its usual place.
pub const CORPUS_VAR: &str = "MEMSHIFT_CORPUS";
/// Set to `1` (CI sets it), an absent corpus fails the tests that read it.
pub const REQUIRE_CORPUS_VAR: &str = "MEMSHIFT_REQUIRE_CORPUS";
/// A file that tests which were not run append their names to (`scripts/test` sets it
/// and lists the names at the end).
pub const NOT_RUN_VAR: &str = "MEMSHIFT_NOT_RUN";

/// The public corpus: SQLite files of real agent projects and of pgloader's tests. It is
/// not part of the repository (not every file's licence allows shipping it): it lies at
/// `../shared/corpus/public` beside the checkout, or where `MEMSHIFT_CORPUS` says.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os(CORPUS_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new(".."))
            .join("shared/corpus/public"),
    }
}

/// The corpus for the test named `test`, or `None` when it is absent (no folder, or an
/// empty one). The test then returns without running, after saying so on stderr (past
/// the test harness's capture, so it shows in a plain `cargo test`) and adding its name
/// to the `MEMSHIFT_NOT_RUN` file. With `MEMSHIFT_REQUIRE_CORPUS=1` an absent corpus
/// fails the test instead.
pub fn corpus(test: &str) -> Option<PathBuf> {
    use std::io::Write as _;
    let dir = corpus_dir();
    let present = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if present {
        return Some(dir);
    }
    let name = format!("{}::{test}", env!("CARGO_CRATE_NAME"));
    let required = std::env::var(REQUIRE_CORPUS_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{name}: the corpus {} is absent and {REQUIRE_CORPUS_VAR} is set: put the corpus \
         there, or set {CORPUS_VAR} to its folder",
        dir.display()
    );
    // Straight to the stream: eprintln! would be held back by the harness for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "not run: {name}: corpus {} absent (set {CORPUS_VAR} to its folder)",
        dir.display()
    );
    if let Some(file) = std::env::var_os(NOT_RUN_VAR).filter(|f| !f.is_empty()) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(format!("{name}\n").as_bytes()));
        if let Err(e) = appended {
            panic!(
                "{name}: cannot record it as not run in {}: {e}",
                Path::new(&file).display()
            );
        }
    }
    None
}

/// Every row of the mapped tables of every legacy file under `root` (files of the
/// library's own layout left out), as the legacy layer converts it at `migrated_at`:
/// what PostgreSQL must hold of them.
pub async fn legacy_rows(
    root: &Path,
    map: &memshift::legacy::TableMap,
    migrated_at: chrono::DateTime<chrono::Utc>,
) -> Vec<memshift::legacy::ContractRow> {
    use memshift::legacy::{self, ReadOptions, Source, TableKind};
    let mut rows = Vec::new();
    for found in legacy::discover(root, &ReadOptions::default()).await {
        if found.probe != legacy::Probe::Legacy {
            continue;
        }
        let agent = found.agent.clone().unwrap();
        let mut source = Source::open(&found.path, &ReadOptions::default())
            .await
            .unwrap();
        for table in source.tables().await.unwrap() {
            let (TableKind::Data { .. }, Some(spec)) =
                (&table.kind, map.spec(&found.source_db, &table.name))
            else {
                continue;
            };
            let origin = legacy::RowOrigin {
                agent: &agent,
                source: "",
                source_db: &found.source_db,
            };
            let mut batches = source.rows(&table);
            while let Some(batch) = batches.next_batch().await.unwrap() {
                for row in batch {
                    rows.push(
                        legacy::convert_row(&origin, &table, &spec, &row, migrated_at).unwrap(),
                    );
                }
            }
        }
    }
    rows
}
