//! Agent configuration: which backend, where its data lives, read from code or the
//! environment.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, redact_url};

/// Which storage an agent's memory lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// One embedded SQLite file per agent under the agents path. The default: no server.
    #[default]
    Sqlite,
    /// Shared PostgreSQL (with pgvector) at `database_url`.
    Postgres,
    /// Both, stepping from SQLite to PostgreSQL through the [`Stage`]s.
    Dual,
}

impl BackendKind {
    /// Every kind, in the order they are listed in messages.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Sqlite,
        BackendKind::Postgres,
        BackendKind::Dual,
    ];

    /// The name used in configuration (`MEMORY_BACKEND`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Dual => "dual",
        }
    }

    /// The cargo features of memshift this backend is compiled with.
    pub(crate) fn features(self) -> &'static [&'static str] {
        match self {
            BackendKind::Sqlite => &["sqlite"],
            BackendKind::Postgres => &["postgres"],
            BackendKind::Dual => &["sqlite", "postgres"],
        }
    }

    /// `Ok` when this build holds the backend; otherwise an [`Error::Config`] naming the
    /// features it lacks and how to turn them on.
    pub(crate) fn check_compiled(self) -> Result<()> {
        self.check_features(&[
            ("sqlite", cfg!(feature = "sqlite")),
            ("postgres", cfg!(feature = "postgres")),
        ])
    }

    /// [`check_compiled`](Self::check_compiled) against `compiled`, each feature's name
    /// and whether it is on.
    fn check_features(self, compiled: &[(&str, bool)]) -> Result<()> {
        let on = |feature: &&str| {
            compiled
                .iter()
                .any(|(name, is_on)| name == feature && *is_on)
        };
        let missing: Vec<&str> = self.features().iter().copied().filter(|f| !on(f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let needed: Vec<String> = self.features().iter().map(|f| format!("`{f}`")).collect();
        let add: Vec<String> = missing.iter().map(|f| format!("\"{f}\"")).collect();
        Err(Error::config(format!(
            "memory_backend = {self} is not in this build: it needs memshift's {} {}; \
             add {} to memshift's features in Cargo.toml",
            needed.join(" and "),
            if needed.len() == 1 {
                "feature"
            } else {
                "features"
            },
            add.join(" and ")
        )))
    }
}

/// A migration stage of the dual backend: which side takes writes, which serves reads,
/// which is authoritative. Each step forward or back loses nothing an agent was told
/// was stored.
///
/// | stage | writes | reads | authoritative |
/// |---|---|---|---|
/// | `sqlite` | SQLite (PostgreSQL's copy is owed) | SQLite | SQLite |
/// | `dualwrite` | both | SQLite | SQLite |
/// | `shadow` | both | both, compared; SQLite's answer returned | SQLite |
/// | `live` | both | PostgreSQL, falling back to SQLite on a miss (lazy copy); compared | PostgreSQL |
/// | `rampdown` | both | PostgreSQL | PostgreSQL |
/// | `postgres` | PostgreSQL (SQLite's copy is owed) | PostgreSQL | PostgreSQL |
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// SQLite only; writes owed to PostgreSQL are journaled.
    Sqlite,
    /// Writes go to both; reads from SQLite.
    #[default]
    DualWrite,
    /// Writes go to both; reads from both, compared, SQLite's answer returned.
    Shadow,
    /// Writes go to both, PostgreSQL first; reads from PostgreSQL, falling back to (and
    /// copying from) SQLite on a miss.
    Live,
    /// Writes go to both, PostgreSQL first; reads from PostgreSQL only.
    RampDown,
    /// PostgreSQL only; writes owed to SQLite are journaled.
    Postgres,
}

impl Stage {
    /// Every stage, in migration order.
    pub const ALL: [Stage; 6] = [
        Stage::Sqlite,
        Stage::DualWrite,
        Stage::Shadow,
        Stage::Live,
        Stage::RampDown,
        Stage::Postgres,
    ];

