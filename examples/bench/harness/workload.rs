//! Generated workloads: a deterministic generator, memory-like JSON values, and one
//! agent's stream of stores and retrieves.

use std::time::Duration;

use memshift::{AgentId, MemoryBackend};
use serde::{Deserialize, Serialize};
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
    conversation(
        bytes,
        rng,
        |rng, room| {
            let mut text = String::new();
            while text.len() < 100.min(room) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(WORDS[rng.below(WORDS.len())]);
            }
            text
        },
        |rng| WORDS[rng.below(WORDS.len())],
    )
}

/// A conversation of about `bytes` bytes as JSON text: messages from `message` (given
/// the room left, at least 8) until the size is reached, tags from `tag`.
fn conversation(
    bytes: usize,
    rng: &mut Rng,
    mut message: impl FnMut(&mut Rng, usize) -> String,
    mut tag: impl FnMut(&mut Rng) -> &'static str,
) -> Value {
    let mut messages = Vec::new();
    let mut size = 160; // the fixed fields below, as text
    while size < bytes {
        let text = message(rng, bytes.saturating_sub(size).max(8));
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
        "tags": [tag(rng), tag(rng)],
        "messages": messages,
    })
}

/// Which values a workload stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Values {
    /// Text like agents' own: words of a 5,000-word vocabulary in Zipf's proportions
    /// (exponent 1.1), sentences of 4 to 17 words, one word in a hundred a number and
    /// one an 8-digit hex identifier. PostgreSQL's pglz compresses these values of
    /// 2 KB and more about 2x (2.1x over a full `ops` run's 26,000; real agent texts
    /// 1.7-2x).
    #[default]
    Text,
    /// Messages of a 24-word vocabulary: they compress 4-5x, far more than real text.
    Vocab,
}

impl Values {
    /// Its name, as the option takes it.
    pub fn name(self) -> &'static str {
        match self {
            Values::Text => "text",
            Values::Vocab => "vocab",
        }
    }

    /// A value of about `bytes` bytes of JSON text.
    pub fn value(self, bytes: usize, rng: &mut Rng) -> Value {
        match self {
            Values::Text => text_value(bytes, rng),
            Values::Vocab => memory_value(bytes, rng),
        }
    }
}

/// Words of the text values' vocabulary.
const TEXT_WORDS: usize = 5000;
/// Zipf's exponent of the text values' word frequencies.
const ZIPF: f64 = 1.1;

/// The text values' vocabulary, most frequent word first, with the cumulative weights
/// of Zipf's law over it; the same on every run (a fixed seed).
fn vocabulary() -> &'static (Vec<String>, Vec<f64>) {
    static VOCABULARY: std::sync::OnceLock<(Vec<String>, Vec<f64>)> = std::sync::OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let mut syllables: Vec<String> = Vec::new();
        for c in "bcdfghklmnprstvwz".chars() {
            for v in "aeiou".chars() {
                syllables.push(format!("{c}{v}"));
            }
        }
        syllables.extend(["th", "st", "er", "an", "in", "on", "re"].map(String::from));
        let mut rng = Rng::new(0x5EED_7E47);
        let words = (0..TEXT_WORDS)
            .map(|_| {
                // 1 to 4 syllables, shorter words likelier.
                let count = 1 + (0..3).take_while(|_| rng.below(100) < 37).count();
                (0..count)
                    .map(|_| syllables[rng.below(syllables.len())].as_str())
                    .collect::<String>()
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=TEXT_WORDS)
            .map(|rank| {
                total += (rank as f64).powf(-ZIPF);
                total
            })
            .collect();
        (words, cumulative)
    })
}

/// A word of the vocabulary, in Zipf's proportions.
fn text_word(rng: &mut Rng) -> &'static str {
    let (words, cumulative) = vocabulary();
    let total = cumulative.last().copied().unwrap_or(1.0);
    let at = unit(rng) * total;
    let rank = cumulative.partition_point(|&c| c < at).min(words.len() - 1);
    &words[rank]
}

/// A number in `0..1`.
fn unit(rng: &mut Rng) -> f64 {
    (rng.next() >> 11) as f64 / (1u64 << 53) as f64
}

/// A sentence: 4 to 17 words (now and then a number or a hex identifier), capitalized,
/// ending in punctuation.
fn sentence(rng: &mut Rng, text: &mut String) {
    let words = 4 + rng.below(14);
    let start = text.len();
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        match rng.below(100) {
            0 => text.push_str(&format!("{:08x}", rng.next() as u32)),
            1 => text.push_str(&rng.below(100_000).to_string()),
            _ => text.push_str(text_word(rng)),
        }
    }
    if let Some(first) = text[start..].chars().next() {
        let upper = first.to_ascii_uppercase();
        text.replace_range(start..start + first.len_utf8(), &upper.to_string());
    }
    text.push_str([".", ".", ".", "?", ",", ":"][rng.below(6)]);
}

/// A JSON value like an agent's conversation memory, about `bytes` bytes long as text,
/// whose messages read like real text to a compressor (see [`Values::Text`]).
pub fn text_value(bytes: usize, rng: &mut Rng) -> Value {
    conversation(
        bytes,
        rng,
        |rng, room| {
            let limit = [80, 200, 400, 800][rng.below(4)].min(room);
            let mut text = String::new();
            while text.len() < limit {
                if !text.is_empty() {
                    text.push(' ');
                }
                sentence(rng, &mut text);
            }
            text
        },
        text_word,
    )
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
