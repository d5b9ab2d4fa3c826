//! The dual backend end to end through memctl, as an operator walks it: keys from the
//! SQLite days read under `live`, a write while PostgreSQL is stopped repaired after it
//! restarts, a delete under `live` that stays gone in every stage. Stops the real test
//! server, so this file holds one test.

mod common;

use common::{RestartOnDrop, memctl, pg, stdout};
use memshift::testing::postgres::TestDatabase;

const STAGES: [&str; 6] = [
    "sqlite",
    "dualwrite",
    "shadow",
    "live",
    "rampdown",
    "postgres",
];

#[tokio::test]
async fn memctl_walks_keys_through_the_stages() {
    let db = TestDatabase::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let agents = dir.path().to_str().unwrap();
    let run = |backend: &str, stage: &str, args: &[&str]| {
        let env = [
            ("DATABASE_URL", db.url.as_str()),
            ("AGENTS_PATH", agents),
            ("MEMORY_BACKEND", backend),
            ("MEMORY_STAGE", stage),
        ];
        memctl(&env, args)
    };
    let get =
        |backend: &str, stage: &str, key: &str| run(backend, stage, &["--agent", "a", "get", key]);

    // Stored in the SQLite days, read under dual/live: now in PostgreSQL, same content.
    let old = r#"{"note":"from the sqlite days","n":2.50,"big":123456789012345678901234567890}"#;
    assert!(
        run("sqlite", "", &["--agent", "a", "store", "old", old])
            .status
            .success()
    );
    assert_eq!(
        stdout(&get("postgres", "", "old")),
        "",
        "PostgreSQL has it before any dual read"
    );
    assert_eq!(stdout(&get("dual", "live", "old")), format!("{old}\n"));
    assert_eq!(
        stdout(&get("postgres", "", "old")),
        format!("{old}\n"),
        "the live read copied it"
    );

    // Stored under dualwrite while PostgreSQL is stopped: owed, then repaired.
    {
        let _restart = RestartOnDrop;
        pg("stop");
        let stored = run(
            "dual",
            "dualwrite",
            &["--agent", "a", "store", "offline", r#"{"while":"down"}"#],
        );
        assert!(
            stored.status.success(),
            "dualwrite must keep working: {}",
            String::from_utf8_lossy(&stored.stderr)
        );
        assert_eq!(
            stdout(&get("dual", "dualwrite", "offline")),
            "{\"while\":\"down\"}\n"
        );
        let stats = stdout(&run("dual", "dualwrite", &["stats"]));
        assert!(stats.contains("\"owed_to_postgres\":1"), "{stats}");
        assert!(stats.contains("\"owed_to_sqlite\":{\"error\""), "{stats}");
    }
    let repaired = run("dual", "dualwrite", &["repair"]);
    assert!(
        repaired.status.success(),
        "{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert_eq!(
        json_of(&stdout(&repaired)),
        serde_json::json!({"repaired": {"a": {"to_postgres": 1, "to_sqlite": 0, "parked": 0}}, "failed": {}})
    );
    assert_eq!(
        stdout(&get("postgres", "", "offline")),
        "{\"while\":\"down\"}\n"
    );

    // Deleted under live: gone in every stage, and from both sides.
    assert_eq!(
        run("dual", "live", &["--agent", "a", "delete", "old"])
            .status
            .code(),
        Some(0)
    );
    for stage in STAGES {
        assert_eq!(
            get("dual", stage, "old").status.code(),
            Some(1),
            "{stage} brought a deleted key back"
        );
    }
    assert_eq!(get("sqlite", "", "old").status.code(), Some(1));
    assert_eq!(get("postgres", "", "old").status.code(), Some(1));

    let out = run("dual", "live", &["--agent", "a", "stats"]);
    let stats = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        json_of(&stdout(&out))["comparison"],
        serde_json::json!({"same": 1, "only_sqlite": [], "only_postgres": [], "different": []}),
        "{stats}"
    );
}

/// memctl's JSON output, read as a value: its key order is serde_json's, not part of
/// what it promises.
fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}