    /// The name used in configuration (`MEMORY_STAGE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Sqlite => "sqlite",
            Stage::DualWrite => "dualwrite",
            Stage::Shadow => "shadow",
            Stage::Live => "live",
            Stage::RampDown => "rampdown",
            Stage::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = Error;

    /// Parses a stage name, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == wanted)
            .ok_or_else(|| {
                let valid: Vec<_> = Stage::ALL.iter().map(|k| k.as_str()).collect();
                Error::config(format!(
                    "unknown migration stage {s:?}; valid stages are: {}",
                    valid.join(", ")
                ))
            })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    /// Parses a backend name, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        BackendKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wanted)
            .ok_or_else(|| {
                let valid: Vec<_> = BackendKind::ALL.iter().map(|k| k.as_str()).collect();
                Error::config(format!(
                    "unknown memory backend {s:?}; valid backends are: {}",
                    valid.join(", ")
                ))
            })
    }
}

/// How an agent's memory is configured.
///
/// Build it in code (`AgentConfig { name: "crawler".into(), ..Default::default() }`) or
/// from the environment with [`AgentConfig::from_env`]. `Debug` shows the database URL
/// with its password replaced by `***`; the type is deliberately not `Serialize`, so the
/// URL cannot end up in a written file by accident.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// The agent's name: its id in PostgreSQL and its folder under `agents_path`.
    pub name: String,
    /// When false, the agent keeps no memory: no database is opened, every store,
    /// register, record and log call does nothing, and every read finds nothing.
    pub memory_enabled: bool,
    /// Which backend to use.
    pub memory_backend: BackendKind,
    /// The dual backend's stage (ignored by the others).
    pub memory_stage: Stage,
    /// PostgreSQL URL, required by the `postgres` and `dual` backends.
    pub database_url: Option<String>,
    /// Folder holding one sub-folder per agent for the `sqlite` backend.
    pub agents_path: PathBuf,
    /// Most connections the PostgreSQL pool opens.
    pub max_connections: u32,
    /// How long to wait for a PostgreSQL connection before failing.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// The dual backend follows the stages held centrally in PostgreSQL (per agent,
    /// changed with `memctl stage set`): it listens for changes and reads them again
    /// this often, as a fallback. Zero turns following off: `memory_stage` then holds
    /// for the process's life. With following on, `memory_stage` is the stage of agents
    /// the central table has no row for.
    #[serde(with = "secs")]
    pub stage_poll: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: String::new(),
            memory_enabled: true,
            memory_backend: BackendKind::Sqlite,
            memory_stage: Stage::default(),
            database_url: None,
            agents_path: PathBuf::from(DEFAULT_AGENTS_PATH),
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            stage_poll: DEFAULT_STAGE_POLL,
        }
    }
}

/// How often a dual backend reads the central stages when no change was notified,
/// unless `MEMORY_STAGE_POLL` says otherwise.
pub const DEFAULT_STAGE_POLL: Duration = Duration::from_secs(2);

/// Where SQLite agents live unless `AGENTS_PATH` says otherwise.
pub const DEFAULT_AGENTS_PATH: &str = "./agents";

impl AgentConfig {
    /// Configuration for agent `name` with every other setting at its default.
    pub fn new(name: impl Into<String>) -> Self {
        AgentConfig {
            name: name.into(),
            ..AgentConfig::default()
        }
    }

