//! [`Json`]: a stored value, kept as the exact JSON text it was written as.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One JSON document, kept as the exact text it was written as.
///
/// Every record's `content` is a `Json`, and it is stored and read back as this text:
/// key order, numbers of any size or precision in their written form (`2.50` stays
/// `2.50`, `18446744073709551616` stays itself), and strings with their escapes. The
/// library does not need any feature of `serde_json` for that, so it leaves the
/// features of your own `serde_json` as you chose them.
///
/// ```
/// use memshift::Json;
/// use serde_json::json;
///
/// let exact: Json = r#"{"price": 2.50, "id": 18446744073709551616}"#.parse()?;
/// assert_eq!(exact.as_str(), r#"{"price": 2.50, "id": 18446744073709551616}"#);
/// assert_eq!(Json::from(json!({"q": "pricing"})).as_str(), r#"{"q":"pricing"}"#);
///
/// #[derive(serde::Deserialize)]
/// struct Query { q: String }
/// let query: Query = Json::new(&json!({"q": "pricing"}))?.parse()?;
/// assert_eq!(query.q, "pricing");
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// Two `Json` are equal when their text is. A `Json` equals a [`serde_json::Value`]
/// when it holds the same data: objects whatever their key order, numbers by their
/// decimal value (`1`, `1.0` and `1e0` are one number); [`same_data`](Json::same_data)
/// compares two `Json` that way.
///
/// It serializes as the JSON it holds (not as a string), and deserializes through
/// `serde_json` (from text, a reader, or a `serde_json::Value`), keeping the text;
/// other formats cannot carry it.
#[derive(Clone)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Serializes `value` straight to JSON text, in the order `value` writes its fields.
    ///
    /// # Errors
    /// When `value` cannot be JSON (a map with keys that are not strings, or a failing
    /// `Serialize` implementation).
    pub fn new<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Json> {
        serde_json::value::to_raw_value(value).map(Json)
    }

    /// Takes `text` as it is, after checking that it is one JSON document; whitespace
    /// around it is dropped, whitespace inside it kept.
    ///
    /// # Errors
    /// When `text` is not one JSON document.
    pub fn from_text(text: impl Into<String>) -> serde_json::Result<Json> {
        RawValue::from_string(text.into()).map(Json)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, owned.
    pub fn into_string(self) -> String {
        Box::<str>::from(self.0).into_string()
    }

    /// Reads the JSON as a `T` (anything `Deserialize`, `serde_json::Value` included),
    /// straight from the text.
    ///
    /// # Errors
    /// When the JSON is not a `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(self.as_str())
    }

    /// True when `self` and `other` hold the same data: equal text, or objects with the
    /// same keys and values whatever their order, arrays of the same data, numbers of the
    /// same decimal value whatever their written form, strings equal once their escapes
    /// are read.
    pub fn same_data(&self, other: &Json) -> bool {
        same_data(&self.0, &other.0)
    }

    /// The value of field `name` when this is an object that has it (the last one, when
    /// the text repeats the name, as `serde_json` reads it).
    pub(crate) fn field(&self, name: &str) -> Option<&RawValue> {
        match node(&self.0)? {
            Node::Object(mut fields) => fields.remove(name),
            _ => None,
        }
    }

    /// The string this is, when it is one.
    pub(crate) fn string(&self) -> Option<String> {
        string(&self.0)
    }
}

/// The string `raw` is, when it is one.
pub(crate) fn string(raw: &RawValue) -> Option<String> {
    match node(raw)? {
        Node::Text(s) => Some(s),
        _ => None,
    }
}

impl From<Value> for Json {
    fn from(value: Value) -> Self {
        Json::from(&value)
    }
}

impl From<&Value> for Json {
    fn from(value: &Value) -> Self {
        // Every `Value` serializes: its keys are strings and its numbers finite.
        Json::new(value).unwrap_or_else(|_| Json(RawValue::NULL.to_owned()))
    }
}

impl From<Box<RawValue>> for Json {
    fn from(raw: Box<RawValue>) -> Self {
        Json(raw)
    }
}

impl FromStr for Json {
    type Err = serde_json::Error;

