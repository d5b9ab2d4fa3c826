//! Migration stages held centrally in PostgreSQL (`agent_memory.stages`): one per agent
//! and a default, followed by every process at run time, and changed with guard rails
//! and a record of who changed what.
//!
//! A process follows the table with `LISTEN agent_memory_stages` (a change notifies the
//! channel when it commits) and, as the fallback, a read every
//! [`AgentConfig::stage_poll`](crate::AgentConfig::stage_poll). While PostgreSQL cannot
//! be reached it keeps the stages it last read, and a process that starts then takes
//! those another process of the machine last read (cached under the agents path, see
//! [`cache_path`]). An agent with no row, when there is no default row either, stays at
//! the stage its process started with (`MEMORY_STAGE`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};

use super::stats::AgentCounts;
use super::{DualBackend, Inner, Side, lock};
use crate::config::Stage;
use crate::error::{Error, Result};
use crate::record::AgentId;

/// The channel a stage change notifies, with the agent's name ('' for the default).
pub const CHANNEL: &str = "agent_memory_stages";

/// The `agent` of the default's row.
const DEFAULT_ROW: &str = "";

/// The central stages as read: the default row's stage and each named agent's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CentralStages {
    /// The stage of agents not named, when the default row exists.
    pub default: Option<Stage>,
    /// The stage of each agent with a row of its own.
    pub agents: HashMap<AgentId, Stage>,
}

/// Reads every row of `agent_memory.stages`. A row naming a stage this version does not
/// know (a newer version wrote it) is left out, with a warning.
///
/// # Errors
/// [`Error::Database`] when the table cannot be read.
pub async fn read_stages(pool: &PgPool) -> Result<CentralStages> {
    let rows = sqlx::query("select agent, stage from agent_memory.stages")
        .fetch_all(pool)
        .await
        .map_err(db("read the central stages"))?;
    let mut stages = CentralStages::default();
    for row in rows {
        let (agent, stage): (String, String) = (row.get(0), row.get(1));
        let Ok(stage) = stage.parse::<Stage>() else {
            tracing::warn!(
                agent,
                stage,
                "central stage unknown to this version; ignored"
            );
            continue;
        };
        if agent == DEFAULT_ROW {
            stages.default = Some(stage);
        } else if let Ok(agent) = AgentId::new(agent) {
            stages.agents.insert(agent, stage);
        }
    }
    Ok(stages)
}

fn db(operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::Database {
        backend: "postgres",
        operation: operation.into(),
        source: Box::new(e),
    }
}