    /// Reads the configuration of agent `name` from the environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `MEMORY_BACKEND` | `sqlite`, `postgres` or `dual` | `sqlite` |
    /// | `MEMORY_STAGE` | the dual backend's [`Stage`] | `dualwrite` |
    /// | `DATABASE_URL` | PostgreSQL URL | none |
    /// | `AGENTS_PATH` | folder of agent folders | `./agents` |
    /// | `MEMORY_ENABLED` | `true`/`false` (also `1`/`0`, `yes`/`no`) | `true` |
    /// | `MEMORY_STAGE_POLL` | seconds between reads of the central stages; `off` or `0` to keep `MEMORY_STAGE` | `2` |
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown backend or stage name (listing the valid ones),
    /// an unreadable `MEMORY_ENABLED` or `MEMORY_STAGE_POLL`.
    pub fn from_env(name: impl Into<String>) -> Result<Self> {
        Self::from_lookup(name, |var| std::env::var(var).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(
        name: impl Into<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut config = AgentConfig::new(name);
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        if let Some(kind) = get("MEMORY_BACKEND") {
            config.memory_backend = kind.parse().map_err(|e| match e {
                Error::Config { message } => Error::config(format!("MEMORY_BACKEND: {message}")),
                other => other,
            })?;
        }
        if let Some(stage) = get("MEMORY_STAGE") {
            config.memory_stage = stage.parse().map_err(|e| match e {
                Error::Config { message } => Error::config(format!("MEMORY_STAGE: {message}")),
                other => other,
            })?;
        }
        config.database_url = get("DATABASE_URL");
        if let Some(path) = get("AGENTS_PATH") {
            config.agents_path = PathBuf::from(path);
        }
        // Info, not warn: DATABASE_URL often names the application's own database, and
        // staying on SQLite is then right; someone who meant PostgreSQL reads why here.
        // The URL itself is not shown, so no form of it can leak a password.
        if config.database_url.is_some() && get("MEMORY_BACKEND").is_none() {
            tracing::info!(
                agent = %config.name,
                agents_path = %config.agents_path.display(),
                "DATABASE_URL is set but MEMORY_BACKEND is not: memory stays in SQLite under \
                 the agents path; set MEMORY_BACKEND=postgres to use PostgreSQL, or \
                 MEMORY_BACKEND=dual to move through the migration stages"
            );
        }
        if let Some(flag) = get("MEMORY_ENABLED") {
            config.memory_enabled = match flag.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => {
                    return Err(Error::config(format!(
                        "MEMORY_ENABLED: {flag:?} is not a boolean; use true or false"
                    )));
                }
            };
        }
        if let Some(poll) = get("MEMORY_STAGE_POLL") {
            config.stage_poll = parse_poll(&poll)?;
        }
        Ok(config)
    }

    /// The PostgreSQL URL, or a configuration error saying that `purpose` needs one and
    /// how to supply it.
    ///
    /// # Errors
    /// [`Error::Config`] when `database_url` is unset.
    pub fn require_database_url(&self, purpose: &str) -> Result<&str> {
        self.database_url.as_deref().ok_or_else(|| {
            Error::config(format!(
                "{purpose} needs a PostgreSQL URL: set DATABASE_URL (or AgentConfig::database_url)"
            ))
        })
    }
}

/// `MEMORY_STAGE_POLL`: seconds (a fraction allowed), or `off`.
fn parse_poll(text: &str) -> Result<Duration> {
    let text = text.trim();
    if ["off", "no", "false"].contains(&text.to_ascii_lowercase().as_str()) {
        return Ok(Duration::ZERO);
    }
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            Error::config(format!(
                "MEMORY_STAGE_POLL: {text:?} is not a number of seconds (or off)"
            ))
        })
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("name", &self.name)
            .field("memory_enabled", &self.memory_enabled)
            .field("memory_backend", &self.memory_backend)
            .field("memory_stage", &self.memory_stage)
            .field("stage_poll", &self.stage_poll)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("agents_path", &self.agents_path)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

