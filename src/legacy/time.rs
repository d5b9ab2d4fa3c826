//! A legacy row's own time: which column holds it and how its value is read.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SubsecRound, Utc};

use super::value::SqlValue;

/// The columns that may hold a row's time, in the order they are tried (names matched
/// without regard to ASCII case). The first of them that the row has, holding a
/// non-NULL value, decides `created_at`.
pub(super) const TIME_COLUMNS: &[&str] =
    &["created_at", "timestamp", "datetime", "time", "ts", "date"];

/// Numbers whose magnitude is at least this are Unix **milliseconds**; smaller ones are
/// Unix seconds. 10^11 seconds is the year 5138, while 10^11 milliseconds is
/// 1973-03-03, so every plausible time of either kind lands on the right side.
pub(super) const MILLIS_THRESHOLD: f64 = 1e11;

/// From this magnitude on, numbers are Unix **microseconds** (10^14 ms is the year
/// 5138, 10^14 us is 1973-03-03).
pub(super) const MICROS_THRESHOLD: f64 = 1e14;

/// From this magnitude on, numbers are Unix **nanoseconds** (10^17 us is the year 5138,
/// 10^17 ns is 1973-03-03). Every 64-bit integer is then a time between 1677 and 2262.
pub(super) const NANOS_THRESHOLD: f64 = 1e17;

/// Reads a time value by the contract's rules, truncated to microseconds (the precision
/// both databases keep):
///
/// - INTEGER and REAL: Unix seconds; milliseconds from [`MILLIS_THRESHOLD`] (10^11) on,
///   microseconds from [`MICROS_THRESHOLD`] (10^14) on, nanoseconds from
///   [`NANOS_THRESHOLD`] (10^17) on (the magnitude decides, so negative numbers too).
/// - TEXT that is a decimal number (`'1723825537.5902064'`, `'-12'`): the same, read
///   exactly from its digits.
/// - other TEXT: RFC 3339 / ISO 8601 with an offset or `Z`, with `T` or a space between
///   date and time (`2024-01-15T10:30:00+00:00`, `2025-01-22 08:00:00Z`); naive
///   `YYYY-MM-DD HH:MM[:SS[.fraction]]` (also with `T`) as UTC; a bare `YYYY-MM-DD` as
///   midnight UTC.
///
/// # Errors
/// A short reason when the value is not a time (BLOB, other text, out of range).
pub(crate) fn parse_time_value(value: &SqlValue) -> Result<DateTime<Utc>, String> {
    let at = match value {
        SqlValue::Integer(i) => from_unix(*i, 0),
        // Rust prints the shortest decimal that reads back as the same f64: read those
        // digits exactly, as a person reading the stored number would.
        SqlValue::Real(f) if f.is_finite() => parse_decimal(&format!("{f}")),
        SqlValue::Real(_) => None,
        SqlValue::Text(s) => parse_text(s.trim()),
        SqlValue::Null => None,
        SqlValue::Blob(_) | SqlValue::InvalidText(_) => {
            return Err("a BLOB is not a time".into());
        }
    };
    at.map(|t| t.trunc_subsecs(6))
        .ok_or_else(|| format!("{} is not a time this migration can read", value.to_json()))
}