/// The task following the central stages for one dual backend; stops when the backend
/// is dropped or closed.
pub(super) struct Follower {
    pool: PgPool,
    /// The SQLite side's agents path, whose folders name agents too.
    agents_path: Option<std::path::PathBuf>,
    task: tokio::task::AbortHandle,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DualBackend {
    /// Follows the central stages in `pool`'s database from now on: listens for changes,
    /// reads them once before returning (so the first call already runs under them),
    /// then again after each change and every `poll`. Also saves what each agent's reads
    /// met (see [`take_agent_counts`](Self::take_agent_counts)) every `poll`.
    ///
    /// `agents_path`, when given, names agents too (its folders, for cohorts and the
    /// stage view) and holds the cache of the stages last read: when they cannot be
    /// read now (PostgreSQL down), the cached ones apply until they can. With `read_now`
    /// false (PostgreSQL was just found unreachable) the first read is left to the
    /// background task, so opening does not wait out a connection timeout. Stages set
    /// in code hold wherever the table has no row.
    pub async fn follow_central_stages(
        &self,
        pool: PgPool,
        poll: Duration,
        agents_path: Option<std::path::PathBuf>,
        read_now: bool,
    ) {
        let start = self.stage();
        let cache = agents_path.as_deref().map(cache_path);
        let mut listener = None;
        let read = match read_now {
            true => {
                listener = listen(&pool).await;
                read_stages(&pool).await
            }
            false => Err(Error::config("PostgreSQL was unreachable at start")),
        };
        match read {
            Ok(stages) => {
                self.set_central(&stages);
                if let Some(cache) = &cache {
                    save_cache(cache, &stages);
                }
            }
            Err(err) => match cache.as_deref().and_then(load_cache) {
                Some(stages) => {
                    tracing::warn!(
                        error = %crate::Chain(&err),
                        "central stages unreadable; starting at the stages last read from them"
                    );
                    self.set_central(&stages);
                }
                None => tracing::warn!(
                    error = %crate::Chain(&err),
                    stage = %start,
                    "central stages unreadable and none read before; starting at the \
                     configured stage until they can be read"
                ),
            },
        }
        let weak = Arc::downgrade(&self.inner);
        let (task_pool, task_listener) = (pool.clone(), listener.take());
        let task = tokio::spawn(follow(weak, task_pool, task_listener, poll, cache));
        *lock(&self.inner.follower) = Some(Follower {
            pool,
            agents_path,
            task: task.abort_handle(),
        });
    }

    /// The database of the central stages this backend follows.
    ///
    /// # Errors
    /// [`Error::Config`] when it follows none (it was built without a PostgreSQL URL to
    /// follow, or with following turned off).
    pub fn central_pool(&self) -> Result<PgPool> {
        lock(&self.inner.follower)
            .as_ref()
            .map(|f| f.pool.clone())
            .ok_or_else(|| {
                Error::config(
                    "this dual backend does not follow central stages (MEMORY_STAGE_POLL is \
                     off, or it was built in code)",
                )
            })
    }

    /// Stops following the central stages and saves the counts not yet saved.
    pub(super) async fn stop_following(&self) {
        let follower = lock(&self.inner.follower).take();
        if let Some(follower) = follower {
            follower.task.abort();
            save_counts(self, &follower.pool).await;
        }
    }
}

/// A listener on [`CHANNEL`], or `None` when PostgreSQL cannot be reached (the periodic
/// read stands in).
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}

async fn follow(
    weak: Weak<Inner>,
    pool: PgPool,
    mut listener: Option<PgListener>,
    poll: Duration,
    cache: Option<PathBuf>,
) {
    let mut next_save = tokio::time::Instant::now() + poll;
    let mut last = None;
    loop {
        match listener.as_mut() {
            // Ok(None): the connection dropped; the next call reconnects and listens
            // again. Notifications sent meanwhile are lost, so the table is read now.
            Some(l) => match tokio::time::timeout_at(next_save, l.try_recv()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "stage listener failed; polling until it is back");
                    listener = None;
                }
            },
            None => {
                tokio::time::sleep_until(next_save).await;
                listener = listen(&pool).await;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let dual = DualBackend { inner };
        match read_stages(&pool).await {
            Ok(stages) => {
                dual.set_central(&stages);
                if let Some(cache) = cache.as_deref().filter(|_| last.as_ref() != Some(&stages)) {
                    save_cache(cache, &stages);
                }
                last = Some(stages);
            }
            Err(err) => tracing::debug!(
                error = %crate::Chain(&err),
                "central stages unreadable; keeping the last known"
            ),
        }
        if tokio::time::Instant::now() >= next_save {
            save_counts(&dual, &pool).await;
            next_save = tokio::time::Instant::now() + poll;
        }
    }
}

/// Where the stages last read are kept on this machine, for a process that starts while
/// PostgreSQL cannot be reached: `.memshift/stages.json` under the agents path (a dot
/// folder, which is neither an agent nor a legacy database).
pub fn cache_path(agents_path: &Path) -> PathBuf {
    agents_path.join(".memshift").join("stages.json")
}

#[derive(Serialize, serde::Deserialize)]
struct Cached {
    default: Option<Stage>,
    agents: BTreeMap<String, Stage>,
}

