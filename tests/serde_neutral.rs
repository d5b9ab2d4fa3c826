//! Depending on memshift leaves serde_json as its users chose it: this test binary is
//! built with memshift in the graph, so serde_json's features here are the ones every
//! user's crate gets. Stored values stay exact all the same.

use std::process::Command;

use memshift::{AgentId, AgentMemory, Json, SqliteBackend};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Tool-call arguments as agent code writes them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Arg {
    Num(f64),
    Text(String),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Call {
    name: String,
    #[serde(flatten)]
    scores: Scores,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Scores {
    score: f64,
}

#[test]
fn untagged_and_flattened_floats_read_as_without_memshift() {
    // With `arbitrary_precision` on, both fail: "data did not match any variant of
    // untagged enum Arg" and "invalid type: map, expected f64".
    assert_eq!(serde_json::from_str::<Arg>("1.5").unwrap(), Arg::Num(1.5));
    assert_eq!(
        serde_json::from_str::<Arg>(r#""x""#).unwrap(),
        Arg::Text("x".into())
    );
    let call: Call = serde_json::from_str(r#"{"name": "search", "score": 0.25}"#).unwrap();
    assert_eq!(call.scores.score, 0.25);
    assert_eq!(
        serde_json::from_value::<Call>(json!({"name": "n", "score": 2.5})).unwrap(),
        Call {
            name: "n".into(),
            scores: Scores { score: 2.5 }
        }
    );
}

#[test]
fn json_macro_objects_have_serde_json_default_key_order() {
    // Without `preserve_order`, a `Map` is a `BTreeMap`: keys come out sorted.
    assert_eq!(
        json!({"b": 1, "a": 2, "c": {"z": 0, "y": 1}}).to_string(),
        r#"{"a":2,"b":1,"c":{"y":1,"z":0}}"#
    );
    let parsed: Value = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
    assert_eq!(parsed.to_string(), r#"{"a":2,"b":1}"#);
}

/// The features cargo resolves for serde_json in this package's build, tests included.
#[test]
fn the_resolved_serde_json_features_leak_nothing() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--edges",
            "all,features",
            "--invert",
            "serde_json",
            "--features",
            "testing",
        ])
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.contains(r#"serde_json feature "raw_value""#),
        "not the feature tree expected:\n{tree}"
    );
    for leaking in ["arbitrary_precision", "preserve_order"] {
        assert!(
            !tree.contains(leaking),
            "serde_json's {leaking} is on:\n{tree}"
        );
    }
}

/// A user's own types go in and out as they wrote them, and the stored text is exact.
#[tokio::test]
async fn users_types_are_stored_as_they_serialize() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Step {
        zeta: u128,
        args: Vec<Arg>,
        call: Call,
    }
    let dir = tempfile::tempdir().unwrap();
    let memory = AgentMemory::with_backend(
        AgentId::new("neutral").unwrap(),
        std::sync::Arc::new(SqliteBackend::new(dir.path())),
    );
    let step = Step {
        zeta: u128::from(u64::MAX) + 1,
        args: vec![Arg::Num(1.5), Arg::Text("x".into())],
        call: Call {
            name: "search".into(),
            scores: Scores { score: 0.25 },
        },
    };
    memory.store_memory("step", &step).await.unwrap();
    let text =
        r#"{"zeta":18446744073709551616,"args":[1.5,"x"],"call":{"name":"search","score":0.25}}"#;
    let stored: Json = memory.retrieve_memory("step").await.unwrap().unwrap();
    assert_eq!(
        stored.as_str(),
        text,
        "fields in their order, numbers exact"
    );
    let back: Step = memory.retrieve_memory("step").await.unwrap().unwrap();
    assert_eq!(back, step);

    // Exact text in, exact text out; a `Value` reads it as the user's serde_json does.
    let exact: Json = r#"{"b": 2.50, "a": 18446744073709551616}"#.parse().unwrap();
    memory.store_memory("exact", &exact).await.unwrap();
    let again: Json = memory.retrieve_memory("exact").await.unwrap().unwrap();
    assert_eq!(again, exact);
    let value: Value = memory.retrieve_memory("exact").await.unwrap().unwrap();
    assert_eq!(value.to_string(), r#"{"a":1.8446744073709552e+19,"b":2.5}"#);
    memory.flush().await.unwrap();
}

/// `?` takes the user's own serde_json errors in a function returning memshift's.
#[test]
fn serde_json_errors_convert_with_question_mark() {
    fn parse(text: &str) -> memshift::Result<Value> {
        Ok(serde_json::from_str(text)?)
    }
    assert!(parse("[1]").is_ok());
    let err = parse("{oops").unwrap_err();
    assert!(matches!(err, memshift::Error::Json { .. }), "{err:?}");
}