    fn from_str(text: &str) -> serde_json::Result<Json> {
        Json::from_text(text)
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Json {}

impl Hash for Json {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<Value> for Json {
    fn eq(&self, other: &Value) -> bool {
        self.same_data(&Json::from(other))
    }
}

impl PartialEq<Json> for Value {
    fn eq(&self, other: &Json) -> bool {
        other == self
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json({})", self.as_str())
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Json)
    }
}

/// One level of a JSON document, its children still as their exact text.
enum Node<'a> {
    /// `null`, `true` or `false`.
    Literal(&'a str),
    /// A number as written.
    Number(&'a str),
    /// A string, its escapes read.
    Text(String),
    Array(Vec<&'a RawValue>),
    /// The fields, the last of a repeated name winning, as `serde_json` reads them.
    Object(BTreeMap<String, &'a RawValue>),
}

/// The top level of `raw`; `None` only for text `RawValue` would not have accepted.
fn node(raw: &RawValue) -> Option<Node<'_>> {
    let text = raw.get();
    Some(match text.as_bytes().first()? {
        b'"' => Node::Text(serde_json::from_str(text).ok()?),
        b'[' => Node::Array(serde_json::from_str(text).ok()?),
        b'{' => Node::Object(serde_json::from_str(text).ok()?),
        b'-' | b'0'..=b'9' => Node::Number(text),
        _ => Node::Literal(text),
    })
}

fn same_data(a: &RawValue, b: &RawValue) -> bool {
    if a.get() == b.get() {
        return true;
    }
    match (node(a), node(b)) {
        (Some(Node::Number(x)), Some(Node::Number(y))) => decimal(x) == decimal(y),
        (Some(Node::Literal(x)), Some(Node::Literal(y))) => x == y,
        (Some(Node::Text(x)), Some(Node::Text(y))) => x == y,
        (Some(Node::Array(x)), Some(Node::Array(y))) => {
            x.len() == y.len() && x.iter().zip(&y).all(|(a, b)| same_data(a, b))
        }
        (Some(Node::Object(x)), Some(Node::Object(y))) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_data(v, w)))
        }
        _ => false,
    }
}

/// A JSON number's exact value as (negative, significant digits, exponent of the last
/// digit); every zero is `(false, "", 0)`.
fn decimal(text: &str) -> (bool, String, i64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn j(text: &str) -> Json {
        text.parse().unwrap()
    }

    #[test]
    fn text_is_kept_exactly() {
        for text in [
            r#"{"b":1,"a":2}"#,
            "18446744073709551616",
            "123456789012345678901234567890",
            "2.50",
            "-0",
            "1e400",
            "-1.5E-400",
            r#""caf\u00e9 \u0000 ✓""#,
            r#"{"outer": {"z": [1.0, 2.50, {"y": null, "x": true}]}, "a": []}"#,
        ] {
            assert_eq!(j(text).as_str(), text);
            assert_eq!(j(text).to_string(), text);
            assert_eq!(j(text).into_string(), text);
        }
        assert_eq!(j("  [1, 2]\n").as_str(), "[1, 2]");
        for bad in ["", "{", "[1,]", "01", "NaN", "1 2", r#"{"a" 1}"#] {
            assert!(bad.parse::<Json>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serializes_as_the_json_it_holds_and_reads_back_exactly() {
        #[derive(Serialize, Deserialize)]
        struct Wrapper {
            n: u8,
            content: Json,
        }
        let inner = r#"{"b": 2.50, "a": 18446744073709551616}"#;
        let text = format!(r#"{{"n":1,"content":{inner}}}"#);
        let back: Wrapper = serde_json::from_str(&text).unwrap();
        assert_eq!(back.content.as_str(), inner);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        let from_value: Json = serde_json::from_value(json!({"a": [1, "x"]})).unwrap();
        assert_eq!(from_value.as_str(), r#"{"a":[1,"x"]}"#);
    }

    #[test]
    fn new_writes_fields_in_their_order() {
        #[derive(Serialize)]
        struct Call {
            zeta: u128,
            alpha: &'static str,
        }
        let call = Json::new(&Call {
            zeta: u128::from(u64::MAX) + 1,
            alpha: "a\0b",
        })
        .unwrap();
        assert_eq!(
            call.as_str(),
            r#"{"zeta":18446744073709551616,"alpha":"a\u0000b"}"#
        );
        let mut bad = BTreeMap::new();
        bad.insert(vec![1], 2);
        assert!(Json::new(&bad).is_err());
    }

    #[test]
    fn equality_with_values_is_by_data_and_between_json_by_text() {
        assert_eq!(j(r#"{"b": 1, "a": [2.0]}"#), json!({"a": [2], "b": 1}));
        assert_eq!(json!({"a": [2], "b": 1}), j(r#"{"b":1,"a":[2.0]}"#));
        assert_ne!(j(r#"{"b":1,"a":2}"#), j(r#"{"a":2,"b":1}"#));
        assert!(j(r#"{"b":1,"a":2}"#).same_data(&j(r#"{"a":2,"b":1}"#)));
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
            (r#""é""#, r#""\u00e9""#),
            (r#"{"a": 1, "b": [2.0]}"#, r#"{"b": [2], "a": 1.00}"#),
            (r#"{"a": 1, "a": 2}"#, r#"{"a": 2}"#),
        ] {
            assert!(j(a).same_data(&j(b)), "{a} vs {b}");
        }
        for (a, b) in [
            ("1", "2"),
            ("0.1", "0.10000000000000001"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551616", "18446744073709551615"),
            ("-1", "1"),
            (r#"{"a": 1}"#, r#"{"a": 1, "b": null}"#),
            ("[1, 2]", "[2, 1]"),
            (r#""1""#, "1"),
            ("true", "false"),
            ("null", "false"),
            ("[]", "{}"),
        ] {
            assert!(!j(a).same_data(&j(b)), "{a} vs {b}");
        }
    }

    #[test]
    fn fields_and_strings_are_read_from_the_text() {
        let doc = j(r#"{"content": "hello", "n": 2.50, "n": 3}"#);
        assert_eq!(doc.field("n").map(RawValue::get), Some("3"));
        assert_eq!(
            doc.field("content").and_then(string).as_deref(),
            Some("hello")
        );
        assert!(doc.field("missing").is_none());
        assert!(j("[1]").field("0").is_none());
        assert_eq!(j(r#""a\nb""#).string().as_deref(), Some("a\nb"));
        assert_eq!(j("1").string(), None);
    }
}