/// Writes `stages` to `path` whole or not at all (a temporary file renamed over it); a
/// failure only costs the cache, and is logged.
fn save_cache(path: &Path, stages: &CentralStages) {
    let cached = Cached {
        default: stages.default,
        agents: stages
            .agents
            .iter()
            .map(|(a, s)| (a.as_str().to_owned(), *s))
            .collect(),
    };
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        // One temporary name per process, so two processes never write one file.
        let temporary = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&temporary)?;
        serde_json::to_writer(&mut file, &cached)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if let Err(err) = written {
        tracing::debug!(path = %path.display(), error = %err, "stages not cached");
    }
}

/// The stages cached at `path`, when it holds any readable ones.
fn load_cache(path: &Path) -> Option<CentralStages> {
    let text = std::fs::read_to_string(path).ok()?;
    let cached: Cached = serde_json::from_str(&text)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cached stages unreadable"))
        .ok()?;
    Some(CentralStages {
        default: cached.default,
        agents: cached
            .agents
            .into_iter()
            .filter_map(|(a, s)| AgentId::new(a).ok().map(|a| (a, s)))
            .collect(),
    })
}

/// Adds what the backend's agents met since the last save to `agent_memory.stage_counters`;
/// on failure they are kept for the next save.
async fn save_counts(dual: &DualBackend, pool: &PgPool) {
    let counts = dual.take_agent_counts();
    if counts.is_empty() {
        return;
    }
    let mut agents = Vec::with_capacity(counts.len());
    let mut stages = Vec::with_capacity(counts.len());
    let mut columns = [Vec::new(), Vec::new(), Vec::new()];
    for ((agent, stage), c) in &counts {
        agents.push(agent.as_str().to_owned());
        stages.push(stage.as_str());
        for (column, value) in
            columns
                .iter_mut()
                .zip([c.shadow_mismatches, c.fallback_reads, c.lazy_copies])
        {
            column.push(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    let saved = sqlx::query(
        "insert into agent_memory.stage_counters
             (agent, stage, shadow_mismatches, fallback_reads, lazy_copies)
         select * from unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
         on conflict (agent, stage) do update set
             shadow_mismatches = stage_counters.shadow_mismatches + excluded.shadow_mismatches,
             fallback_reads = stage_counters.fallback_reads + excluded.fallback_reads,
             lazy_copies = stage_counters.lazy_copies + excluded.lazy_copies,
             updated_at = now()",
    )
    .bind(&agents)
    .bind(&stages)
    .bind(&columns[0])
    .bind(&columns[1])
    .bind(&columns[2])
    .execute(pool)
    .await;
    if let Err(err) = saved {
        tracing::debug!(error = %err, "stage counters not saved; kept for the next save");
        dual.give_back_agent_counts(counts);
    }
}

/// Which agents a change of stage is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Cohort {
    /// The default: every agent without a stage of its own.
    Default,
    /// These agents.
    Agents(Vec<AgentId>),
    /// The known agents whose names match a pattern (`*` any run of characters, `?` one
    /// character).
    Pattern(String),
    /// A fixed share of the known agents, chosen by a hash of the name: an agent inside
    /// 10% is inside 25% too (see [`in_percent`]).
    Percent(f64),
}

/// Whether `agent` is inside the first `percent` of agents: the FNV-1a hash of its name
/// picks one of 10,000 buckets, and the first `percent` × 100 buckets are inside. The
/// same name is always in the same bucket, so a larger share holds every agent of a
/// smaller one.
pub fn in_percent(agent: &str, percent: f64) -> bool {
    bucket(agent) < (percent.clamp(0.0, 100.0) * 100.0).round() as u64
}

/// The bucket (0 to 9,999) of `agent` for [`in_percent`].
pub fn bucket(agent: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = agent
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    hash % 10_000
}

/// Whether `name` matches `pattern` (`*` any run of characters, `?` one character,
/// everything else itself).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match, backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// How a change of stage is asked for.
#[derive(Debug, Clone, Default)]
pub struct StageRequest {
    /// Why (recorded).
    pub reason: String,
    /// Who (recorded).
    pub by: String,
    /// Override the guard rails: more than one stage forward at once, owed writes left,
    /// shadow mismatches unexplained.
    pub force: bool,
    /// Why the shadow mismatches seen at the stage being left are acceptable (recorded
    /// with the reason); without it a step that changes the authoritative side refuses
    /// while there are any.
    pub mismatches_explained: Option<String>,
}

/// What a change of stage did to one agent (or the default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMove {
    /// The agent, `None` for the default.
    pub agent: Option<AgentId>,
    /// The stage it was at.
    pub from: Stage,
    /// The stage asked for.
    pub to: Stage,
    /// `moved`, `unchanged` or `refused`.
    pub outcome: &'static str,
    /// Why it was refused, or what a forced move overrode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Owed writes a drain replayed before the authoritative side changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<u64>,
}

/// One recorded change of stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageChange {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The agent, `None` for the default.
    pub agent: Option<String>,
    /// The stage before (`None` when the agent had no row).
    pub from: Option<String>,
    /// The stage after.
    pub to: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub by: String,
    /// Whether a guard rail was overridden.
    pub forced: bool,
}

