//! An operator's view of an agent's memory from the shell.
//!
//! ```text
//! cargo run --example memctl -- --agent NAME store KEY JSON
//! cargo run --example memctl -- --agent NAME get KEY      # prints the JSON value
//! cargo run --example memctl -- --agent NAME delete KEY
//! cargo run --example memctl -- --agent NAME keys
//! cargo run --example memctl -- --agent NAME store KEY JSON --embedding '[0.1, 0.2]'
//! cargo run --example memctl -- --agent NAME search '[0.1, 0.2]' [-k 10] [--metric l2]
//!                               [--prefix P] [--where FIELD=VALUE] [--exact]
//! cargo run --example memctl -- index --dimensions 384 [--metric cosine] [--drop]
//! cargo run --example memctl -- compression [on|off]   # PostgreSQL content compression
//! cargo run --example memctl -- migrate                   # shipped schema -> DATABASE_URL
//! cargo run --example memctl -- [--agent NAME] repair     # replay owed dual writes
//! cargo run --example memctl -- [--agent NAME] stats      # journals, and both sides compared
//! cargo run --example memctl -- stage [--json]           # every agent's stage, central
//! cargo run --example memctl -- stage set STAGE [AGENT...] [--pattern GLOB]
//!                               [--percent N] [--default] [--reason TEXT]
//!                               [--explained TEXT] [--force] [--by NAME]
//! cargo run --example memctl -- [--agent NAME] stage history [--limit N] [--json]
//! ```
//!
//! Reads `MEMORY_BACKEND` (`sqlite`, `postgres` or `dual`, default `sqlite`),
//! `MEMORY_STAGE` (the dual backend's stage, default `dualwrite`), `DATABASE_URL` and
//! `AGENTS_PATH` (default `./agents`), like the agents do; the flags below override them.
//! `repair` and `stats` always work on both sides (they need `DATABASE_URL` and the
//! agents path). `RUST_LOG` sets the log level (default `warn`).
//!
//! Exit status: 0 on success; 1 when `get` or `delete` finds no such key; 2 on an error,
//! whose whole chain is printed; 3 when `stage set` refused to move an agent (a guard
//! rail; the reason is printed, the other agents are moved).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use memshift::backend::dual::{Cohort, DualBackend, Side, StageRequest};
use memshift::config::Stage;
use memshift::{
    AgentConfig, AgentId, AgentMemory, BackendKind, Chain, DistanceMetric, Error, Json, Memory,
    VectorIndex, VectorQuery, backend,
};

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
        /// An embedding for vector search, as a JSON array of numbers.
        #[arg(long, value_name = "JSON")]
        embedding: Option<String>,
    },
    /// Print the memories nearest to a vector, one JSON object per line (key, distance,
    /// value), nearest first.
    Search {
        /// The query vector, as a JSON array of numbers.
        vector: String,
        /// How many memories at most.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// cosine, l2 or inner_product.
        #[arg(long, default_value = "cosine")]
        metric: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only memories whose metadata FIELD equals VALUE (JSON, else a string).
        /// Repeatable.
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        filters: Vec<String>,
        /// Compare with every memory instead of using an index (PostgreSQL).
        #[arg(long)]
        exact: bool,
        /// Candidates an index search keeps (hnsw.ef_search, 1 to 1000).
        #[arg(long)]
        ef_search: Option<u32>,
    },
    /// Build (or with --drop remove) the PostgreSQL HNSW index for one dimension and
    /// metric, without blocking writers; prints what was done as JSON.
    Index {
        /// The embedding dimension to index.
        #[arg(long)]
        dimensions: usize,
        /// cosine, l2 or inner_product.
        #[arg(long, default_value = "cosine")]
        metric: String,
        /// maintenance_work_mem for the build (e.g. 1GB); the server's when not given.
        #[arg(long)]
        maintenance_work_mem: Option<String>,
        /// Drop the index instead.
        #[arg(long)]
        drop: bool,
    },
    /// Print whether PostgreSQL compresses memory contents (JSON), or with on/off turn
    /// it on (PostgreSQL's default) or off for values written from now on.
    Compression {
        /// on or off; prints the setting when not given.
        #[arg(value_parser = ["on", "off"])]
        set: Option<String>,
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
    /// Exits 0 when every agent, or at least one, was repaired; the JSON names the
    /// agents that could not be, and why.
    Repair {
        /// First make the parked writes (refused by a side for good) pending again.
        #[arg(long)]
        retry_parked: bool,
    },
    /// Print the owed-write journals (pending and parked) and, with --agent, how the two
    /// sides compare (JSON).
    Stats,
    /// Show every agent's migration stage as PostgreSQL holds it centrally (every
    /// process of an agent follows it within seconds), with what to weigh before its
    /// next step; `stage set` moves agents, `stage history` shows who moved what.
    Stage {
        #[command(subcommand)]
        action: Option<StageAction>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StageAction {
    /// Move agents to STAGE: those named (and --agent), those matching --pattern, a
    /// --percent of all, or with --default every agent without a stage of its own. One
    /// stage forward at a time; a step that hands authority to the other side first
    /// replays the agent's owed writes and refuses while any remain or shadow
    /// mismatches are unexplained. Stepping back is always allowed.
    Set {
        /// sqlite, dualwrite, shadow, live, rampdown or postgres. (Not named `stage`:
        /// the global `--stage` would take its value.)
        #[arg(value_name = "STAGE")]
        to: Stage,
        /// Agents to move.
        agents: Vec<String>,
        /// Agents whose names match (`*` any run of characters, `?` one character).
        #[arg(long)]
        pattern: Option<String>,
        /// This share of the known agents (0 to 100), chosen by a hash of the name: the
        /// agents inside 10% are inside 25% too.
        #[arg(long)]
        percent: Option<f64>,
        /// Move the default stage (of every agent without one of its own).
        #[arg(long)]
        default: bool,
        /// Why (recorded in the history).
        #[arg(long, default_value = "")]
        reason: String,
        /// Why the shadow mismatches counted at the current stage are acceptable.
        #[arg(long, value_name = "TEXT")]
        explained: Option<String>,
        /// Override the guard rails (recorded in the history).
        #[arg(long)]
        force: bool,
        /// Who makes the change [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
    /// The recorded changes of stage, newest first (of --agent and the default, when
    /// given).
    History {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

/// What a successful command reports through the exit status.
enum Outcome {
    Done,
    NotFound,
    Refused,
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
        let applied = memshift::migrate_url(config.require_database_url("memctl migrate")?).await?;
        match applied.as_slice() {
            [] => println!("schema already up to date"),
            versions => println!("applied migrations {versions:?}"),
        }
        return Ok(Outcome::Done);
    }
    if let Command::Index {
        dimensions,
        metric,
        maintenance_work_mem,
        drop,
    } = &cli.command
    {
        let url = config.require_database_url("memctl index")?;
        let backend = memshift::PostgresBackend::connect(url).await?;
        let metric = DistanceMetric::parse(metric)?;
        if *drop {
            let dropped = backend.drop_vector_index(*dimensions, metric).await?;
            println!("{}", serde_json::json!({ "dropped": dropped }));
        } else {
            let mut index = VectorIndex::new(*dimensions, metric);
            index.maintenance_work_mem = maintenance_work_mem.clone();
            let built = backend.create_vector_index(&index).await?;
            println!("{}", serde_json::json!(built));
        }
        return Ok(Outcome::Done);
    }
    if let Command::Compression { set } = &cli.command {
        let url = config.require_database_url("memctl compression")?;
        let backend = memshift::PostgresBackend::connect(url).await?;
        if let Some(set) = set {
            backend.set_content_compression(set == "on").await?;
        }
        let compressed = backend.content_compression().await?;
        println!(
            "{}",
            serde_json::json!({ "content_compression": compressed })
        );
        return Ok(Outcome::Done);
    }
    if let Command::Repair { .. } | Command::Stats = cli.command {
        return both_sides(&cli.command, cli.agent.as_deref(), &config).await;
    }
    if let Command::Stage { action, json } = cli.command {
        return stage(action, json, cli.agent.as_deref(), config).await;
    }
    if cli.agent.is_none() {
        return Err(memshift::Error::InvalidInput {
            what: "arguments",
            reason: "--agent NAME is required for this command".into(),
        });
    }
    let memory = AgentMemory::open(&config).await?;
    match cli.command {
        Command::Store {
            key,
            json,
            embedding,
        } => {
            // Kept as typed: key order, number forms and all.
            let value: Json = json.parse().map_err(|source| Error::Json {
                context: format!("the value given for key {key:?}"),
                source,
            })?;
            match embedding {
                None => memory.store_memory(&key, &value).await?,
                Some(text) => {
                    let embedding = vector_arg(&text, "--embedding")?;
                    memory
                        .store(Memory::new(key, value).with_embedding(embedding))
                        .await?;
                }
            }
        }
        Command::Search {
            vector,
            k,
            metric,
            prefix,
            filters,
            exact,
            ef_search,
        } => {
            let mut query = VectorQuery::new(vector_arg(&vector, "the query vector")?, k)
                .metric(DistanceMetric::parse(&metric)?);
            query.key_prefix = prefix;
            query.exact = exact;
            query.ef_search = ef_search;
            for filter in &filters {
                let (field, value) = filter.split_once('=').ok_or_else(|| Error::InvalidInput {
                    what: "--where",
                    reason: format!("{filter:?} is not FIELD=VALUE"),
                })?;
                let value = serde_json::from_str(value)
                    .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                query = query.metadata_eq(field, value);
            }
            #[derive(serde::Serialize)]
            struct Hit<'a> {
                key: Option<&'a str>,
                distance: f64,
                value: &'a Json,
            }
            for hit in memory.search(&query).await? {
                let hit = Hit {
                    key: hit.memory.key.as_deref(),
                    distance: hit.distance,
                    value: &hit.memory.content,
                };
                // A key, a number and JSON text always serialize.
                println!("{}", serde_json::to_string(&hit).unwrap_or_default());
            }
        }
        Command::Get { key } => match memory.retrieve_memory::<Json>(&key).await? {
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
        Command::Migrate
        | Command::Repair { .. }
        | Command::Stats
        | Command::Index { .. }
        | Command::Stage { .. }
        | Command::Compression { .. } => {
            unreachable!("handled above")
        }
    }
    memory.flush().await?;
    Ok(Outcome::Done)
}

/// Every agent with parked writes on either side.
async fn parked_agents(dual: &DualBackend) -> Result<Vec<AgentId>, Error> {
    let mut agents = std::collections::BTreeSet::new();
    for side in [Side::Sqlite, Side::Postgres] {
        for count in dual.journal_counts(side).await? {
            if count.parked > 0 {
                agents.insert(count.agent);
            }
        }
    }
    Ok(agents.into_iter().collect())
}

/// A vector given as a JSON array of numbers.
fn vector_arg(text: &str, what: &'static str) -> Result<Vec<f32>, Error> {
    serde_json::from_str(text).map_err(|source| Error::Json {
        context: format!("{what} (a JSON array of numbers, e.g. [0.1, 0.2])"),
        source,
    })
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
        (Command::Repair { retry_parked }, Some(agent)) => {
            let report = match retry_parked {
                true => dual.retry_parked(&agent).await,
                false => dual.repair(&agent).await,
            };
            dual.flush().await?;
            println!("{}", serde_json::json!({ agent.as_str(): report? }));
        }
        (Command::Repair { retry_parked }, None) => {
            if *retry_parked {
                for agent in parked_agents(&dual).await? {
                    dual.retry_parked(&agent).await.ok();
                }
            }
            let all = dual.repair_all().await?;
            dual.flush().await?;
            println!("{}", serde_json::json!(all));
            if all.repaired.is_empty() && !all.failed.is_empty() {
                let names: Vec<&str> = all.failed.keys().map(AgentId::as_str).collect();
                return Err(Error::InvalidInput {
                    what: "repair",
                    reason: format!("no agent could be repaired ({})", names.join(", ")),
                });
            }
        }
        (_, agent) => {
            // Each part is reported on its own, so a side that is down still leaves
            // the rest of the picture (and says why it is missing).
            let report = |result: Result<serde_json::Value, Error>| match result {
                Ok(value) => value,
                Err(err) => serde_json::json!({ "error": Chain(&err).to_string() }),
            };
            let stage = agent.as_ref().map_or(dual.stage(), |a| dual.stage_of(a));
            let mut out = serde_json::json!({
                "stage": stage,
                "owed_to_postgres": report(dual.owed_journaled_on(Side::Sqlite).await.map(Into::into)),
                "owed_to_sqlite": report(dual.owed_journaled_on(Side::Postgres).await.map(Into::into)),
                "parked": {
                    "owed_to_postgres": report(dual.owed_parked_on(Side::Sqlite).await.map(Into::into)),
                    "owed_to_sqlite": report(dual.owed_parked_on(Side::Postgres).await.map(Into::into)),
                },
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

/// `stage`, `stage set` and `stage history`: the stages held centrally.
async fn stage(
    action: Option<StageAction>,
    json: bool,
    agent: Option<&str>,
    mut config: AgentConfig,
) -> Result<Outcome, Error> {
    if config.stage_poll.is_zero() {
        // memctl works on the central stages whatever the agents' own setting.
        config.stage_poll = memshift::config::DEFAULT_STAGE_POLL;
    }
    let dual = backend::open_dual(&config).await?;
    let agent = agent.map(AgentId::new).transpose()?;
    let outcome = match action {
        None => {
            let view = dual.stage_view().await?;
            match json {
                true => println!("{}", serde_json::json!(view)),
                false => print_stage_view(&view),
            }
            Outcome::Done
        }
        Some(StageAction::History { limit }) => {
            let history = dual.stage_history(agent.as_ref(), limit).await?;
            match json {
                true => println!("{}", serde_json::json!(history)),
                false => print_history(&history),
            }
            Outcome::Done
        }
        Some(StageAction::Set {
            to,
            agents,
            pattern,
            percent,
            default,
            reason,
            explained,
            force,
            by,
        }) => {
            let mut named: Vec<AgentId> = agents
                .into_iter()
                .map(AgentId::new)
                .collect::<Result<_, _>>()?;
            named.extend(agent);
            let cohort = match (named.is_empty(), pattern, percent, default) {
                (false, None, None, false) => Cohort::Agents(named),
                (true, Some(pattern), None, false) => Cohort::Pattern(pattern),
                (true, None, Some(percent), false) if (0.0..=100.0).contains(&percent) => {
                    Cohort::Percent(percent)
                }
                (true, None, None, true) => Cohort::Default,
                _ => {
                    return Err(Error::InvalidInput {
                        what: "stage set",
                        reason: "name the agents one way: AGENT... (or --agent), --pattern GLOB,                                  --percent N (0 to 100), or --default"
                            .into(),
                    });
                }
            };
            let request = StageRequest {
                reason,
                by: by
                    .or_else(|| std::env::var("USER").ok())
                    .or_else(|| std::env::var("LOGNAME").ok())
                    .unwrap_or_else(|| "unknown".into()),
                force,
                mismatches_explained: explained,
            };
            let moves = dual.move_stage(&cohort, to, &request).await?;
            let refused = moves.iter().any(|m| m.outcome == "refused");
            for moved in &moves {
                let name = moved.agent.as_ref().map_or("(default)", AgentId::as_str);
                match json {
                    true => println!("{}", serde_json::json!(moved)),
                    false => {
                        let why = moved.why.as_deref().map(|w| format!(": {w}"));
                        println!(
                            "{name}: {} -> {} {}{}",
                            moved.from,
                            moved.to,
                            moved.outcome,
                            why.unwrap_or_default()
                        );
                    }
                }
            }
            if moves.is_empty() {
                eprintln!("memctl: no known agent is in that cohort");
            }
            if refused {
                Outcome::Refused
            } else {
                Outcome::Done
            }
        }
    };
    memshift::MemoryBackend::close(&dual).await.ok();
    Ok(outcome)
}

fn print_stage_view(view: &[memshift::backend::dual::AgentStage]) {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        })
    };
    println!(
        "{:<24} {:<10} {:<8} {:>7} {:>6} {:>10} {:>9} {:>6}  {:<19}  {:<19}",
        "AGENT",
        "STAGE",
        "SET BY",
        "PENDING",
        "PARKED",
        "MISMATCHES",
        "FALLBACKS",
        "COPIES",
        "CHANGED",
        "LAST CATCH-UP"
    );
    for a in view {
        println!(
            "{:<24} {:<10} {:<8} {:>7} {:>6} {:>10} {:>9} {:>6}  {:<19}  {:<19}",
            a.agent,
            a.stage.as_str(),
            a.source,
            a.owed_pending,
            a.owed_parked,
            a.counts.shadow_mismatches,
            a.counts.fallback_reads,
            a.counts.lazy_copies,
            when(a.changed_at),
            when(a.last_catch_up),
        );
    }
}

fn print_history(history: &[memshift::backend::dual::StageChange]) {
    for change in history {
        println!(
            "{}  {:<24} {:>9} -> {:<9} by {}{}{}",
            change.at.format("%Y-%m-%d %H:%M:%S"),
            change.agent.as_deref().unwrap_or("(default)"),
            change.from.as_deref().unwrap_or("(none)"),
            change.to,
            change.by,
            if change.forced { " FORCED" } else { "" },
            if change.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", change.reason)
            },
        );
    }
}

// `pub(crate)`: src/bin/memctl.rs runs it as the installed program.
#[tokio::main]
pub(crate) async fn main() -> ExitCode {
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
        Ok(Outcome::Refused) => ExitCode::from(3),
        Err(err) => {
            eprintln!("memctl: {}", Chain(&err));
            ExitCode::from(2)
        }
    }
}
