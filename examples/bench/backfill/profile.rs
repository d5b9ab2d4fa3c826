//! Where a backfill run's time goes on the server: its logged statements by kind.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::harness::Result;

/// Server-side time of one kind of statement over a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StatementKind {
    pub(super) statement: String,
    pub(super) count: usize,
    pub(super) total_s: f64,
    /// Mean per execution over the first tenth of its executions, the slowest tenth and
    /// the last tenth, in ms: growth with the table shows here.
    pub(super) first_tenth_ms: f64,
    pub(super) peak_tenth_ms: f64,
    pub(super) last_tenth_ms: f64,
}

/// The kinds of statement a backfill batch runs, by how their text starts.
const STATEMENT_KINDS: [(&str, &str); 8] = [
    ("copy am_stage", "COPY into the staging table"),
    ("insert into agents ", "agents row"),
    (
        "update am_stage s set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key) from",
        "settle keys within the batch",
    ),
    (
        "update agent_memories m",
        "demote older legacy keys (agent_memories)",
    ),
    (
        "update am_stage s set key = null, metadata = s.metadata || jsonb_build_object('key_conflict', s.key) where",
        "keep out keys held or deleted",
    ),
    ("insert into agent_memories", "insert from staging"),
    ("insert into agent_memory.backfill_progress", "progress row"),
    ("commit", "COMMIT"),
];

/// Durations of the statements logged in `log` from byte `start` on, by kind, in the
/// order of their total time. Parse, bind and execute of one prepared statement count
/// as one execution.
pub(super) fn statement_profile(log: &Path, start: u64) -> Result<Vec<StatementKind>> {
    let bytes = std::fs::read(log)?;
    let text = String::from_utf8_lossy(&bytes[usize::try_from(start)?.min(bytes.len())..]);
    // (duration ms, phase, statement text)
    let mut entries: Vec<(f64, String, String)> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if let Some(rest) = line.split_once("LOG:  duration: ").map(|(_, r)| r) {
            let Some((ms, rest)) = rest.split_once(" ms  ") else {
                open = false;
                continue;
            };
            let Some((phase, statement)) = rest.split_once(": ") else {
                open = false;
                continue;
            };
            entries.push((
                ms.parse().unwrap_or(0.0),
                phase.split_whitespace().next().unwrap_or("").to_string(),
                statement.to_string(),
            ));
            open = true;
        } else if open && line.starts_with('\t') {
            if let Some(last) = entries.last_mut() {
                last.2.push(' ');
                last.2.push_str(line.trim());
            }
        } else {
            open = false;
        }
    }
    let mut kinds: Vec<(String, Vec<f64>, String)> = Vec::new();
    for (ms, phase, statement) in entries {
        let normal = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let label = STATEMENT_KINDS
            .iter()
            .find(|(prefix, _)| normal.to_ascii_lowercase().starts_with(prefix))
            .map_or_else(
                || format!("other: {}", normal.chars().take(40).collect::<String>()),
                |(_, label)| (*label).to_string(),
            );
        let at = match kinds.iter().position(|(l, _, _)| *l == label) {
            Some(at) => at,
            None => {
                kinds.push((label, Vec::new(), String::new()));
                kinds.len() - 1
            }
        };
        // A prepared statement logs (parse,) bind and execute: one execution.
        let (_, durations, last_phase) = &mut kinds[at];
        let continues = matches!(
            (last_phase.as_str(), phase.as_str()),
            ("parse", "bind") | ("bind", "execute")
        );
        match durations.last_mut() {
            Some(last) if continues => *last += ms,
            _ => durations.push(ms),
        }
        *last_phase = phase;
    }
    let mut out: Vec<StatementKind> = kinds
        .into_iter()
        .map(|(statement, d, _)| {
            let tenth = (d.len() / 10).max(1);
            let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
            StatementKind {
                statement,
                count: d.len(),
                total_s: d.iter().sum::<f64>() / 1000.0,
                first_tenth_ms: mean(&d[..tenth.min(d.len())]),
                peak_tenth_ms: d.chunks(tenth).map(mean).fold(0.0, f64::max),
                last_tenth_ms: mean(&d[d.len().saturating_sub(tenth)..]),
            }
        })
        .collect();
    out.sort_by(|a, b| b.total_s.total_cmp(&a.total_s));
    Ok(out)
}