/// One agent's stage with what an operator weighs before its next step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStage {
    /// The agent.
    pub agent: String,
    /// Its stage.
    pub stage: Stage,
    /// `agent` (a row of its own), `default` (the default row) or `start` (no row: the
    /// stage processes start with, as this one was configured).
    pub source: &'static str,
    /// When its stage (or, by the default, the default) last changed.
    pub changed_at: Option<DateTime<Utc>>,
    /// Owed writes pending in both journals.
    pub owed_pending: u64,
    /// Owed writes parked in both journals.
    pub owed_parked: u64,
    /// What its reads met at this stage since it began.
    pub counts: AgentCounts,
    /// When a backfill last brought one of its legacy tables up to date.
    pub last_catch_up: Option<DateTime<Utc>>,
}

fn refused(agent: Option<&AgentId>, from: Stage, to: Stage, why: String) -> StageMove {
    StageMove {
        agent: agent.cloned(),
        from,
        to,
        outcome: "refused",
        why: Some(why),
        drained: None,
    }
}

impl DualBackend {
    /// The stage of `agent` as the central table has it now (`None`: the default), and
    /// when it changed; the configured stage when neither has a row.
    async fn central_stage_of(
        &self,
        pool: &PgPool,
        agent: Option<&AgentId>,
    ) -> Result<(Stage, &'static str, Option<DateTime<Utc>>)> {
        let name = agent.map_or(DEFAULT_ROW, AgentId::as_str);
        let row = sqlx::query(
            "select agent, stage, changed_at from agent_memory.stages
             where agent = $1 or agent = $2 order by agent = $1 desc limit 1",
        )
        .bind(name)
        .bind(DEFAULT_ROW)
        .fetch_optional(pool)
        .await
        .map_err(db("read a central stage"))?;
        let start = self.local_stage();
        Ok(match row {
            None => (start, "start", None),
            Some(row) => {
                let stage = row.get::<String, _>(1).parse().unwrap_or(start);
                let source = if row.get::<String, _>(0) == name && agent.is_some() {
                    "agent"
                } else {
                    "default"
                };
                (stage, source, Some(row.get(2)))
            }
        })
    }

    /// Owed writes of every agent with any, in both journals: pending and parked.
    async fn owed_by_agent(&self) -> Result<BTreeMap<AgentId, (u64, u64)>> {
        let mut owed: BTreeMap<AgentId, (u64, u64)> = BTreeMap::new();
        for side in [Side::Sqlite, Side::Postgres] {
            for count in self.journal_counts(side).await? {
                let entry = owed.entry(count.agent).or_default();
                entry.0 += count.pending;
                entry.1 += count.parked;
            }
        }
        Ok(owed)
    }

