//! The replication scenarios: what [`Replica`] promises, run against both storage
//! backends by [`replication_suite!`](crate::replication_suite).

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::unique_agent;
use crate::backend::replica::{Change, Outcome, OwedWrite, Replica};
use crate::error::Error;
use crate::json::Json;
use crate::record::{AgentId, Memory, Tool, now};

fn version(memory: &Memory, at: DateTime<Utc>, content: Value) -> Memory {
    Memory {
        content: content.into(),
        updated_at: at,
        ..memory.clone()
    }
}

async fn value(backend: &dyn Replica, agent: &AgentId, key: &str) -> Option<Value> {
    let found = backend.get_memory(agent, key).await.expect("read");
    found.map(|m| m.content.parse().expect("stored JSON reads back"))
}

/// A copy of one version of key `k`, or of a delete of it.
enum Op {
    Put(Box<Memory>),
    Delete(DateTime<Utc>),
}

/// Applies `ops` to `backend` in `order`.
async fn apply_in_order(backend: &dyn Replica, agent: &AgentId, ops: &[Op], order: &[usize]) {
    for &i in order {
        match &ops[i] {
            Op::Put(m) => drop(backend.apply_memory(agent, m).await.expect("apply")),
            Op::Delete(at) => drop(
                backend
                    .apply_memory_delete(agent, "k", *at)
                    .await
                    .expect("delete"),
            ),
        }
    }
}

/// Versions and deletes of one key applied in any order end in the same state: the
/// newest write, a delete winning over a value of its own time or older.
pub async fn copies_converge_in_any_order(backend: &dyn Replica) {
    let t = now();
    let us = Duration::microseconds;
    // A fresh id each time: in PostgreSQL ids are unique across agents.
    let ops = || {
        let base = Memory::new("k", json!(0));
        vec![
            Op::Put(Box::new(version(&base, t, json!("v1")))),
            Op::Put(Box::new(version(&base, t + us(20), json!("v3")))),
            Op::Delete(t + us(10)),
            Op::Put(Box::new(version(&base, t + us(5), json!("v2")))),
        ]
    };
    let orders: [[usize; 4]; 4] = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]];
    for order in orders {
        let agent = unique_agent("converge");
        let ops = ops();
        apply_in_order(backend, &agent, &ops, &order).await;
        assert_eq!(
            value(backend, &agent, "k").await,
            Some(json!("v3")),
            "{}: order {order:?}",
            backend.name()
        );
        let stored = backend.get_memory(&agent, "k").await.unwrap().unwrap();
        assert_eq!(
            stored.updated_at,
            t + us(20),
            "{}: the version is kept",
            backend.name()
        );
    }
    // Without the newest value, the delete stands in every order.
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let agent = unique_agent("converge");
        let mut ops = ops();
        ops.remove(1);
        apply_in_order(backend, &agent, &ops, &order).await;
        assert_eq!(
            value(backend, &agent, "k").await,
            None,
            "{}: {order:?}",
            backend.name()
        );
        assert_eq!(
            backend.memory_tombstone(&agent, "k").await.unwrap(),
            Some(t + us(10))
        );
    }
}

/// Two different values with the same version end the same way in both orders: the one
/// whose content sorts later by bytes, on every backend.
pub async fn equal_versions_are_decided_the_same_way(backend: &dyn Replica) {
    let at = now();
    for b_first in [false, true] {
        let base = Memory::new("k", json!(0));
        let a = version(&base, at, json!({"writer": "a"}));
        let b = version(&base, at, json!({"writer": "b"}));
        let (first, second) = if b_first { (&b, &a) } else { (&a, &b) };
        let agent = unique_agent("tie");
        backend.apply_memory(&agent, first).await.expect("apply");
        backend.apply_memory(&agent, second).await.expect("apply");
        assert_eq!(
            value(backend, &agent, "k").await,
            Some(json!({"writer": "b"})),
            "{}: ties go to the content that sorts later",
            backend.name()
        );
    }
    for b_first in [false, true] {
        let tool = Tool::new("t", json!("a"));
        let other = Tool {
            content: json!("b").into(),
            ..tool.clone()
        };
        let (first, second) = if b_first {
            (&other, &tool)
        } else {
            (&tool, &other)
        };
        let agent = unique_agent("tie");
        backend.apply_tool(&agent, first).await.expect("apply tool");
        backend
            .apply_tool(&agent, second)
            .await
            .expect("apply tool");
        let stored = backend.get_tool(&agent, "t").await.unwrap().unwrap();
        assert_eq!(stored.content, json!("b"), "{}", backend.name());
    }
}

