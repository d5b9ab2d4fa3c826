//! Whether two reads of the same data agree, across the two databases' value forms.

use serde_json::{Number, Value};

use std::collections::BTreeMap;

use super::{Comparison, DualBackend, Side};
use crate::error::Result;
use crate::listing::Listing;
use crate::record::{AgentId, Memory, Tool};

/// True when `a` and `b` are the same data: objects equal whatever their key order,
/// numbers equal by value whatever their written form (`1`, `1.0`, `1e0`).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => same_number(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &Number, y: &Number) -> bool {
    canonical(&x.to_string()) == canonical(&y.to_string())
}

/// A decimal number as (negative, significant digits, exponent of the last digit).
fn canonical(text: &str) -> (bool, String, i64) {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let mut exponent = exponent - fraction.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    let significant = trimmed.trim_end_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    exponent += (trimmed.len() - significant.len()) as i64;
    (negative, significant.to_string(), exponent)
}

/// True when two reads of a memory hold the same data (content, metadata, embedding and
/// times; ids may differ between the sides). An embedding on one side only counts as
/// not yet filled, not as a difference: the fill pass
/// ([`fill_embeddings`](crate::vector::fill_embeddings)) writes PostgreSQL alone.
pub fn same_memory(a: &Memory, b: &Memory) -> bool {
    a.key == b.key
        && same_json(&a.content, &b.content)
        && same_json(
            &Value::Object(a.metadata.clone()),
            &Value::Object(b.metadata.clone()),
        )
        && match (&a.embedding, &b.embedding) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
        && a.updated_at == b.updated_at
}

/// True when two reads of a tool hold the same data.
pub fn same_tool(a: &Tool, b: &Tool) -> bool {
    a.name == b.name
        && same_json(&a.content, &b.content)
        && same_json(
            &Value::Object(a.metadata.clone()),
            &Value::Object(b.metadata.clone()),
        )
        && a.updated_at == b.updated_at
}

impl DualBackend {
    /// Compares every memory of `agent` between the sides.
    ///
    /// # Errors
    /// When either side cannot be read.
    pub async fn compare(&self, agent: &AgentId) -> Result<Comparison> {
        self.refresh_health().await;
        let (sqlite, postgres) = (self.side(Side::Sqlite), self.side(Side::Postgres));
        let mut keys: BTreeMap<String, (bool, bool)> = BTreeMap::new();
        for key in sqlite.memory_keys(agent, &Listing::default()).await? {
            keys.entry(key).or_default().0 = true;
        }
        for key in postgres.memory_keys(agent, &Listing::default()).await? {
            keys.entry(key).or_default().1 = true;
        }
        let mut comparison = Comparison::default();
        for (key, held) in keys {
            match held {
                (true, false) => comparison.only_sqlite.push(key),
                (false, true) => comparison.only_postgres.push(key),
                _ => {
                    let a = sqlite.get_memory(agent, &key).await?;
                    let b = postgres.get_memory(agent, &key).await?;
                    match (a, b) {
                        (Some(a), Some(b)) if same_memory(&a, &b) => comparison.same += 1,
                        (Some(_), None) => comparison.only_sqlite.push(key),
                        (None, Some(_)) => comparison.only_postgres.push(key),
                        (None, None) => {}
                        _ => comparison.different.push(key),
                    }
                }
            }
        }
        Ok(comparison)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_compare_by_value_and_objects_by_content() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("0.5", "5e-1"),
            ("100", "1E2"),
            ("0", "-0.0"),
            (
                "123456789012345678901234567890",
                "1.2345678901234567890123456789e29",
            ),
            (r#"{"a": 1, "b": [2.0]}"#, r#"{"b": [2], "a": 1.00}"#),
        ] {
            assert!(same_json(&v(a), &v(b)), "{a} vs {b}");
        }
        for (a, b) in [
            ("1", "2"),
            ("0.1", "0.10000000000000001"),
            ("9007199254740993", "9007199254740992"),
            ("-1", "1"),
            (r#"{"a": 1}"#, r#"{"a": 1, "b": null}"#),
            ("[1, 2]", "[2, 1]"),
            (r#""1""#, "1"),
        ] {
            assert!(!same_json(&v(a), &v(b)), "{a} vs {b}");
        }
    }
}
