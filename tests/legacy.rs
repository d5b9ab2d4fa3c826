//! Legacy SQLite files: discovery, undisturbed reading and the contract conversion, on the public corpus and on generated files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use memshift::legacy::{
    ContractRecord, ContractRow, OpenStrategy, Probe, ReadOptions, RowOrigin, Source, SourceRow,
    TableInfo, TableKind, TableMap, Target, convert_row, discover, read_own_records, row_id,
};
use memshift::{
    AgentId, Execution, Json, Listing, Memory, MemoryBackend, Metric, SqliteBackend, Tool,
};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

mod common;

fn agent(name: &str) -> AgentId {
    AgentId::new(name).unwrap()
}

fn migrated_at() -> DateTime<Utc> {
    "2025-01-01T00:00:00Z".parse().unwrap()
}

/// Every file under `dir` with its size and modification time, to prove reads change nothing.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

async fn open(path: &Path) -> Source {
    Source::open(path, &ReadOptions::default()).await.unwrap()
}

async fn table(source: &mut Source, name: &str) -> TableInfo {
    let tables = source.tables().await.unwrap();
    tables
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no table {name:?}"))
}

async fn all_rows(source: &mut Source, table: &TableInfo) -> Vec<SourceRow> {
    let mut out = Vec::new();
    let mut batches = source.rows(table);
    while let Some(batch) = batches.next_batch().await.unwrap() {
        out.extend(batch);
    }
    out
}

/// Reads `table` of `path` and converts every row for agent `who` as `source_db`.
async fn convert(
    path: &Path,
    who: &str,
    source_db: &str,
    name: &str,
    target: Target,
) -> Vec<ContractRow> {
    let mut source = open(path).await;
    let info = table(&mut source, name).await;
    all_rows(&mut source, &info)
        .await
        .iter()
        .map(|row| convert_one(who, source_db, &info, target, row))
        .collect()
}

/// One row of agent `who`'s file `source_db`, of the unnamed source, converted.
fn convert_one(
    who: &str,
    source_db: &str,
    info: &TableInfo,
    target: Target,
    row: &SourceRow,
) -> ContractRow {
    let who = agent(who);
    let origin = RowOrigin {
        agent: &who,
        source: "",
        source_db,
    };
    convert_row(&origin, info, &target.into(), row, migrated_at()).unwrap()
}

async fn generated(dir: &Path, file: &str, sql: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    path
}

fn content(row: &ContractRow) -> String {
    row.record.content().to_string()
}

const TORTURE: &str = "
    create table memory (key text, value, note text, created_at);
    insert into memory values ('max', 9223372036854775807, 'plain', '2024-01-15 10:30:00');
    insert into memory values ('min', -9223372036854775808, 'a' || char(0) || 'b', 0);
    insert into memory values ('inf', 9e999, cast(x'66ff67' as text), 1723825537590);
    insert into memory values ('ninf', -9e999, x'00ff10', '1723825537.59');
    insert into memory values ('real', 0.1, null, 'not a time');
    insert into memory values ('k' || char(0), 'text', 1, x'01');
    insert into memory values (null, x'', '', null);
";

