//! The mixed workload: agents making everyday calls, one after another, timed per kind.

use std::sync::Arc;
use std::time::Duration;

use memshift::{AgentId, Listing, Memory, MemoryBackend};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cpu::{process_cpu, server_cpu};
use super::{Args, Kind};
use crate::harness::{
    Counters, Latency, Result, Rng, Samples, Values, Wire, concurrently, median, settle, timed,
};

/// The kinds of call in the mixed workload, with their share of the calls in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Retrieve,
    Store,
    Overwrite,
    ListKeys,
}

impl Op {
    const ALL: [(Op, usize); 4] = [
        (Op::Retrieve, 50),
        (Op::Store, 20),
        (Op::Overwrite, 20),
        (Op::ListKeys, 10),
    ];

    fn index(self) -> usize {
        Op::ALL.iter().position(|(op, _)| *op == self).unwrap_or(0)
    }

    fn pick(rng: &mut Rng) -> Op {
        let mut roll = rng.below(100);
        for (op, share) in Op::ALL {
            if roll < share {
                return op;
            }
            roll -= share;
        }
        Op::Retrieve
    }
}

/// A value size in `min..=max`, log-uniform: as many values of 200-400 B as of 10-20 KB.
fn value_size(rng: &mut Rng, min: usize, max: usize) -> usize {
    let (lo, hi) = ((min.max(1)) as f64, (max.max(min).max(1)) as f64);
    let unit = rng.below(1 << 20) as f64 / f64::from(1 << 20);
    (lo * (hi / lo).powf(unit)).round() as usize
}

/// One agent of the mixed workload, with its own keys, generator and timings.
struct OpsAgent {
    backend: Arc<dyn MemoryBackend>,
    agent: AgentId,
    keys: Vec<String>,
    rng: Rng,
    min_bytes: usize,
    max_bytes: usize,
    values: Values,
    samples: Vec<Samples>,
}

impl OpsAgent {
    fn new(backend: Arc<dyn MemoryBackend>, agent: &str, args: &Args, seed: u64) -> Result<Self> {
        Ok(OpsAgent {
            backend,
            agent: AgentId::new(agent)?,
            keys: Vec::new(),
            rng: Rng::new(seed),
            min_bytes: args.min_bytes,
            max_bytes: args.max_bytes,
            values: args.values,
            samples: Op::ALL.iter().map(|_| Samples::default()).collect(),
        })
    }

    fn value(&mut self) -> Value {
        let bytes = value_size(&mut self.rng, self.min_bytes, self.max_bytes);
        self.values.value(bytes, &mut self.rng)
    }

    /// Stores a new key; returns how long the call took.
    async fn store_new(&mut self) -> Result<Duration> {
        let key = format!("conversation/{:06}", self.keys.len());
        let memory = Memory::new(key.clone(), self.value());
        let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
        stored?;
        self.keys.push(key);
        Ok(took)
    }

    /// One call of the workload, timed and recorded under its kind.
    async fn call(&mut self) -> Result<()> {
        let op = match Op::pick(&mut self.rng) {
            Op::Store => Op::Store,
            _ if self.keys.is_empty() => Op::Store,
            op => op,
        };
        let took = match op {
            Op::Store => self.store_new().await?,
            Op::Overwrite => {
                let key = self.keys[self.rng.below(self.keys.len())].clone();
                let memory = Memory::new(key, self.value());
                let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
                stored?;
                took
            }
            Op::Retrieve => {
                let key = &self.keys[self.rng.below(self.keys.len())];
                let (found, took) = timed(self.backend.get_memory(&self.agent, key)).await;
                if found?.is_none() {
                    return Err(format!("agent {} lost key {key:?}", self.agent).into());
                }
                took
            }
            Op::ListKeys => {
                let (listed, took) =
                    timed(self.backend.memory_keys(&self.agent, &Listing::default())).await;
                let listed = listed?;
                if listed.len() != self.keys.len() {
                    return Err(format!(
                        "agent {} lists {} keys, stored {}",
                        self.agent,
                        listed.len(),
                        self.keys.len()
                    )
                    .into());
                }
                took
            }
        };
        self.samples[op.index()].push(took);
        Ok(())
    }
}

