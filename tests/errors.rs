//! The bad-input suite: each broken setup gives a clear error naming what is wrong and
//! where, never a panic, never a password, and leaves every byte of existing data alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memshift::testing::postgres::TestDatabase;
use memshift::testing::unique_agent;
use memshift::{
    AgentConfig, AgentId, AgentMemory, BackendKind, Chain, Error, Listing, Memory, MemoryBackend,
    PostgresBackend, PostgresOptions, SqliteBackend, migrate_url,
};
use serde_json::json;
use sqlx::{Connection, PgConnection};

mod common;
use common::{closed_port, real_password, with_password};

/// A password no server accepts, distinctive enough to search every message for.
const WRONG_PASSWORD: &str = "Wr0ng-S3cret-pw";

/// Every contract table, in the order the schema check reports them.
const TABLES: [&str; 5] = [
    "agents",
    "agent_memories",
    "agent_tools",
    "agent_metrics",
    "agent_executions",
];

// ---------------------------------------------------------------------------------------
// Helpers: what an error shows, and PostgreSQL set-ups
// ---------------------------------------------------------------------------------------

/// Everything a user may get to see of an error: `Display`, `Debug` and the full chain.
fn shown(err: &Error) -> [String; 3] {
    [err.to_string(), format!("{err:?}"), Chain(err).to_string()]
}

/// Fails unless no rendering of `err` holds any of `secrets`, nor the test server's real
/// password.
fn assert_hides(err: &Error, secrets: &[&str]) {
    let real = real_password();
    for text in shown(err) {
        for secret in secrets.iter().copied().chain([real.as_str()]) {
            assert!(
                !text.contains(secret),
                "a password shows in the error: {text}"
            );
        }
    }
}

/// Fails unless `err`'s full chain holds each of `needles`.
fn assert_says(err: &Error, needles: &[&str]) {
    let chain = Chain(err).to_string();
    for needle in needles {
        assert!(
            chain.contains(needle),
            "the error does not say {needle:?}: {chain}"
        );
    }
}

/// Fails unless some cause in `err`'s chain is an I/O error of `kind`.
fn assert_io_cause(err: &Error, kind: std::io::ErrorKind) {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = next {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return;
        }
        next = cause.source();
    }
    panic!("no {kind:?} I/O error in the chain of {}", Chain(err));
}

/// `db.url` as it must appear in messages: with `***` for the password.
fn redacted(db: &TestDatabase) -> String {
    with_password(&db.url, "***")
}

/// Runs `sql` on `db` as the superuser.
async fn execute(db: &TestDatabase, sql: &'static str) {
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect as superuser");
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.ok();
}

/// Connects to `db` expecting [`Error::SchemaMissing`]; returns the error and its list
/// of missing pieces.
async fn schema_missing(db: &TestDatabase) -> (Error, Vec<String>) {
    let err = PostgresBackend::connect(&db.url)
        .await
        .expect_err("connect must refuse a database without the contract schema");
    let Error::SchemaMissing {
        missing, target, ..
    } = &err
    else {
        panic!("expected Error::SchemaMissing, got {err:?}");
    };
    assert_eq!(
        *target,
        redacted(db),
        "the error names the database, redacted"
    );
    let missing = missing.clone();
    assert_says(
        &err,
        &[
            &redacted(db),
            "is missing",
            "memctl migrate",
            "prisma db push",
        ],
    );
    for piece in &missing {
        assert_says(&err, &[piece]);
    }
    assert_hides(&err, &[]);
    (err, missing)
}

