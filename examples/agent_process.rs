//! One process of an agent whose stage is steered centrally: it stores and reads back its
//! keys in a loop through `AgentMemory` over the dual backend, which follows the stages
//! in PostgreSQL (`memctl stage set`), and says what it sees, so a test can watch several
//! processes of one agent while the stage walks.
//!
//! ```text
//! cargo run --example agent_process -- AGENT PREFIX KEYS
//! ```
//!
//! Store number `n` (from 0) writes `{"i": n}` under key `PREFIX-k{n % KEYS}` and reads
//! that key back. Lines on stdout, each flushed:
//!
//! - `ack KEY N`: the store of N under KEY was acknowledged;
//! - `stale KEY N GOT`: the read right after it returned GOT (a value older than N, or
//!   none): the agent did not read its own write;
//! - `stage STAGE MILLIS`: the process is at STAGE from the time MILLIS (ms since the Unix
//!   epoch), printed at start and within 5 ms of every change;
//! - `paused` once the loop stops after a line `pause` on stdin (`go` resumes it).
//!
//! A failed store or read is printed to stderr and the loop goes on. End of stdin ends
//! the process after its current store, with the memory closed (exit status 0); 2 when
//! the memory cannot open. The environment is read as memctl reads it (`DATABASE_URL`,
//! `AGENTS_PATH`, `MEMORY_STAGE` as the starting stage, `MEMORY_STAGE_POLL`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use memshift::{AgentConfig, AgentId, AgentMemory, Chain, MemoryBackend, backend};
use tokio::io::AsyncBufReadExt;

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test is gone; the loop ends with stdin.
    writeln!(out, "{line}").and_then(|()| out.flush()).ok();
}

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [agent, prefix, keys] = args.as_slice() else {
        eprintln!("usage: agent_process AGENT PREFIX KEYS");
        return ExitCode::from(2);
    };
    let Ok(keys) = keys.parse::<u64>() else {
        eprintln!("agent_process: KEYS {keys:?} is not a number");
        return ExitCode::from(2);
    };
    let opened = async {
        let config = AgentConfig::from_env(agent.clone())?;
        let dual = backend::open_dual(&config).await?;
        Ok::<_, memshift::Error>((AgentId::new(agent.clone())?, dual))
    };
    let (id, dual) = match opened.await {
        Ok(opened) => opened,
        Err(err) => {
            eprintln!("agent_process: {}", Chain(&err));
            return ExitCode::from(2);
        }
    };
    let memory = AgentMemory::with_backend(id.clone(), Arc::new(dual.clone()));

    let state = Arc::new(AtomicU8::new(RUN));
    tokio::spawn({
        let state = state.clone();
        async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.trim() {
                    "pause" => state.store(PAUSE, Ordering::SeqCst),
                    "go" => state.store(RUN, Ordering::SeqCst),
                    _ => {}
                }
            }
            state.store(STOP, Ordering::SeqCst);
        }
    });
    let watcher = tokio::spawn({
        let (dual, id) = (dual.clone(), id.clone());
        async move {
            let mut seen = None;
            loop {
                let stage = dual.stage_of(&id);
                if seen != Some(stage) {
                    say(&format!("stage {stage} {}", millis()));
                    seen = Some(stage);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let mut n = 0u64;
    let mut paused = false;
    loop {
        match state.load(Ordering::SeqCst) {
            STOP => break,
            PAUSE => {
                if !paused {
                    say("paused");
                    paused = true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            _ => paused = false,
        }
        let key = format!("{prefix}-k{}", n % keys);
        match memory
            .store_memory(&key, serde_json::json!({ "i": n }))
            .await
        {
            Ok(()) => {
                say(&format!("ack {key} {n}"));
                match memory.retrieve_memory::<serde_json::Value>(&key).await {
                    Ok(got) => {
                        let read = got.as_ref().and_then(|v| v["i"].as_u64());
                        if read.is_none_or(|i| i < n) {
                            say(&format!("stale {key} {n} {got:?}"));
                        }
                    }
                    Err(err) => eprintln!("agent_process: read {key}: {}", Chain(&err)),
                }
            }
            Err(err) => eprintln!("agent_process: store {key} {n}: {}", Chain(&err)),
        }
        n += 1;
    }
    watcher.abort();
    if let Err(err) = MemoryBackend::close(&dual).await {
        eprintln!("agent_process: close: {}", Chain(&err));
    }
    ExitCode::SUCCESS
}
