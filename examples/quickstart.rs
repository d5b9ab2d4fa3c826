//! The main job on the embedded default: an agent stores and retrieves memory, registers
//! a tool, records a metric and logs an execution, then prints what it reads back.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Needs no server and no environment: memory goes to SQLite under `./agents`. It reads
//! `MEMORY_BACKEND`, `DATABASE_URL` and `AGENTS_PATH` when they are set, so the same
//! program runs on PostgreSQL with `MEMORY_BACKEND=postgres DATABASE_URL=...`. At the end
//! it says where the data went and which commands look at it.

use std::path::Path;

use memshift::{AgentConfig, AgentId, AgentMemory, BackendKind, Chain, SqliteBackend};
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
    memory.flush().await?;
    where_it_went(&config, memory.agent());
    Ok(())
}

/// Where this run's data is, and commands to look at it or move it.
fn where_it_went(config: &AgentConfig, agent: &AgentId) {
    // The commands read AGENTS_PATH too, but it may have been set for this run only.
    let agents_path = match config.agents_path.as_path() {
        path if path == Path::new(memshift::config::DEFAULT_AGENTS_PATH) => String::new(),
        path => format!(" --agents-path {}", quoted(path)),
    };
    let memctl = format!("cargo run --example memctl --{agents_path} --agent {agent}");
    let select = "'select key, content from agent_memories'";
    println!();
    match config.memory_backend {
        BackendKind::Sqlite => {
            let file = SqliteBackend::new(&config.agents_path).file_of(agent);
            println!(
                "The data went to the SQLite file {}. Look at it:",
                file.display()
            );
            println!("  sqlite3 {} {select}", quoted(&file));
            println!("  {memctl} get conversation");
            println!("  {memctl} keys");
            println!("See what a backfill would move from here into PostgreSQL:");
            println!("  cargo run --example backfill --{agents_path} --dry-run");
            println!("Run it on PostgreSQL (create the tables once, then run):");
            println!(
                "  DATABASE_URL=postgres://USER:PASSWORD@HOST/DB cargo run --example memctl -- migrate"
            );
            println!(
                "  MEMORY_BACKEND=postgres DATABASE_URL=postgres://USER:PASSWORD@HOST/DB cargo run --example quickstart"
            );
        }
        BackendKind::Postgres => {
            println!("The data went to the PostgreSQL database of DATABASE_URL. Look at it:");
            println!("  psql \"$DATABASE_URL\" -c {select}");
            println!("  MEMORY_BACKEND=postgres {memctl} get conversation");
        }
        // Dual and kinds added later: both sides, compared by memctl.
        _ => {
            let file = SqliteBackend::new(&config.agents_path).file_of(agent);
            println!(
                "The data went to the SQLite file {} and to the PostgreSQL database of \
                 DATABASE_URL, as stage {} decides. Compare the sides:",
                file.display(),
                config.memory_stage
            );
            println!("  MEMORY_BACKEND=dual {memctl} stats");
            println!("  sqlite3 {} {select}", quoted(&file));
            println!("  psql \"$DATABASE_URL\" -c {select}");
        }
    }
}

/// `path` as a POSIX shell reads it: as it is when plain, else in single quotes.
fn quoted(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
    if plain {
        return text;
    }
    format!("'{}'", text.replace('\'', r"'\''"))
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