fn parse_text(s: &str) -> Option<DateTime<Utc>> {
    if let Some(at) = parse_decimal(s) {
        return Some(at);
    }
    // One form for the separator and the zone letter, then the standard parsers.
    let mut text = s.to_string();
    if text.len() > 10 && text.as_bytes()[10] == b' ' {
        text.replace_range(10..11, "T");
    }
    if text.ends_with(['z']) {
        text.replace_range(text.len() - 1.., "Z");
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(&text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(&text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// `-?digits[.digits]` read exactly: whole seconds and nanoseconds from the digits.
fn parse_decimal(s: &str) -> Option<DateTime<Utc>> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    // Nineteen digits hold every nanosecond time an i64 can (up to 2262).
    if whole.is_empty() || !digits(whole) || !digits(fraction) || whole.len() > 19 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    // Nine digits of fraction are nanoseconds; more cannot matter at microseconds.
    let nanos: i64 = format!("{fraction:0<9}")[..9].parse().ok()?;
    let (whole, nanos) = if negative {
        (-whole, -nanos)
    } else {
        (whole, nanos)
    };
    from_unix(whole, nanos)
}

/// A Unix time of `whole` units and `nanos` billionths of a unit; the magnitude of
/// `whole` (the number's integer part, compared exactly) decides the unit: seconds,
/// milliseconds, microseconds or nanoseconds.
fn from_unix(whole: i64, nanos: i64) -> Option<DateTime<Utc>> {
    let magnitude = whole.unsigned_abs();
    // The thresholds are whole numbers, so comparing the integer part is exact: a
    // fraction never lifts a number over one.
    let per_second: i128 = if magnitude >= NANOS_THRESHOLD as u64 {
        1_000_000_000
    } else if magnitude >= MICROS_THRESHOLD as u64 {
        1_000_000
    } else if magnitude >= MILLIS_THRESHOLD as u64 {
        1_000
    } else {
        1
    };
    let total_nanos = (i128::from(whole) * 1_000_000_000 + i128::from(nanos)) / per_second;
    let secs = i64::try_from(total_nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = u32::try_from(total_nanos.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(v: SqlValue) -> String {
        parse_time_value(&v)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn the_contract_time_forms_are_read() {
        let text = |s: &str| at(SqlValue::Text(s.into()));
        assert_eq!(text("2024-01-15 10:30:00"), "2024-01-15T10:30:00.000000Z");
        assert_eq!(text("2024-01-15T10:30:00Z"), "2024-01-15T10:30:00.000000Z");
        assert_eq!(
            text("2024-06-10T12:00:00.123456+02:00"),
            "2024-06-10T10:00:00.123456Z"
        );
        assert_eq!(
            text("2025-07-15T19:56:58.594025"),
            "2025-07-15T19:56:58.594025Z"
        );
        assert_eq!(text("2025-01-22 08:00:00z"), "2025-01-22T08:00:00.000000Z");
        assert_eq!(text("2024-01-15 10:30"), "2024-01-15T10:30:00.000000Z");
        assert_eq!(text("2024-01-15"), "2024-01-15T00:00:00.000000Z");
        assert_eq!(
            text("2024-01-15T10:30:00+0100"),
            "2024-01-15T09:30:00.000000Z"
        );
        assert_eq!(text("1723825537.5902064"), "2024-08-16T16:25:37.590206Z");
        assert_eq!(text("-1.5"), "1969-12-31T23:59:58.500000Z");
        assert_eq!(at(SqlValue::Integer(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            at(SqlValue::Real(1723825537.25)),
            "2024-08-16T16:25:37.250000Z"
        );
    }

    #[test]
    fn milliseconds_start_at_the_threshold() {
        assert_eq!(
            at(SqlValue::Integer(99_999_999_999)),
            "5138-11-16T09:46:39.000000Z"
        );
        assert_eq!(
            at(SqlValue::Integer(100_000_000_000)),
            "1973-03-03T09:46:40.000000Z"
        );
        assert_eq!(
            at(SqlValue::Integer(1_723_825_537_590)),
            "2024-08-16T16:25:37.590000Z"
        );
        assert_eq!(
            at(SqlValue::Text("1723825537590".into())),
            "2024-08-16T16:25:37.590000Z"
        );
    }

    #[test]
    fn microseconds_and_nanoseconds_start_at_theirs() {
        // One instant in every unit, as INTEGER, REAL and decimal TEXT.
        let instant = "2024-11-28T13:20:00.123456Z";
        for n in [
            1_732_800_000_i64,
            1_732_800_000_123,
            1_732_800_000_123_456,
            1_732_800_000_123_456_789,
        ] {
            let want = if n < 100_000_000_000 {
                "2024-11-28T13:20:00.000000Z"
            } else if n < 100_000_000_000_000 {
                "2024-11-28T13:20:00.123000Z"
            } else {
                instant
            };
            assert_eq!(at(SqlValue::Integer(n)), want, "{n}");
            assert_eq!(at(SqlValue::Text(n.to_string())), want, "text {n}");
            assert_eq!(at(SqlValue::Integer(-n)).get(..2), Some("19"), "-{n}");
        }
        // The example: microseconds, not the year 56880.
        assert_eq!(
            at(SqlValue::Integer(1_732_800_000_000_000)),
            "2024-11-28T13:20:00.000000Z"
        );
        assert_eq!(
            at(SqlValue::Real(1_732_800_000_000_000.0)),
            "2024-11-28T13:20:00.000000Z"
        );
        assert_eq!(
            at(SqlValue::Text("1732800000123456.7".into())),
            "2024-11-28T13:20:00.123456Z"
        );
        // Each threshold: just under it is the unit before (the year 5138), at it 1973.
        for (under, from) in [
            (99_999_999_999_999_i64, 100_000_000_000_000_i64),
            (99_999_999_999_999_999, 100_000_000_000_000_000),
        ] {
            assert!(at(SqlValue::Integer(under)).starts_with("5138-11-16T09:46:39"));
            assert_eq!(at(SqlValue::Integer(from)), "1973-03-03T09:46:40.000000Z");
            assert!(
                at(SqlValue::Text(format!("{under}.9"))).starts_with("5138-11-16T09:46:39"),
                "a fraction does not lift {under} into the next unit"
            );
        }
        // Every 64-bit integer is now a time: nanoseconds reach 2262.
        assert_eq!(
            at(SqlValue::Integer(i64::MAX)),
            "2262-04-11T23:47:16.854775Z"
        );
        assert_eq!(
            at(SqlValue::Text("9223372036854775807".into())),
            "2262-04-11T23:47:16.854775Z"
        );
    }

    #[test]
    fn what_is_not_a_time_is_an_error() {
        for v in [
            SqlValue::Text("toto".into()),
            SqlValue::Text("".into()),
            SqlValue::Text("2024-13-45".into()),
            SqlValue::Blob(vec![1, 2]),
            SqlValue::Real(f64::INFINITY),
            SqlValue::Real(1e300),
            SqlValue::Text("9223372036854775808".into()),
            SqlValue::Text("99999999999999999999".into()),
        ] {
            assert!(at(v.clone()).starts_with("error"), "{v:?}");
        }
    }
}
