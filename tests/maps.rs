//! Maps that fit real frameworks: per-table key, time and JSON-BLOB rules, file globs,
//! excludes, --strict, the check that every map meets a table, suggested maps for
//! unmapped tables, and runs that record their maps for --verify and later runs.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Utc};
use memshift::AgentId;
use memshift::legacy::{
    self, ContractRecord, ContractRow, Observed, ReadOptions, RowOrigin, Source, TableInfo,
    TableMap, TableSpec, Target, TimeRule, convert_row, suggest, survey,
};
use memshift::testing::postgres::TestDatabase;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

mod common;
use common::legacy_file;

fn migrated_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Every row of table `table` of `file`, converted by `spec` (agent `a`).
async fn convert(file: &Path, source_db: &str, table: &str, spec: &TableSpec) -> Vec<ContractRow> {
    try_convert(file, source_db, table, spec)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

async fn try_convert(
    file: &Path,
    source_db: &str,
    table: &str,
    spec: &TableSpec,
) -> Vec<memshift::Result<ContractRow>> {
    let mut source = Source::open(file, &ReadOptions::default()).await.unwrap();
    let info = table_info(&mut source, table).await;
    let agent = AgentId::new("a").unwrap();
    let origin = RowOrigin {
        agent: &agent,
        source: "",
        source_db,
    };
    let mut out = Vec::new();
    let mut batches = source.rows(&info);
    while let Some(batch) = batches.next_batch().await.unwrap() {
        for row in &batch {
            out.push(convert_row(&origin, &info, spec, row, migrated_at()));
        }
    }
    out
}

async fn table_info(source: &mut Source, table: &str) -> TableInfo {
    source
        .tables()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == table)
        .unwrap_or_else(|| panic!("no table {table}"))
}

/// The suggested map of `table` of `file` (named `source_db`), from its rows.
async fn suggestion(file: &Path, source_db: &str, table: &str) -> String {
    let mut source = Source::open(file, &ReadOptions::default()).await.unwrap();
    let info = table_info(&mut source, table).await;
    let mut seen = Observed::new(&info);
    let mut batches = source.rows(&info);
    while let Some(batch) = batches.next_batch().await.unwrap() {
        batch.iter().for_each(|row| seen.see(row));
    }
    suggest(source_db, &info, Some(&seen)).unwrap().map
}

fn key(row: &ContractRow) -> Option<&str> {
    match &row.record {
        ContractRecord::Memory(m) => m.key.as_deref(),
        ContractRecord::Tool(t) => Some(&t.name),
        ContractRecord::Metric(m) => Some(&m.name),
        ContractRecord::Execution(e) => e.status.as_deref(),
    }
}

fn content(row: &ContractRow) -> &str {
    row.record.content().as_str()
}

fn map(lines: &[&str]) -> TableMap {
    lines
        .iter()
        .fold(TableMap::new(), |m, l| m.with_map(l).unwrap())
}

fn spec(line: &str, table: &str) -> TableSpec {
    map(&[line]).spec("x.db", table).unwrap()
}

// ---- LangGraph, llama-index, mem0, agno and CrewAI schemas, as their code creates them ----

const LANGGRAPH_STORE: &str = r#"
create table store (prefix text not null, key text not null, value text not null,
    created_at timestamp default current_timestamp, updated_at timestamp default current_timestamp,
    expires_at timestamp, ttl_minutes real, primary key (prefix, key));
insert into store (prefix, key, value, created_at, updated_at) values
    ('users.alice', 'food', cast('{"likes": ["pizza"], "score": 1.50}' as blob), '2024-05-01 10:00:00', '2024-05-03 11:00:00'),
    ('users.bob', 'food', cast('{"likes": []}' as blob), '2024-05-02 10:00:00', '2024-05-02 10:00:00'),
    ('users.alice', 'raw', x'93a3626164', '2024-05-04 10:00:00', '2024-05-04 10:00:00');
"#;

const LANGGRAPH_CHECKPOINTS: &str = r#"
create table checkpoints (thread_id text not null, checkpoint_ns text not null default '',
    checkpoint_id text not null, parent_checkpoint_id text, type text, checkpoint blob, metadata blob,
    primary key (thread_id, checkpoint_ns, checkpoint_id));
insert into checkpoints values
    ('t1', '', '1efa6667-8a84-65b4-bfff-80ecb163d6ce', null, 'msgpack', x'83a17601', cast('{"source": "input", "step": -1}' as blob)),
    ('t1', '', '1efa6667-8a89-6b27-8000-7441ef1d00fe', '1efa6667-8a84-65b4-bfff-80ecb163d6ce', 'msgpack', x'83a17602', cast('{"source": "loop", "step": 0}' as blob));
create table writes (thread_id text not null, checkpoint_ns text not null default '',
    checkpoint_id text not null, task_id text not null, task_path text not null default '',
    idx integer not null, channel text not null, type text, value blob,
    primary key (thread_id, checkpoint_ns, checkpoint_id, task_id, idx));
