//! Decoding the backend's rows into records.

use pgvector::Vector;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

use crate::backend::codec::parse_json;
use crate::error::Result;
use crate::record::{AgentId, Execution, Memory, Metadata, Metric, Tool};

fn metadata_of(row: &PgRow) -> Metadata {
    row.get::<Json<Metadata>, _>("metadata").0
}

pub(super) fn memory_from_row(row: &PgRow, agent: &AgentId) -> Result<Memory> {
    let key: Option<String> = row.get("key");
    Ok(Memory {
        id: row.get("id"),
        content: parse_json(row.get("content"), || {
            format!("memory {key:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        embedding: row
            .get::<Option<Vector>, _>("embedding")
            .map(|v| v.to_vec()),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        key,
    })
}

pub(super) fn tool_from_row(row: &PgRow, agent: &AgentId) -> Result<Tool> {
    let name: String = row.get("name");
    Ok(Tool {
        id: row.get("id"),
        content: parse_json(row.get("content"), || {
            format!("tool {name:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        name,
    })
}

pub(super) fn metric_from_row(row: &PgRow, agent: &AgentId) -> Result<Metric> {
    let name: String = row.get("name");
    Ok(Metric {
        id: row.get("id"),
        value: row.get("value"),
        content: parse_json(row.get("content"), || {
            format!("metric {name:?} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
        name,
    })
}

pub(super) fn execution_from_row(row: &PgRow, agent: &AgentId) -> Result<Execution> {
    let id: uuid::Uuid = row.get("id");
    Ok(Execution {
        id,
        status: row.get("status"),
        content: parse_json(row.get("content"), || {
            format!("execution {id} of agent {agent:?}")
        })?,
        metadata: metadata_of(row),
        created_at: row.get("created_at"),
    })
}
