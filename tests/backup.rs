//! `--backup` and its scripts on a generated agents tree with awkward names, a live WAL
//! writer, a rollback-journal file, an empty table and a corrupt file: the restore gives
//! back byte-identical files, and `backup_sqlite.sh` makes the same databases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use memshift::backup::{Backup, FileOutcome, backup};
use memshift::legacy::{ReadOptions, discover};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

const MY_DB: &str = "alpha/my db.sqlite";
const QUOTE_DB: &str = "alpha/it's.db";
const PWNED_DB: &str = "beta/$(touch pwned).db";
const ODD_DB: &str = "crew café \"x\" `id`/sub dir/notes ünï.sqlite3";
const EMPTY_DB: &str = "empty/empty.db";
const QUIET_WAL_DB: &str = "quiet/wal quiet.db";
const LIVE_DB: &str = "live/live.db";
const CORRUPT_DB: &str = "bad/corrupt.db";

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn create(path: &Path, mode: SqliteJournalMode, rows: usize) -> SqliteConnection {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(mode)
        .pragma("wal_autocheckpoint", "0")
        .connect()
        .await
        .unwrap();
    sqlx::query("create table memory (id integer primary key, key text, content text, data blob)")
        .execute(&mut conn)
        .await
        .unwrap();
    insert(&mut conn, 0, rows).await;
    conn
}