insert into writes values
    ('t1', '', '1efa6667-8a84-65b4-bfff-80ecb163d6ce', 'task-a', '', 0, 'messages', 'msgpack', x'91a2686921');
"#;

const LLAMA_CHAT_STORE: &str = r#"
create table data_chatstore (id integer not null primary key autoincrement, key varchar not null, value json);
insert into data_chatstore (key, value) values
    ('user1', '{"role": "user", "content": "hi"}'),
    ('user1', '{"role": "assistant", "content": "hello"}'),
    ('user2', '{"role": "user", "content": "bye"}');
"#;

const MEM0_HISTORY: &str = r#"
create table history (id text primary key, memory_id text, old_memory text, new_memory text,
    event text, created_at datetime, updated_at datetime, is_deleted integer, actor_id text, role text);
insert into history values
    ('h1', 'm1', null, 'likes tea', 'ADD', '2024-06-01T08:00:00.123456+00:00', null, 0, null, 'user'),
    ('h2', 'm1', 'likes tea', 'likes green tea', 'UPDATE', '2024-06-01T08:00:00.123456+00:00', '2024-06-02T09:00:00+00:00', 0, null, 'user');
create table messages (id text primary key, session_scope text, role text, content text, name text, created_at datetime);
insert into messages values ('x1', 's', 'user', 'hi', null, '2024-06-01 08:00:00');
"#;

const AGNO: &str = r#"
create table agno_sessions (session_id varchar primary key not null, session_type varchar not null,
    agent_id varchar, user_id varchar, session_data json, metadata json, summary json,
    created_at bigint not null, updated_at bigint);
insert into agno_sessions values ('s1', 'agent', 'a', 'u', '{"x": 1}', null, null, 1717000000, 1717000500);
create table agno_memories (memory_id varchar primary key not null, memory json not null, input varchar,
    agent_id varchar, user_id varchar, topics json, created_at bigint not null, updated_at bigint);
insert into agno_memories values ('mem1', '{"memory": "likes tea"}', null, 'a', 'u', '["food"]', 1717000000, null),
    ('mem2', '{"memory": "likes jazz"}', null, 'a', 'u', '["music"]', 1717000000, 1717000900);
create table agno_runs (run_id varchar primary key not null, session_id varchar not null, run_type varchar not null,
    status varchar, run_data json not null, created_at bigint not null, updated_at bigint);
insert into agno_runs values ('r1', 's1', 'agent', 'COMPLETED', '{}', 1717000000, 1717000100);
"#;

const CREWAI: &str = r#"
create table long_term_memories (id integer primary key autoincrement, task_description text,
    metadata text, datetime text, score real);
insert into long_term_memories (task_description, metadata, datetime, score) values
    ('write a post', '{"quality": 8}', '1723825537.5902064', 8.0);
create table latest_kickoff_task_outputs (task_id text primary key, expected_output text, output json,
    task_index integer, inputs json, was_replayed boolean, timestamp datetime default current_timestamp);
insert into latest_kickoff_task_outputs values ('uuid-1', 'a post', '{"raw": "text"}', 0, '{}', 0, '2024-09-07 21:40:29');
create table flow_states (id integer primary key autoincrement, flow_uuid text not null,
    method_name text not null, timestamp datetime not null, state_json text not null);
insert into flow_states (flow_uuid, method_name, timestamp, state_json) values
    ('f1', 'start', '2024-09-07T21:40:29.123456+00:00', '{"step": 1}');
"#;

#[tokio::test]
async fn a_key_joined_from_columns_is_unique_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph.db");
    legacy_file(&file, LANGGRAPH_STORE).await;

    // Without a map's key, the `key` column: the same key in two namespaces.
    let plain = convert(&file, "a/graph.db", "store", &Target::Memories.into()).await;
    assert_eq!(
        plain.iter().map(key).collect::<Vec<_>>(),
        [Some("food"), Some("food"), Some("raw")]
    );

    let rows = convert(
        &file,
        "a/graph.db",
        "store",
        &spec("store=memories;key=prefix+key", "store"),
    )
    .await;
    assert_eq!(
        rows.iter().map(key).collect::<Vec<_>>(),
        [
            Some("users.alice/food"),
            Some("users.bob/food"),
            Some("users.alice/raw")
        ]
    );
    let rows = convert(
        &file,
        "a/graph.db",
        "store",
        &spec("store=memories;key=prefix+key;sep=::", "store"),
    )
    .await;
    assert_eq!(key(&rows[0]), Some("users.alice::food"));
    // The ids do not depend on the map: a later run with another map updates in place.
    assert_eq!(rows[0].record.id(), plain[0].record.id());

    let none = convert(
        &file,
        "a/graph.db",
        "store",
        &spec("store=memories;key=none", "store"),
    )
    .await;
    assert!(none.iter().all(|r| key(r).is_none()));
}