#[tokio::test]
async fn every_value_takes_its_contract_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(dir.path(), "crawler/memory.db", TORTURE).await;
    let rows = convert(
        &path,
        "crawler",
        "crawler/memory.db",
        "memory",
        Target::Memories,
    )
    .await;
    let contents: Vec<String> = rows.iter().map(content).collect();
    assert_eq!(
        contents,
        [
            r#"{"key":"max","value":9223372036854775807,"note":"plain","created_at":"2024-01-15 10:30:00"}"#,
            r#"{"key":"min","value":-9223372036854775808,"note":"a\u0000b","created_at":0}"#,
            r#"{"key":"inf","value":{"$float":"Infinity"},"note":{"$base64":"Zv9n"},"created_at":1723825537590}"#,
            r#"{"key":"ninf","value":{"$float":"-Infinity"},"note":{"$base64":"AP8Q"},"created_at":"1723825537.59"}"#,
            r#"{"key":"real","value":0.1,"note":null,"created_at":"not a time"}"#,
            r#"{"key":"k\u0000","value":"text","note":"1","created_at":{"$base64":"AQ=="}}"#,
            r#"{"key":null,"value":{"$base64":""},"note":"","created_at":null}"#,
        ]
    );
    // created_at: the guide's example, Unix seconds, milliseconds, numeric text, else migrated_at.
    let times: Vec<String> = rows
        .iter()
        .map(|r| r.record.created_at().to_rfc3339())
        .collect();
    assert_eq!(
        times,
        [
            "2024-01-15T10:30:00+00:00",
            "1970-01-01T00:00:00+00:00",
            "2024-08-16T16:25:37.590+00:00",
            "2024-08-16T16:25:37.590+00:00",
            "2025-01-01T00:00:00+00:00",
            "2025-01-01T00:00:00+00:00",
            "2025-01-01T00:00:00+00:00",
        ]
    );
    let problems: Vec<bool> = rows.iter().map(|r| r.time_problem.is_some()).collect();
    assert_eq!(problems, [false, false, false, false, true, true, false]);
    // Typed key: text as itself, NUL as the $base64 form, NULL as none.
    let keys: Vec<Option<String>> = rows
        .iter()
        .map(|r| match &r.record {
            ContractRecord::Memory(m) => m.key.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(keys[0].as_deref(), Some("max"));
    assert_eq!(keys[5].as_deref(), Some(r#"{"$base64":"awA="}"#));
    assert_eq!(keys[6], None);
    // Every memory is storable as is in both databases.
    for row in &rows[..6] {
        let ContractRecord::Memory(m) = &row.record else {
            unreachable!()
        };
        m.validate().unwrap();
        assert_eq!(m.embedding, None);
        assert_eq!(m.updated_at, m.created_at);
    }
}

#[tokio::test]
async fn metadata_holds_the_source_and_the_migration_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(dir.path(), "crawler/sub/memory.DB", TORTURE).await;
    let rows = convert(
        &path,
        "crawler",
        "crawler/sub/memory.DB",
        "memory",
        Target::Memories,
    )
    .await;
    assert_eq!(
        Value::Object(rows[1].record.metadata().clone()),
        json!({"source_table": "memory", "source_db": "crawler/sub/memory.DB",
               "source_rowid": 2, "migrated_at": "2025-01-01T00:00:00.000000Z"})
    );
    let at = rows[1].record.metadata()["migrated_at"].as_str().unwrap();
    DateTime::parse_from_rfc3339(at).unwrap();
}

#[tokio::test]
async fn ids_depend_only_on_agent_db_table_and_rowid() {
    let key = Json::from(json!(7));
    let id = row_id(
        &RowOrigin {
            agent: &agent("crawler"),
            source: "",
            source_db: "crawler/memory.db",
        },
        "memory",
        &key,
    );
    // uuid5(a581f4c7-e8fc-5bbf-9361-1b7b5553cc3b, '["crawler","crawler/memory.db","memory",7]')
    assert_eq!(id.to_string(), "0d5145db-be5b-544b-88df-98526887968b");
    let others = [
        row_id(
            &RowOrigin {
                agent: &agent("Crawler"),
                source: "",
                source_db: "crawler/memory.db",
            },
            "memory",
            &key,
        ),
        row_id(
            &RowOrigin {
                agent: &agent("crawler"),
                source: "",
                source_db: "crawler/memory2.db",
            },
            "memory",
            &key,
        ),
        row_id(
            &RowOrigin {
                agent: &agent("crawler"),
                source: "",
                source_db: "crawler/memory.db",
            },
            "tools",
            &key,
        ),
        row_id(
            &RowOrigin {
                agent: &agent("crawler"),
                source: "",
                source_db: "crawler/memory.db",
            },
            "memory",
            &json!(8).into(),
        ),
        row_id(
            &RowOrigin {
                agent: &agent("crawler"),
                source: "",
                source_db: "crawler/memory.db",
            },
            "memory",
            &json!({"k": 7}).into(),
        ),
    ];
    assert!(others.iter().all(|o| *o != id));
    // A named source (`--source host-b`) is part of the name, so two trees with the same
    // paths keep their rows apart; the unnamed source keeps the ids above.
    let named = row_id(
        &RowOrigin {
            agent: &agent("crawler"),
            source: "host-b",
            source_db: "crawler/memory.db",
        },
        "memory",
        &key,
    );
    // uuid5(ns, '["crawler","host-b","crawler/memory.db","memory",7]')
    assert_eq!(named.to_string(), "0e7a59d7-f35f-55f7-8a3f-6e017f57fded");

    // Stable across runs: another migration time, another read, the same ids.
    let dir = tempfile::tempdir().unwrap();
    let path = generated(dir.path(), "a/m.db", TORTURE).await;
    let first = convert(&path, "a", "a/m.db", "memory", Target::Memories).await;
    let mut source = open(&path).await;
    let info = table(&mut source, "memory").await;
    let again = all_rows(&mut source, &info).await;
    for (row, before) in again.iter().zip(&first) {
        let who = agent("a");
        let origin = RowOrigin {
            agent: &who,
            source: "",
            source_db: "a/m.db",
        };
        let later = convert_row(&origin, &info, &Target::Memories.into(), row, Utc::now()).unwrap();
        assert_eq!(later.record.id(), before.record.id());
        assert_eq!(
            later.record.id(),
            row_id(
                &RowOrigin {
                    agent: &agent("a"),
                    source: "",
                    source_db: "a/m.db"
                },
                "memory",
                &json!(row.rowid.unwrap()).into()
            )
        );
    }
}

#[tokio::test]
async fn typed_columns_come_from_same_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/legacy.db",
        "create table tools (name text, spec text);
         insert into tools values ('search', '{}'), (null, 'x'), ('n' || char(0), 'y');
         create table performance (Name text, VALUE text, ts);
         insert into performance values ('latency', '12.5', '2024-01-15T10:30:00Z'), (null, 'n/a', null);
         create table execution_log (status text, task text);
         insert into execution_log values ('ok', 't'), (null, 'u');",
    )
    .await;
    let tools = convert(&path, "a", "a/legacy.db", "tools", Target::Tools).await;
    let names: Vec<String> = tools
        .iter()
        .map(|r| match &r.record {
            ContractRecord::Tool(t) => t.name.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["search", "tools:2", r#"{"$base64":"bgA="}"#]);
    let metrics = convert(&path, "a", "a/legacy.db", "performance", Target::Metrics).await;
    let got: Vec<(String, Option<f64>)> = metrics
        .iter()
        .map(|r| match &r.record {
            ContractRecord::Metric(m) => (m.name.clone(), m.value),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            ("latency".to_string(), Some(12.5)),
            ("performance:2".to_string(), None)
        ]
    );
    assert_eq!(
        metrics[0].record.created_at().to_rfc3339(),
        "2024-01-15T10:30:00+00:00"
    );
    let runs = convert(
        &path,
        "a",
        "a/legacy.db",
        "execution_log",
        Target::Executions,
    )
    .await;
    let statuses: Vec<Option<String>> = runs
        .iter()
        .map(|r| match &r.record {
            ContractRecord::Execution(e) => e.status.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(statuses, [Some("ok".to_string()), None]);
}

#[tokio::test]
async fn without_rowid_tables_are_keyed_by_their_primary_key_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/w.db",
        "create table \"my \"\"odd\"\" tablé\" (b blob, a text, v, primary key (a, b)) without rowid;
         insert into \"my \"\"odd\"\" tablé\" values (x'02', 'x', 1), (x'01', 'x', 2), (x'00', 'w', 3),
             (x'00', cast(x'ff' as text), 4), (x'00', 'z' || char(0), 5);",
    )
    .await;
    let mut source = Source::open(
        &path,
        &ReadOptions {
            batch_size: 2,
            ..ReadOptions::default()
        },
    )
    .await
    .unwrap();
    let info = table(&mut source, "my \"odd\" tablé").await;
    assert_eq!(
        info.kind,
        TableKind::Data {
            columns: vec!["b".into(), "a".into(), "v".into()],
            without_rowid: true,
            primary_key: vec!["a".into(), "b".into()],
        }
    );
    let rows = all_rows(&mut source, &info).await;
    let order: Vec<String> = rows
        .iter()
        .map(|r| r.values[2].to_json().to_string())
        .collect();
    // Key order (a, b), each row exactly once across batches of two.
    assert_eq!(order, ["3", "2", "1", "5", "4"]);
    assert!(rows.iter().all(|r| r.rowid.is_none()));
    let converted: Vec<ContractRow> = rows
        .iter()
        .map(|r| convert_one("a", "a/w.db", &info, Target::Tools, r))
        .collect();
    let meta = converted[0].record.metadata();
    assert_eq!(meta["source_rowid"], Value::Null);
    assert_eq!(
        meta["source_key"].to_string(),
        r#"{"a":"w","b":{"$base64":"AA=="}}"#
    );
    // NUL in a key value: content keeps it, metadata uses the $base64 form.
    assert_eq!(
        converted[3].record.metadata()["source_key"].to_string(),
        r#"{"a":{"$base64":"egA="},"b":{"$base64":"AA=="}}"#
    );
    assert_eq!(
        converted[0].record.id(),
        row_id(
            &RowOrigin {
                agent: &agent("a"),
                source: "",
                source_db: "a/w.db"
            },
            "my \"odd\" tablé",
            &json!({"a": "w", "b": {"$base64": "AA=="}}).into()
        )
    );
    let ContractRecord::Tool(tool) = &converted[0].record else {
        unreachable!()
    };
    assert_eq!(
        tool.name,
        r#"my "odd" tablé:{"a":"w","b":{"$base64":"AA=="}}"#
    );
    assert_eq!(
        content(&converted[0]),
        r#"{"b":{"$base64":"AA=="},"a":"w","v":3}"#,
        "content in column order"
    );
}

/// A primary key whose columns are not in name order names the row in key order.
#[tokio::test]
async fn without_rowid_ids_take_the_key_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/k.db",
        "create table t (v, z text, a text, primary key (z, a)) without rowid;
         insert into t values (1, 'zz', 'aa');",
    )
    .await;
    let mut source = open(&path).await;
    let info = table(&mut source, "t").await;
    let rows = all_rows(&mut source, &info).await;
    let row = convert_one("a", "a/k.db", &info, Target::Tools, &rows[0]);
    let name = r#"["a","a/k.db","t",{"z":"zz","a":"aa"}]"#;
    let namespace = memshift::legacy::LEGACY_ROW_NAMESPACE;
    assert_eq!(
        row.record.id(),
        uuid::Uuid::new_v5(&namespace, name.as_bytes())
    );
    assert_eq!(
        row.record.id(),
        row_id(
            &RowOrigin {
                agent: &agent("a"),
                source: "",
                source_db: "a/k.db"
            },
            "t",
            &r#"{"z":"zz","a":"aa"}"#.parse().unwrap()
        )
    );
    let ContractRecord::Tool(tool) = &row.record else {
        unreachable!()
    };
    assert_eq!(tool.name, r#"t:{"z":"zz","a":"aa"}"#);
    assert_eq!(content(&row), r#"{"v":1,"z":"zz","a":"aa"}"#);
    assert_eq!(tool.metadata["source_key"], json!({"z": "zz", "a": "aa"}));
}

#[tokio::test]
async fn big_values_and_awkward_names_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/big.db",
        "create table \"agent memory 'quoted' ünï\" (\"a b\" text, \"c\"\"d\" blob);
         insert into \"agent memory 'quoted' ünï\" values (printf('%.*c', 1048576, 'x'), zeroblob(1048576));",
    )
    .await;
    let mut source = Source::open(
        &path,
        &ReadOptions {
            batch_size: 1,
            ..ReadOptions::default()
        },
    )
    .await
    .unwrap();
    let info = table(&mut source, "agent memory 'quoted' ünï").await;
    let rows = all_rows(&mut source, &info).await;
    assert_eq!(rows.len(), 1);
    let row = convert_one("a", "a/big.db", &info, Target::Memories, &rows[0]);
    let content: Value = row.record.content().parse().unwrap();
    assert_eq!(content["a b"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(
        content["c\"d"]["$base64"].as_str().unwrap().len(),
        (1 << 20) / 3 * 4 + 4
    );
}

#[tokio::test]
async fn the_library_layout_moves_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::new(dir.path());
    let me = agent("crawler");
    let mut meta = serde_json::Map::new();
    meta.insert("source".into(), json!("agent"));
    let memory = Memory::new(
        "k",
        r#"{"n": 1.50, "big": 123456789012345678901234567890}"#
            .parse::<Json>()
            .unwrap(),
    )
    .with_metadata(meta)
    .with_embedding(vec![0.5, -1.25, 3.4e38]);
    let memory = backend.put_memory(&me, &memory).await.unwrap();
    backend
        .put_tool(&me, &Tool::new("search", json!({"q": "s"})))
        .await
        .unwrap();
    backend
        .record_metric(&me, &Metric::new("latency", Some(f64::INFINITY)))
        .await
        .unwrap();
    backend
        .log_execution(&me, &Execution::new(Some("ok".into()), json!(["a"])))
        .await
        .unwrap();
    backend.close().await;

    let found = discover(dir.path(), &ReadOptions::default()).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].probe, Probe::Own);
    assert_eq!(found[0].source_db, "crawler/memory.db");
    let mut source = open(&found[0].path).await;
    let memories = read_own_records(
        &mut source,
        &me,
        "crawler/memory.db",
        Target::Memories,
        i64::MIN,
    )
    .await
    .unwrap();
    assert_eq!(memories.len(), 1);
    assert_eq!(
        memories[0].record,
        ContractRecord::Memory(backend.get_memory(&me, "k").await.unwrap().unwrap())
    );
    assert_eq!(memories[0].record, ContractRecord::Memory(memory));
    for (target, list) in [
        (
            Target::Tools,
            backend
                .list_tools(&me, &Listing::default())
                .await
                .unwrap()
                .into_iter()
                .map(ContractRecord::Tool)
                .collect::<Vec<_>>(),
        ),
        (
            Target::Metrics,
            backend
                .list_metrics(&me, &Listing::default())
                .await
                .unwrap()
                .into_iter()
                .map(ContractRecord::Metric)
                .collect(),
        ),
        (
            Target::Executions,
            backend
                .list_executions(&me, &Listing::default())
                .await
                .unwrap()
                .into_iter()
                .map(ContractRecord::Execution)
                .collect(),
        ),
    ] {
        let read = read_own_records(&mut source, &me, "crawler/memory.db", target, i64::MIN)
            .await
            .unwrap();
        assert_eq!(
            read.into_iter().map(|r| r.record).collect::<Vec<_>>(),
            list,
            "{target}"
        );
    }
}