async fn insert(conn: &mut SqliteConnection, from: usize, count: usize) {
    for i in from..from + count {
        sqlx::query("insert into memory (key, content, data) values (?, ?, ?)")
            .bind(format!("key {i}"))
            .bind(format!("row {i} '\"$(x)` ü"))
            .bind(vec![i as u8; 300])
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

async fn rows(path: &Path) -> Vec<(i64, String)> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let rows = sqlx::query_as("select id, content from memory order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows
}

/// `sqlite3 .dump` of `path`: every table's rows, as SQL text.
fn dump(path: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg("-readonly")
        .arg(path)
        .arg(".dump")
        .output()
        .unwrap();
    assert!(out.status.success(), "dump {}: {out:?}", path.display());
    String::from_utf8(out.stdout).unwrap()
}

fn bash(script: &Path, args: &[&Path], cwd: &Path) -> Output {
    Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn every_file(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

fn assert_no_pwned(dirs: &[&Path]) {
    for dir in dirs {
        for file in every_file(dir) {
            assert_ne!(file.file_name().unwrap(), "pwned", "{}", file.display());
        }
        assert!(!dir.join("pwned").exists());
    }
}

fn details<'a>(backup: &'a Backup, source_db: &str) -> &'a memshift::backup::CopyDetails {
    let file = backup
        .files
        .iter()
        .find(|f| f.source_db == source_db)
        .unwrap_or_else(|| panic!("{source_db} not in the backup"));
    file.details()
        .unwrap_or_else(|| panic!("{source_db} failed: {:?}", file.outcome))
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_then_restore_gives_back_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    let backups = tmp.path().join("my backups 'n' $(stuff)");
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();

    // Quiescent files: rollback journal, awkward names, an empty table, a checkpointed WAL file.
    for (name, rows) in [
        (MY_DB, 20),
        (QUOTE_DB, 5),
        (PWNED_DB, 3),
        (ODD_DB, 7),
        (EMPTY_DB, 0),
    ] {
        create(&agents.join(name), SqliteJournalMode::Delete, rows)
            .await
            .close()
            .await
            .unwrap();
    }
    create(&agents.join(QUIET_WAL_DB), SqliteJournalMode::Wal, 12)
        .await
        .close()
        .await
        .unwrap();
    assert!(!agents.join("quiet/wal quiet.db-wal").exists());
    // A live agent: committed rows that are only in its -wal.
    let live = agents.join(LIVE_DB);
    let live_wal = agents.join("live/live.db-wal");
    let mut writer = create(&live, SqliteJournalMode::Wal, 30).await;
    assert!(std::fs::metadata(&live_wal).unwrap().len() > 0);
    // A corrupt file: a valid header over garbage.
    let corrupt = agents.join(CORRUPT_DB);
    create(&corrupt, SqliteJournalMode::Delete, 50)
        .await
        .close()
        .await
        .unwrap();
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[100..4096].fill(0xab);
    std::fs::write(&corrupt, &bytes).unwrap();

    let quiet = [MY_DB, QUOTE_DB, PWNED_DB, ODD_DB, EMPTY_DB, QUIET_WAL_DB];
    let before: BTreeMap<&str, String> = quiet
        .iter()
        .map(|name| (*name, sha256(&agents.join(name))))
        .collect();
    let live_rows = rows(&live).await;
    assert_eq!(live_rows.len(), 30);
    let live_main_sha = sha256(&live);
    let live_wal_len = std::fs::metadata(&live_wal).unwrap().len();

    let found = discover(&agents, &ReadOptions::default()).await;
    let sources: Vec<PathBuf> = found.iter().map(|f| PathBuf::from(&f.source_db)).collect();
    assert_eq!(sources.len(), 8, "{found:?}");
    let started: DateTime<Utc> = "2025-03-04T05:06:07Z".parse().unwrap();
    let made = backup(&agents, &sources, &backups, started).await.unwrap();

    // The folder, the per-file outcomes and the manifest.
    assert_eq!(made.dir, backups.join("sqlite_backup_20250304T050607Z"));
    let failed: Vec<_> = made.failed().collect();
    assert_eq!(failed.len(), 1, "{:?}", made.files);
    assert_eq!(failed[0].source_db, CORRUPT_DB);
    match &failed[0].outcome {
        FileOutcome::Failed { error } => {
            assert!(error.contains(&corrupt.display().to_string()), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!made.dir.join(CORRUPT_DB).exists());
    for name in quiet {
        let d = details(&made, name);
        assert!(d.byte_identical, "{name}: {d:?}");
        assert_eq!(d.source_sha256, before[name], "{name}");
        assert_eq!(d.copy_sha256, before[name], "{name}");
        assert_eq!(sha256(&made.dir.join(name)), before[name], "{name}");
    }
    assert_eq!(details(&made, QUIET_WAL_DB).journal_mode, "wal");
    assert_eq!(details(&made, MY_DB).journal_mode, "rollback");
    let live_details = details(&made, LIVE_DB);
    assert_eq!(live_details.wal_size, live_wal_len);
    assert_eq!(sha256(&made.dir.join(LIVE_DB)), live_details.copy_sha256);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(made.manifest()).unwrap()).unwrap();
    assert!(manifest["id"].as_str().is_some_and(|id| id.len() == 36));
    assert_eq!(manifest["started_at"], "2025-03-04T05:06:07Z");
    let listed = manifest["files"].as_array().unwrap();
    assert_eq!(listed.len(), 8);
    let my = listed.iter().find(|f| f["source_db"] == MY_DB).unwrap();
    assert_eq!(my["status"], "copied");
    assert_eq!(my["copy_sha256"], before[MY_DB].as_str());
    assert!(my["page_count"].as_u64().unwrap() >= 2);
    assert!(my["backed_up_at"].is_string());
    let bad = listed
        .iter()
        .find(|f| f["source_db"] == CORRUPT_DB)
        .unwrap();
    assert_eq!(bad["status"], "failed");

    // The backup disturbed nothing: the live file is neither written nor checkpointed,
    // and no -wal/-shm appeared beside the quiescent WAL file.
    assert_eq!(sha256(&live), live_main_sha);
    assert_eq!(std::fs::metadata(&live_wal).unwrap().len(), live_wal_len);
    assert!(!agents.join("quiet/wal quiet.db-shm").exists());
    assert!(!agents.join("quiet/wal quiet.db-wal").exists());
    for name in quiet {
        assert_eq!(sha256(&agents.join(name)), before[name], "{name}");
    }

    // Agents go on: rows added, files overwritten and deleted.
    insert(&mut writer, 30, 10).await;
    let mut conn = SqliteConnectOptions::new()
        .filename(agents.join(MY_DB))
        .connect()
        .await
        .unwrap();
    insert(&mut conn, 100, 5).await;
    conn.close().await.unwrap();
    std::fs::remove_file(agents.join(QUOTE_DB)).unwrap();
    std::fs::remove_dir_all(agents.join("crew café \"x\" `id`")).unwrap();
    std::fs::write(agents.join(PWNED_DB), b"overwritten").unwrap();
    std::fs::remove_file(agents.join(QUIET_WAL_DB)).unwrap();

    // While the agent runs (its -wal has content), the restore refuses and touches nothing.
    let out = bash(&made.restore_script, &[], &cwd);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("live.db-wal has content"));
    assert!(!agents.join(QUOTE_DB).exists());
    // The agent stops; a stale -wal left behind still needs --force, which removes it.
    let stale = std::fs::read(&live_wal).unwrap();
    writer.close().await.unwrap();
    std::fs::write(&live_wal, &stale).unwrap();
    std::fs::write(agents.join("live/live.db-shm"), b"stale").unwrap();
    let out = bash(&made.restore_script, &[], &cwd);
    assert!(!out.status.success(), "{out:?}");
    let out = bash(&made.restore_script, &[Path::new("--force")], &cwd);
    assert!(out.status.success(), "{out:?}");

    for name in quiet {
        assert_eq!(sha256(&agents.join(name)), before[name], "{name}");
    }
    assert!(!live_wal.exists());
    assert!(!agents.join("live/live.db-shm").exists());
    assert_eq!(rows(&live).await, live_rows);
    assert_eq!(sha256(&live), live_details.copy_sha256);
    assert_no_pwned(&[tmp.path(), &cwd, Path::new(env!("CARGO_MANIFEST_DIR"))]);

    // A damaged copy: the restore refuses before touching anything.
    let copy = made.dir.join(EMPTY_DB);
    let good = std::fs::read(&copy).unwrap();
    let mut damaged = good.clone();
    damaged[2000] ^= 1;
    std::fs::write(&copy, &damaged).unwrap();
    std::fs::remove_file(agents.join(MY_DB)).unwrap();
    let out = bash(&made.restore_script, &[], &cwd);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{out:?}"
    );
    assert!(!agents.join(MY_DB).exists());
    std::fs::write(&copy, &good).unwrap();
    let out = bash(&made.restore_script, &[], &cwd);
    assert!(out.status.success(), "{out:?}");

    // The guide's backup_sqlite.sh makes the same databases with the sqlite3 tool.
    let again = tmp.path().join("again 'x' $(touch pwned)");
    let out = bash(&made.backup_script, &[&again], &cwd);
    assert!(out.status.success(), "{out:?}");
    for name in quiet.iter().chain([&LIVE_DB]) {
        assert_eq!(
            dump(&again.join(name)),
            dump(&made.dir.join(name)),
            "{name}"
        );
    }
    assert!(!again.join(CORRUPT_DB).exists());
    // It read the quiescent WAL file without leaving -wal/-shm beside it.
    assert!(!agents.join("quiet/wal quiet.db-shm").exists());
    assert!(!agents.join("quiet/wal quiet.db-wal").exists());
    for name in quiet {
        assert_eq!(sha256(&agents.join(name)), before[name], "{name}");
    }
    assert_eq!(
        dump(&made.dir.join(MY_DB)).matches("INSERT INTO").count(),
        20
    );
    assert_no_pwned(&[tmp.path(), &cwd, Path::new(env!("CARGO_MANIFEST_DIR"))]);
}

#[tokio::test]
async fn a_second_backup_in_the_same_second_is_refused_and_paths_must_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let agents = tmp.path().join("agents");
    create(&agents.join("a/a.db"), SqliteJournalMode::Delete, 1)
        .await
        .close()
        .await
        .unwrap();
    let started = Utc::now();
    let sources = [
        PathBuf::from("a/a.db"),
        PathBuf::from("../agents/a/a.db"),
        PathBuf::from("a/missing.db"),
    ];
    let made = backup(&agents, &sources, tmp.path(), started)
        .await
        .unwrap();
    assert!(made.files[0].details().is_some());
    assert_eq!(made.failed().count(), 2);
    let err = backup(&agents, &sources, tmp.path(), started)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // A backup of nothing still has scripts that run.
    let none = backup(&agents, &[], &tmp.path().join("none"), started)
        .await
        .unwrap();
    assert!(none.files.is_empty());
    let again = tmp.path().join("none again");
    for (script, args) in [
        (&none.restore_script, &[][..]),
        (&none.backup_script, &[again.as_path()][..]),
    ] {
        let out = bash(script, args, tmp.path());
        assert!(out.status.success(), "{out:?}");
    }
}