#[tokio::test]
async fn a_null_in_a_joined_key_leaves_the_key_empty_and_names_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.db");
    legacy_file(
        &file,
        "create table t (a text, b integer, status text, event text);
         insert into t values ('x', 1, 'ok', 'ADD'), (null, 2, 'ok', 'UPDATE');",
    )
    .await;
    let rows = convert(&file, "t.db", "t", &spec("t=memories;key=a+b", "t")).await;
    assert_eq!(
        rows.iter().map(key).collect::<Vec<_>>(),
        [Some("x/1"), None]
    );
    let tools = convert(&file, "t.db", "t", &spec("t=tools;name=a", "t")).await;
    assert_eq!(
        tools.iter().map(key).collect::<Vec<_>>(),
        [Some("x"), Some("t:2")]
    );
    // An execution's status from another column; by default its `status`.
    let runs = convert(&file, "t.db", "t", &spec("t=executions;status=event", "t")).await;
    assert_eq!(
        runs.iter().map(key).collect::<Vec<_>>(),
        [Some("ADD"), Some("UPDATE")]
    );
    let runs = convert(&file, "t.db", "t", &Target::Executions.into()).await;
    assert_eq!(
        runs.iter().map(key).collect::<Vec<_>>(),
        [Some("ok"), Some("ok")]
    );
}

#[tokio::test]
async fn the_time_column_a_map_names_overrides_the_contract_columns() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("graph.db");
    legacy_file(&file, LANGGRAPH_STORE).await;
    let time = |rows: &[ContractRow]| rows[0].record.created_at().to_rfc3339();
    let default = convert(&file, "g.db", "store", &Target::Memories.into()).await;
    assert_eq!(
        time(&default),
        "2024-05-01T10:00:00+00:00",
        "created_at by default"
    );
    let updated = convert(
        &file,
        "g.db",
        "store",
        &spec("store=memories;time=updated_at", "store"),
    )
    .await;
    assert_eq!(time(&updated), "2024-05-03T11:00:00+00:00");
    let none = convert(
        &file,
        "g.db",
        "store",
        &spec("store=memories;time=none", "store"),
    )
    .await;
    assert_eq!(none[0].record.created_at(), migrated_at());

    // The first column that is not NULL; a UUID v6 holds its time.
    let file = dir.path().join("history.db");
    legacy_file(&file, MEM0_HISTORY).await;
    let rows = convert(
        &file,
        "h.db",
        "history",
        &spec("history=executions;time=updated_at+created_at", "history"),
    )
    .await;
    assert_eq!(time(&rows), "2024-06-01T08:00:00.123456+00:00");
    assert_eq!(
        rows[1].record.created_at().to_rfc3339(),
        "2024-06-02T09:00:00+00:00"
    );
    let file = dir.path().join("lg.db");
    legacy_file(&file, LANGGRAPH_CHECKPOINTS).await;
    let rows = convert(
        &file,
        "lg.db",
        "checkpoints",
        &spec("checkpoints=memories;time=checkpoint_id", "checkpoints"),
    )
    .await;
    assert_eq!(time(&rows), "2024-11-19T11:07:31.294354+00:00");
    assert!(rows[0].time_problem.is_none());
    let default = convert(&file, "lg.db", "checkpoints", &Target::Memories.into()).await;
    assert_eq!(
        default[0].record.created_at(),
        migrated_at(),
        "no contract time column"
    );

    // A column the map names that the table lacks fails every row, naming it.
    let missing = try_convert(
        &file,
        "lg.db",
        "checkpoints",
        &spec("checkpoints=memories;time=ts", "checkpoints"),
    )
    .await;
    let err = missing[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("no column \"ts\""), "{err}");
}

#[tokio::test]
async fn json_blobs_move_as_json_only_when_asked_and_only_when_exact() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.db");
    legacy_file(
        &file,
        r#"create table b (id integer primary key, v blob);
           insert into b (v) values
             (cast('{"b": 1.50, "a": [18446744073709551616, "✓"]}' as blob)),
             (x'7b22613a'),
             (cast(' [1] ' as blob)),
             (cast('{"$base64": "AA=="}' as blob)),
             (x'80'),
             ('{"text": "not a blob"}');"#,
    )
    .await;
    let plain = convert(&file, "b.db", "b", &Target::Memories.into()).await;
    assert_eq!(
        content(&plain[0]),
        r#"{"id":1,"v":{"$base64":"eyJiIjogMS41MCwgImEiOiBbMTg0NDY3NDQwNzM3MDk1NTE2MTYsICLinJMiXX0="}}"#
    );
    let json = convert(&file, "b.db", "b", &spec("b=memories;json", "b")).await;
    assert_eq!(
        content(&json[0]),
        r#"{"id":1,"v":{"b": 1.50, "a": [18446744073709551616, "✓"]}}"#,
        "the BLOB's own text, byte for byte"
    );
    // Not JSON, whitespace around it, a tagged form, not UTF-8: base64 as always.
    for (i, row) in json.iter().enumerate().skip(1).take(4) {
        assert_eq!(content(row), content(&plain[i]), "row {}", i + 1);
        assert!(content(row).contains("$base64"));
    }
    // TEXT holding JSON stays a string.
    assert_eq!(
        content(&json[5]),
        r#"{"id":6,"v":"{\"text\": \"not a blob\"}"}"#
    );
}

