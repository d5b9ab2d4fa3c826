//! One SQLite value as it is stored (its storage class, not the declared type), and its contract JSON form.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Serialize, Serializer};
use serde_json::{Map, Number, Value};
use sqlx::sqlite::{SqliteRow, SqliteValueRef};
use sqlx::{Row, TypeInfo, ValueRef};

use crate::json::Json;

/// A value read from a legacy table, by the storage class SQLite actually holds for it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// `INTEGER`: any i64.
    Integer(i64),
    /// `REAL`: any f64 but NaN (SQLite stores NaN as NULL).
    Real(f64),
    /// `TEXT` that is valid UTF-8.
    Text(String),
    /// `TEXT` whose bytes are not valid UTF-8, kept as the bytes.
    InvalidText(Vec<u8>),
    /// `BLOB`.
    Blob(Vec<u8>),
}

impl SqlValue {
    /// Reads column `index` of `row` by its storage class.
    ///
    /// # Errors
    /// The driver's error when the column cannot be read.
    pub(crate) fn read(row: &SqliteRow, index: usize) -> Result<SqlValue, sqlx::Error> {
        let raw: SqliteValueRef<'_> = row.try_get_raw(index)?;
        // `is_null` looks at the value; `type_info` of a NULL would give the declared type.
        if raw.is_null() {
            return Ok(SqlValue::Null);
        }
        let class = raw.type_info().name().to_string();
        Ok(match class.as_str() {
            "INTEGER" => SqlValue::Integer(row.try_get_unchecked(index)?),
            "REAL" => SqlValue::Real(row.try_get_unchecked(index)?),
            "TEXT" => {
                let bytes: Vec<u8> = row.try_get_unchecked(index)?;
                match String::from_utf8(bytes) {
                    Ok(text) => SqlValue::Text(text),
                    Err(e) => SqlValue::InvalidText(e.into_bytes()),
                }
            }
            _ => SqlValue::Blob(row.try_get_unchecked(index)?),
        })
    }

    /// The contract's JSON form: INTEGER an exact number, REAL a number (infinities as
    /// `{"$float": "Infinity"}` / `{"$float": "-Infinity"}`), TEXT a string, NULL `null`,
    /// BLOB and invalid UTF-8 TEXT `{"$base64": "<standard, padded>"}`.
    pub fn to_json(&self) -> Value {
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(i) => Value::Number(Number::from(*i)),
            SqlValue::Real(f) => match Number::from_f64(*f) {
                Some(n) => Value::Number(n),
                None if *f > 0.0 => tagged("$float", "Infinity".into()),
                None if *f < 0.0 => tagged("$float", "-Infinity".into()),
                // SQLite cannot store NaN; should one appear, say so rather than invent.
                None => tagged("$float", "NaN".into()),
            },
            SqlValue::Text(s) => Value::String(s.clone()),
            SqlValue::InvalidText(b) | SqlValue::Blob(b) => base64_form(b),
        }
    }

    /// The value as text for a typed column (`key`, `name`, `status`): TEXT as itself
    /// unless it holds NUL, numbers as their JSON text, and everything else (BLOB, invalid
    /// UTF-8, NUL) as the JSON text of its `$base64` form. `None` for NULL.
    pub fn typed_text(&self) -> Option<String> {
        match self {
            SqlValue::Null => None,
            SqlValue::Text(s) if s.contains('\0') => Some(base64_form(s.as_bytes()).to_string()),
            SqlValue::Text(s) => Some(s.clone()),
            other => Some(other.to_json().to_string()),
        }
    }

    /// The value as a number for the typed `value` column: INTEGER and REAL, and TEXT that
    /// is a number; `None` otherwise.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            // Rounded to the nearest f64 in the typed column; `content` keeps it exactly.
            SqlValue::Integer(i) => Some(*i as f64),
            SqlValue::Real(f) => Some(*f),
            SqlValue::Text(s) => s.trim().parse::<f64>().ok().filter(|f| !f.is_nan()),
            _ => None,
        }
    }
}