/// A migrated database holding one memory, broken by `ddl`: returns the error connect
/// gives and its missing pieces, after checking the memory survived the failed connect.
async fn break_schema(ddl: &'static str) -> (Error, Vec<String>) {
    let db = TestDatabase::migrated().await;
    let agent = unique_agent("schema");
    let memory = Memory::new("kept", json!({"survives": "a failed connect"}));
    let backend = db.backend().await;
    backend
        .put_memory(&agent, &memory)
        .await
        .expect("store before the break");
    backend.close().await;

    execute(&db, ddl).await;
    let result = schema_missing(&db).await;

    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect as superuser");
    let content: String =
        sqlx::query_scalar("select content from agent_memories where agent_id = $1 and key = $2")
            .bind(agent.as_str())
            .bind("kept")
            .fetch_one(&mut conn)
            .await
            .expect("the stored memory is still there");
    assert_eq!(
        content,
        memory.content.to_string(),
        "the stored memory is unchanged"
    );
    conn.close().await.ok();
    result
}

/// Fails unless `missing` is exactly `expected` and the message names no other table.
fn assert_missing_exactly(err: &Error, missing: &[String], expected: &[&str]) {
    assert_eq!(missing, expected, "the missing pieces: {err}");
    let message = err.to_string();
    for table in TABLES {
        let piece = format!("table {table}");
        if !expected.contains(&piece.as_str()) {
            assert!(
                !message.contains(&format!("{piece},")) && !message.contains(&format!("{piece}:")),
                "names the present {piece}: {message}"
            );
        }
    }
}

/// The ways to open a PostgreSQL URL that take a connect timeout, and the error each
/// gives: the backend itself, and an agent configured with `MEMORY_BACKEND=postgres`.
/// (`migrate_url` always waits the default 10 s, so tests add it only where it fails
/// fast.)
async fn open_errors(url: &str, timeout: Duration) -> Vec<(&'static str, Error)> {
    let options = PostgresOptions {
        connect_timeout: timeout,
        ..PostgresOptions::default()
    };
    let mut config = AgentConfig::from_lookup("errors_agent", |var| match var {
        "MEMORY_BACKEND" => Some("postgres".into()),
        "DATABASE_URL" => Some(url.into()),
        _ => None,
    })
    .expect("a valid configuration");
    config.connect_timeout = timeout;
    let (backend, agent) = tokio::join!(
        PostgresBackend::connect_with(url, options),
        AgentMemory::open(&config),
    );
    vec![
        (
            "PostgresBackend::connect_with",
            backend.expect_err("must fail"),
        ),
        ("AgentMemory::open", agent.expect_err("must fail")),
    ]
}

