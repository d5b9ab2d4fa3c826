//! Generated workloads: a deterministic generator, memory-like JSON values, and one
//! agent's stream of stores and retrieves.

use std::time::Duration;

use memshift::{AgentId, MemoryBackend};
use serde_json::{Value, json};

use super::{Result, timed};

/// A small deterministic generator (splitmix64), so runs pick the same keys and values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: [&str; 24] = [
    "the",
    "customer",
    "asked",
    "about",
    "refund",
    "order",
    "shipping",
    "delayed",
    "invoice",
    "account",
    "agent",
    "checked",
    "status",
    "warehouse",
    "tomorrow",
    "confirmed",
    "payment",
    "card",
    "address",
    "updated",
    "ticket",
    "escalated",
    "resolved",
    "thanks",
];

/// A JSON value like an agent's conversation memory, about `bytes` bytes long as text:
/// a few scalar fields, tags, and messages of generated words.
pub fn memory_value(bytes: usize, rng: &mut Rng) -> Value {
    let mut messages = Vec::new();
    let mut size = 160; // the fixed fields below, as text
    while size < bytes {
        let mut text = String::new();
        while text.len() < 100.min(bytes.saturating_sub(size).max(8)) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[rng.below(WORDS.len())]);
        }
        let role = if messages.len() % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        size += text.len() + 32;
        messages.push(json!({"role": role, "text": text}));
    }
    json!({
        "topic": format!("ticket #{}", rng.below(1_000_000)),
        "turns": messages.len(),
        "confidence": rng.below(1000) as f64 / 1000.0,
        "resolved": rng.below(2) == 1,
        "tags": [WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]],
        "messages": messages,
    })
}

/// One agent's stream of calls: stores alternate between fresh keys and overwrites of a
/// random earlier key; retrieves read a random stored key and must find it.
pub struct AgentLoad {
    backend: std::sync::Arc<dyn MemoryBackend>,
    agent: AgentId,
    keys: Vec<String>,
    stores: usize,
    value_bytes: usize,
    rng: Rng,
}

impl AgentLoad {
    /// Calls to `backend` as agent `agent`, with values of about `value_bytes` bytes.
    pub fn new(
        backend: std::sync::Arc<dyn MemoryBackend>,
        agent: &str,
        value_bytes: usize,
        seed: u64,
    ) -> Result<Self> {
        Ok(AgentLoad {
            backend,
            agent: AgentId::new(agent)?,
            keys: Vec::new(),
            stores: 0,
            value_bytes,
            rng: Rng::new(seed),
        })
    }

    /// Stores one value (built before the clock starts); returns how long the call took.
    pub async fn store(&mut self) -> Result<Duration> {
        let key = if self.stores.is_multiple_of(2) || self.keys.is_empty() {
            self.keys
                .push(format!("conversation/{:06}", self.keys.len()));
            self.keys[self.keys.len() - 1].clone()
        } else {
            self.keys[self.rng.below(self.keys.len())].clone()
        };
        self.stores += 1;
        let memory = memshift::Memory::new(key, memory_value(self.value_bytes, &mut self.rng));
        let (stored, took) = timed(self.backend.put_memory(&self.agent, &memory)).await;
        stored?;
        Ok(took)
    }

    /// Retrieves one stored key; returns how long the call took.
    pub async fn retrieve(&mut self) -> Result<Duration> {
        if self.keys.is_empty() {
            return Err("retrieve before any store".into());
        }
        let key = &self.keys[self.rng.below(self.keys.len())];
        let (found, took) = timed(self.backend.get_memory(&self.agent, key)).await;
        if found?.is_none() {
            return Err(format!("agent {} lost key {key:?}", self.agent).into());
        }
        Ok(took)
    }

    /// `n` stores then `n` retrieves, unmeasured: opens files, pools and caches.
    pub async fn warm_up(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            self.store().await?;
        }
        for _ in 0..n {
            self.retrieve().await?;
        }
        Ok(())
    }
}
