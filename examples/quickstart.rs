//! The main job on the embedded default: an agent stores and retrieves memory, registers
//! a tool, records a metric and logs an execution, then prints what it reads back.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Needs no server and no environment: memory goes to SQLite under `./agents`. It reads
//! `MEMORY_BACKEND`, `DATABASE_URL` and `AGENTS_PATH` when they are set, so the same
//! program runs on PostgreSQL with `MEMORY_BACKEND=postgres DATABASE_URL=...`.

use memshift::{AgentConfig, AgentMemory, Chain};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What an agent might remember between runs.
#[derive(Debug, Serialize, Deserialize)]
struct Conversation {
    topic: String,
    turns: u32,
    last_answer: String,
}

async fn run() -> memshift::Result<()> {
    let config = AgentConfig::from_env("quickstart_agent")?;
    let memory = AgentMemory::open(&config).await?;
    println!(
        "agent {} on the {} backend",
        memory.agent(),
        config.memory_backend
    );

    let conversation = Conversation {
        topic: "pricing".into(),
        turns: 3,
        last_answer: "The team plan is billed per seat.".into(),
    };
    memory.store_memory("conversation", &conversation).await?;
    let back: Option<Conversation> = memory.retrieve_memory("conversation").await?;
    println!("retrieved memory: {back:?}");

    let tool = memory
        .register_tool(
            "web_search",
            json!({"description": "search the web", "max_results": 5}),
        )
        .await?;
    println!("registered tool {} -> {}", tool.name, tool.content);

    memory
        .record_metric("response_seconds", 1.25, json!({"model": "small"}))
        .await?;
    memory
        .log_execution("ok", json!({"task": "answer pricing question", "turns": 3}))
        .await?;

    println!("memory keys: {:?}", memory.memory_keys().await?);
    for metric in memory.metrics().await? {
        println!(
            "metric {} = {:?} at {}",
            metric.name, metric.value, metric.created_at
        );
    }
    for execution in memory.executions().await? {
        println!(
            "execution {:?}: {} at {}",
            execution.status, execution.content, execution.created_at
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickstart: {}", Chain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
