//! The backfill's client side alone, in-process: read, convert and encode the legacy
//! rows as a COPY file, each stage timed.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use memshift::AgentId;
use memshift::legacy::{
    ContractRecord, ContractRow, ReadOptions, RowOrigin, Source, Target, convert_row,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AGENT;
use super::legacy::Legacy;
use crate::harness::{Result, Table};

/// A stand-in for the run id the backfill records in `metadata.migration_run` (same
/// length: `<UTC time>-<8 hex>`), so the `\copy`'d rows are as large as the backfill's.
const COPY_RUN_ID: &str = "20000101T000000Z-c0c0c0c0";

/// How long each client-side stage of the backfill's pipeline took for the whole file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Stages {
    pub(super) rows: usize,
    pub(super) read_seconds: f64,
    pub(super) convert_seconds: f64,
    pub(super) encode_seconds: f64,
    pub(super) copy_file_bytes: u64,
}

impl Stages {
    pub(super) fn rate(&self, seconds: f64) -> f64 {
        self.rows as f64 / seconds
    }

    /// Seconds and rows/s of each stage, and of the three one after another.
    pub(super) fn table(&self) -> Table {
        let all = self.read_seconds + self.convert_seconds + self.encode_seconds;
        let rows = [
            ("read (Source::rows)", self.read_seconds),
            ("convert (convert_row)", self.convert_seconds),
            ("encode (COPY text)", self.encode_seconds),
            ("all three, one after another", all),
        ]
        .iter()
        .map(|(name, seconds)| {
            vec![
                name.to_string(),
                format!("{seconds:.1}"),
                format!("{:.0}", self.rate(*seconds)),
            ]
        })
        .collect();
        Table::new(&["stage", "seconds", "rows/s"], rows)
    }
}

/// Reads `legacy` with the backfill's reader and conversion and writes the rows it would
/// insert into `agent_memories` to `out` in COPY's text format; times each stage.
pub(super) async fn write_copy_file(
    legacy: &Legacy,
    out: &Path,
    batch_size: usize,
) -> Result<Stages> {
    let options = ReadOptions {
        batch_size,
        ..ReadOptions::default()
    };
    let mut source = Source::open(&legacy.file, &options).await?;
    let table = source
        .tables()
        .await?
        .into_iter()
        .find(|t| t.name == "memory")
        .ok_or("the legacy file has no memory table")?;
    let agent = AgentId::new(AGENT)?;
    let source_db = format!("{AGENT}/memory.db");
    let migrated_at = Utc::now();
    let mut writer = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut stages = Stages {
        rows: 0,
        read_seconds: 0.0,
        convert_seconds: 0.0,
        encode_seconds: 0.0,
        copy_file_bytes: 0,
    };
    let mut text = Vec::new();
    let mut batches = source.rows(&table);
    let origin = RowOrigin {
        agent: &agent,
        source: "",
        source_db: &source_db,
    };
    let spec = Target::Memories.into();
    loop {
        let started = Instant::now();
        let Some(batch) = batches.next_batch().await? else {
            break;
        };
        stages.read_seconds += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let rows = batch
            .iter()
            .map(|row| convert_row(&origin, &table, &spec, row, migrated_at))
            .collect::<memshift::Result<Vec<_>>>()?;
        stages.convert_seconds += started.elapsed().as_secs_f64();
        if let Some(problem) = rows.iter().find_map(|r| r.time_problem.as_ref()) {
            return Err(format!("a generated time does not read as one: {problem}").into());
        }

        let started = Instant::now();
        text.clear();
        for row in &rows {
            copy_line(&mut text, row)?;
        }
        writer.write_all(&text)?;
        stages.encode_seconds += started.elapsed().as_secs_f64();
        stages.rows += rows.len();
    }
    writer.flush()?;
    drop(writer);
    if stages.rows != legacy.rows {
        return Err(format!("read {} rows of {}", stages.rows, legacy.rows).into());
    }
    stages.copy_file_bytes = std::fs::metadata(out)?.len();
    Ok(stages)
}

/// One `agent_memories` row as the backfill inserts it (`metadata.migration_run` added),
/// as a line of COPY's text format.
fn copy_line(out: &mut Vec<u8>, row: &ContractRow) -> Result<()> {
    let ContractRecord::Memory(memory) = &row.record else {
        return Err("not a memory row".into());
    };
    let mut metadata = memory.metadata.clone();
    metadata.insert("migration_run".into(), COPY_RUN_ID.into());
    let time = |at: &DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let fields = [
        Some(memory.id.to_string()),
        Some(row.source.agent.to_string()),
        memory.key.clone(),
        Some(memory.content.to_string()),
        Some(Value::Object(metadata).to_string()),
        Some(time(&memory.created_at)),
        Some(time(&memory.updated_at)),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        let Some(text) = field else {
            out.extend_from_slice(b"\\N");
            continue;
        };
        for byte in text.bytes() {
            match byte {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                other => out.push(other),
            }
        }
    }
    out.push(b'\n');
    Ok(())
}
