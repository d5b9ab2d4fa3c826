//! Stores `{"i":n}` values in a loop through `AgentMemory::store_memory`, printing each
//! acknowledged write as a line `KEY N`, flushed, so a test that kills this process at a
//! random point knows exactly which writes it was told succeeded.
//!
//! ```text
//! cargo run --example store_loop -- AGENT STAGE KEYS [COUNT] [START]
//! ```
//!
//! Store number `j` (from 0) writes `{"i": START + j}` under key `k{j % KEYS}`; the loop
//! stops after COUNT stores (default: never). The backend comes from `MEMORY_BACKEND`
//! (default `dual` here), `DATABASE_URL` and `AGENTS_PATH`, like memctl's; STAGE
//! overrides `MEMORY_STAGE`. A failed store is printed to stderr and the loop goes on.
//!
//! Exit status: 0 after COUNT stores, 2 on bad arguments or when the memory cannot open.

use std::io::Write;
use std::process::ExitCode;

use memshift::config::Stage;
use memshift::{AgentConfig, AgentMemory, BackendKind, Chain};

struct Args {
    agent: String,
    stage: Stage,
    keys: u64,
    count: Option<u64>,
    start: u64,
}

fn args() -> Result<Args, String> {
    let usage = "usage: store_loop AGENT STAGE KEYS [COUNT] [START]";
    let mut args = std::env::args().skip(1);
    let agent = args.next().ok_or(usage)?;
    let stage = args.next().ok_or(usage)?;
    let stage: Stage = stage.parse().map_err(|e| format!("STAGE: {e}"))?;
    let number = |text: Option<String>, what: &str| -> Result<Option<u64>, String> {
        text.map(|t| t.parse().map_err(|e| format!("{what} {t:?}: {e}")))
            .transpose()
    };
    let keys = number(args.next(), "KEYS")?.ok_or(usage)?.max(1);
    let count = number(args.next(), "COUNT")?;
    let start = number(args.next(), "START")?.unwrap_or(0);
    Ok(Args {
        agent,
        stage,
        keys,
        count,
        start,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("store_loop: {err}");
            return ExitCode::from(2);
        }
    };
    let mut config = match AgentConfig::from_env(args.agent.clone()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("store_loop: {}", Chain(&err));
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("MEMORY_BACKEND").is_none() {
        config.memory_backend = BackendKind::Dual;
    }
    config.memory_stage = args.stage;
    let memory = match AgentMemory::open(&config).await {
        Ok(memory) => memory,
        Err(err) => {
            eprintln!("store_loop: {}", Chain(&err));
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let mut j = 0u64;
    while args.count.is_none_or(|count| j < count) {
        let key = format!("k{}", j % args.keys);
        let n = args.start + j;
        match memory
            .store_memory(&key, serde_json::json!({ "i": n }))
            .await
        {
            Ok(()) => {
                // The line is the acknowledgement: written and flushed before the next
                // store starts, so a kill never loses one the test should know about.
                if writeln!(out, "{key} {n}")
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return ExitCode::from(2);
                }
            }
            Err(err) => eprintln!("store_loop: store {key} {n}: {}", Chain(&err)),
        }
        j += 1;
    }
    ExitCode::SUCCESS
}
