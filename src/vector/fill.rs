//! The embedding fill pass: memories in PostgreSQL whose `embedding` is null (every
//! migrated row, by the contract) get one from an [`Embedder`], in batches.
//!
//! The pass walks the table once in id order, a batch at a time: it reads up to
//! `batch_size` memories without an embedding, embeds their text, and writes the vectors
//! in one statement that only touches a memory still at the version that was read and
//! still without an embedding. So a memory an agent changed meanwhile is left for the
//! next run (its new content needs a new vector), nothing an agent wrote is overwritten,
//! and a stopped pass resumes by running it again: whatever is still null is filled,
//! and a second run over a filled table reads nothing and writes nothing.
//!
//! The pass writes PostgreSQL only, and leaves `updated_at` alone (an embedding is
//! derived from the content, not a new version of it). In the dual backend's stages the
//! SQLite copy keeps its null until the agent stores the memory again; comparisons of
//! the two sides treat an embedding present on one side only as not yet filled.

use std::time::Instant;

use chrono::{DateTime, Utc};
use pgvector::Vector;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;
use uuid::Uuid;

use super::Embedder;
use crate::PostgresBackend;
use crate::error::{Error, Result};
use crate::json::{self, Json};
use crate::progress::Progress;
use crate::record::AgentId;

/// Which text of a memory is embedded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TextSource {
    /// A string content as itself; an object's `content` or `text` string field (as in
    /// migrated rows of tables with such a column); anything else as its JSON text.
    #[default]
    Auto,
    /// The content's JSON text, always.
    Json,
    /// This top-level field of an object content (its string, or its JSON text);
    /// the whole content's JSON text where the field is missing.
    Field(String),
}

impl TextSource {
    /// The text of `content` to embed.
    pub fn text_of(&self, content: &Json) -> String {
        let whole = || content.as_str().to_string();
        let as_text = |v: &RawValue| json::string(v).unwrap_or_else(|| v.get().to_string());
        match self {
            TextSource::Json => whole(),
            TextSource::Field(name) => content.field(name).map_or_else(whole, as_text),
            TextSource::Auto => content.string().unwrap_or_else(|| {
                ["content", "text"]
                    .iter()
                    .find_map(|name| content.field(name).and_then(json::string))
                    .unwrap_or_else(whole)
            }),
        }
    }
}

/// What the fill pass does.
#[derive(Debug, Clone)]
pub struct FillOptions {
    /// Memories per batch (one embedder call and one write each).
    pub batch_size: usize,
    /// Only this agent's memories (those on the `agents` row of its name, whatever that
    /// row's id); every agent's when `None`.
    pub agent: Option<AgentId>,
    /// Which text of a memory is embedded.
    pub text: TextSource,
}

impl Default for FillOptions {
    /// Batches of 256, every agent, [`TextSource::Auto`].
    fn default() -> Self {
        FillOptions {
            batch_size: 256,
            agent: None,
            text: TextSource::Auto,
        }
    }
}

/// What one fill pass did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FillReport {
    /// The embedder's name.
    pub embedder: String,
    /// Its dimension.
    pub dimensions: usize,
    /// Memories read that had no embedding.
    pub read: u64,
    /// Embeddings written.
    pub filled: u64,
    /// Memories changed (or given an embedding) by someone else between read and write;
    /// left for the next run.
    pub changed_meanwhile: u64,
    /// Batches.
    pub batches: u64,
    /// Wall time.
    pub seconds: f64,
}

/// How many memories have no embedding (of `agent`, found by name in `agents`, or of
/// every agent).
///
/// # Errors
/// The database's error.
pub async fn missing_embeddings(backend: &PostgresBackend, agent: Option<&AgentId>) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "select count(*) from agent_memories
         where embedding is null
           and ($1::text is null or agent_id = (select id from agents where name = $1))",
    )
    .bind(agent.map(AgentId::as_str))
    .fetch_one(backend.pool())
    .await
    .map_err(|e| database("count memories without an embedding", e))?;
    Ok(count as u64)
}

fn database(operation: &str, e: sqlx::Error) -> Error {
    Error::Database {
        backend: "postgres",
        operation: operation.to_string(),
        source: Box::new(e),
    }
}