#[tokio::test]
async fn wal_rows_committed_only_in_the_wal_are_read_and_open_transactions_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("live.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let connect = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .pragma("wal_autocheckpoint", "0");
    let mut writer = connect.clone().connect().await.unwrap();
    sqlx::raw_sql("create table memory (key text); insert into memory values ('committed-1'), ('committed-2');")
        .execute(&mut writer)
        .await
        .unwrap();
    let mut other = connect.connect().await.unwrap();
    let mut open_tx = other.begin().await.unwrap();
    sqlx::query("insert into memory values ('uncommitted')")
        .execute(&mut *open_tx)
        .await
        .unwrap();
    let wal = dir.path().join("a").join("live.db-wal");
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len > 0);

    // The main file alone has none of the rows: they are only in the -wal.
    let main_only = tempfile::tempdir().unwrap();
    std::fs::copy(&path, main_only.path().join("x.db")).unwrap();
    let mut alone = open(&main_only.path().join("x.db")).await;
    assert_eq!(alone.strategy(), OpenStrategy::Immutable);
    assert!(alone.tables().await.unwrap().is_empty());

    let before = listing(dir.path());
    let mut source = open(&path).await;
    assert_eq!(source.strategy(), OpenStrategy::ReadOnly);
    let info = table(&mut source, "memory").await;
    let keys: Vec<String> = all_rows(&mut source, &info)
        .await
        .iter()
        .map(|r| r.values[0].to_json().to_string())
        .collect();
    assert_eq!(keys, [r#""committed-1""#, r#""committed-2""#]);
    drop(source);
    // Not checkpointed, not locked out: the writer commits, the -wal is as it was.
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), wal_len);
    let after = listing(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    open_tx.commit().await.unwrap();
    sqlx::query("insert into memory values ('later')")
        .execute(&mut writer)
        .await
        .unwrap();

    // A -wal without -shm (a crash, or files copied): read through a private copy.
    let crashed = tempfile::tempdir().unwrap();
    std::fs::copy(&path, crashed.path().join("c.db")).unwrap();
    std::fs::copy(&wal, crashed.path().join("c.db-wal")).unwrap();
    let before = listing(crashed.path());
    let mut source = open(&crashed.path().join("c.db")).await;
    assert_eq!(source.strategy(), OpenStrategy::Copy);
    let info = table(&mut source, "memory").await;
    assert_eq!(all_rows(&mut source, &info).await.len(), 4);
    drop(source);
    assert_eq!(listing(crashed.path()), before);
}

