//! Which records a listing returns: [`Listing`], and the bounds both backends turn it
//! into.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use crate::error::{Error, Result};

/// Which of an agent's records a listing returns: at most `limit` of them, only those
/// written at or after `since`, only those whose key starts with `prefix`.
///
/// The default, [`Listing::new`], lists everything, as the listings without options do.
///
/// ```
/// use memshift::Listing;
///
/// let recent_notes = Listing::new()
///     .prefix("notes/")
///     .since(chrono::Utc::now() - chrono::TimeDelta::hours(1))
///     .limit(20);
/// assert_eq!(recent_notes.limit, Some(20));
/// ```
///
/// What each listing orders by, and what `prefix` and `since` look at:
///
/// | listing | order | `prefix` matches | `since` compares |
/// |---|---|---|---|
/// | memory keys | key, byte order | the key | `updated_at`: stored or replaced since |
/// | tools | name, byte order | the name | `updated_at`: registered or changed since |
/// | metrics | `created_at`, then id | the metric's name | `created_at` |
/// | executions | `created_at`, then id | the status (an execution without one never matches a non-empty prefix) | `created_at` |
///
/// `limit` keeps the first records in that order. A prefix matches byte for byte: `%`,
/// `_` and `\` are themselves, letters are not case-folded, `é` and `e` followed by a
/// combining accent are different. An empty prefix matches everything. `since` is
/// inclusive and counts in whole microseconds, the precision both databases keep (a
/// `since` between two microseconds means the next one); a `since` before the year 1
/// filters nothing, one after the year 9999 matches nothing. The filtering and the limit
/// run in the database, on every backend, with the same answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// Return at most this many records (the first ones in the listing's order).
    pub limit: Option<u32>,
    /// Only records written at or after this time (see the table above).
    pub since: Option<DateTime<Utc>>,
    /// Only records whose key (name, status) starts with this, byte for byte.
    pub prefix: Option<String>,
}

impl Listing {
    /// Everything.
    pub fn new() -> Self {
        Listing::default()
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only records written at or after `since`.
    pub fn since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    /// Only records whose key starts with `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Checks the listing: a prefix cannot hold NUL (no key can, so it could match
    /// nothing, and PostgreSQL text cannot carry it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.prefix.as_deref().is_some_and(|p| p.contains('\0')) {
            return Err(Error::invalid(
                "listing prefix",
                "it contains a NUL character, which no key or name can hold",
            ));
        }
        Ok(())
    }

    /// The listing as the bounds a statement binds, after [`validate`](Self::validate);
    /// `None` when nothing can match (a limit of 0, a `since` past the year 9999).
    pub(crate) fn bounds(&self) -> Result<Option<Bounds>> {
        self.validate()?;
        if self.limit == Some(0) {
            return Ok(None);
        }
        let since = match self.since.map(round_up_to_micros) {
            Some(since) if since > last_time() => return Ok(None),
            Some(since) if since < first_time() => None,
            since => since,
        };
        let from = self.prefix.clone().filter(|p| !p.is_empty());
        Ok(Some(Bounds {
            below: from.as_deref().and_then(prefix_end),
            from,
            since,
            limit: self.limit.map(i64::from),
        }))
    }
}

/// A [`Listing`] as a statement binds it: the key range `from <= key < below` holds
/// exactly the keys that start with the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The prefix: the least key that starts with it.
    pub(crate) from: Option<String>,
    /// The least string past every key that starts with the prefix; `None` when every
    /// key from the prefix on starts with it (a prefix of `char::MAX` only).
    pub(crate) below: Option<String>,
    /// Rounded up to whole microseconds, within the years 1 to 9999.
    pub(crate) since: Option<DateTime<Utc>>,
    /// At least 1.
    pub(crate) limit: Option<i64>,
}

/// The least string greater than every string that starts with `prefix`, in byte order
/// of UTF-8 (which is the order of code points): the prefix with its last character
/// that has a successor replaced by that successor, and the characters after it
/// dropped. A range, unlike `LIKE`, has no characters to escape and the same meaning in
/// both databases, and an index on the key serves it.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            // The surrogates are not characters: the next one after U+D7FF is U+E000.
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn round_up_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = at.timestamp_subsec_nanos() % 1_000;
    if nanos == 0 {
        return at;
    }
    at.checked_add_signed(TimeDelta::nanoseconds(i64::from(1_000 - nanos)))
        .unwrap_or(at)
}

/// SQLite keeps times as fixed-width text, whose order is time order for the years 1 to
/// 9999 only.
fn first_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn last_time() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_range(key: &str, bounds: &Bounds) -> bool {
        bounds.from.as_deref().is_none_or(|from| key >= from)
            && bounds.below.as_deref().is_none_or(|below| key < below)
    }

    /// Every string of up to three characters drawn from the characters next to the
    /// edges of UTF-8's lengths and of the surrogates, `LIKE`'s wildcards and escape.
    fn strings() -> Vec<String> {
        let alphabet = [
            '\u{1}',
            '%',
            '_',
            '\\',
            'a',
            'b',
            '\u{7F}',
            '\u{80}',
            'é',
            '\u{7FF}',
            '\u{800}',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFF}',
            '\u{10000}',
            char::MAX,
        ];
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..3 {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_key_range_holds_exactly_the_keys_with_the_prefix() {
        let strings = strings();
        for prefix in strings.iter().filter(|s| s.chars().count() < 3) {
            let bounds = Listing::new().prefix(prefix).bounds().unwrap().unwrap();
            for key in &strings {
                assert_eq!(
                    in_range(key, &bounds),
                    key.starts_with(prefix.as_str()),
                    "key {key:?}, prefix {prefix:?}, bounds {bounds:?}"
                );
            }
        }
        let max = char::MAX;
        assert_eq!(prefix_end("a%"), Some("a&".to_string()));
        assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".to_string()));
        assert_eq!(prefix_end(&format!("a{max}")), Some("b".to_string()));
        assert_eq!(prefix_end(&format!("{max}{max}")), None);
    }

    #[test]
    fn defaults_list_everything_and_odd_bounds_are_defined() {
        let all = Listing::new().bounds().unwrap().unwrap();
        assert_eq!(
            all,
            Bounds {
                from: None,
                below: None,
                since: None,
                limit: None
            }
        );
        assert_eq!(
            Listing::new().prefix("").bounds().unwrap(),
            Some(all.clone())
        );
        assert_eq!(Listing::new().limit(0).bounds().unwrap(), None);
        let past = DateTime::<Utc>::MIN_UTC;
        assert_eq!(Listing::new().since(past).bounds().unwrap(), Some(all));
        let future = DateTime::<Utc>::MAX_UTC;
        assert_eq!(Listing::new().since(future).bounds().unwrap(), None);
        assert!(Listing::new().prefix("a\0").bounds().is_err());
    }

    #[test]
    fn since_rounds_up_to_whole_microseconds() {
        let at = crate::record::now();
        let bounds = |since| Listing::new().since(since).bounds().unwrap().unwrap().since;
        assert_eq!(bounds(at), Some(at));
        let next = at + TimeDelta::microseconds(1);
        assert_eq!(bounds(at + TimeDelta::nanoseconds(1)), Some(next));
        assert_eq!(bounds(at + TimeDelta::nanoseconds(999)), Some(next));
    }
}