#[tokio::test]
async fn maps_are_limited_to_files_and_match_names_without_case() {
    let map = map(&[
        "checkpoints=memories;key=thread_id+checkpoint_id;files=*/langgraph*.db",
        "CHECKPOINTS=executions;files=crew.db",
        "\"odd=name;x\"=tools",
    ])
    .with_exclude("history;files=*/scratch/**")
    .unwrap();
    assert_eq!(
        map.spec("a/langgraph.db", "Checkpoints").unwrap().target,
        Target::Memories
    );
    assert_eq!(
        map.spec("a/b/crew.db", "checkpoints").unwrap().target,
        Target::Executions
    );
    assert_eq!(map.spec("a/other.db", "checkpoints"), None);
    assert_eq!(
        map.spec("a/b/langgraph.db", "checkpoints"),
        None,
        "* stays in one folder"
    );
    assert_eq!(
        map.spec("x.db", "ODD=NAME;X").unwrap().target,
        Target::Tools
    );
    assert_eq!(map.spec("a/scratch/z/h.db", "history"), None);
    assert!(matches!(
        map.decide("a/scratch/h.db", "history"),
        legacy::Decision::Excluded(_)
    ));
    // A contract table's target can stay implied while a map says more.
    let memory = map_spec("memory;time=ts");
    assert_eq!(memory.target, Target::Memories);
    assert_eq!(memory.time, TimeRule::Columns(vec!["ts".into()]));
    assert!(
        TableMap::new().with_map("notes;key=k").is_err(),
        "no target, not a contract name"
    );

    // Table names with = ; and quotes move when quoted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.db");
    legacy_file(
        &file,
        r#"create table "a=b;""c" (k text); insert into "a=b;""c" values ('v');"#,
    )
    .await;
    let files = survey(dir.path(), &ReadOptions::default()).await;
    let quoted = TableMap::new()
        .with_map(r#""A=B;""C"=memories;key=k"#)
        .unwrap();
    assert!(
        quoted.check(&files).problems.is_empty(),
        "{:?}",
        quoted.check(&files)
    );
    let rows = convert(
        &file,
        "q.db",
        "a=b;\"c",
        &quoted.spec("q.db", "a=b;\"c").unwrap(),
    )
    .await;
    assert_eq!(key(&rows[0]), Some("v"));
}

fn map_spec(line: &str) -> TableSpec {
    TableMap::new()
        .with_map(line)
        .unwrap()
        .spec("x.db", "memory")
        .unwrap()
}

#[tokio::test]
async fn a_map_that_meets_nothing_names_the_tables_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(&dir.path().join("a/graph.db"), LANGGRAPH_STORE).await;
    legacy_file(&dir.path().join("b/graph.db"), LANGGRAPH_STORE).await;
    legacy_file(&dir.path().join("a/chat.db"), LLAMA_CHAT_STORE).await;
    let files = survey(dir.path(), &ReadOptions::default()).await;

    let check = map(&["stores=memories"]).check(&files);
    assert_eq!(check.problems.len(), 1, "{check:?}");
    assert!(
        check.problems[0].contains("matches no table")
            && check.problems[0].contains("data_chatstore, store (2 files)"),
        "{check:?}"
    );
    let check = map(&["store=memories;files=chat.db"]).check(&files);
    assert!(
        check.problems[0].contains("in files matching \"chat.db\""),
        "{check:?}"
    );
    let check = map(&["store=memories;key=prefix+namespace"]).check(&files);
    assert_eq!(check.problems.len(), 2, "one per file: {check:?}");
    assert!(
        check.problems[0].contains("no column \"namespace\""),
        "{check:?}"
    );
    let check = TableMap::new()
        .with_exclude("files=*.sqlite")
        .unwrap()
        .check(&files);
    assert!(check.problems[0].contains("matches no file"), "{check:?}");

    // Unmapped: everything but what is mapped or excluded.
    let check = map(&["store=memories;key=prefix+key;files=a/graph.db"]).check(&files);
    assert!(check.problems.is_empty());
    assert_eq!(
        check.unmapped,
        [
            ("a/chat.db".into(), "data_chatstore".into()),
            ("b/graph.db".into(), "store".into())
        ]
    );
    let check = map(&["store=memories;key=prefix+key"])
        .with_exclude("data_chatstore")
        .unwrap()
        .check(&files);
    assert!(
        check.unmapped.is_empty() && check.problems.is_empty(),
        "{check:?}"
    );
}