#[tokio::test]
async fn discovery_reports_bad_files_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    generated(
        root,
        "Alpha/memory.db",
        "create table memory (key text); insert into memory values ('x');",
    )
    .await;
    generated(
        root,
        "alpha/memory.db",
        "create table memory (key text); insert into memory values ('x');",
    )
    .await;
    generated(root, "solo.SQLITE3", "create table tools (name text);").await;
    std::fs::write(root.join("alpha/empty.db"), b"").unwrap();
    std::fs::write(
        root.join("alpha/notes.sqlite"),
        b"just some text, not a database",
    )
    .unwrap();
    // A database of many pages, outside the agents path, to cut short.
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = generated(
        whole_dir.path(),
        "whole.db",
        "create table notes (body text);
         with recursive n(i) as (select 1 union all select i + 1 from n where i < 200)
         insert into notes select printf('%.1000c', 'x') || i from n;",
    )
    .await;
    let whole = std::fs::read(whole).unwrap();
    assert!(whole.len() >= 16 * 4096, "{} bytes", whole.len());
    std::fs::write(root.join("alpha/short.db"), &whole[..60]).unwrap();
    std::fs::write(root.join("alpha/cut.db"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(root.join("alpha/memory.db-journal"), b"").unwrap();
    std::fs::write(root.join("alpha/readme.txt"), b"").unwrap();

    let found = discover(root, &ReadOptions::default()).await;
    let summary: Vec<(String, String, String)> = found
        .iter()
        .map(|f| {
            let probe = match &f.probe {
                Probe::Problem(p) => {
                    assert!(p.contains(&f.path.display().to_string()), "{p}");
                    format!("problem: {p}")
                }
                other => format!("{other:?}"),
            };
            (
                f.source_db.clone(),
                f.agent.clone().unwrap().to_string(),
                probe,
            )
        })
        .collect();
    let got: Vec<(&str, &str, &str)> = summary
        .iter()
        .map(|(db, agent, probe)| {
            let label = [
                "Legacy",
                "is corrupt",
                "is empty, not a SQLite database",
                "is not a SQLite database (no SQLite header)",
                "is truncated: shorter than a SQLite header",
            ]
            .into_iter()
            .find(|l| probe.contains(l))
            .unwrap_or(probe);
            (db.as_str(), agent.as_str(), label)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Alpha/memory.db", "Alpha", "Legacy"),
            ("alpha/cut.db", "alpha", "is corrupt"),
            ("alpha/empty.db", "alpha", "is empty, not a SQLite database"),
            ("alpha/memory.db", "alpha", "Legacy"),
            (
                "alpha/notes.sqlite",
                "alpha",
                "is not a SQLite database (no SQLite header)"
            ),
            (
                "alpha/short.db",
                "alpha",
                "is truncated: shorter than a SQLite header"
            ),
            ("solo.SQLITE3", "solo", "Legacy"),
        ]
    );

    // SQLite sees that the half file is shorter than its header says: an error, not a panic.
    let err = Source::open(&root.join("alpha/cut.db"), &ReadOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.db") && err.contains("corrupt or truncated"),
        "{err}"
    );

    // Agents differing only in case are two agents, and their rows two rows.
    let a = convert(
        &root.join("Alpha/memory.db"),
        "Alpha",
        "Alpha/memory.db",
        "memory",
        Target::Memories,
    )
    .await;
    let b = convert(
        &root.join("alpha/memory.db"),
        "alpha",
        "alpha/memory.db",
        "memory",
        Target::Memories,
    )
    .await;
    assert_eq!(content(&a[0]), content(&b[0]));
    assert_ne!(a[0].record.id(), b[0].record.id());
}

#[tokio::test]
async fn a_dry_run_lists_every_table_with_its_fate() {
    let dir = tempfile::tempdir().unwrap();
    generated(
        dir.path(),
        "a/legacy.db",
        "create table memory (key text, ts); insert into memory values ('k', 'soon'), ('j', 1700000000);
         create table long_term_memories (x); insert into long_term_memories values (1);
         create table other (x); insert into other values (1), (2);
         create view v as select * from other;
         create table seq (id integer primary key autoincrement); insert into seq default values;",
    )
    .await;
    let mut options = memshift::backfill::BackfillOptions::new(dir.path());
    options.map = TableMap::new().with("long_term_memories", Target::Memories);
    let report = memshift::backfill::dry_run(&options).await;
    assert_eq!(report.files.len(), 1);
    let tables: Vec<(&str, Option<&str>, u64, u64)> = report.files[0]
        .tables
        .iter()
        .map(|t| {
            (
                t.table.as_str(),
                t.target.as_deref(),
                t.read,
                t.unreadable_times,
            )
        })
        .collect();
    let skipped = |i: usize| report.files[0].tables[i].skipped.is_some();
    assert_eq!(tables[0], ("memory", Some("agent_memories"), 2, 1));
    assert_eq!(
        tables[1],
        ("long_term_memories", Some("agent_memories"), 1, 0)
    );
    assert_eq!(
        tables[2],
        ("other", None, 2, 0),
        "unmapped, with its rows counted"
    );
    assert!(
        report.files[0].tables[2]
            .skipped
            .as_deref()
            .unwrap()
            .starts_with("unmapped")
    );
    assert!(skipped(3) && tables[3].0 == "v");
    assert_eq!(tables[4], ("seq", None, 1, 0));
    assert!(skipped(5) && tables[5].0 == "sqlite_sequence");
    assert_eq!(
        report.files[0].tables[0].unreadable_example.as_deref(),
        Some("rowid 1: column ts: \"soon\" is not a time this migration can read")
    );
}

/// Every table of `file`: (name, skip reason or row count read).
async fn survey(file: &Path) -> Vec<(String, Result<usize, String>)> {
    let mut source = open(file).await;
    let mut out = Vec::new();
    for info in source.tables().await.unwrap() {
        let fate = match info.skip_reason() {
            Some(reason) => Err(reason.to_string()),
            None => Ok(all_rows(&mut source, &info).await.len()),
        };
        out.push((info.name.clone(), fate));
    }
    out
}

#[tokio::test]
async fn the_whole_corpus_is_read_without_a_trace() {
    let Some(corpus) = common::corpus("the_whole_corpus_is_read_without_a_trace") else {
        return;
    };
    let before = listing(&corpus);
    let found = discover(&corpus, &ReadOptions::default()).await;
    assert_eq!(found.len(), 18);
    for f in &found {
        assert_eq!(f.probe, Probe::Legacy, "{}", f.source_db);
        let tables = survey(&f.path).await;
        let mut source = open(&f.path).await;
        for (name, fate) in &tables {
            if let Ok(n) = fate {
                assert_eq!(*n as u64, source.count(name).await.unwrap(), "{name}");
            }
        }
    }
    let spaced = found
        .iter()
        .find(|f| f.source_db.ends_with("my db.sqlite"))
        .unwrap();
    assert_eq!(
        spaced.source_db,
        "dimitri__pgloader/clojure/tests/sqlite/spaced-path/my db.sqlite"
    );
    assert_eq!(spaced.agent.as_ref().unwrap().as_str(), "dimitri__pgloader");
    assert_eq!(
        survey(&spaced.path).await,
        [("greetings".to_string(), Ok(3))]
    );
    assert_eq!(listing(&corpus), before);
}

#[tokio::test]
async fn pgloader_type_torture() {
    let Some(corpus) = common::corpus("pgloader_type_torture") else {
        return;
    };
    let file = corpus.join("dimitri__pgloader/test/sqlite/sqlite.db");
    let tables = survey(&file).await;
    let seq = tables.iter().find(|t| t.0 == "sqlite_sequence").unwrap();
    assert!(seq.1.as_ref().unwrap_err().contains("SQLite's own"));
    for reserved in [
        "user",
        "references",
        "double",
        "character",
        "long",
        "TableName",
    ] {
        assert!(
            tables.iter().any(|t| t.0 == reserved && t.1.is_ok()),
            "{reserved}"
        );
    }
    let stamps = convert(&file, "p", "sqlite.db", "stamps", Target::Metrics).await;
    let got: Vec<String> = stamps.iter().map(content).collect();
    assert_eq!(
        got,
        [
            r#"{"StartTime":0,"EndTime":0}"#,
            r#"{"StartTime":"2014-07-30 16:18:51","EndTime":2024}"#,
            r#"{"StartTime":null,"EndTime":null}"#,
        ]
    );
    let intege = convert(&file, "p", "sqlite.db", "intege", Target::Memories).await;
    let got: Vec<String> = intege.iter().map(content).collect();
    assert_eq!(got, [r#"{"id":1}"#, r#"{"id":"toto"}"#, r#"{"id":12.3}"#]);
    let autoinc = convert(&file, "p", "sqlite.db", "autoinc", Target::Memories).await;
    assert_eq!(content(&autoinc[0]), r#"{"id":null,"ticket":"a"}"#);
    let rowids: Vec<Value> = autoinc
        .iter()
        .map(|r| r.record.metadata()["source_rowid"].clone())
        .collect();
    assert_eq!(rowids, [json!(1), json!(2), json!(3)]);
    let blobs = convert(&file, "p", "sqlite.db", "blobs", Target::Memories).await;
    assert!(
        blobs[0]
            .record
            .content()
            .to_string()
            .contains(r#""$base64":"/9j/"#)
    );
}

#[tokio::test]
async fn bad_utf8_is_kept_as_bytes() {
    let Some(corpus) = common::corpus("bad_utf8_is_kept_as_bytes") else {
        return;
    };
    let file = corpus.join("dimitri__pgloader/test/sqlite/bad-utf8.db");
    let rows = convert(&file, "p", "bad-utf8.db", "files", Target::Memories).await;
    assert_eq!(
        content(&rows[1]),
        r#"{"id":2,"filename":{"$base64":"ZmlsZZZuYW1lLnR4dA=="}}"#
    );
    assert_eq!(content(&rows[0]), r#"{"id":1,"filename":"valid-file.txt"}"#);
}

#[tokio::test]
async fn chinook_views_and_virtual_tables() {
    let Some(corpus) = common::corpus("chinook_views_and_virtual_tables") else {
        return;
    };
    let chinook = survey(
        &corpus.join("dimitri__pgloader/test/sqlite/Chinook_Sqlite_AutoIncrementPKs.sqlite"),
    )
    .await;
    assert!(chinook.contains(&("PlaylistTrack".to_string(), Ok(8715))));
    assert!(
        chinook
            .iter()
            .any(|t| t.0 == "sqlite_sequence" && t.1.is_err())
    );
    let mut source =
        open(&corpus.join("dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite")).await;
    let pt = table(&mut source, "PlaylistTrack").await;
    assert!(
        matches!(&pt.kind, TableKind::Data { without_rowid: false, primary_key, .. }
        if primary_key == &["PlaylistId".to_string(), "TrackId".to_string()])
    );
    let track = convert(
        &corpus.join("dimitri__pgloader/test/sqlite/Chinook_Sqlite.sqlite"),
        "c",
        "c.db",
        "Track",
        Target::Memories,
    )
    .await;
    assert!(
        track
            .iter()
            .any(|r| content(r).contains("Nação Zumbi") || content(r).contains("João"))
    );
    assert!(content(&track[0]).contains(r#""UnitPrice":0.99"#));

    let views =
        survey(&corpus.join("dimitri__pgloader/clojure/tests/sqlite/matviews/matviews.sqlite"))
            .await;
    let skipped: Vec<&str> = views
        .iter()
        .filter(|t| t.1.is_err())
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(skipped, ["active_products", "cheap_products"]);
    assert!(views.contains(&("products".to_string(), Ok(3))));

    let chroma = survey(&corpus.join("jm101093__CrewAIAutoblogger/db/chroma.sqlite3")).await;
    let skipped: Vec<&str> = chroma
        .iter()
        .filter(|t| t.1.is_err())
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(
        skipped,
        [
            "embedding_fulltext_search",
            "embedding_fulltext_search_data",
            "embedding_fulltext_search_idx",
            "embedding_fulltext_search_content",
            "embedding_fulltext_search_docsize",
            "embedding_fulltext_search_config",
        ]
    );
    assert!(chroma.contains(&("migrations".to_string(), Ok(8))));
}

#[tokio::test]
async fn agent_framework_outputs() {
    let Some(corpus) = common::corpus("agent_framework_outputs") else {
        return;
    };
    let crew = corpus.join("jm101093__CrewAIAutoblogger/long_term_memory_storage.db");
    let rows = convert(
        &crew,
        "crew",
        "crew.db",
        "long_term_memories",
        Target::Memories,
    )
    .await;
    assert_eq!(rows.len(), 33);
    assert_eq!(
        rows[0].record.created_at().to_rfc3339(),
        "2024-08-16T16:25:37.590206+00:00"
    );
    assert!(rows.iter().all(|r| r.time_problem.is_none()));

    let lg = corpus.join("Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite");
    let source = open(&lg).await;
    assert_eq!(source.strategy(), OpenStrategy::Immutable);
    drop(source);
    let rows = convert(&lg, "lg", "lg.sqlite", "writes", Target::Executions).await;
    assert_eq!(rows.len(), 6);
    assert!(rows[0].record.content().parse::<Value>().unwrap()["value"]["$base64"].is_string());

    let old = corpus.join("bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite");
    let rows = convert(&old, "lg", "old.sqlite", "checkpoints", Target::Executions).await;
    assert_eq!(rows.len(), 63);
    let blob = rows[0].record.content().parse::<Value>().unwrap()["checkpoint"]["$base64"]
        .as_str()
        .unwrap()
        .to_string();
    use base64::Engine as _;
    let json: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&blob)
            .unwrap(),
    )
    .unwrap();
    assert!(json.is_object());

    let phase = corpus.join("ElasRamanauskas__memory_phase_agent/memory.db");
    let rows = convert(&phase, "m", "memory.db", "episodes", Target::Memories).await;
    assert_eq!(rows.len(), 90);
    let emb = rows[0].record.content().parse::<Value>().unwrap()["embedding"]["$base64"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(emb.len(), 1536 / 3 * 4);
    assert_eq!(
        rows[0].record.created_at().to_rfc3339(),
        "2026-01-15T10:01:51.499449+00:00"
    );
}

/// The (created_at, updated_at) of a memory or tool.
fn times(row: &ContractRow) -> (String, String) {
    let (created, updated) = match &row.record {
        ContractRecord::Memory(m) => (m.created_at, m.updated_at),
        ContractRecord::Tool(t) => (t.created_at, t.updated_at),
        other => panic!("{other:?}"),
    };
    (created.to_rfc3339(), updated.to_rfc3339())
}

#[tokio::test]
async fn a_time_in_the_future_stays_created_at_but_never_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/legacy.db",
        "create table memory (key text, content text, timestamp text);
         insert into memory values ('plan', 'from the future', '2031-01-01 00:00:00'),
                                   ('past', 'from the past', '2024-01-15 10:30:00');
         create table tools (name text, ts integer);
         insert into tools values ('search', 1924992000000000);",
    )
    .await;
    let memories = convert(&path, "a", "a/legacy.db", "memory", Target::Memories).await;
    assert_eq!(
        memories.iter().map(times).collect::<Vec<_>>(),
        [
            (
                "2031-01-01T00:00:00+00:00".into(),
                "2025-01-01T00:00:00+00:00".into()
            ),
            (
                "2024-01-15T10:30:00+00:00".into(),
                "2024-01-15T10:30:00+00:00".into()
            ),
        ],
        "updated_at is created_at capped at migrated_at"
    );
    assert_eq!(
        memories.iter().map(|r| r.future_time).collect::<Vec<_>>(),
        [true, false]
    );
    // A microsecond time in 2031: read as microseconds, and capped all the same.
    let tools = convert(&path, "a", "a/legacy.db", "tools", Target::Tools).await;
    assert_eq!(
        times(&tools[0]),
        (
            "2031-01-01T00:00:00+00:00".into(),
            "2025-01-01T00:00:00+00:00".into()
        )
    );
    assert!(tools[0].future_time);

    // The dry run counts them, with an example.
    let report =
        memshift::backfill::dry_run(&memshift::backfill::BackfillOptions::new(dir.path())).await;
    let counted: Vec<(&str, u64, Option<&str>)> = report.files[0]
        .tables
        .iter()
        .map(|t| {
            (
                t.table.as_str(),
                t.future_times,
                t.future_example.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("memory", 1, Some("rowid 1: 2031-01-01T00:00:00.000000Z")),
            ("tools", 1, Some("rowid 1: 2031-01-01T00:00:00.000000Z")),
        ]
    );
}

#[tokio::test]
async fn a_library_row_from_a_clock_ahead_gets_its_version_capped() {
    let dir = tempfile::tempdir().unwrap();
    let backend = SqliteBackend::new(dir.path());
    let me = agent("crawler");
    backend
        .put_memory(&me, &Memory::new("k", json!("v")))
        .await
        .unwrap();
    backend.close().await;
    let path = dir.path().join("crawler/memory.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "update agent_memories set created_at = '2031-01-01T00:00:00.000000Z',
                                  updated_at = '2031-06-01T00:00:00.000000Z'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let mut source = open(&path).await;
    let mut rows = read_own_records(
        &mut source,
        &me,
        "crawler/memory.db",
        Target::Memories,
        i64::MIN,
    )
    .await
    .unwrap();
    assert_eq!(
        times(&rows[0]),
        (
            "2031-01-01T00:00:00+00:00".into(),
            "2031-06-01T00:00:00+00:00".into()
        ),
        "read as stored"
    );
    assert!(rows[0].cap_version(migrated_at()));
    assert_eq!(
        times(&rows[0]),
        (
            "2031-01-01T00:00:00+00:00".into(),
            "2025-01-01T00:00:00+00:00".into()
        ),
        "moved with its version capped at the migration"
    );
}

#[tokio::test]
async fn keys_and_names_too_long_for_postgres_arrive_without_them() {
    let long = "ключ".repeat(2500); // 10,000 characters, 20,000 bytes
    let at_limit = "k".repeat(memshift::MAX_KEY_BYTES);
    let dir = tempfile::tempdir().unwrap();
    let path = generated(
        dir.path(),
        "a/legacy.db",
        &format!(
            "create table memory (key text, content text);
             insert into memory values ('{long}', 'long'), ('{at_limit}', 'at the limit');
             create table tools (name text, spec text);
             insert into tools values ('{long}', 'long');
             create table metrics (name text primary key, value real) without rowid;
             insert into metrics values ('{long}', 1.5);"
        ),
    )
    .await;
    let memories = convert(&path, "a", "a/legacy.db", "memory", Target::Memories).await;
    let ContractRecord::Memory(first) = &memories[0].record else {
        panic!()
    };
    assert_eq!(first.key, None, "a key PostgreSQL's index cannot hold");
    assert_eq!(first.metadata["key_too_long"], json!(20_000), "in bytes");
    assert_eq!(
        first.content.parse::<Value>().unwrap()["key"],
        json!(long),
        "content keeps the key exactly"
    );
    let ContractRecord::Memory(second) = &memories[1].record else {
        panic!()
    };
    assert_eq!(second.key.as_deref(), Some(at_limit.as_str()));
    assert!(!second.metadata.contains_key("key_too_long"));

    let tools = convert(&path, "a", "a/legacy.db", "tools", Target::Tools).await;
    let ContractRecord::Tool(tool) = &tools[0].record else {
        panic!()
    };
    assert_eq!(tool.name, "tools:1", "the fallback name");
    assert_eq!(tool.metadata["name_too_long"], json!(20_000));
    assert_eq!(tool.content.parse::<Value>().unwrap()["name"], json!(long));
    assert!(tool.validate().is_ok());
    // Without a rowid the fallback would hold the long key itself: the row's id instead.
    let metrics = convert(&path, "a", "a/legacy.db", "metrics", Target::Metrics).await;
    let ContractRecord::Metric(metric) = &metrics[0].record else {
        panic!()
    };
    assert_eq!(metric.name, metric.id.to_string());
    assert_eq!(metric.metadata["name_too_long"], json!(20_000));
    assert_eq!(metric.value, Some(1.5));
}