/// Opens `port` on loopback with a URL holding [`WRONG_PASSWORD`] and a 2 s connect
/// timeout: every entry point must fail with [`Error::Connect`] naming `127.0.0.1:port`,
/// caused by an I/O error of `cause`, within a few seconds and without the password.
/// Returns how long it took.
async fn assert_unreachable(port: u16, cause: std::io::ErrorKind) -> Duration {
    let url = format!("postgres://agent:{WRONG_PASSWORD}@127.0.0.1:{port}/agents");
    let started = Instant::now();
    let errors = open_errors(&url, Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with a 2 s connect timeout"
    );
    for (entry, err) in &errors {
        assert!(
            matches!(err, Error::Connect { .. }),
            "{entry}: expected Error::Connect, got {err:?}"
        );
        assert!(
            err.is_connection(),
            "{entry}: is_connection() is false for {err}"
        );
        assert_says(
            err,
            &[&format!(
                "cannot connect to postgres://agent:***@127.0.0.1:{port}/"
            )],
        );
        assert_io_cause(err, cause);
        assert_hides(err, &[WRONG_PASSWORD]);
    }
    took
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn postgres_empty_database_names_everything_missing_and_the_fix() {
    let db = TestDatabase::empty().await;
    let (err, missing) = schema_missing(&db).await;
    let mut expected = vec!["extension vector".to_string()];
    expected.extend(TABLES.iter().map(|t| format!("table {t}")));
    assert_eq!(missing, expected, "{err}");
    assert!(
        !err.is_connection(),
        "a missing schema is not a connection problem"
    );

    // Connect only looked: the database is as empty as before.
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect as superuser");
    let (tables, vector): (i64, bool) = sqlx::query_as(
        "select (select count(*) from information_schema.tables
                 where table_schema not in ('pg_catalog', 'information_schema')),
                exists (select 1 from pg_extension where extname = 'vector')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("read the catalog");
    conn.close().await.ok();
    assert_eq!(
        (tables, vector),
        (0, false),
        "connect created part of the schema"
    );
}

#[tokio::test]
async fn postgres_dropped_table_is_named_alone() {
    let (err, missing) = break_schema("drop table agent_executions").await;
    assert_missing_exactly(&err, &missing, &["table agent_executions"]);
}

#[tokio::test]
async fn postgres_dropped_column_is_named_alone() {
    let (err, missing) = break_schema("alter table agent_tools drop column metadata").await;
    assert_missing_exactly(&err, &missing, &["column agent_tools.metadata"]);
}

#[tokio::test]
async fn postgres_dropped_table_and_column_are_both_named() {
    let (err, missing) =
        break_schema("drop table agent_executions; alter table agent_tools drop column metadata")
            .await;
    assert_missing_exactly(
        &err,
        &missing,
        &["column agent_tools.metadata", "table agent_executions"],
    );
}

#[tokio::test]
async fn postgres_missing_unique_key_is_named() {
    let (err, missing) = break_schema(
        "do $$ declare c text; begin
             select conname into strict c from pg_constraint
             where conrelid = 'agent_memories'::regclass and contype = 'u';
             execute format('alter table agent_memories drop constraint %I', c);
         end $$",
    )
    .await;
    assert_missing_exactly(
        &err,
        &missing,
        &["unique (agent_id, key) on agent_memories"],
    );
}

#[tokio::test]
async fn postgres_wrong_password_never_shows_a_password() {
    let db = TestDatabase::migrated().await;
    let url = with_password(&db.url, WRONG_PASSWORD);
    let mut errors = open_errors(&url, Duration::from_secs(10)).await;
    errors.push((
        "migrate_url",
        migrate_url(&url).await.expect_err("must fail"),
    ));
    for (entry, err) in &errors {
        assert!(
            matches!(err, Error::Connect { .. }),
            "{entry}: expected Error::Connect, got {err:?}"
        );
        assert_hides(err, &[WRONG_PASSWORD]);
        assert_says(err, &[&format!("cannot connect to {}", redacted(&db))]);
        assert_says(err, &["password authentication failed"]);
        assert!(
            !err.is_connection(),
            "{entry}: a refused login is not worth retrying"
        );
    }
}

#[tokio::test]
async fn postgres_server_down_fails_fast_naming_host_and_port() {
    let took = assert_unreachable(closed_port(), std::io::ErrorKind::ConnectionRefused).await;
    eprintln!("a closed port was refused after {took:?}");
}

#[tokio::test]
async fn postgres_server_that_never_answers_times_out_naming_host_and_port() {
    // Accepts TCP connections (the kernel completes them) but never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = silent.local_addr().expect("bound address").port();
    let took = assert_unreachable(port, std::io::ErrorKind::TimedOut).await;
    eprintln!("a silent server timed out after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "gave up after {took:?}, before the timeout"
    );
    drop(silent);
}

#[tokio::test]
async fn postgres_malformed_url_is_a_config_error_without_the_password() {
    for url in [
        format!("postgres://u:{WRONG_PASSWORD}@host:notaport/db"),
        format!("postgres://u:{WRONG_PASSWORD}@[::1/db"),
    ] {
        let mut errors = open_errors(&url, Duration::from_secs(2)).await;
        errors.push((
            "migrate_url",
            migrate_url(&url).await.expect_err("must fail"),
        ));
        for (entry, err) in &errors {
            assert!(
                matches!(err, Error::Config { .. }),
                "{entry}: expected Error::Config, got {err:?}"
            );
            assert_says(err, &["not a valid PostgreSQL URL", "u:***@"]);
            assert_hides(err, &[WRONG_PASSWORD]);
        }
    }
}

/// Fails unless `err` shows none of `secrets` (the test server's password included)
/// and holds each of `needles`.
fn assert_redacted(err: &Error, secrets: &[&str], needles: &[&str]) {
    assert_hides(err, secrets);
    assert_says(err, needles);
}

#[tokio::test]
async fn postgres_urls_the_driver_would_misread_are_refused_without_the_password() {
    let port = closed_port();
    let cases = [
        // No `//`: the driver would take everything after the scheme for a database.
        (
            format!("postgres:{WRONG_PASSWORD}@127.0.0.1:{port}/db"),
            vec!["postgres:***@127.0.0.1", "no `//`"],
        ),
        // `/`, `?` and `#` end a URL's host part unless percent-encoded.
        (
            format!("postgres://u:a/{WRONG_PASSWORD}@127.0.0.1:{port}/db"),
            vec!["postgres://u:***@127.0.0.1", "percent-encode"],
        ),
        (
            format!("postgres://u:1?{WRONG_PASSWORD}@127.0.0.1:{port}/db"),
            vec!["postgres://u:***@127.0.0.1", "percent-encode"],
        ),
        (
            format!("postgres://u:1#{WRONG_PASSWORD}@127.0.0.1:{port}/db"),
            vec!["postgres://u:***@127.0.0.1", "percent-encode"],
        ),
        // A key=value connection string.
        (
            format!("host=127.0.0.1 port={port} user=u password='{WRONG_PASSWORD} x' dbname=db"),
            vec!["password=*** dbname=db", "key=value"],
        ),
    ];
    for (url, needles) in cases {
        let mut errors = open_errors(&url, Duration::from_secs(2)).await;
        errors.push(("migrate_url", migrate_url(&url).await.expect_err(&url)));
        for (entry, err) in &errors {
            assert!(
                matches!(err, Error::Config { .. }),
                "{entry}: expected Error::Config for {url:?}, got {err:?}"
            );
            assert_redacted(err, &[WRONG_PASSWORD], &needles);
        }
        assert!(!memshift::redact_url(&url).contains(WRONG_PASSWORD));
    }
}

#[tokio::test]
async fn postgres_passwords_in_every_form_stay_hidden() {
    let port = closed_port();
    let encoded = "p%40ss%2Fw%23rd%3Fx-long";
    let decoded = "p@ss/w#rd?x-long";
    let at = format!("postgres://u:{WRONG_PASSWORD}@x@127.0.0.1:{port}/db");
    let cases = [
        (
            format!("postgres://u:{encoded}@127.0.0.1:{port}/db"),
            vec![encoded, decoded],
            "postgres://u:***@127.0.0.1",
        ),
        (
            at.clone(),
            vec![WRONG_PASSWORD],
            "postgres://u:***@127.0.0.1",
        ),
        (
            format!("postgres://u@127.0.0.1:{port}/db?sslmode=disable&password={WRONG_PASSWORD}"),
            vec![WRONG_PASSWORD],
            "sslmode=disable&password=***",
        ),
        (
            format!("postgres://u@127.0.0.1:{port}/db?password={encoded}"),
            vec![encoded, decoded],
            "/db?password=***",
        ),
    ];
    for (url, secrets, shown) in cases {
        for (entry, err) in &open_errors(&url, Duration::from_secs(2)).await {
            assert!(
                matches!(err, Error::Connect { .. }),
                "{entry}: expected Error::Connect for {url:?}, got {err:?}"
            );
            assert!(err.is_connection(), "{entry}: {err}");
            assert_redacted(err, &secrets, &[shown]);
        }
    }
}

#[tokio::test]
async fn postgres_short_passwords_leave_messages_whole() {
    let db = TestDatabase::migrated().await;
    let port = closed_port();
    for password in ["e", "rror", "a"] {
        // A refused connection: the driver's message, not a garbled copy of it.
        let url = format!("postgres://agent:{password}@127.0.0.1:{port}/agents");
        for (entry, err) in &open_errors(&url, Duration::from_secs(2)).await {
            assert_says(
                err,
                &[
                    &format!("cannot connect to postgres://agent:***@127.0.0.1:{port}/agents"),
                    "error communicating with database",
                ],
            );
            assert!(
                !Chain(err).to_string().contains("***rror"),
                "{entry}: {}",
                Chain(err)
            );
        }
        // A refused login on the real server.
        let url = with_password(&db.url, password);
        for (entry, err) in &open_errors(&url, Duration::from_secs(10)).await {
            assert_says(
                err,
                &[
                    &format!("cannot connect to {}", redacted(&db)),
                    "error returned from database: password authentication failed for user",
                ],
            );
            assert!(!err.is_connection(), "{entry}: {err}");
        }
    }
}

#[tokio::test]
async fn postgres_passwords_with_url_delimiters_connect_when_encoded() {
    let db = TestDatabase::migrated().await;
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect as superuser");
    let role = format!("delims_{}", &db.name[8..20]);
    let password = "p@ss/w#rd?x:y%z";
    // A superuser, so that the connect's schema check and bookkeeping pass as they do for
    // the owner.
    let sql = format!("create role {role} superuser login password '{password}'");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("create the role");
    let mut url = url::Url::parse(&db.url).expect("the test URL");
    url.set_username(&role).expect("a URL with a host");
    // The URL standard encodes what must be encoded, `@` and `:` included.
    url.set_password(Some(password)).expect("a URL with a host");
    let encoded = url.to_string();
    let backend = PostgresBackend::connect(&encoded)
        .await
        .unwrap_or_else(|err| panic!("{encoded}: {}", Chain(&err)));
    assert!(!format!("{backend:?}").contains("w#rd"), "{backend:?}");
    backend.close().await;
    // A raw `@` is read as the URL standard reads it: the last `@` ends the password.
    let raw_at = encoded.replace("p%40ss", "p@ss");
    assert_ne!(raw_at, encoded);
    PostgresBackend::connect(&raw_at)
        .await
        .unwrap_or_else(|err| panic!("{raw_at}: {}", Chain(&err)))
        .close()
        .await;
}

#[tokio::test]
async fn postgres_backend_without_database_url_says_to_set_it() {
    for url in [None, Some("  ")] {
        let config = AgentConfig::from_lookup("errors_agent", |var| match var {
            "MEMORY_BACKEND" => Some("postgres".into()),
            "DATABASE_URL" => url.map(String::from),
            _ => None,
        })
        .expect("a valid configuration");
        assert_eq!(config.memory_backend, BackendKind::Postgres);
        let err = AgentMemory::open(&config).await.expect_err("must fail");
        assert!(
            matches!(err, Error::Config { .. }),
            "expected Error::Config, got {err:?}"
        );
        assert_says(&err, &["postgres", "DATABASE_URL"]);
    }
}

// ---------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------

/// Every file and folder under `root`, with the bytes of each file.
type Tree = BTreeMap<PathBuf, Option<Vec<u8>>>;

/// Snapshots `root` to prove, with [`assert_unchanged`], that nothing under it was
/// created, removed or changed.
fn snapshot(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in fs::read_dir(&path).expect("read a folder") {
                pending.push(entry.expect("a folder entry").path());
            }
            entries.insert(path, None);
        } else {
            entries.insert(path.clone(), Some(fs::read(&path).expect("read a file")));
        }
    }
    entries
}