/// A JSON object of `fields` in their order (a row's columns, or its primary key):
/// `serde_json`'s compact text, which the library's own `Metadata` cannot keep ordered.
pub(crate) fn ordered_object(fields: &[(&str, Value)]) -> Json {
    struct InOrder<'a>(&'a [(&'a str, Value)]);
    impl Serialize for InOrder<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
        }
    }
    // String keys and JSON values always serialize.
    Json::new(&InOrder(fields)).unwrap_or_else(|_| Json::from(Value::Null))
}

/// `{"$base64": "<standard base64, padded>"}` of `bytes`.
pub(crate) fn base64_form(bytes: &[u8]) -> Value {
    tagged("$base64", STANDARD.encode(bytes))
}

fn tagged(tag: &str, text: String) -> Value {
    let mut map = Map::new();
    map.insert(tag.to_string(), Value::String(text));
    Value::Object(map)
}

/// Replaces every string in `value` that holds NUL (PostgreSQL `jsonb` cannot) by its
/// `$base64` form; object keys with NUL get the text of that form.
pub(crate) fn without_nul(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => base64_form(s.as_bytes()),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let k = if k.contains('\0') {
                        base64_form(k.as_bytes()).to_string()
                    } else {
                        k
                    };
                    (k, without_nul(v))
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_their_contract_json_form() {
        assert_eq!(SqlValue::Null.to_json(), Value::Null);
        assert_eq!(
            SqlValue::Integer(i64::MAX).to_json().to_string(),
            "9223372036854775807"
        );
        assert_eq!(
            SqlValue::Integer(i64::MIN).to_json().to_string(),
            "-9223372036854775808"
        );
        assert_eq!(SqlValue::Real(0.99).to_json().to_string(), "0.99");
        assert_eq!(
            SqlValue::Real(f64::INFINITY).to_json().to_string(),
            r#"{"$float":"Infinity"}"#
        );
        assert_eq!(
            SqlValue::Real(f64::NEG_INFINITY).to_json().to_string(),
            r#"{"$float":"-Infinity"}"#
        );
        assert_eq!(
            SqlValue::Text("a\0b".into()).to_json().to_string(),
            r#""a\u0000b""#
        );
        assert_eq!(
            SqlValue::Blob(b"file\x96name".to_vec())
                .to_json()
                .to_string(),
            r#"{"$base64":"ZmlsZZZuYW1l"}"#
        );
        assert_eq!(
            SqlValue::Blob(vec![0xff]).to_json().to_string(),
            r#"{"$base64":"/w=="}"#
        );
        // A JSON-looking string stays a string: only tagged forms are objects.
        assert_eq!(
            SqlValue::Text(r#"{"$base64":"AA=="}"#.into()).to_json(),
            Value::String(r#"{"$base64":"AA=="}"#.into())
        );
    }

    #[test]
    fn typed_text_and_numbers() {
        assert_eq!(SqlValue::Null.typed_text(), None);
        assert_eq!(SqlValue::Integer(7).typed_text().as_deref(), Some("7"));
        assert_eq!(
            SqlValue::Text("a\0".into()).typed_text().as_deref(),
            Some(r#"{"$base64":"YQA="}"#)
        );
        assert_eq!(SqlValue::Text(" 12.5 ".into()).as_f64(), Some(12.5));
        assert_eq!(SqlValue::Text("NaN".into()).as_f64(), None);
        assert_eq!(SqlValue::Text("toto".into()).as_f64(), None);
        assert_eq!(SqlValue::Blob(vec![1]).as_f64(), None);
    }

    #[test]
    fn objects_keep_their_column_order() {
        let row = [
            ("z", SqlValue::Integer(1).to_json()),
            ("a\"b", SqlValue::Text("x\0".into()).to_json()),
            ("m", SqlValue::Real(2.5).to_json()),
        ];
        assert_eq!(
            ordered_object(&row).as_str(),
            r#"{"z":1,"a\"b":"x\u0000","m":2.5}"#
        );
        assert_eq!(ordered_object(&[]).as_str(), "{}");
    }

    #[test]
    fn nul_leaves_metadata_strings() {
        let v = serde_json::json!({"a": "x\0", "b": ["ok", "\0"], "c\0": 1});
        assert_eq!(
            without_nul(v).to_string(),
            r#"{"a":{"$base64":"eAA="},"b":["ok",{"$base64":"AA=="}],"{\"$base64\":\"YwA=\"}":1}"#
        );
    }
}