mod secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_backend_left_out_of_the_build_names_its_feature() {
        let refusal = |kind: BackendKind, compiled: &[(&str, bool)]| {
            kind.check_features(compiled).unwrap_err().to_string()
        };
        let sqlite_only = [("sqlite", true), ("postgres", false)];
        assert_eq!(
            refusal(BackendKind::Postgres, &sqlite_only),
            "configuration: memory_backend = postgres is not in this build: it needs \
             memshift's `postgres` feature; add \"postgres\" to memshift's features in \
             Cargo.toml"
        );
        let err = refusal(BackendKind::Dual, &sqlite_only);
        assert!(
            err.contains("needs memshift's `sqlite` and `postgres` features; add \"postgres\" to"),
            "{err}"
        );
        assert!(BackendKind::Sqlite.check_features(&sqlite_only).is_ok());

        let postgres_only = [("sqlite", false), ("postgres", true)];
        let err = refusal(BackendKind::Sqlite, &postgres_only);
        assert!(err.contains("`sqlite` feature; add \"sqlite\" to"), "{err}");
        assert!(BackendKind::Postgres.check_features(&postgres_only).is_ok());

        let neither = [("sqlite", false), ("postgres", false)];
        let err = refusal(BackendKind::Dual, &neither);
        assert!(err.contains(r#"add "sqlite" and "postgres" to"#), "{err}");
    }

    #[test]
    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    fn the_default_build_holds_every_backend() {
        for kind in BackendKind::ALL {
            assert!(kind.check_compiled().is_ok(), "{kind}");
        }
    }

    /// Run by `tests/features.rs` in a build without PostgreSQL.
    #[tokio::test]
    #[cfg(all(feature = "sqlite", not(feature = "postgres")))]
    async fn a_sqlite_only_build_refuses_postgres_and_dual() {
        for kind in [BackendKind::Postgres, BackendKind::Dual] {
            let mut config = AgentConfig::new("a");
            config.memory_backend = kind;
            config.database_url = Some("postgres://u:pw@127.0.0.1:1/d".into());
            let err = crate::backend::open(&config).await.unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
            assert!(err.to_string().contains(r#"add "postgres" to"#), "{err}");
        }
    }

    #[test]
    fn defaults_to_embedded_sqlite_under_agents() {
        let c = AgentConfig::from_lookup("a", env(&[])).unwrap();
        assert_eq!(c.memory_backend, BackendKind::Sqlite);
        assert_eq!(c.agents_path, PathBuf::from("./agents"));
        assert!(c.memory_enabled);
        assert!(c.database_url.is_none());
    }

    #[test]
    fn reads_every_variable() {
        let c = AgentConfig::from_lookup(
            "a",
            env(&[
                ("MEMORY_BACKEND", " Postgres "),
                ("DATABASE_URL", "postgres://u:pw@h/d"),
                ("AGENTS_PATH", "/srv/agents"),
                ("MEMORY_ENABLED", "false"),
                ("MEMORY_STAGE", "Live"),
            ]),
        )
        .unwrap();
        assert_eq!(c.memory_stage, Stage::Live);
        assert_eq!(c.memory_backend, BackendKind::Postgres);
        assert_eq!(c.database_url.as_deref(), Some("postgres://u:pw@h/d"));
        assert_eq!(c.agents_path, PathBuf::from("/srv/agents"));
        assert!(!c.memory_enabled);
    }

    #[test]
    fn unknown_backend_lists_the_valid_ones() {
        let err = AgentConfig::from_lookup("a", env(&[("MEMORY_BACKEND", "mongo")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MEMORY_BACKEND"), "{err}");
        assert!(err.contains("\"mongo\""), "{err}");
        assert!(err.contains("sqlite, postgres, dual"), "{err}");
        let err = AgentConfig::from_lookup("a", env(&[("MEMORY_STAGE", "halfway")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MEMORY_STAGE"), "{err}");
        assert!(
            err.contains("sqlite, dualwrite, shadow, live, rampdown, postgres"),
            "{err}"
        );
        let err = AgentConfig::from_lookup("a", env(&[("MEMORY_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MEMORY_ENABLED"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut c = AgentConfig::new("a");
        c.database_url = Some("postgres://app:hunter2@db/agents".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db/agents"), "{shown}");
    }
}