#[tokio::test]
async fn suggestions_fit_each_framework() {
    let dir = tempfile::tempdir().unwrap();
    // (file, schema, [(table, suggested map)])
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case<'_>] = &[
        (
            "graph.db",
            LANGGRAPH_STORE,
            &[(
                "store",
                "store=memories;key=prefix+key;time=updated_at;json;files=graph.db",
            )],
        ),
        (
            "checkpoints.sqlite",
            LANGGRAPH_CHECKPOINTS,
            &[
                (
                    "checkpoints",
                    "checkpoints=memories;key=thread_id+checkpoint_ns+checkpoint_id;time=checkpoint_id;json;files=checkpoints.sqlite",
                ),
                (
                    "writes",
                    "writes=memories;key=thread_id+checkpoint_ns+checkpoint_id+task_id+idx;time=checkpoint_id;files=checkpoints.sqlite",
                ),
            ],
        ),
        (
            "chat_store.db",
            LLAMA_CHAT_STORE,
            &[(
                "data_chatstore",
                "data_chatstore=memories;key=key+id;files=chat_store.db",
            )],
        ),
        (
            "history.db",
            MEM0_HISTORY,
            &[
                (
                    "history",
                    "history=executions;status=event;files=history.db",
                ),
                ("messages", "messages=memories;key=id;files=history.db"),
            ],
        ),
        (
            "agno.db",
            AGNO,
            &[
                (
                    "agno_sessions",
                    "agno_sessions=memories;key=session_id;time=updated_at;files=agno.db",
                ),
                (
                    "agno_memories",
                    "agno_memories=memories;key=memory_id;time=updated_at+created_at;files=agno.db",
                ),
                ("agno_runs", "agno_runs=executions;files=agno.db"),
            ],
        ),
        (
            "crew.db",
            CREWAI,
            &[
                (
                    "long_term_memories",
                    "long_term_memories=memories;key=none;files=crew.db",
                ),
                (
                    "latest_kickoff_task_outputs",
                    "latest_kickoff_task_outputs=memories;key=task_id;files=crew.db",
                ),
                ("flow_states", "flow_states=memories;key=none;files=crew.db"),
            ],
        ),
    ];
    for (name, sql, tables) in cases {
        let file = dir.path().join(name);
        legacy_file(&file, sql).await;
        for (table, expected) in *tables {
            assert_eq!(
                &suggestion(&file, &format!("agent/{name}"), table).await,
                expected
            );
            // Each suggestion is a map that parses and meets its table.
            let files = survey(dir.path(), &ReadOptions::default()).await;
            let check = TableMap::new().with_map(expected).unwrap().check(&files);
            assert!(check.problems.is_empty(), "{expected}: {check:?}");
        }
    }
    // From columns alone (a real run's report), still a map that parses.
    let mut source = Source::open(&dir.path().join("graph.db"), &ReadOptions::default())
        .await
        .unwrap();
    let info = table_info(&mut source, "store").await;
    let columns_only = suggest("graph.db", &info, None).unwrap();
    assert_eq!(
        columns_only.map,
        "store=memories;key=prefix+key;time=updated_at;files=graph.db"
    );
    assert_eq!(
        columns_only.argument(),
        "--map 'store=memories;key=prefix+key;time=updated_at;files=graph.db'"
    );
}

