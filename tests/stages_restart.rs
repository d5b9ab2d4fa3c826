//! Central stages while PostgreSQL is down: a running process keeps the stage it last
//! read, a process started meanwhile takes the stages cached on the machine instead of
//! its own `MEMORY_STAGE`, and both follow the next change once the server is back.
//! Stops the real test server, so this file holds one test.

mod common;

use std::time::Duration;

use common::agent_process::{Process, assert_acknowledged, changed_at, pause, resume};
use common::{RestartOnDrop, memctl, pg, stdout};
use memshift::testing::postgres::TestDatabase;
use memshift::{AgentId, MemoryBackend, SqliteBackend};

#[tokio::test]
async fn stages_hold_while_postgres_is_down_and_follow_once_it_is_back() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    // Processes start at sqlite; the central table says dualwrite.
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AGENTS_PATH", agents),
        ("MEMORY_STAGE", "sqlite"),
        ("MEMORY_STAGE_POLL", "0.5"),
    ];
    let set = memctl(&env, &["stage", "set", "dualwrite", "kept"]);
    assert!(set.status.success(), "{set:?}");
    let mut processes = vec![Process::start(&env, "kept", "p1")];
    processes[0].follows("dualwrite", 0);

    {
        let _restart = RestartOnDrop;
        pg("stop");
        // Another process of the agent starts while the server is down.
        processes.push(Process::start(&env, "kept", "p2"));
        processes[1].follows("dualwrite", 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, process) in processes.iter_mut().enumerate() {
            process.read();
            let seen: Vec<&str> = process.stages.iter().map(|(s, _)| s.as_str()).collect();
            assert_eq!(seen, ["dualwrite"], "process {i} kept its stage");
            let acked = process.acked.len();
            assert!(acked > 0, "process {i} stores while PostgreSQL is down");
        }
        pg("start-existing");
    }

    let set = memctl(
        &env,
        &["stage", "set", "shadow", "kept", "--reason", "back up"],
    );
    assert!(set.status.success(), "{set:?}");
    assert!(
        stdout(&set).contains("dualwrite -> shadow moved"),
        "{}",
        stdout(&set)
    );
    let postgres = db.backend().await;
    let changed = changed_at(postgres.pool(), "kept").await;
    for (i, process) in processes.iter_mut().enumerate() {
        let delay = process.follows("shadow", changed);
        assert!(
            delay <= 5_000,
            "process {i} took {delay} ms after the restart"
        );
        println!("process {i} followed the first change after the restart in {delay} ms");
    }

    // What they stored while the server was down reaches it with a repair.
    pause(&mut processes);
    let repaired = memctl(&env, &["--agent", "kept", "repair"]);
    assert!(repaired.status.success(), "{repaired:?}");
    let sqlite = SqliteBackend::new(dir.path());
    let sides = [&sqlite as &dyn MemoryBackend, &postgres];
    let agent = AgentId::new("kept").unwrap();
    assert_acknowledged(&processes, &agent, &sides, "after the restart").await;
    resume(&mut processes);
    for process in processes.iter_mut() {
        drop(process.stdin.take());
        assert!(process.child.wait().unwrap().success());
    }
}