    /// Owed writes of `agent` (every agent when `None`) in both journals: pending and
    /// parked.
    async fn owed_of(&self, agent: Option<&AgentId>) -> Result<(u64, u64)> {
        let owed = self.owed_by_agent().await?;
        Ok(owed
            .iter()
            .filter(|(a, _)| agent.is_none_or(|agent| agent == *a))
            .fold((0, 0), |(p, k), (_, (pending, parked))| {
                (p + pending, k + parked)
            }))
    }

    /// Moves `cohort` to stage `to` in the central table, agent by agent, with the guard
    /// rails: one stage forward at a time; before a step forward that changes the
    /// authoritative side, the agent's owed writes are replayed (the step is refused
    /// when that repair fails or parked writes remain) and the step is refused while the
    /// shadow mismatches counted at the stage being left are not explained. Stepping back is
    /// always allowed. `force` overrides the rails (and says so in the history). Each
    /// change is recorded in `agent_memory.stage_history` and notified to every process
    /// following the table.
    ///
    /// # Errors
    /// When the central table cannot be read or written, or the cohort's agents cannot
    /// be listed; a refusal is not an error (see [`StageMove::outcome`]).
    pub async fn move_stage(
        &self,
        cohort: &Cohort,
        to: Stage,
        request: &StageRequest,
    ) -> Result<Vec<StageMove>> {
        let pool = self.central_pool()?;
        let targets: Vec<Option<AgentId>> = match cohort {
            Cohort::Default => vec![None],
            Cohort::Agents(agents) => agents.iter().cloned().map(Some).collect(),
            Cohort::Pattern(pattern) => self
                .known_agents(&pool)
                .await?
                .into_iter()
                .filter(|a| matches_pattern(pattern, a.as_str()))
                .map(Some)
                .collect(),
            Cohort::Percent(percent) => self
                .known_agents(&pool)
                .await?
                .into_iter()
                .filter(|a| in_percent(a.as_str(), *percent))
                .map(Some)
                .collect(),
        };
        let mut moves = Vec::with_capacity(targets.len());
        for agent in targets {
            moves.push(self.move_one(&pool, agent.as_ref(), to, request).await?);
        }
        Ok(moves)
    }

