//! Stages held centrally in PostgreSQL: processes follow them at run time, `memctl stage
//! set` moves one agent, a list, a pattern or a percentage, and the guard rails hold
//! (one stage at a time, a drain before the authoritative side changes, a refusal on
//! unexplained shadow mismatches, a history of every change).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent_process::{Process, assert_acknowledged, changed_at, pause, resume};
use common::{memctl, stdout};
use memshift::backend::DualBackend;
use memshift::backend::dual::{Cohort, StageRequest, in_percent};
use memshift::backend::replica::Replica;
use memshift::config::Stage;
use memshift::testing::faulty::FaultyBackend;
use memshift::testing::postgres::TestDatabase;
use memshift::{AgentId, Json, Memory, MemoryBackend, SqliteBackend};
use serde_json::{Value, json};

/// A dual backend over faultable sides that follows the central stages of `db`.
struct Fixture {
    dual: DualBackend,
    sqlite_faults: Arc<FaultyBackend>,
    postgres_faults: Arc<FaultyBackend>,
    sqlite: Arc<dyn Replica>,
    postgres: Arc<dyn Replica>,
    agent: AgentId,
    _dir: tempfile::TempDir,
    _db: TestDatabase,
}

impl Fixture {
    async fn new(start: Stage) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::migrated().await;
        let sqlite: Arc<dyn Replica> = Arc::new(SqliteBackend::new(dir.path()));
        let postgres_backend = db.backend().await;
        let pool = postgres_backend.pool().clone();
        let postgres: Arc<dyn Replica> = Arc::new(postgres_backend);
        let postgres_faults = Arc::new(FaultyBackend::new(postgres.clone()));
        let sqlite_faults = Arc::new(FaultyBackend::new(sqlite.clone()));
        let dual = DualBackend::new(sqlite_faults.clone(), postgres_faults.clone(), start);
        dual.follow_central_stages(pool, Duration::from_millis(200), None, true)
            .await;
        Fixture {
            dual,
            sqlite_faults,
            postgres_faults,
            sqlite,
            postgres,
            agent: AgentId::new("steered").unwrap(),
            _dir: dir,
            _db: db,
        }
    }

    async fn put(&self, key: &str, value: Value) {
        let memory = Memory::new(key, Json::from(value));
        self.dual
            .put_memory(&self.agent, &memory)
            .await
            .unwrap_or_else(|e| panic!("store {key}: {e:?}"));
    }

    async fn move_to(
        &self,
        to: Stage,
        request: &StageRequest,
    ) -> memshift::backend::dual::StageMove {
        let cohort = Cohort::Agents(vec![self.agent.clone()]);
        let mut moves = self
            .dual
            .move_stage(&cohort, to, request)
            .await
            .expect("move");
        assert_eq!(moves.len(), 1);
        moves.remove(0)
    }

    /// Waits until this process follows the agent to `stage` (the change is notified).
    async fn followed(&self, stage: Stage) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.dual.stage_of(&self.agent) != stage {
            assert!(Instant::now() < deadline, "never followed to {stage}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn request(reason: &str) -> StageRequest {
    StageRequest {
        reason: reason.into(),
        by: "tester".into(),
        ..StageRequest::default()
    }
}

/// Where the central table has no row, the stages set in code hold (periodic reads do
/// not undo them); an agent's central row wins over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_rows_win_over_stages_set_in_code_which_hold_elsewhere() {
    let fx = Fixture::new(Stage::DualWrite).await;
    let other = AgentId::new("other").unwrap();
    fx.dual.set_stage(Stage::Shadow);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fx.dual.stage_of(&fx.agent),
        Stage::Shadow,
        "kept over three reads"
    );

    let moved = fx.move_to(Stage::Live, &request("")).await;
    assert_eq!(
        (moved.from, moved.outcome),
        (Stage::Shadow, "moved"),
        "{moved:?}"
    );
    fx.followed(Stage::Live).await;
    fx.dual.set_stage(Stage::Sqlite);
    fx.dual.set_agent_stage(&fx.agent, Some(Stage::DualWrite));
    assert_eq!(
        fx.dual.stage_of(&fx.agent),
        Stage::Live,
        "the central row wins"
    );
    assert_eq!(fx.dual.stage_of(&other), Stage::Sqlite);
    assert_eq!(fx.dual.stage(), Stage::Sqlite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stage_forward_at_a_time_unless_forced_and_back_any_time() {
    let fx = Fixture::new(Stage::DualWrite).await;
    let jump = fx.move_to(Stage::Live, &request("skip shadow")).await;
    assert_eq!(jump.outcome, "refused", "{jump:?}");
    assert!(
        jump.why.as_deref().unwrap().contains("the next is shadow"),
        "{jump:?}"
    );
    assert_eq!(fx.dual.stage_of(&fx.agent), Stage::DualWrite);

    let forced = StageRequest {
        force: true,
        ..request("incident drill")
    };
    let jump = fx.move_to(Stage::Live, &forced).await;
    assert_eq!(jump.outcome, "moved", "{jump:?}");
    fx.followed(Stage::Live).await;

    // Back three stages at once, with a write owed to PostgreSQL: always allowed.
    fx.postgres_faults.set_down(true);
    assert!(
        fx.dual
            .put_memory(&fx.agent, &Memory::new("k", Json::from(json!(1))))
            .await
            .is_err(),
        "PostgreSQL leads in live"
    );
    fx.postgres_faults.set_down(false);
    let back = fx.move_to(Stage::Sqlite, &request("roll back")).await;
    assert_eq!(back.outcome, "moved", "{back:?}");
    fx.followed(Stage::Sqlite).await;

    let history = fx.dual.stage_history(Some(&fx.agent), 10).await.unwrap();
    let rows: Vec<(Option<&str>, &str, bool, &str)> = history
        .iter()
        .map(|c| {
            (
                c.from.as_deref(),
                c.to.as_str(),
                c.forced,
                c.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (Some("live"), "sqlite", false, "roll back"),
            (None, "live", true, "incident drill"),
        ],
        "newest first; the refused jump is not recorded"
    );
    assert!(
        history
            .iter()
            .all(|c| c.by == "tester" && c.agent.as_deref() == Some("steered"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handing_authority_to_postgres_first_drains_the_owed_writes() {
    let fx = Fixture::new(Stage::Shadow).await;
    fx.postgres_faults.set_down(true);
    for i in 0..3 {
        fx.put(&format!("owed-{i}"), json!(i)).await;
    }
    // PostgreSQL still down: the drain cannot replay them, so the step is refused.
    let refused = fx.move_to(Stage::Live, &request("")).await;
    assert_eq!(refused.outcome, "refused", "{refused:?}");
    assert!(
        refused.why.as_deref().unwrap().contains("the drain failed"),
        "{refused:?}"
    );
    assert_eq!(fx.dual.stage_of(&fx.agent), Stage::Shadow);

    fx.postgres_faults.set_down(false);
    // Refused while the backend has not found PostgreSQL back yet (it pings it again
    // shortly); a refusal changes nothing, so the operator simply asks again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let attempt = fx.move_to(Stage::Live, &request("drained")).await;
        if attempt.outcome != "refused" || Instant::now() > deadline {
            break attempt;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (moved.outcome, moved.drained),
        ("moved", Some(3)),
        "{moved:?}"
    );
    for i in 0..3 {
        let found = fx
            .postgres
            .get_memory(&fx.agent, &format!("owed-{i}"))
            .await
            .unwrap();
        assert_eq!(found.map(|m| m.content), Some(Json::from(json!(i))));
    }
    assert_eq!(fx.dual.owed_pending().await.unwrap(), 0);

    // Back to shadow: SQLite leads again, so what it missed meanwhile is replayed first.
    fx.followed(Stage::Live).await;
    fx.sqlite_faults.set_writes_failing(true);
    fx.put("missed-by-sqlite", json!("live")).await;
    fx.sqlite_faults.set_writes_failing(false);
    let back = fx.move_to(Stage::Shadow, &request("back")).await;
    assert_eq!((back.outcome, back.drained), ("moved", Some(1)), "{back:?}");
    let found = fx
        .sqlite
        .get_memory(&fx.agent, "missed-by-sqlite")
        .await
        .unwrap();
    assert_eq!(found.map(|m| m.content), Some(Json::from(json!("live"))));

    // A step back is never refused, even when its drain cannot finish.
    fx.followed(Stage::Shadow).await;
    fx.move_to(Stage::Live, &request("")).await;
    fx.followed(Stage::Live).await;
    fx.sqlite_faults.set_writes_failing(true);
    fx.put("missed-again", json!(2)).await;
    let back = fx.move_to(Stage::Shadow, &request("back again")).await;
    assert_eq!(back.outcome, "moved", "{back:?}");
    assert!(
        back.why
            .as_deref()
            .unwrap()
            .contains("without a full drain"),
        "{back:?}"
    );
    fx.sqlite_faults.set_writes_failing(false);
    fx.dual.repair(&fx.agent).await.expect("repair");
    let found = fx
        .sqlite
        .get_memory(&fx.agent, "missed-again")
        .await
        .unwrap();
    assert!(
        found.is_some(),
        "journaled, and replayed by the next repair"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexplained_shadow_mismatches_hold_the_step_to_live() {
    let fx = Fixture::new(Stage::Shadow).await;
    fx.put("k", json!("same")).await;
    // PostgreSQL's copy changes behind the library's back; a shadow read sees it.
    let stored = fx
        .postgres
        .get_memory(&fx.agent, "k")
        .await
        .unwrap()
        .unwrap();
    let diverged = Memory {
        content: Json::from(json!("changed in postgres")),
        ..stored.clone()
    };
    let written = fx
        .postgres
        .restore_memory(&fx.agent, "k", stored.updated_at, Some(&diverged))
        .await
        .unwrap();
    assert!(written, "PostgreSQL's copy was there to change");
    let read = fx.dual.get_memory(&fx.agent, "k").await.unwrap().unwrap();
    assert_eq!(
        read.content,
        Json::from(json!("same")),
        "SQLite answers in shadow"
    );

    let refused = fx.move_to(Stage::Live, &request("")).await;
    assert_eq!(refused.outcome, "refused", "{refused:?}");
    assert!(
        refused
            .why
            .as_deref()
            .unwrap()
            .contains("1 shadow mismatches"),
        "{refused:?}"
    );

    let view = fx.dual.stage_view().await.unwrap();
    let row = view.iter().find(|a| a.agent == "steered").expect("listed");
    assert_eq!(
        (row.stage, row.counts.shadow_mismatches),
        (Stage::Shadow, 1)
    );

    let explained = StageRequest {
        mismatches_explained: Some("edited by the admin app on purpose".into()),
        ..request("go live")
    };
    let moved = fx.move_to(Stage::Live, &explained).await;
    assert_eq!(moved.outcome, "moved", "{moved:?}");
    let history = fx.dual.stage_history(Some(&fx.agent), 1).await.unwrap();
    assert!(
        history[0]
            .reason
            .contains("edited by the admin app on purpose"),
        "{history:?}"
    );
    // The new stage counts from zero.
    let view = fx.dual.stage_view().await.unwrap();
    let row = view.iter().find(|a| a.agent == "steered").unwrap();
    assert_eq!((row.stage, row.counts.shadow_mismatches), (Stage::Live, 0));
}

/// `memctl stage set` by pattern and by percentage over agents found as folders, and
/// the percentage's cohort is the same every time and grows by inclusion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohorts_by_pattern_and_by_a_stable_percentage() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..20)
        .flat_map(|i| [format!("crawler-{i:02}"), format!("writer-{i:02}")])
        .collect();
    for name in &names {
        std::fs::create_dir(dir.path().join(name)).unwrap();
    }
    // One agent's legacy file, brought into PostgreSQL by a backfill.
    common::legacy_file(
        &dir.path().join("crawler-03").join("legacy.db"),
        &common::memory_table(3),
    )
    .await;
    let options = memshift::backfill::BackfillOptions::new(dir.path());
    let report = memshift::backfill::run(&db.url, &options, &())
        .await
        .unwrap();
    assert!(report.succeeded(), "{report:#?}");
    let agents = dir.path().to_str().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AGENTS_PATH", agents),
        ("MEMORY_STAGE", "dualwrite"),
    ];
    let out = memctl(&env, &["stage", "--json"]);
    let view: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    for agent in &view {
        let caught_up = !agent["last_catch_up"].is_null();
        assert_eq!(caught_up, agent["agent"] == "crawler-03", "{agent}");
    }
    let stages = || -> BTreeMap<String, (String, String)> {
        let out = memctl(&env, &["stage", "--json"]);
        assert!(out.status.success(), "{out:?}");
        let view: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
        view.iter()
            .map(|a| {
                let field = |f: &str| a[f].as_str().unwrap().to_owned();
                (field("agent"), (field("stage"), field("source")))
            })
            .collect()
    };
    let before = stages();
    assert_eq!(before.len(), names.len());
    assert!(
        before
            .values()
            .all(|(s, src)| s == "dualwrite" && src == "start")
    );

    let out = memctl(
        &env,
        &[
            "stage",
            "set",
            "shadow",
            "--pattern",
            "crawler-*",
            "--by",
            "ops",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let after = stages();
    for (name, (stage, _)) in &after {
        let want = if name.starts_with("crawler-") {
            "shadow"
        } else {
            "dualwrite"
        };
        assert_eq!(stage, want, "{name}");
    }

    let moved_by = |percent: &str| -> BTreeSet<String> {
        let out = memctl(
            &env,
            &["stage", "set", "shadow", "--percent", percent, "--json"],
        );
        assert!(out.status.success(), "{out:?}");
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|m| m["agent"].as_str().unwrap().to_owned())
            .collect()
    };
    let writers = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .filter(|n| n.starts_with("writer-"))
            .cloned()
            .collect()
    };
    let ten = moved_by("10");
    let ten_again = moved_by("10");
    let twenty_five = moved_by("25");
    assert_eq!(ten, ten_again, "the same agents every time");
    assert!(ten.is_subset(&twenty_five), "10% stays inside 25%");
    let expected: BTreeSet<String> = names
        .iter()
        .filter(|n| in_percent(n, 25.0))
        .cloned()
        .collect();
    assert_eq!(
        twenty_five, expected,
        "the cohort is the names' hash buckets"
    );
    assert!(!twenty_five.is_empty() && twenty_five.len() < names.len());
    let now = stages();
    for name in writers(&twenty_five) {
        assert_eq!(
            now[&name],
            ("shadow".to_owned(), "agent".to_owned()),
            "{name}"
        );
    }
    let untouched = names
        .iter()
        .filter(|n| n.starts_with("writer-") && !twenty_five.contains(*n));
    for name in untouched {
        assert_eq!(now[name].0, "dualwrite", "{name}");
    }

    // A jump is refused for each agent it names, with exit status 3; nothing moves.
    let out = memctl(&env, &["stage", "set", "postgres", "crawler-00"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stdout(&out).contains("refused: one stage at a time"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stages()["crawler-00"].0, "shadow");

    let out = memctl(&env, &["stage", "history", "--json"]);
    let history: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let crawlers = history
        .iter()
        .filter(|c| c["agent"].as_str().unwrap().starts_with("crawler-"));
    assert_eq!(crawlers.clone().count(), 20);
    assert!(
        crawlers
            .clone()
            .all(|c| c["by"] == "ops" && c["to"] == "shadow")
    );
}

// ---------------------------------------------------------------------------------------
// Two processes of one agent while the stage walks
// ---------------------------------------------------------------------------------------

/// Two processes of one agent store and read their keys while `memctl stage set` walks
/// the agent from sqlite to postgres and back. Each process follows each change within
/// the bound; after each step, with both paused and the agent repaired, both sides hold
/// the same memories and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_follow_the_stage_through_the_walk_and_lose_nothing() {
    /// The most a process may take to follow a change (the notification normally
    /// arrives within milliseconds; the periodic read is the fallback).
    const BOUND_MS: u128 = 3_000;
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AGENTS_PATH", agents),
        ("MEMORY_STAGE", "sqlite"),
        ("MEMORY_STAGE_POLL", "1"),
    ];
    let mut processes = [
        Process::start(&env, "shared-agent", "p1"),
        Process::start(&env, "shared-agent", "p2"),
    ];
    let agent = AgentId::new("shared-agent").unwrap();
    let sqlite = SqliteBackend::new(dir.path());
    let postgres = db.backend().await;

    let walk = [
        "dualwrite",
        "shadow",
        "live",
        "rampdown",
        "postgres",
        "rampdown",
        "live",
        "shadow",
        "dualwrite",
        "sqlite",
    ];
    let mut delays = Vec::new();
    for (step, stage) in walk.iter().enumerate() {
        // Let both processes write for a while at the stage they are at.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if step == 3 {
            // The listening connections die: the periodic read still brings the change.
            let killed: i64 = sqlx::query_scalar(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity
                 where datname = current_database() and query ilike 'listen%'",
            )
            .fetch_one(postgres.pool())
            .await
            .unwrap();
            assert!(killed >= 2, "both processes listen ({killed} listeners)");
        }
        let out = memctl(
            &env,
            &[
                "--agent",
                "shared-agent",
                "stage",
                "set",
                stage,
                "--reason",
                "walk",
            ],
        );
        assert!(out.status.success(), "step to {stage}: {out:?}");
        assert!(stdout(&out).contains("moved"), "{}", stdout(&out));
        // Measured from the change's transaction (its history row's time).
        let changed = changed_at(postgres.pool(), "shared-agent").await;
        for (i, process) in processes.iter_mut().enumerate() {
            let delay = process.follows(stage, changed);
            assert!(
                delay <= BOUND_MS,
                "process {i} took {delay} ms to follow to {stage}"
            );
            delays.push((*stage, i, delay));
        }

        // Pause both, repair, and check both sides and every acknowledged write.
        pause(&mut processes);
        let repaired = memctl(&env, &["--agent", "shared-agent", "repair"]);
        assert!(repaired.status.success(), "repair at {stage}: {repaired:?}");
        let stats = memctl(&env, &["--agent", "shared-agent", "stats"]);
        let stats: Value = serde_json::from_str(&stdout(&stats)).unwrap();
        let comparison = &stats["comparison"];
        for list in ["only_sqlite", "only_postgres", "different"] {
            assert_eq!(comparison[list], json!([]), "at {stage}: {stats}");
        }
        assert_eq!(stats["stage"], json!(stage), "memctl follows too");
        let sides = [&sqlite as &dyn MemoryBackend, &postgres];
        assert_acknowledged(&processes, &agent, &sides, stage).await;
        resume(&mut processes);
    }
    for process in processes.iter_mut() {
        drop(process.stdin.take());
        let status = process.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        process.read();
        assert!(
            process.acked.len() == 4,
            "each process wrote its keys: {:?}",
            process.acked
        );
    }
    let worst = delays.iter().map(|d| d.2).max().unwrap();
    let mean = delays.iter().map(|d| d.2).sum::<u128>() / delays.len() as u128;
    println!("stage followed in {mean} ms on average, {worst} ms at worst: {delays:?}");
}
