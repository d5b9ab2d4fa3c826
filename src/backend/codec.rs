//! Value forms both backends share: JSON text, time text and embedding bytes.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::json::Json;
use crate::record::Metadata;

/// A stored value as the exact text both databases store: its own.
pub(crate) fn json_text(value: &Json) -> &str {
    value.as_str()
}

/// Metadata as the JSON text SQLite stores.
pub(crate) fn metadata_text(metadata: &Metadata) -> String {
    // A map of JSON values always serializes.
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_string())
}

/// Checks stored JSON text and keeps it as it is; `what` names the value in the error.
pub(crate) fn parse_json(text: &str, what: impl FnOnce() -> String) -> Result<Json> {
    Json::from_text(text).map_err(|source| Error::Json {
        context: what(),
        source,
    })
}

/// Parses stored metadata, which must be a JSON object.
pub(crate) fn parse_metadata(text: &str, what: impl FnOnce() -> String) -> Result<Metadata> {
    serde_json::from_str(text).map_err(|source| Error::Json {
        context: what(),
        source,
    })
}

/// Times as SQLite stores them: RFC 3339 UTC with microseconds, fixed width, so text
/// order is time order.
pub(crate) fn time_text(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a time written by [`time_text`] (or any RFC 3339 time).
pub(crate) fn parse_time(text: &str, what: impl FnOnce() -> String) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::invalid("stored time", format!("{}: {text:?}: {e}", what())))
}

/// An embedding as little-endian f32 bytes.
pub(crate) fn embedding_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Reads little-endian f32 bytes back into an embedding.
pub(crate) fn bytes_embedding(bytes: &[u8], what: impl FnOnce() -> String) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::invalid(
            "stored embedding",
            format!(
                "{}: {} bytes is not a whole number of f32",
                what(),
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_text_is_fixed_width_and_round_trips() {
        let at = crate::record::now();
        let text = time_text(&at);
        assert_eq!(text.len(), "2024-01-15T10:30:00.000000Z".len());
        assert_eq!(parse_time(&text, String::new).unwrap(), at);
    }

    #[test]
    fn embeddings_round_trip_through_bytes() {
        let v = vec![0.0, -1.5, f32::MIN_POSITIVE, 3.25e10];
        assert_eq!(
            bytes_embedding(&embedding_bytes(&v), String::new).unwrap(),
            v
        );
        assert!(bytes_embedding(&[1, 2, 3], String::new).is_err());
    }
}