/// Fills every null embedding (of `options.agent`, or all) with `embedder`'s vectors;
/// `progress` hears of every memory read. Safe to stop at any point and to run again.
///
/// # Errors
/// [`Error::InvalidInput`] when the embedder returns the wrong number of vectors, or a
/// vector of the wrong dimension or with a non-finite number (naming the memory); the
/// embedder's own error; the database's error. Batches written before stay written.
pub async fn fill_embeddings(
    backend: &PostgresBackend,
    embedder: &dyn Embedder,
    options: &FillOptions,
    progress: &dyn Progress,
) -> Result<FillReport> {
    let started = Instant::now();
    let dimensions = embedder.dimensions();
    let mut report = FillReport {
        embedder: embedder.name(),
        dimensions,
        ..FillReport::default()
    };
    let batch = i64::try_from(options.batch_size.max(1)).unwrap_or(i64::MAX);
    let mut after = Uuid::nil();
    loop {
        let rows = sqlx::query(
            "select id, agent_id, content, updated_at from agent_memories
             where embedding is null and id > $1
               and ($2::text is null or agent_id = (select id from agents where name = $2))
             order by id limit $3",
        )
        .bind(after)
        .bind(options.agent.as_ref().map(AgentId::as_str))
        .bind(batch)
        .fetch_all(backend.pool())
        .await
        .map_err(|e| database("read memories without an embedding", e))?;
        let Some(last) = rows.last() else { break };
        after = last.get("id");
        let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
        let mut versions: Vec<DateTime<Utc>> = Vec::with_capacity(rows.len());
        let mut texts = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.get("id");
            let content: &str = row.get("content");
            let content = crate::backend::codec::parse_json(content, || {
                format!("memory {id} of agent {:?}", row.get::<&str, _>("agent_id"))
            })?;
            ids.push(id);
            versions.push(row.get("updated_at"));
            texts.push(options.text.text_of(&content));
        }
        let vectors = embedder.embed(&texts).await?;
        if vectors.len() != texts.len() {
            return Err(Error::invalid(
                "embedder output",
                format!(
                    "{} returned {} vectors for {} texts",
                    report.embedder,
                    vectors.len(),
                    texts.len()
                ),
            ));
        }
        let mut embeddings = Vec::with_capacity(vectors.len());
        for (vector, id) in vectors.into_iter().zip(&ids) {
            if vector.len() != dimensions {
                return Err(Error::invalid(
                    "embedder output",
                    format!(
                        "{} returned {} dimensions for memory {id}, but says it makes {dimensions}",
                        report.embedder,
                        vector.len()
                    ),
                ));
            }
            super::check_vector("embedder output", &vector)
                .map_err(|e| Error::invalid("embedder output", format!("memory {id}: {e}")))?;
            embeddings.push(Vector::from(vector));
        }
        let written = sqlx::query(
            "update agent_memories m set embedding = u.embedding
             from unnest($1::uuid[], $2::timestamptz[], $3::vector[]) as u(id, at, embedding)
             where m.id = u.id and m.updated_at = u.at and m.embedding is null",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(embeddings)
        .execute(backend.pool())
        .await
        .map_err(|e| database("write embeddings", e))?
        .rows_affected();
        report.batches += 1;
        report.read += ids.len() as u64;
        report.filled += written;
        report.changed_meanwhile += ids.len() as u64 - written;
        progress.rows(ids.len() as u64);
        tracing::debug!(batch = report.batches, written, "filled embeddings");
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_to_embed_comes_from_the_stored_text() {
        let j = |text: &str| text.parse::<Json>().unwrap();
        let row = j(r#"{"key": "k", "content": "user asked \u00e9", "n": 2.50}"#);
        assert_eq!(TextSource::Auto.text_of(&row), "user asked é");
        assert_eq!(TextSource::Auto.text_of(&j(r#""plain""#)), "plain");
        let no_text = j(r#"{"b": 1, "text": 7}"#);
        assert_eq!(TextSource::Auto.text_of(&no_text), r#"{"b": 1, "text": 7}"#);
        assert_eq!(TextSource::Json.text_of(&row), row.as_str());
        let field = |name: &str| TextSource::Field(name.into());
        assert_eq!(field("n").text_of(&row), "2.50");
        assert_eq!(field("key").text_of(&row), "k");
        assert_eq!(field("missing").text_of(&row), row.as_str());
    }
}
