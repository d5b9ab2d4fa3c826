//! Embeddings found in legacy SQLite tables, decoded for the contract's `embedding`
//! column when the backfill is asked to (`BackfillOptions::legacy_embeddings`).
//!
//! Agents kept embeddings in two forms: raw float32 BLOBs (numpy's `tobytes()`,
//! little-endian), and JSON arrays of numbers in TEXT. Either is decoded exactly when it
//! is a whole vector of finite float32 values; anything else is left as it is (the row's
//! `content` keeps the column in every case) and counted as undecodable.

use super::{SourceRow, SqlValue, TableInfo, TableKind};

/// Column names, in order of preference, that hold a legacy row's embedding.
pub(crate) const EMBEDDING_COLUMNS: [&str; 3] = ["embedding", "vector", "embeddings"];

/// The embedding in one legacy value: `Ok(None)` for NULL, `Err` with the reason for a
/// value that is not a vector of 1 to 16,000 finite float32 numbers.
///
/// # Errors
/// The reason the value is not an embedding.
pub(super) fn decode_embedding(value: &SqlValue) -> Result<Option<Vec<f32>>, String> {
    let vector = match value {
        SqlValue::Null => return Ok(None),
        SqlValue::Blob(bytes) => {
            if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
                return Err(format!(
                    "a {}-byte BLOB is not a whole number of float32 values",
                    bytes.len()
                ));
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        SqlValue::Text(text) => {
            let numbers: Vec<f64> = serde_json::from_str(text.trim())
                .map_err(|e| format!("TEXT that is not a JSON array of numbers ({e})"))?;
            let mut vector = Vec::with_capacity(numbers.len());
            for (i, x) in numbers.into_iter().enumerate() {
                let narrowed = x as f32;
                if !narrowed.is_finite() {
                    return Err(format!("element {i} ({x}) is not a finite float32"));
                }
                vector.push(narrowed);
            }
            vector
        }
        SqlValue::Integer(_) | SqlValue::Real(_) => {
            return Err("a single number is not an embedding".into());
        }
        SqlValue::InvalidText(_) => return Err("TEXT that is not valid UTF-8".into()),
    };
    crate::record::check_vector("legacy embedding", &vector)
        .map(|()| Some(vector))
        .map_err(|e| match e {
            crate::Error::InvalidInput { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// The decoded embedding of a legacy row: `None` when its table has no embedding column
/// ([`EMBEDDING_COLUMNS`], any case), else as [`decode_embedding`].
pub(crate) fn embedding_of(
    table: &TableInfo,
    row: &SourceRow,
) -> Option<Result<Option<Vec<f32>>, String>> {
    let TableKind::Data { columns, .. } = &table.kind else {
        return None;
    };
    let at = EMBEDDING_COLUMNS
        .iter()
        .find_map(|name| columns.iter().position(|c| c.eq_ignore_ascii_case(name)))?;
    let value = row.values.get(at)?;
    Some(decode_embedding(value).map_err(|reason| format!("column {:?}: {reason}", columns[at])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_and_json_decode_and_others_are_refused() {
        let v = [0.25f32, -1.5, 3.0];
        let blob: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            decode_embedding(&SqlValue::Blob(blob)),
            Ok(Some(v.to_vec()))
        );
        assert_eq!(
            decode_embedding(&SqlValue::Text(" [0.25, -1.5, 3] ".into())),
            Ok(Some(v.to_vec()))
        );
        assert_eq!(decode_embedding(&SqlValue::Null), Ok(None));
        for bad in [
            SqlValue::Blob(vec![1, 2, 3]),
            SqlValue::Blob(vec![]),
            SqlValue::Blob(f32::NAN.to_le_bytes().to_vec()),
            SqlValue::Text("[]".into()),
            SqlValue::Text("[1, \"x\"]".into()),
            SqlValue::Text("[1e39]".into()),
            SqlValue::Text("hello".into()),
            SqlValue::Integer(3),
        ] {
            assert!(decode_embedding(&bad).is_err(), "{bad:?}");
        }
    }
}