    async fn move_one(
        &self,
        pool: &PgPool,
        agent: Option<&AgentId>,
        to: Stage,
        request: &StageRequest,
    ) -> Result<StageMove> {
        let (from, _, _) = self.central_stage_of(pool, agent).await?;
        let mut moved = StageMove {
            agent: agent.cloned(),
            from,
            to,
            outcome: "moved",
            why: None,
            drained: None,
        };
        if from == to {
            moved.outcome = "unchanged";
            return Ok(moved);
        }
        let forward = to > from;
        let mut overridden = Vec::new();
        let steps = Stage::ALL.iter().position(|s| *s == to).unwrap_or(0) as i64
            - Stage::ALL.iter().position(|s| *s == from).unwrap_or(0) as i64;
        if forward && steps > 1 {
            let next = Stage::ALL[Stage::ALL.iter().position(|s| *s == from).unwrap_or(0) + 1];
            let why = format!("one stage at a time: from {from} the next is {next}");
            if !request.force {
                return Ok(refused(agent, from, to, format!("{why} (or force it)")));
            }
            overridden.push(why);
        }
        if from.authoritative() != to.authoritative() {
            // Drain: what the side about to lead missed is replayed first. Stepping back
            // drains too, so the side taking the lead again reads complete, but is never
            // refused: what the drain could not replay stays journaled for repair.
            let drained = match agent {
                Some(agent) => self
                    .repair(agent)
                    .await
                    .map(|r| r.to_postgres + r.to_sqlite),
                None => self.repair_all().await.map(|all| {
                    all.repaired
                        .values()
                        .map(|r| r.to_postgres + r.to_sqlite)
                        .sum()
                }),
            };
            self.flush().await.ok();
            let left = match drained {
                Ok(replayed) => {
                    moved.drained = Some(replayed);
                    self.owed_of(agent).await.map_err(|e| {
                        format!("the owed writes cannot be counted: {}", crate::Chain(&e))
                    })
                }
                Err(err) => Err(format!("the drain failed: {}", crate::Chain(&err))),
            };
            // A repair that ended well replayed every record it found, and kept on until
            // the journals were empty; records pending now are writes of processes still
            // running, each delivered or repaired by its own process. Parked ones no
            // repair replays.
            let why = match left {
                Ok((_, 0)) => None,
                Ok((_, parked)) => Some(format!(
                    "{parked} owed writes are parked (refused for good by a side); the side \
                     about to lead would miss them (memctl stats; memctl repair --retry-parked)"
                )),
                Err(why) => Some(format!("{why}; the side about to lead may miss writes")),
            };
            match why {
                Some(why) if !forward => {
                    tracing::warn!(from = %from, to = %to, why, "stepping back without a full drain");
                    moved.why = Some(format!("stepped back without a full drain: {why}"));
                }
                Some(why) if !request.force => return Ok(refused(agent, from, to, why)),
                Some(why) => overridden.push(why),
                None => {}
            }
            let mismatches = match forward {
                true => self.mismatches_at(pool, agent, from).await?,
                false => 0, // nothing holds a step back
            };
            if mismatches > 0 && request.mismatches_explained.is_none() {
                let why = format!(
                    "{mismatches} shadow mismatches at {from} are unexplained (memctl stats \
                     --agent NAME compares the sides; say why they are fine with --explained)"
                );
                if !request.force {
                    return Ok(refused(agent, from, to, why));
                }
                overridden.push(why);
            }
        }
        let mut reason = request.reason.clone();
        if let Some(explained) = &request.mismatches_explained {
            reason = format!("{reason} (mismatches explained: {explained})")
                .trim()
                .to_owned();
        }
        let forced = !overridden.is_empty();
        if forced {
            moved.why = Some(format!("forced past: {}", overridden.join("; ")));
        }
        self.record_move(pool, agent, from, to, &reason, &request.by, forced)
            .await?;
        Ok(moved)
    }