#[tokio::test]
async fn the_dry_run_lists_unmapped_tables_with_rows_and_the_map_that_moves_them() {
    let dir = tempfile::tempdir().unwrap();
    legacy_file(&dir.path().join("a/graph.db"), LANGGRAPH_STORE).await;
    legacy_file(&dir.path().join("a/main.db"), &common::memory_table(2)).await;
    let out = backfill(&["--dry-run"], dir.path(), None, &[]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(
            "unmapped: a/graph.db table \"store\" (3 rows): --map 'store=memories;key=prefix+key;time=updated_at;json;files=graph.db'"
        ),
        "{said}"
    );
    let report = report_of(&out);
    let store = &report["files"][0]["tables"][0];
    assert_eq!(store["table"], json!("store"));
    assert_eq!(store["read"], json!(3));
    assert_eq!(
        store["suggested_map"],
        json!("--map 'store=memories;key=prefix+key;time=updated_at;json;files=graph.db'")
    );
    assert_eq!(report["files"][1]["tables"][0].get("suggested_map"), None);

    // --strict: the dry run still reports, and fails.
    let out = backfill(&["--dry-run", "--strict"], dir.path(), None, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--map 'store=memories"));
    // Excluded, it is reported as such and --strict passes.
    let out = backfill(
        &["--dry-run", "--strict", "--exclude", "store"],
        dir.path(),
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = report_of(&out);
    assert_eq!(
        report["files"][0]["tables"][0]["skipped"],
        json!("excluded (--exclude \"store\")")
    );
    // A map that meets nothing stops even a dry run, naming the tables there are.
    let out = backfill(
        &["--dry-run", "--map", "stor=memories"],
        dir.path(),
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the tables found are: memory, store"),
        "{}",
        stderr(&out)
    );
}

// ---- through the command, into PostgreSQL ----

fn backfill(args: &[&str], agents: &Path, url: Option<&str>, env: &[(&str, &str)]) -> Output {
    let report_dir = agents.parent().unwrap().to_path_buf();
    let mut command = std::process::Command::new(common::example_path("backfill"));
    command
        .args(args)
        .arg("--agents-path")
        .arg(agents)
        .arg("--report-dir")
        .arg(&report_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn report_of(out: &Output) -> Value {
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// (key, created_at as text, content, metadata.source_table) of an agent's memories.
async fn memories(conn: &mut PgConnection, table: &str) -> Vec<(Option<String>, String, String)> {
    sqlx::query_as(
        "select key, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), content
         from agent_memories where metadata->>'source_table' = $1
         order by (metadata->>'source_db'), (metadata->>'source_rowid')::bigint, key",
    )
    .bind(table)
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn mapped_framework_tables_arrive_with_their_key_time_and_json() {
    let root = tempfile::tempdir().unwrap();
    let agents = root.path().join("agents");
    legacy_file(&agents.join("planner/graph.db"), LANGGRAPH_STORE).await;
    legacy_file(
        &agents.join("planner/checkpoints.sqlite"),
        LANGGRAPH_CHECKPOINTS,
    )
    .await;
    legacy_file(&agents.join("planner/chat_store.db"), LLAMA_CHAT_STORE).await;
    legacy_file(&agents.join("planner/crew.db"), CREWAI).await;
    let db = TestDatabase::migrated().await;
    let url = Some(db.url.as_str());
    let maps = [
        "--map",
        "store=memories;key=prefix+key;time=updated_at;json;files=graph.db",
        "--map",
        "checkpoints=memories;key=thread_id+checkpoint_ns+checkpoint_id;time=checkpoint_id;json;files=checkpoints.sqlite",
        "--map",
        "writes=executions;status=channel;time=checkpoint_id;files=checkpoints.sqlite",
        "--map",
        "data_chatstore=memories;key=key+id",
        "--exclude",
        "files=crew.db",
    ];

    // --strict names what is left and loads nothing.
    let out = backfill(&["--strict", "--map", "store=memories"], &agents, url, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("planner/chat_store.db table \"data_chatstore\""),
        "{}",
        stderr(&out)
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let count: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing loaded before the check");

    let mut args = vec!["--strict"];
    args.extend(maps);
    let out = backfill(&args, &agents, url, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // LangGraph's store: one key per namespace, its updated_at, the value as JSON.
    let store = memories(&mut conn, "store").await;
    assert_eq!(
        store,
        [
            (
                Some("users.alice/food".into()),
                "2024-05-03T11:00:00.000000".into(),
                r#"{"prefix":"users.alice","key":"food","value":{"likes": ["pizza"], "score": 1.50},"created_at":"2024-05-01 10:00:00","updated_at":"2024-05-03 11:00:00","expires_at":null,"ttl_minutes":null}"#.into()
            ),
            (
                Some("users.bob/food".into()),
                "2024-05-02T10:00:00.000000".into(),
                r#"{"prefix":"users.bob","key":"food","value":{"likes": []},"created_at":"2024-05-02 10:00:00","updated_at":"2024-05-02 10:00:00","expires_at":null,"ttl_minutes":null}"#.into()
            ),
            (
                Some("users.alice/raw".into()),
                "2024-05-04T10:00:00.000000".into(),
                r#"{"prefix":"users.alice","key":"raw","value":{"$base64":"k6NiYWQ="},"created_at":"2024-05-04 10:00:00","updated_at":"2024-05-04 10:00:00","expires_at":null,"ttl_minutes":null}"#.into()
            ),
        ]
    );
    // Checkpoints: the time in the row's UUID, metadata as JSON.
    let checkpoints = memories(&mut conn, "checkpoints").await;
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(
        checkpoints[0].0.as_deref(),
        Some("t1//1efa6667-8a84-65b4-bfff-80ecb163d6ce")
    );
    assert_eq!(checkpoints[0].1, "2024-11-19T11:07:31.294354");
    assert!(
        checkpoints[1]
            .2
            .ends_with(r#""metadata":{"source": "loop", "step": 0}}"#),
        "{}",
        checkpoints[1].2
    );
    // A chat store: many rows per conversation, each with a key of its own.
    let chat = memories(&mut conn, "data_chatstore").await;
    let keys: Vec<_> = chat.iter().map(|c| c.0.clone().unwrap()).collect();
    assert_eq!(keys, ["user1/1", "user1/2", "user2/3"]);
    let statuses: Vec<String> = sqlx::query_scalar("select status from agent_executions")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(statuses, ["messages"]);
    let crew: i64 = sqlx::query_scalar(
        "select count(*) from agent_memories where metadata->>'source_db' like '%crew.db'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(crew, 0, "excluded");
    let report = report_of(&out);
    let crew_tables = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["source_db"] == json!("planner/crew.db"))
        .unwrap()["tables"]
        .clone();
    assert!(
        crew_tables
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["table"] != json!("sqlite_sequence"))
            .all(|t| t["skipped"] == json!("excluded (--exclude \"files=crew.db\")")),
        "{crew_tables}"
    );

    // The run recorded its maps.
    let options: Value = sqlx::query_scalar::<_, sqlx::types::Json<Value>>(
        "select options from agent_memory.backfill_runs where status = 'succeeded'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
    .0;
    assert_eq!(
        options["map"]["maps"][0],
        json!("store=memories;key=prefix+key;time=updated_at;json;files=graph.db")
    );
    assert_eq!(options["map"]["excludes"], json!(["files=crew.db"]));

    // --verify without maps reuses them, says so, and compares every mapped table.
    let out = backfill(&["--verify"], &agents, url, &[]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("no --map or --exclude given: using those of run"),
        "{said}"
    );
    assert!(
        said.contains("--map 'store=memories;key=prefix+key;time=updated_at;json;files=graph.db'"),
        "{said}"
    );
    let verification: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        verification["tables"].as_array().unwrap().len(),
        4,
        "{verification}"
    );
    // So does a later run, which finds everything there.
    let out = backfill(&[], &agents, url, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("using those of run"));
    let count: i64 = sqlx::query_scalar("select count(*) from agent_memories")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        count, 8,
        "3 store rows, 2 checkpoints, 3 chat messages, once each"
    );

    // --verify that verified no table fails.
    let out = backfill(&["--verify", "--exclude", "files=**"], &agents, url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing verified"),
        "{}",
        stderr(&out)
    );
}

// ---- the public corpus ----

/// Copies corpus files into a fresh agents tree (`agent/<name>`), leaving them untouched.
fn corpus_tree(corpus: &Path, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in files {
        let target = dir.path().join("agents").join(to);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(corpus.join(from), &target).unwrap();
        let mut perms = std::fs::metadata(&target).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&target, perms).unwrap();
    }
    dir
}

#[tokio::test]
async fn corpus_framework_files_get_maps_that_fit() {
    let Some(corpus) = common::corpus("corpus_framework_files_get_maps_that_fit") else {
        return;
    };
    let cases = [
        (
            "bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite",
            "checkpoints",
            "checkpoints=memories;key=thread_id+thread_ts;time=thread_ts;json;files=checkpoints.sqlite",
        ),
        (
            "Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite",
            "checkpoints",
            "checkpoints=memories;key=thread_id+checkpoint_ns+checkpoint_id;time=checkpoint_id;json;files=checkpoints.sqlite",
        ),
        (
            "Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite",
            "writes",
            "writes=memories;key=thread_id+checkpoint_ns+checkpoint_id+task_id+idx;time=checkpoint_id;files=checkpoints.sqlite",
        ),
        (
            "jm101093__CrewAIAutoblogger/long_term_memory_storage.db",
            "long_term_memories",
            "long_term_memories=memories;key=none;files=long_term_memory_storage.db",
        ),
        (
            "jm101093__CrewAIAutoblogger/latest_kickoff_task_outputs.db",
            "latest_kickoff_task_outputs",
            "latest_kickoff_task_outputs=memories;key=task_id;files=latest_kickoff_task_outputs.db",
        ),
    ];
    for (file, table, expected) in cases {
        let tree = corpus_tree(&corpus, &[(file, "agent/x.db")]);
        let path = tree.path().join("agents/agent/x.db");
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert_eq!(
            suggestion(&path, &format!("agent/{name}"), table).await,
            expected,
            "{file}"
        );
    }

    // Legacy-schema checkpoints: the time in the row, metadata as its exact JSON.
    let file = "bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite";
    let tree = corpus_tree(&corpus, &[(file, "agent/checkpoints.sqlite")]);
    let path = tree.path().join("agents/agent/checkpoints.sqlite");
    let spec = spec_of(cases[0].2, "checkpoints");
    let rows = convert(&path, "agent/checkpoints.sqlite", "checkpoints", &spec).await;
    assert_eq!(rows.len(), 63);
    assert!(rows.iter().all(|r| r.time_problem.is_none()));
    assert_eq!(
        rows[0].record.created_at().to_rfc3339(),
        "2024-06-04T19:26:19.623103+00:00"
    );
    let keys: std::collections::HashSet<_> =
        rows.iter().map(|r| key(r).unwrap().to_string()).collect();
    assert_eq!(keys.len(), 63, "one key per checkpoint");
    assert!(
        content(&rows[0]).ends_with(r#""metadata":{"source": "input", "step": -1}}"#),
        "{}",
        content(&rows[0])
    );
    // The metadata column holds exactly its bytes.
    let mut source = Source::open(&path, &ReadOptions::default()).await.unwrap();
    let info = table_info(&mut source, "checkpoints").await;
    let raw = source.rows(&info).next_batch().await.unwrap().unwrap();
    let legacy::SqlValue::Blob(bytes) = &raw[0].values[4] else {
        panic!("metadata is a BLOB");
    };
    let parsed: Value = serde_json::from_str(content(&rows[0])).unwrap();
    assert_eq!(
        serde_json::to_vec(&parsed["metadata"]).unwrap(),
        serde_json::to_vec(&serde_json::from_slice::<Value>(bytes).unwrap()).unwrap()
    );
    assert!(content(&rows[0]).contains(std::str::from_utf8(bytes).unwrap()));

    // Current-schema checkpoints: the UUID v6 time.
    let file = "Hiteshankodia__Persistence-LangGraph/checkpoints.sqlite";
    let tree = corpus_tree(&corpus, &[(file, "agent/checkpoints.sqlite")]);
    let path = tree.path().join("agents/agent/checkpoints.sqlite");
    let rows = convert(
        &path,
        "agent/checkpoints.sqlite",
        "checkpoints",
        &spec_of(cases[1].2, "checkpoints"),
    )
    .await;
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|r| r.record.created_at().format("%Y-%m-%d").to_string() == "2024-11-19")
    );
    let writes = convert(
        &path,
        "agent/checkpoints.sqlite",
        "writes",
        &spec_of(cases[2].2, "writes"),
    )
    .await;
    assert_eq!(writes.len(), 6);
    let keys: std::collections::HashSet<_> =
        writes.iter().map(|r| key(r).unwrap().to_string()).collect();
    assert_eq!(keys.len(), 6);

    // CrewAI: the time in its fractional epoch text.
    let file = "jm101093__CrewAIAutoblogger/long_term_memory_storage.db";
    let tree = corpus_tree(&corpus, &[(file, "agent/ltm.db")]);
    let path = tree.path().join("agents/agent/ltm.db");
    let rows = convert(
        &path,
        "agent/ltm.db",
        "long_term_memories",
        &spec_of(cases[3].2, "long_term_memories"),
    )
    .await;
    assert_eq!(rows.len(), 33);
    assert_eq!(
        rows[0].record.created_at().to_rfc3339(),
        "2024-08-16T16:25:37.590206+00:00"
    );
}

fn spec_of(line: &str, table: &str) -> TableSpec {
    let rule = TableMap::new().with_map(line).unwrap();
    let glob = line.rsplit("files=").next().unwrap();
    rule.spec(&format!("agent/{glob}"), table).unwrap()
}

#[tokio::test]
async fn corpus_checkpoints_move_through_the_command_with_their_time() {
    let Some(corpus) =
        common::corpus("corpus_checkpoints_move_through_the_command_with_their_time")
    else {
        return;
    };
    let tree = corpus_tree(
        &corpus,
        &[
            (
                "bartoszkozakiewicz__long-term-memory-agent/checkpoints.sqlite",
                "agent/langgraph.sqlite",
            ),
            (
                "jm101093__CrewAIAutoblogger/long_term_memory_storage.db",
                "agent/long_term_memory_storage.db",
            ),
        ],
    );
    let agents = tree.path().join("agents");
    let db = TestDatabase::migrated().await;
    let out = backfill(
        &[
            "--strict",
            "--map",
            "checkpoints=memories;key=thread_id+thread_ts;time=thread_ts;json;files=langgraph.sqlite",
            "--map",
            "long_term_memories=memories;key=none",
        ],
        &agents,
        Some(&db.url),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let rows = memories(&mut conn, "checkpoints").await;
    assert_eq!(rows.len(), 63);
    assert_eq!(rows[0].1, "2024-06-04T19:26:19.623103");
    assert!(
        rows.iter()
            .all(|r| r.0.as_deref().is_some_and(|k| k.contains("/2024-06-")))
    );
    let crew = memories(&mut conn, "long_term_memories").await;
    assert_eq!(crew.len(), 33);
    assert!(
        crew.iter()
            .all(|r| r.0.is_none() && r.1.starts_with("2024-"))
    );
    let out = backfill(&["--verify"], &agents, Some(&db.url), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn the_documented_framework_maps_parse_and_fit_the_framework_schemas() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/backfill.md"))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [
        ("checkpoints.sqlite", LANGGRAPH_CHECKPOINTS),
        ("store.sqlite", LANGGRAPH_STORE),
        ("history.db", MEM0_HISTORY),
        ("long_term_memory_storage.db", CREWAI),
        ("latest_kickoff_task_outputs.db", CREWAI),
        ("flow_states.db", CREWAI),
        ("chat.db", LLAMA_CHAT_STORE),
        ("agno.db", AGNO),
    ] {
        legacy_file(&dir.path().join("agent").join(name), sql).await;
    }
    let files = survey(dir.path(), &ReadOptions::default()).await;
    let mut lines = 0;
    for line in doc.lines() {
        let (option, rest) = match line.split_once(" '") {
            Some((option @ ("--map" | "--exclude"), rest)) => (option, rest),
            _ => continue,
        };
        let text = rest.trim_end_matches('\'');
        if text.contains("TABLE") || text.contains("chroma") {
            continue;
        }
        lines += 1;
        let map = match option {
            "--map" => TableMap::new().with_map(text),
            _ => TableMap::new().with_exclude(text),
        }
        .unwrap_or_else(|e| panic!("{line}: {e}"));
        // The pre-0.2 LangGraph line is for the older schema (see the corpus test); the
        // excludes name bookkeeping tables these schemas leave out.
        if !text.contains("thread_ts") && option == "--map" {
            let check = map.check(&files);
            assert!(check.problems.is_empty(), "{line}: {check:?}");
        }
    }
    assert!(lines >= 12, "{lines} documented maps");
}
