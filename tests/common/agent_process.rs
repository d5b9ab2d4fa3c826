//! A running `agent_process` (examples/agent_process.rs): one process of an agent that
//! follows the central stages, as the stage tests drive it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use memshift::{AgentId, MemoryBackend};
use serde_json::Value;

use super::example_path;

/// One running `agent_process`, its lines gathered by a thread.
pub struct Process {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<String>,
    /// Stages seen, with the time (ms since the epoch) each was first seen.
    pub stages: Vec<(String, u128)>,
    /// The last acknowledged value of each key.
    pub acked: BTreeMap<String, u64>,
    pub stale: Vec<String>,
    pub paused: bool,
}

impl Process {
    /// Starts `agent_process AGENT PREFIX 4` with `env`.
    pub fn start(env: &[(&str, &str)], agent: &str, prefix: &str) -> Self {
        let mut child = Command::new(example_path("agent_process"))
            .args([agent, prefix, "4"])
            .env_remove("MEMORY_BACKEND")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start agent_process");
        let out = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Process {
            child,
            stdin,
            lines,
            stages: Vec::new(),
            acked: BTreeMap::new(),
            stale: Vec::new(),
            paused: false,
        }
    }

    pub fn read(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["ack", key, n] => {
                    self.acked.insert((*key).to_owned(), n.parse().unwrap());
                }
                ["stage", stage, at] => {
                    self.stages.push(((*stage).to_owned(), at.parse().unwrap()))
                }
                ["paused"] => self.paused = true,
                _ => self.stale.push(line.clone()),
            }
        }
    }

    pub fn tell(&mut self, what: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{what}").unwrap();
        stdin.flush().unwrap();
    }

    /// When this process first saw `stage` after `since` (ms since the epoch).
    pub fn saw(&mut self, stage: &str, since: u128) -> Option<u128> {
        self.read();
        self.stages
            .iter()
            .find(|(s, at)| s == stage && *at >= since)
            .map(|(_, at)| *at)
    }
}

impl Process {
    /// Waits (at most 10 s) until this process is at `stage`, seen at or after `since`
    /// (ms since the epoch); returns how long after `since` it got there.
    pub fn follows(&mut self, stage: &str, since: u128) -> u128 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self.saw(stage, since) {
                return at.saturating_sub(since);
            }
            assert!(
                Instant::now() < deadline,
                "a process never followed to {stage}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Pauses every process and waits until each says it has.
pub fn pause(processes: &mut [Process]) {
    for process in processes.iter_mut() {
        process.paused = false;
        process.tell("pause");
    }
    for process in processes.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !process.paused {
            assert!(Instant::now() < deadline, "a process never paused");
            std::thread::sleep(Duration::from_millis(5));
            process.read();
        }
    }
}

/// Lets every process go on.
pub fn resume(processes: &mut [Process]) {
    for process in processes.iter_mut() {
        process.tell("go");
    }
}

/// Every write each process was told succeeded is on every side in `sides` (its value
/// or a newer one), and no process read back an older value than it had just stored.
pub async fn assert_acknowledged(
    processes: &[Process],
    agent: &AgentId,
    sides: &[&dyn MemoryBackend],
    when: &str,
) {
    for process in processes {
        assert!(process.stale.is_empty(), "{when}: {:?}", process.stale);
        for (key, n) in &process.acked {
            for side in sides {
                let found = side.get_memory(agent, key).await.unwrap();
                let got = found.and_then(|m| m.content.parse::<Value>().ok());
                let got = got.and_then(|v| v["i"].as_u64());
                assert!(
                    got.is_some_and(|g| g >= *n),
                    "{when}: {key} acknowledged {n}, {} holds {got:?}",
                    side.name()
                );
            }
        }
    }
}

/// When the last change of `agent`'s stage was made (its history row's time: its
/// transaction's start), in ms since the epoch, the clock `agent_process` stamps stages
/// with (the test server runs on the same machine).
pub async fn changed_at(pool: &sqlx::PgPool, agent: &str) -> u128 {
    let at: f64 = sqlx::query_scalar(
        "select (extract(epoch from at) * 1000)::float8 from agent_memory.stage_history
         where agent = $1 order by id desc limit 1",
    )
    .bind(agent)
    .fetch_one(pool)
    .await
    .expect("the change is recorded");
    at as u128
}

/// Milliseconds since the Unix epoch, the clock `agent_process` stamps stages with.
pub fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
