//! An operator's view of an agent's memory from the shell.
//!
//! ```text
//! cargo run --example memctl -- --agent NAME store KEY JSON
//! cargo run --example memctl -- --agent NAME get KEY      # prints the JSON value
//! cargo run --example memctl -- --agent NAME delete KEY
//! cargo run --example memctl -- --agent NAME keys
//! cargo run --example memctl -- migrate                   # shipped schema -> DATABASE_URL
//! cargo run --example memctl -- [--agent NAME] repair     # replay owed dual writes
//! cargo run --example memctl -- [--agent NAME] stats      # journals, and both sides compared
//! ```
//!
//! Reads `MEMORY_BACKEND` (`sqlite`, `postgres` or `dual`, default `sqlite`),
//! `MEMORY_STAGE` (the dual backend's stage, default `dualwrite`), `DATABASE_URL` and
//! `AGENTS_PATH` (default `./agents`), like the agents do; the flags below override them.
//! `repair` and `stats` always work on both sides (they need `DATABASE_URL` and the
//! agents path). `RUST_LOG` sets the log level (default `warn`).
//!
//! Exit status: 0 on success; 1 when `get` or `delete` finds no such key; 2 on an error,
//! whose whole chain is printed.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_memory::backend::dual::Side;
use agent_memory::config::Stage;
use agent_memory::{AgentConfig, AgentId, AgentMemory, BackendKind, Chain, Error, backend};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "memctl", about = "Read and write an agent's memory")]
struct Cli {
    /// The agent whose memory to use (its folder name / PostgreSQL agent id).
    #[arg(long, global = true)]
    agent: Option<String>,
    /// Backend: sqlite, postgres or dual [default: $MEMORY_BACKEND, else sqlite].
    #[arg(long, global = true)]
    backend: Option<BackendKind>,
    /// The dual backend's stage: sqlite, dualwrite, shadow, live, rampdown, postgres
    /// [default: $MEMORY_STAGE, else dualwrite].
    #[arg(long, global = true)]
    stage: Option<Stage>,
    /// PostgreSQL URL [default: $DATABASE_URL].
    #[arg(long, global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Folder of agent folders for sqlite [default: $AGENTS_PATH, else ./agents].
    #[arg(long, global = true)]
    agents_path: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a JSON value under KEY, replacing what was there.
    Store {
        /// The key.
        key: String,
        /// The value, as JSON text (e.g. '{"x":1}' or '"text"').
        json: String,
    },
    /// Print the JSON value stored under KEY.
    Get {
        /// The key.
        key: String,
    },
    /// Delete the value stored under KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// List the agent's keys, one per line.
    Keys,
    /// Apply the shipped PostgreSQL schema to the database (needs a PostgreSQL URL).
    Migrate,
    /// Replay the writes one side of the dual backend missed, for --agent or for all.
    Repair,
    /// Print the owed-write journals and, with --agent, how the two sides compare (JSON).
    Stats,
}

/// What a successful command reports through the exit status.
enum Outcome {
    Done,
    NotFound,
}

async fn run(cli: Cli) -> Result<Outcome, Error> {
    let mut config = AgentConfig::from_env(cli.agent.clone().unwrap_or_default())?;
    if let Some(kind) = cli.backend {
        config.memory_backend = kind;
    }
    if let Some(stage) = cli.stage {
        config.memory_stage = stage;
    }
    if let Some(url) = cli.database_url {
        config.database_url = Some(url);
    }
    if let Some(path) = cli.agents_path {
        config.agents_path = path;
    }
    if let Command::Migrate = cli.command {
        let applied =
            agent_memory::migrate_url(config.require_database_url("memctl migrate")?).await?;
        match applied.as_slice() {
            [] => println!("schema already up to date"),
            versions => println!("applied migrations {versions:?}"),
        }
        return Ok(Outcome::Done);
    }
    if let Command::Repair | Command::Stats = cli.command {
        return both_sides(&cli.command, cli.agent.as_deref(), &config).await;
    }
    if cli.agent.is_none() {
        return Err(agent_memory::Error::InvalidInput {
            what: "arguments",
            reason: "--agent NAME is required for this command".into(),
        });
    }
    let memory = AgentMemory::open(&config).await?;
    match cli.command {
        Command::Store { key, json } => {
            let value: serde_json::Value =
                serde_json::from_str(&json).map_err(|source| Error::Json {
                    context: format!("the value given for key {key:?}"),
                    source,
                })?;
            memory.store_memory(&key, &value).await?;
        }
        Command::Get { key } => match memory.retrieve_memory::<serde_json::Value>(&key).await? {
            Some(value) => println!("{value}"),
            None => {
                eprintln!(
                    "memctl: agent {:?} has no memory under key {key:?}",
                    memory.agent()
                );
                return Ok(Outcome::NotFound);
            }
        },
        Command::Delete { key } => {
            if !memory.delete_memory(&key).await? {
                eprintln!(
                    "memctl: agent {:?} has no memory under key {key:?}",
                    memory.agent()
                );
                return Ok(Outcome::NotFound);
            }
        }
        Command::Keys => {
            for key in memory.memory_keys().await? {
                println!("{key}");
            }
        }
        Command::Migrate | Command::Repair | Command::Stats => unreachable!("handled above"),
    }
    Ok(Outcome::Done)
}

/// `repair` and `stats`: the dual backend's view of both sides.
async fn both_sides(
    command: &Command,
    agent: Option<&str>,
    config: &AgentConfig,
) -> Result<Outcome, Error> {
    let dual = backend::open_dual(config).await?;
    let agent = agent.map(AgentId::new).transpose()?;
    match (command, agent) {
        (Command::Repair, Some(agent)) => {
            let report = dual.repair(&agent).await?;
            println!("{}", serde_json::json!({ agent.as_str(): report }));
        }
        (Command::Repair, None) => {
            println!("{}", serde_json::json!(dual.repair_all().await?));
        }
        (_, agent) => {
            // Each part is reported on its own, so a side that is down still leaves
            // the rest of the picture (and says why it is missing).
            let report = |result: Result<serde_json::Value, Error>| match result {
                Ok(value) => value,
                Err(err) => serde_json::json!({ "error": Chain(&err).to_string() }),
            };
            let mut out = serde_json::json!({
                "stage": config.memory_stage,
                "owed_to_postgres": report(dual.owed_journaled_on(Side::Sqlite).await.map(Into::into)),
                "owed_to_sqlite": report(dual.owed_journaled_on(Side::Postgres).await.map(Into::into)),
            });
            if let Some(agent) = agent {
                out["agent"] = agent.as_str().into();
                out["comparison"] =
                    report(dual.compare(&agent).await.map(|c| serde_json::json!(c)));
            }
            println!("{out}");
        }
    }
    Ok(Outcome::Done)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(1),
        Err(err) => {
            eprintln!("memctl: {}", Chain(&err));
            ExitCode::from(2)
        }
    }
}