/// An older copy is kept out and says so; a newer one returns what is stored.
pub async fn newer_wins_and_copies_say_what_is_stored(backend: &dyn Replica) {
    let agent = unique_agent("newer");
    let old = Memory::new("k", json!("old"));
    let new = version(&old, old.updated_at + Duration::seconds(1), json!("new"));
    let stored = backend.apply_memory(&agent, &new).await.unwrap();
    assert_eq!(
        stored.as_ref().map(|m| m.content.as_str()),
        Some(r#""new""#)
    );
    assert_eq!(backend.apply_memory(&agent, &old).await.unwrap(), None);
    assert_eq!(value(backend, &agent, "k").await, Some(json!("new")));
    let tool = Tool::new("t", json!(1));
    let newer = Tool {
        content: Json::from(json!(2)),
        updated_at: tool.updated_at + Duration::seconds(1),
        ..tool.clone()
    };
    let stored = backend.apply_tool(&agent, &newer).await.unwrap();
    assert_eq!(stored.map(|t| t.content), Some(Json::from(json!(2))));
    assert_eq!(backend.apply_tool(&agent, &tool).await.unwrap(), None);
}

/// A restore changes only the exact version it names.
pub async fn restores_touch_only_the_exact_version(backend: &dyn Replica) {
    let agent = unique_agent("restore");
    let first = Memory::new("k", json!("first"));
    backend.apply_memory(&agent, &first).await.unwrap();
    let later = first.updated_at + Duration::microseconds(7);
    let back = version(&first, later, json!("back"));
    assert!(
        !backend
            .restore_memory(&agent, "k", later, Some(&back))
            .await
            .unwrap(),
        "{}: another version is left alone",
        backend.name()
    );
    assert_eq!(value(backend, &agent, "k").await, Some(json!("first")));
    assert!(
        backend
            .restore_memory(&agent, "k", first.updated_at, Some(&back))
            .await
            .unwrap()
    );
    assert_eq!(value(backend, &agent, "k").await, Some(json!("back")));
    assert!(
        backend
            .restore_memory(&agent, "k", later, None)
            .await
            .unwrap()
    );
    assert_eq!(value(backend, &agent, "k").await, None);
}

/// A write as the authoritative side moves the version past what it replaces: a value
/// dated in the future (a clock that was ahead, a legacy time) is overwritten and
/// deleted like any other, and a store after a delete outranks the delete.
pub async fn commits_move_versions_forward(backend: &dyn Replica) {
    let agent = unique_agent("forward");
    let future = now() + Duration::days(5 * 365);
    let ahead = version(
        &Memory::new("k", json!("from the future")),
        future,
        json!("from the future"),
    );
    backend.apply_memory(&agent, &ahead).await.unwrap();
    let store = Memory::new("k", json!("now"));
    let committed = backend
        .commit(&agent, Change::PutMemory(&store), false, &[])
        .await
        .expect("commit");
    let Outcome::Memory(stored) = committed.outcome else {
        panic!("a store commits a memory")
    };
    assert_eq!(stored.updated_at, future + Duration::microseconds(1));
    assert_eq!(stored.id, ahead.id, "the key keeps its id");
    assert_eq!(value(backend, &agent, "k").await, Some(json!("now")));
    assert_eq!(
        backend.get_memory(&agent, "k").await.unwrap(),
        Some(stored.clone())
    );

    let deleted = backend
        .commit(
            &agent,
            Change::DeleteMemory {
                key: "k",
                at: now(),
            },
            false,
            &[],
        )
        .await
        .expect("delete");
    let Outcome::Deleted { existed, at } = deleted.outcome else {
        panic!("a delete commits a delete")
    };
    assert!(existed, "{}", backend.name());
    assert!(
        at > stored.updated_at,
        "the delete outranks the value it deleted"
    );
    assert_eq!(value(backend, &agent, "k").await, None);
    // An older copy of the value never comes back.
    assert_eq!(backend.apply_memory(&agent, &stored).await.unwrap(), None);
    let again = Memory::new("k", json!("again"));
    backend
        .commit(&agent, Change::PutMemory(&again), false, &[])
        .await
        .expect("store after the delete");
    assert_eq!(value(backend, &agent, "k").await, Some(json!("again")));

    // One microsecond past the last of a year carries into the next.
    let year_end = DateTime::parse_from_rfc3339("2031-12-31T23:59:59.999999Z")
        .unwrap()
        .with_timezone(&Utc);
    let last = version(&Memory::new("carry", json!(1)), year_end, json!(1));
    backend.apply_memory(&agent, &last).await.unwrap();
    let Outcome::Memory(next) = backend
        .commit(
            &agent,
            Change::PutMemory(&Memory::new("carry", json!(2))),
            false,
            &[],
        )
        .await
        .unwrap()
        .outcome
    else {
        panic!("a store commits a memory")
    };
    assert_eq!(
        next.updated_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "2032-01-01T00:00:00.000000Z",
        "{}",
        backend.name()
    );

    let tool = Tool {
        updated_at: future,
        ..Tool::new("t", json!(1))
    };
    backend.apply_tool(&agent, &tool).await.unwrap();
    let newer = Tool::new("t", json!(2));
    backend
        .commit(&agent, Change::PutTool(&newer), false, &[])
        .await
        .unwrap();
    assert_eq!(
        backend
            .get_tool(&agent, "t")
            .await
            .unwrap()
            .unwrap()
            .content,
        json!(2)
    );
}

/// A commit and its journal record are one: the record is there with the change,
/// cleared by a later commit or by `clear_owed`, and a refused change leaves neither.
/// Parked records are skipped, counted, and made pending again on request.
pub async fn the_outbox_record_goes_with_its_change(backend: &dyn Replica) {
    let agent = unique_agent("outbox");
    let a = Memory::new("a", json!(1));
    let first = backend
        .commit(&agent, Change::PutMemory(&a), true, &[])
        .await
        .unwrap();
    let seq = first.seq.expect("a journal record");
    let owed = backend.owed_writes(&agent, 10).await.unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].seq, seq);
    let record: OwedWrite = serde_json::from_str(&owed[0].op).unwrap();
    assert_eq!(record, OwedWrite::SyncMemory { key: "a".into() });

    let refused = Memory::new("k\0", json!(1));
    assert!(matches!(
        backend
            .commit(&agent, Change::PutMemory(&refused), true, &[seq])
            .await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(
        backend.owed_writes(&agent, 10).await.unwrap().len(),
        1,
        "{}: a refused change writes no record and clears none",
        backend.name()
    );

    let b = Memory::new("b", json!(2));
    let second = backend
        .commit(
            &agent,
            Change::DeleteMemory {
                key: "b",
                at: b.updated_at,
            },
            true,
            &[seq],
        )
        .await
        .unwrap();
    let owed = backend.owed_writes(&agent, 10).await.unwrap();
    assert_eq!(
        owed.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![second.seq.unwrap()],
        "{}: the first record was cleared with the second commit",
        backend.name()
    );

    backend
        .park_owed(&agent, second.seq.unwrap(), "refused for good")
        .await
        .unwrap();
    assert!(backend.owed_writes(&agent, 10).await.unwrap().is_empty());
    let counts = backend.owed_agents().await.unwrap();
    let mine = counts.iter().find(|c| c.agent == agent).expect("listed");
    assert_eq!((mine.pending, mine.parked), (0, 1));
    assert_eq!(backend.unpark_owed(&agent).await.unwrap(), 1);
    assert_eq!(backend.owed_writes(&agent, 10).await.unwrap().len(), 1);
    backend
        .clear_owed(&agent, &[second.seq.unwrap()])
        .await
        .unwrap();
    assert!(backend.owed_writes(&agent, 10).await.unwrap().is_empty());
}

/// Tool deletes hold as memory deletes do: copies of a tool's versions and deletes end
/// in the same state in any order; a delete committed as the authoritative side is past
/// the definition it deletes, keeps older copies out, is journaled, and a registration
/// after it outranks it.
pub async fn tool_deletes_hold_in_any_order(backend: &dyn Replica) {
    let t = now();
    let us = Duration::microseconds;
    let name = backend.name();
    let versions = |base: &Tool| {
        [(0, "v1"), (20, "v3"), (5, "v2")].map(|(after, content)| Tool {
            content: json!(content).into(),
            updated_at: t + us(after),
            ..base.clone()
        })
    };
    let orders: [&[usize]; 5] = [
        &[0, 1, 2, 3],
        &[3, 2, 1, 0],
        &[2, 0, 3, 1],
        &[1, 3, 0, 2],
        &[3, 0, 2],
    ];
    for order in orders {
        let agent = unique_agent("tool_converge");
        let [v1, v3, v2] = versions(&Tool::new("t", json!(0)));
        let newest_applied = order.contains(&1);
        for &i in order {
            match i {
                0 => drop(backend.apply_tool(&agent, &v1).await.unwrap()),
                1 => drop(backend.apply_tool(&agent, &v3).await.unwrap()),
                2 => drop(
                    backend
                        .apply_tool_delete(&agent, "t", t + us(10))
                        .await
                        .unwrap(),
                ),
                _ => drop(backend.apply_tool(&agent, &v2).await.unwrap()),
            }
        }
        let stored = backend.get_tool(&agent, "t").await.unwrap();
        let expected = newest_applied.then(|| json!("v3").into());
        assert_eq!(
            stored.map(|t| t.content),
            expected,
            "{name}: order {order:?}"
        );
        assert_eq!(
            backend.tool_tombstone(&agent, "t").await.unwrap(),
            Some(t + us(10)),
            "{name}"
        );
    }

    let agent = unique_agent("tool_forward");
    let future = now() + Duration::days(365);
    let ahead = Tool {
        updated_at: future,
        ..Tool::new("t", json!("from the future"))
    };
    backend.apply_tool(&agent, &ahead).await.unwrap();
    let clock = now();
    let delete = Change::DeleteTool {
        name: "t",
        at: clock,
    };
    let deleted = backend
        .commit(&agent, delete, true, &[])
        .await
        .expect("delete a tool");
    let Outcome::Deleted { existed, at } = deleted.outcome else {
        panic!("a delete commits a delete")
    };
    assert!(existed, "{name}");
    assert_eq!(
        at,
        future + us(1),
        "{name}: the delete outranks the definition"
    );
    assert_eq!(backend.get_tool(&agent, "t").await.unwrap(), None, "{name}");
    assert_eq!(backend.tool_tombstone(&agent, "t").await.unwrap(), Some(at));
    assert_eq!(
        backend.apply_tool(&agent, &ahead).await.unwrap(),
        None,
        "{name}: an older copy never comes back"
    );
    let owed = backend.owed_writes(&agent, 10).await.unwrap();
    let record: OwedWrite = serde_json::from_str(&owed[0].op).unwrap();
    assert_eq!(
        record,
        OwedWrite::DeleteTool {
            name: "t".into(),
            at: clock
        },
        "{name}: the delete is journaled with it"
    );
    let again = Tool::new("t", json!("again"));
    let Outcome::Tool(stored) = backend
        .commit(&agent, Change::PutTool(&again), false, &[])
        .await
        .unwrap()
        .outcome
    else {
        panic!("a registration commits a tool")
    };
    assert_eq!(stored.updated_at, at + us(1), "{name}: past the delete");
    assert_eq!(
        backend
            .get_tool(&agent, "t")
            .await
            .unwrap()
            .map(|t| t.content),
        Some(json!("again").into())
    );
    // A copied delete older than the definition leaves it.
    assert!(!backend.apply_tool_delete(&agent, "t", at).await.unwrap());
    assert!(backend.get_tool(&agent, "t").await.unwrap().is_some());
}

/// Stamps out one `#[tokio::test]` per replication scenario for a backend.
///
/// `$fixture` is an async fn returning `(Arc<dyn Replica>, guard)`.
#[macro_export]
macro_rules! replication_suite {
    ($fixture:path) => {
        $crate::replication_suite!(@each $fixture;
            copies_converge_in_any_order,
            equal_versions_are_decided_the_same_way,
            newer_wins_and_copies_say_what_is_stored,
            restores_touch_only_the_exact_version,
            commits_move_versions_forward,
            the_outbox_record_goes_with_its_change,
            tool_deletes_hold_in_any_order
        );
    };
    (@each $fixture:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $scenario() {
                let (backend, _guard) = $fixture().await;
                $crate::testing::replication::$scenario(&*backend).await;
            }
        )*
    };
}