/// Fails, naming each path that differs, unless `root` is as `before`.
///
/// Waits up to two seconds for the tree to settle: sqlx closes a connection that failed
/// half-way through opening on its worker thread, so SQLite may briefly keep the
/// `-wal`/`-shm` files it made next to a damaged file it had started to open.
async fn assert_unchanged(root: &Path, before: &Tree) {
    let describe = |entry: Option<&Option<Vec<u8>>>| match entry {
        None => "absent".to_string(),
        Some(None) => "a folder".to_string(),
        Some(Some(bytes)) => format!("a file of {} bytes", bytes.len()),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let after = snapshot(root);
        let changed: Vec<String> = before
            .keys()
            .chain(after.keys().filter(|path| !before.contains_key(*path)))
            .filter(|path| before.get(*path) != after.get(*path))
            .map(|path| {
                let (was, is) = (describe(before.get(path)), describe(after.get(path)));
                format!("{} was {was}, is {is}", path.display())
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "files changed: {changed:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores a memory for `agent` and reads it back.
async fn round_trip(backend: &SqliteBackend, agent: &AgentId) {
    let memory = Memory::new("k", json!({"fine": true}));
    backend.put_memory(agent, &memory).await.expect("store");
    let back = backend.get_memory(agent, "k").await.expect("retrieve");
    assert_eq!(back, Some(memory), "read back what was stored");
}

/// A write and a read of `agent` that must both fail; returns their errors.
async fn failed_write_and_read(backend: &SqliteBackend, agent: &AgentId) -> Vec<Error> {
    let write = backend
        .put_memory(agent, &Memory::new("k", json!(1)))
        .await
        .expect_err("the write must fail");
    let read = backend
        .get_memory(agent, "k")
        .await
        .expect_err("the read must fail");
    vec![write, read]
}

/// Fails unless `err` is [`Error::SqliteFile`] for `path` and its message holds `problem`.
fn assert_sqlite_file(err: &Error, path: &Path, problem: &str) {
    let Error::SqliteFile { path: named, .. } = err else {
        panic!("expected Error::SqliteFile, got {err:?}");
    };
    assert_eq!(named, path, "the error names the agent's file");
    assert_says(err, &[&path.display().to_string(), problem]);
}

#[tokio::test]
async fn sqlite_file_that_is_a_directory_is_named() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let backend = SqliteBackend::new(dir.path());
    let agent = unique_agent("dir");
    let file = backend.file_of(&agent);
    fs::create_dir_all(&file).expect("make memory.db a folder");
    fs::write(file.join("inside.txt"), "user data").expect("a file inside");
    let before = snapshot(dir.path());

    for err in failed_write_and_read(&backend, &agent).await {
        assert_sqlite_file(&err, &file, "is a directory");
    }
    assert_unchanged(dir.path(), &before).await;
    round_trip(&backend, &unique_agent("healthy")).await;
}

/// A backend over `agents`, which cannot hold agent folders: a write must fail naming
/// the agent's file and saying its folder cannot be created, caused by an I/O error of
/// `kind`; a read must find nothing; and nothing under `root` may change.
async fn assert_agent_folder_refused(root: &Path, agents: &Path, kind: std::io::ErrorKind) {
    let backend = SqliteBackend::new(agents);
    let agent = unique_agent("nofolder");
    let before = snapshot(root);
    let err = backend
        .put_memory(&agent, &Memory::new("k", json!(1)))
        .await
        .expect_err("the write must fail");
    assert_sqlite_file(
        &err,
        &backend.file_of(&agent),
        "cannot create the agent's folder",
    );
    assert_io_cause(&err, kind);
    assert_eq!(backend.get_memory(&agent, "k").await.expect("read"), None);
    assert_unchanged(root, &before).await;
}

#[tokio::test]
async fn sqlite_agents_path_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let agents = dir.path().join("agents");
    fs::write(&agents, "not a folder").expect("make the agents path a file");
    assert_agent_folder_refused(dir.path(), &agents, std::io::ErrorKind::NotADirectory).await;
}

#[tokio::test]
async fn sqlite_agents_path_without_write_permission_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary folder");
    let agents = dir.path().join("agents");
    fs::create_dir(&agents).expect("agents folder");
    fs::set_permissions(&agents, fs::Permissions::from_mode(0o555)).expect("chmod 555");
    // Root writes through permission bits (CI runs as root); a folder on sysfs, where
    // nobody may create folders, is then the unwritable agents path.
    let probe = agents.join("probe");
    if fs::create_dir(&probe).is_ok() {
        fs::remove_dir(&probe).expect("remove the probe");
        let sysfs = Path::new("/sys/memshift-unwritable");
        assert_agent_folder_refused(dir.path(), sysfs, std::io::ErrorKind::PermissionDenied).await;
        return;
    }
    assert_agent_folder_refused(dir.path(), &agents, std::io::ErrorKind::PermissionDenied).await;
}

/// Gives an agent `bytes` as its memory.db: writing and reading it must say the file is
/// not a SQLite database or is corrupt, leave it byte for byte, and leave other agents
/// of the same backend working.
async fn assert_refused_as_corrupt(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let backend = SqliteBackend::new(dir.path());
    let agent = unique_agent("corrupt");
    let file = backend.file_of(&agent);
    fs::create_dir_all(file.parent().expect("a folder")).expect("agent folder");
    fs::write(&file, bytes).expect("write the bad file");
    let before = snapshot(dir.path());

    for err in failed_write_and_read(&backend, &agent).await {
        assert_sqlite_file(&err, &file, "is not a SQLite database or is corrupt");
    }
    assert_unchanged(dir.path(), &before).await;
    round_trip(&backend, &unique_agent("healthy")).await;
}

#[tokio::test]
async fn sqlite_garbage_file_is_refused_and_left_alone() {
    // Deterministic noise (xorshift), never by chance a SQLite header.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    assert_refused_as_corrupt(&garbage).await;
    assert_refused_as_corrupt(
        b"my notes about the agent, not a database\n"
            .repeat(50)
            .as_slice(),
    )
    .await;
}

#[tokio::test]
async fn sqlite_truncated_file_is_reported_corrupt() {
    // A real agent file with enough data to span many pages, cut in half.
    let dir = tempfile::tempdir().expect("temporary folder");
    let backend = SqliteBackend::new(dir.path());
    let agent = unique_agent("truncated");
    for i in 0..200 {
        let memory = Memory::new(format!("key {i}"), json!("x".repeat(1000)));
        backend.put_memory(&agent, &memory).await.expect("store");
    }
    backend.close().await;
    let file = backend.file_of(&agent);
    for sidecar in ["memory.db-wal", "memory.db-shm"] {
        let _ = fs::remove_file(file.with_file_name(sidecar));
    }
    let bytes = fs::read(&file).expect("read the file");
    assert!(bytes.len() > 100_000, "the file spans many pages");
    assert_refused_as_corrupt(&bytes[..bytes.len() / 2]).await;
}

#[tokio::test]
async fn sqlite_reads_of_an_unknown_agent_create_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let agents = dir.path().join("agents");
    let backend = SqliteBackend::new(&agents);
    let agent = unique_agent("ghost");
    assert_eq!(backend.get_memory(&agent, "k").await.expect("get"), None);
    assert!(!backend.delete_memory(&agent, "k").await.expect("delete"));
    assert!(
        backend
            .memory_keys(&agent, &Listing::default())
            .await
            .expect("keys")
            .is_empty()
    );
    assert_eq!(backend.get_tool(&agent, "t").await.expect("tool"), None);
    assert!(
        backend
            .list_tools(&agent, &Listing::default())
            .await
            .expect("tools")
            .is_empty()
    );
    assert!(
        backend
            .list_metrics(&agent, &Listing::default())
            .await
            .expect("metrics")
            .is_empty()
    );
    assert!(
        backend
            .list_executions(&agent, &Listing::default())
            .await
            .expect("executions")
            .is_empty()
    );
    assert!(!agents.exists(), "a read created {}", agents.display());
    fs::create_dir(&agents).expect("agents folder");
    assert_eq!(backend.get_memory(&agent, "k").await.expect("get"), None);
    assert_eq!(
        snapshot(&agents).len(),
        1,
        "a read created a file or folder"
    );
}