    /// Writes the new stage, its history row and a fresh start of its counts in one
    /// transaction, and notifies the followers when it commits. The stage read first is
    /// checked again under the row's lock, so two operators moving one agent at once do
    /// not both step from the same stage.
    #[allow(clippy::too_many_arguments)]
    async fn record_move(
        &self,
        pool: &PgPool,
        agent: Option<&AgentId>,
        from: Stage,
        to: Stage,
        reason: &str,
        by: &str,
        forced: bool,
    ) -> Result<()> {
        let name = agent.map_or(DEFAULT_ROW, AgentId::as_str);
        let mut tx = pool.begin().await.map_err(db("begin a stage change"))?;
        sqlx::query(
            "select pg_advisory_xact_lock(hashtextextended('agent_memory.stages:' || $1, 0))",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("lock the agent's stage"))?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select agent, stage from agent_memory.stages where agent = $1 or agent = $2",
        )
        .bind(name)
        .bind(DEFAULT_ROW)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("read a central stage"))?;
        let row_of = |who: &str| rows.iter().find(|(a, _)| a == who).map(|(_, s)| s.clone());
        let now = row_of(name);
        let current = now
            .clone()
            .or_else(|| row_of(DEFAULT_ROW))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| self.local_stage());
        if current != from {
            return Err(Error::invalid(
                "stage",
                format!(
                    "{} moved from {from} to {current} while this change was being checked; \
                     run it again",
                    agent.map_or("the default", AgentId::as_str)
                ),
            ));
        }
        sqlx::query(
            "insert into agent_memory.stages (agent, stage, changed_at) values ($1, $2, now())
             on conflict (agent) do update set stage = excluded.stage, changed_at = now()",
        )
        .bind(name)
        .bind(to.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db("write a central stage"))?;
        sqlx::query(
            "insert into agent_memory.stage_history
                 (agent, from_stage, to_stage, reason, changed_by, forced)
             values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(name)
        .bind(now.as_deref())
        .bind(to.as_str())
        .bind(reason)
        .bind(by)
        .bind(forced)
        .execute(&mut *tx)
        .await
        .map_err(db("record a stage change"))?;
        sqlx::query("delete from agent_memory.stage_counters where agent = $1 and stage = $2")
            .bind(name)
            .bind(to.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("start the stage's counts"))?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("notify the followers"))?;
        tx.commit().await.map_err(db("commit a stage change"))?;
        tracing::info!(agent = name, %from, %to, forced, "central stage changed");
        Ok(())
    }

    /// Shadow mismatches counted for `agent` (every agent when `None`) at `stage`.
    async fn mismatches_at(
        &self,
        pool: &PgPool,
        agent: Option<&AgentId>,
        stage: Stage,
    ) -> Result<u64> {
        // This process's own counts first, so none waits for the next periodic save.
        save_counts(self, pool).await;
        let count: i64 = sqlx::query_scalar(
            "select coalesce(sum(shadow_mismatches), 0)::int8 from agent_memory.stage_counters
             where stage = $2 and ($1::text is null or agent = $1)",
        )
        .bind(agent.map(AgentId::as_str))
        .bind(stage.as_str())
        .fetch_one(pool)
        .await
        .map_err(db("read the shadow mismatches"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every agent known to the workspace: PostgreSQL's `agents`, the central table's
    /// rows, the journals' agents, and the folders under the agents path.
    pub async fn known_agents(&self, pool: &PgPool) -> Result<Vec<AgentId>> {
        // A journal that cannot be read only hides its agents from the list.
        let owed = self.owed_by_agent().await.unwrap_or_default();
        self.known_agents_with(pool, &owed).await
    }

    /// [`known_agents`](Self::known_agents), with the journals' agents already read.
    async fn known_agents_with(
        &self,
        pool: &PgPool,
        owed: &BTreeMap<AgentId, (u64, u64)>,
    ) -> Result<Vec<AgentId>> {
        let mut names: Vec<String> = sqlx::query_scalar(
            "select name from agents union select agent from agent_memory.stages where agent <> ''",
        )
        .fetch_all(pool)
        .await
        .map_err(db("list the agents"))?;
        let agents_path = lock(&self.inner.follower)
            .as_ref()
            .and_then(|f| f.agents_path.clone());
        if let Some(Ok(folders)) = agents_path.map(std::fs::read_dir) {
            names.extend(
                folders
                    .filter_map(|entry| entry.ok())
                    .filter(|entry| entry.path().is_dir())
                    .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
                    .map(|entry| entry.file_name().to_string_lossy().into_owned()),
            );
        }
        let mut agents: Vec<AgentId> = names
            .into_iter()
            .filter_map(|n| AgentId::new(n).ok())
            .chain(owed.keys().cloned())
            .collect();
        agents.sort();
        agents.dedup();
        Ok(agents)
    }

    /// Every known agent's stage, with its owed writes, what its reads met at that
    /// stage, and its last catch-up.
    ///
    /// # Errors
    /// When the central table, the counters or a journal cannot be read.
    pub async fn stage_view(&self) -> Result<Vec<AgentStage>> {
        let pool = self.central_pool()?;
        save_counts(self, &pool).await;
        let central = read_stages(&pool).await?;
        let changed: HashMap<String, DateTime<Utc>> =
            sqlx::query_as("select agent, changed_at from agent_memory.stages")
                .fetch_all(&pool)
                .await
                .map_err(db("read the central stages"))?
                .into_iter()
                .collect();
        let counters: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "select agent, stage, shadow_mismatches, fallback_reads, lazy_copies
             from agent_memory.stage_counters",
        )
        .fetch_all(&pool)
        .await
        .map_err(db("read the stage counters"))?;
        let catch_ups: HashMap<String, DateTime<Utc>> = sqlx::query_as(
            "select split_part(source_db, '/', 1), max(caught_up_at)
             from agent_memory.backfill_tables group by 1",
        )
        .fetch_all(&pool)
        .await
        .map_err(db("read the last catch-ups"))?
        .into_iter()
        .collect();
        let owed = self.owed_by_agent().await?;
        let mut view = Vec::new();
        for agent in self.known_agents_with(&pool, &owed).await? {
            let name = agent.as_str();
            let (stage, source, changed_at) = match central.agents.get(&agent) {
                Some(stage) => (*stage, "agent", changed.get(name).copied()),
                None => match central.default {
                    Some(stage) => (stage, "default", changed.get(DEFAULT_ROW).copied()),
                    None => (self.local_stage(), "start", None),
                },
            };
            let mut counts = AgentCounts::default();
            for (a, s, mismatches, fallbacks, copies) in &counters {
                if a == name && *s == stage.as_str() {
                    counts.add(&AgentCounts {
                        shadow_mismatches: u64::try_from(*mismatches).unwrap_or(0),
                        fallback_reads: u64::try_from(*fallbacks).unwrap_or(0),
                        lazy_copies: u64::try_from(*copies).unwrap_or(0),
                    });
                }
            }
            let (owed_pending, owed_parked) = owed.get(&agent).copied().unwrap_or_default();
            view.push(AgentStage {
                agent: name.to_owned(),
                stage,
                source,
                changed_at,
                owed_pending,
                owed_parked,
                counts,
                last_catch_up: catch_ups.get(name).copied(),
            });
        }
        Ok(view)
    }

    /// The recorded changes of stage, newest first: of `agent` (and of the default)
    /// when given, else of every agent; at most `limit`.
    ///
    /// # Errors
    /// When the history cannot be read.
    pub async fn stage_history(
        &self,
        agent: Option<&AgentId>,
        limit: i64,
    ) -> Result<Vec<StageChange>> {
        let pool = self.central_pool()?;
        let rows = sqlx::query(
            "select at, agent, from_stage, to_stage, reason, changed_by, forced
             from agent_memory.stage_history
             where $1::text is null or agent = $1 or agent = ''
             order by id desc limit $2",
        )
        .bind(agent.map(AgentId::as_str))
        .bind(limit)
        .fetch_all(&pool)
        .await
        .map_err(db("read the stage history"))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let agent: String = row.get(1);
                StageChange {
                    at: row.get(0),
                    agent: (agent != DEFAULT_ROW).then_some(agent),
                    from: row.get(2),
                    to: row.get(3),
                    reason: row.get(4),
                    by: row.get(5),
                    forced: row.get(6),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_share_holds_every_agent_of_a_smaller_one() {
        let names: Vec<String> = (0..2000).map(|i| format!("agent-{i}")).collect();
        let inside =
            |p: f64| -> Vec<&String> { names.iter().filter(|n| in_percent(n, p)).collect() };
        let (ten, twenty_five) = (inside(10.0), inside(25.0));
        assert!(ten.iter().all(|n| twenty_five.contains(n)));
        // A hash that spreads names: within a few points of the share asked for.
        assert!((150..250).contains(&ten.len()), "{}", ten.len());
        assert!(
            (420..580).contains(&twenty_five.len()),
            "{}",
            twenty_five.len()
        );
        assert!(inside(0.0).is_empty());
        assert_eq!(inside(100.0).len(), names.len());
    }

    #[test]
    fn patterns_match_like_shell_globs() {
        assert!(matches_pattern("crawler-*", "crawler-7"));
        assert!(matches_pattern("*-eu-?", "billing-eu-1"));
        assert!(!matches_pattern("*-eu-?", "billing-eu-12"));
        assert!(matches_pattern("*", ""));
        assert!(!matches_pattern("crawler", "crawler-1"));
        assert!(matches_pattern("a*b*c", "axxbyyc"));
        assert!(!matches_pattern("a*b*c", "axxbyy"));
    }
}