/// The mixed workload of one backend at one number of agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Step {
    pub(super) backend: Kind,
    pub(super) agents: usize,
    pub(super) calls: usize,
    pub(super) seconds: f64,
    pub(super) calls_per_s: f64,
    /// CPU time of this process per call, in microseconds.
    pub(super) client_cpu_us_per_call: Option<f64>,
    /// CPU time of every `postgres` process on this machine per call (the server's
    /// share; 0 for sqlite), in microseconds; `None` when the server is elsewhere.
    pub(super) server_cpu_us_per_call: Option<f64>,
    /// Over all calls.
    pub(super) all: Latency,
    pub(super) store: Latency,
    pub(super) overwrite: Latency,
    pub(super) retrieve: Latency,
    pub(super) list_keys: Latency,
    /// What the client sent per call, when the step ran through the counting relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) wire: Option<Wire>,
}

/// Runs the mixed workload of `agents` fresh agents on `backend`; `server` is the
/// postmaster whose CPU time counts as the server's; `wire`, the relay's counters when
/// the backend's connections go through it.
pub(super) async fn mixed(
    backend: Arc<dyn MemoryBackend>,
    kind: Kind,
    agents: usize,
    rep: usize,
    args: &Args,
    server: Option<u32>,
    wire: Option<&Counters>,
) -> Result<Step> {
    let per_agent = (args.calls / agents).max(10);
    let loads = (0..agents)
        .map(|a| {
            OpsAgent::new(
                backend.clone(),
                &format!("ops_{}_{agents}_r{rep}_{a}", kind.name()),
                args,
                (rep * 1_000_000 + agents * 1000 + a) as u64,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let preload = args.preload;
    let (loads, _) = concurrently(loads, move |mut load| async move {
        for _ in 0..preload {
            load.store_new().await?;
        }
        Ok(load)
    })
    .await?;
    settle().await;
    let wire_before = wire.map(Counters::snapshot);
    let cpu_before = (process_cpu(std::process::id()), server_cpu(server));
    let (loads, wall) = concurrently(loads, move |mut load| async move {
        for _ in 0..per_agent {
            load.call().await?;
        }
        Ok(load)
    })
    .await?;
    let cpu_after = (process_cpu(std::process::id()), server_cpu(server));
    let calls = per_agent * agents;
    let wire = wire
        .zip(wire_before)
        .map(|(counters, before)| Wire::between(before, counters.snapshot(), calls));
    let mut by_op: Vec<Samples> = Op::ALL.iter().map(|_| Samples::default()).collect();
    let mut all = Samples::default();
    for load in loads {
        for (i, samples) in load.samples.into_iter().enumerate() {
            all.extend(&samples);
            by_op[i].extend(&samples);
        }
    }
    let mut by_op = by_op.into_iter().map(Samples::summary);
    let mut next = || by_op.next().unwrap_or_default();
    let (retrieve, store, overwrite, list_keys) = (next(), next(), next(), next());
    let per_call = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) / calls as f64 * 1e6).filter(|us| *us >= 0.0)
    };
    Ok(Step {
        backend: kind,
        agents,
        calls,
        seconds: wall.as_secs_f64(),
        calls_per_s: calls as f64 / wall.as_secs_f64(),
        client_cpu_us_per_call: per_call(cpu_before.0, cpu_after.0),
        server_cpu_us_per_call: per_call(cpu_before.1, cpu_after.1),
        all: all.summary(),
        store,
        overwrite,
        retrieve,
        list_keys,
        wire,
    })
}

impl Step {
    /// Each figure's median over `reps` (all of one backend and number of agents).
    pub(super) fn median(reps: &[&Step]) -> Step {
        let m = |f: &dyn Fn(&Step) -> f64| median(reps.iter().map(|s| f(s)).collect());
        let opt = |f: &dyn Fn(&Step) -> Option<f64>| {
            let values: Vec<f64> = reps.iter().filter_map(|s| f(s)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let latency = |f: &dyn Fn(&Step) -> Latency| Latency {
            count: reps.iter().map(|s| f(s).count).sum(),
            p50_us: m(&|s| f(s).p50_us),
            p99_us: m(&|s| f(s).p99_us),
            mean_us: m(&|s| f(s).mean_us),
        };
        Step {
            backend: reps.first().map_or(Kind::Sqlite, |s| s.backend),
            agents: reps.first().map_or(0, |s| s.agents),
            calls: reps.iter().map(|s| s.calls).sum(),
            seconds: reps.iter().map(|s| s.seconds).sum(),
            calls_per_s: m(&|s| s.calls_per_s),
            client_cpu_us_per_call: opt(&|s| s.client_cpu_us_per_call),
            server_cpu_us_per_call: opt(&|s| s.server_cpu_us_per_call),
            all: latency(&|s| s.all),
            store: latency(&|s| s.store),
            overwrite: latency(&|s| s.overwrite),
            retrieve: latency(&|s| s.retrieve),
            list_keys: latency(&|s| s.list_keys),
            wire: None,
        }
    }
}
