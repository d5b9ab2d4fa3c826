//! Connection strings read once: how to show them, and the secrets they hold.
//!
//! A database URL is parsed into a [`ConnectionString`] when it enters the library. From
//! then on messages, logs and reports show only its [`shown`](ConnectionString::shown)
//! form, and a cause from the driver or the server is cleaned by
//! [`scrub`](ConnectionString::scrub) before it is kept.
//!
//! # What is replaced, and why not every occurrence of the password
//!
//! The library's own messages never hold the password: they are built from the shown
//! form. A cause written by someone else (the driver, a parser) is searched for the
//! texts that can only be the credentials: the connection string as given, the password
//! between `:` and `@` and after `password=`, in the forms it is written, decoded, and
//! encoded as URLs encode it. Those are replaced where they appear.
//!
//! The password on its own is replaced only when it is at least
//! [`BARE_SECRET_LEN`] bytes long. A shorter one cannot be told apart from ordinary text:
//! replacing `e` or `rror` inside every word would garble each message, and the pattern
//! of stars would spell out the password. Neither PostgreSQL nor the driver repeats a
//! password by itself; what they repeat is the URL or a part of it, and those forms are
//! replaced at any length.

use std::error::Error as StdError;
use std::fmt;

use percent_encoding::{
    AsciiSet, CONTROLS, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode,
};

use crate::error::{BoxError, Chain};

/// How a password is shown.
const HIDDEN: &str = "***";

/// The shortest password replaced wherever it appears, outside the forms that mark it
/// as credentials (see the module docs).
pub(crate) const BARE_SECRET_LEN: usize = 8;

/// The characters the URL standard percent-encodes in a URL's user information.
const USERINFO: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'=')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'|');

/// A connection string as the library holds it: the text to show in its place, the
/// secrets to keep out of every message, and why it cannot be used as written, when
/// that is known before connecting.
///
/// `Debug` shows only the shown form.
#[derive(Clone)]
pub(crate) struct ConnectionString {
    /// The text with every password replaced by `***`.
    shown: String,
    /// Texts that hold a secret, with what to show instead; longest first.
    forms: Vec<(String, String)>,
    /// Passwords long enough to be replaced wherever they appear; longest first.
    bare: Vec<String>,
    /// Why the text cannot be used as a URL, when the driver would misread it.
    problem: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionString")
            .field(&self.shown)
            .finish()
    }
}

impl ConnectionString {
    /// Reads `text`: a URL (`scheme://user:password@host/db?password=...`), a URL whose
    /// `//` is missing (`postgres:secret@host/db`), a `key=value` connection string
    /// (`host=h password=secret`), or anything else. Never fails; see
    /// [`problem`](Self::problem).
    pub(crate) fn parse(text: &str) -> Self {
        let mut read = Reading::default();
        if let Some((scheme, rest)) = text.split_once("://").filter(|(s, _)| is_scheme(s)) {
            read.url(text, scheme, rest);
        } else if let Some((scheme, rest)) = text.split_once(':').filter(|(s, _)| is_scheme(s)) {
            read.without_slashes(scheme, rest);
        } else if is_key_value(text) {
            read.key_value(text);
        } else {
            read.anything(text);
        }
        read.finish(text)
    }

    /// The text to show in messages, logs and reports.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Why the text cannot be used as written, when the driver would misread it rather
    /// than refuse it: a URL without `//`, a `key=value` string, a password holding a
    /// character that ends the URL's host part.
    pub(crate) fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Whether `text` shows one of the secrets.
    fn reveals(&self, text: &str) -> bool {
        self.forms
            .iter()
            .any(|(form, _)| text.contains(form.as_str()))
            || self
                .bare
                .iter()
                .any(|secret| text.contains(secret.as_str()))
    }

    /// `text` with every known form of the secrets replaced (see the module docs).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (form, instead) in &self.forms {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), instead);
            }
        }
        for secret in &self.bare {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), HIDDEN);
            }
        }
        out
    }

    /// Boxes `err` as a cause; when its text or its `Debug` shows a secret, the cause
    /// becomes its redacted text.
    pub(crate) fn scrub<E>(&self, err: E) -> BoxError
    where
        E: StdError + Send + Sync + 'static,
    {
        let text = Chain(&err).to_string();
        if self.reveals(&text) || self.reveals(&format!("{err:?}")) {
            return Box::new(Redacted(self.redact(&text)));
        }
        Box::new(err)
    }
}

/// Returns `url` with its password replaced by `***`, ready for messages and logs.
///
/// Reads URLs (`postgres://user:pass@host/db`, passwords in `?password=` too), URLs
/// missing their `//`, and `key=value` connection strings; of anything else, the part
/// before an `@` is hidden.
///
/// ```
/// assert_eq!(
///     memshift::redact_url("postgres://app:hunter2@db:5432/agents"),
///     "postgres://app:***@db:5432/agents"
/// );
/// assert_eq!(memshift::redact_url("postgres:hunter2@db/agents"), "postgres:***@db/agents");
/// ```
pub fn redact_url(url: &str) -> String {
    ConnectionString::parse(url).shown
}

/// A cause whose original text held a secret, kept as its redacted text.
#[derive(Debug)]
struct Redacted(String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Redacted {}

/// What [`ConnectionString::parse`] found, before it is put in order.
#[derive(Default)]
struct Reading {
    shown: String,
    /// Passwords, decoded.
    passwords: Vec<String>,
    /// Texts that hold a secret as written, each with what to show instead.
    written: Vec<(String, String)>,
    problem: Option<String>,
}

impl Reading {
    /// `scheme://[user[:password]@]host...`. The user information ends at the last `@`
    /// (a password may hold `@`, and also an unencoded `/`, `?` or `#`, which end the
    /// host part for the driver: such a URL is refused, and shown with all of it hidden).
    fn url(&mut self, text: &str, scheme: &str, rest: &str) {
        let credentials = rest
            .rsplit_once('@')
            .and_then(|(userinfo, host)| Some((userinfo.split_once(':')?, host)))
            .filter(|((user, _), _)| !user.contains(['/', '?', '#']));
        let tail = match credentials {
            Some(((user, password), host)) => {
                self.password_written(password, decode(password));
                self.written
                    .push((format!(":{password}@"), format!(":{HIDDEN}@")));
                let lost = url::Url::parse(text).map_or(true, |url| url.password().is_none());
                if lost && password.contains(['/', '?', '#']) {
                    self.problem = Some(
                        "its password holds a `/`, `?` or `#`, which ends the host part of a \
                         URL: percent-encode them (%2F, %3F, %23)"
                            .into(),
                    );
                }
                format!("{scheme}://{user}:{HIDDEN}@{host}")
            }
            None => text.to_string(),
        };
        self.shown = self.hide_query_passwords(&tail);
        if let Ok(url) = url::Url::parse(text)
            && let Some(password) = url.password()
        {
            // The driver's reading, should it differ from the one above.
            self.password_written(password, decode(password));
        }
    }

    /// `scheme:...` without `//`: not a URL the driver reads as meant (it would take
    /// everything after the scheme for a database name), so it is refused, and shown
    /// with everything up to the last `@` hidden.
    fn without_slashes(&mut self, scheme: &str, rest: &str) {
        let (hidden, host) = match rest.rsplit_once('@') {
            Some((hidden, host)) => (hidden, Some(host)),
            None => (rest, None),
        };
        if !hidden.is_empty() {
            self.written
                .push((format!("{scheme}:{hidden}"), format!("{scheme}:{HIDDEN}")));
            self.password_written(hidden, decode(hidden));
            if let Some((_, password)) = hidden.split_once(':') {
                self.password_written(password, decode(password));
            }
        }
        self.shown = match host {
            Some(host) => format!("{scheme}:{HIDDEN}@{host}"),
            None => format!("{scheme}:{HIDDEN}"),
        };
        self.problem = Some(format!(
            "it has no `//` after `{scheme}:`; write {scheme}://user:password@host:port/database"
        ));
    }

    /// `key=value` pairs separated by spaces, values optionally in single quotes with
    /// `\'` and `\\` escapes (PostgreSQL's connection string format).
    fn key_value(&mut self, text: &str) {
        let mut shown = String::with_capacity(text.len());
        let mut at = 0;
        for pair in key_value_pairs(text) {
            if pair.key == "password" {
                shown.push_str(&text[at..pair.value.start]);
                shown.push_str(HIDDEN);
                at = pair.value.end;
                let written = &text[pair.value.clone()];
                self.written
                    .push((format!("={written}"), format!("={HIDDEN}")));
                self.password_written(written, pair.unquoted);
            }
        }
        shown.push_str(&text[at..]);
        self.shown = shown;
        self.problem = Some(
            "it is a key=value connection string; give a URL instead: \
             postgres://user:password@host:port/database"
                .into(),
        );
    }

    /// Text of no known form: everything up to the last `@` is hidden.
    fn anything(&mut self, text: &str) {
        self.shown = match text.rsplit_once('@') {
            Some((hidden, host)) => {
                self.password_written(hidden, decode(hidden));
                if let Some((_, password)) = hidden.split_once(':') {
                    self.password_written(password, decode(password));
                }
                format!("{HIDDEN}@{host}")
            }
            None => text.to_string(),
        };
    }

    /// `tail` with the value of every `password` query parameter hidden.
    fn hide_query_passwords(&mut self, tail: &str) -> String {
        let Some((before, query)) = tail.split_once('?') else {
            return tail.to_string();
        };
        let (query, fragment) = match query.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (query, None),
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if decode_form(key) == "password" && !value.is_empty() => {
                    self.password_written(value, decode_form(value));
                    self.written
                        .push((format!("{key}={value}"), format!("{key}={HIDDEN}")));
                    format!("{key}={HIDDEN}")
                }
                _ => pair.to_string(),
            })
            .collect();
        let mut shown = format!("{before}?{}", pairs.join("&"));
        if let Some(fragment) = fragment {
            shown.push('#');
            shown.push_str(fragment);
        }
        shown
    }

    /// Records a password, as written and decoded.
    fn password_written(&mut self, written: &str, decoded: String) {
        if !written.is_empty() {
            self.passwords.push(written.to_string());
        }
        if !decoded.is_empty() {
            self.passwords.push(decoded);
        }
    }

    fn finish(mut self, text: &str) -> ConnectionString {
        let mut forms = Vec::new();
        if text != self.shown {
            forms.push((text.to_string(), self.shown.clone()));
        }
        forms.append(&mut self.written);
        let mut bare = Vec::new();
        for password in &self.passwords {
            // Every form a message may echo it in: as read, and encoded the way the URL
            // standard and the driver write it back into a URL.
            let encoded = [
                password.clone(),
                utf8_percent_encode(password, USERINFO).to_string(),
                utf8_percent_encode(password, NON_ALPHANUMERIC).to_string(),
            ];
            for form in encoded {
                forms.push((format!(":{form}@"), format!(":{HIDDEN}@")));
                forms.push((format!("password={form}"), format!("password={HIDDEN}")));
                if form.len() >= BARE_SECRET_LEN {
                    bare.push(form);
                }
            }
        }
        forms.retain(|(form, _)| !form.is_empty());
        forms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        forms.dedup_by(|a, b| a.0 == b.0);
        bare.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        bare.dedup();
        ConnectionString {
            shown: self.shown,
            forms,
            bare,
            problem: self.problem,
        }
    }
}

/// A URL scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Percent-decoded text (invalid UTF-8 replaced).
fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// A query value decoded as forms are: `+` is a space.
fn decode_form(text: &str) -> String {
    decode(&text.replace('+', " "))
}

/// Whether `text` starts as a `key=value` connection string does.
fn is_key_value(text: &str) -> bool {
    let text = text.trim_start();
    let key_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    key_end > 0 && text[key_end..].trim_start().starts_with('=')
}

/// One `key=value` pair: the key, where the value is written, and the value read.
struct Pair {
    key: String,
    value: std::ops::Range<usize>,
    unquoted: String,
}

/// The pairs of a `key=value` connection string, as far as they can be read.
fn key_value_pairs(text: &str) -> Vec<Pair> {
    let bytes = text.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = text[key_start..i].to_string();
        i = skip_space(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            return pairs;
        }
        i = skip_space(i + 1);
        let start = i;
        let mut unquoted = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                unquoted.push(bytes[i]);
                i += 1;
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                unquoted.push(bytes[i]);
                i += 1;
            }
        }
        pairs.push(Pair {
            key,
            value: start..i,
            unquoted: String::from_utf8_lossy(&unquoted).into_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        ConnectionString::parse(text).shown
    }

    #[test]
    fn urls_show_no_password() {
        assert_eq!(
            shown("postgres://u:p%40ss@h:5/d?sslmode=disable"),
            "postgres://u:***@h:5/d?sslmode=disable"
        );
        assert_eq!(shown("postgres://h/d"), "postgres://h/d");
        assert_eq!(
            shown("postgres://h/d?user=u&password=topsecret"),
            "postgres://h/d?user=u&password=***"
        );
        assert_eq!(shown("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        // Delimiters the driver reads as the end of the host part.
        for password in ["a/b", "a?b", "a#b", "1/b", "12?b", "1#b"] {
            let url = format!("postgres://u:{password}@h:5432/d");
            assert_eq!(shown(&url), "postgres://u:***@h:5432/d", "{url}");
        }
        assert_eq!(shown("postgres:s3cret@host/db"), "postgres:***@host/db");
        assert_eq!(shown("postgresql:u:pw@h/d"), "postgresql:***@h/d");
        assert_eq!(shown("postgres:s3cret"), "postgres:***");
        assert_eq!(
            shown("host=h user=u password=s3cret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            shown("host=h password = 'a b\\'c' dbname=d"),
            "host=h password = *** dbname=d"
        );
        assert_eq!(shown("u:pw@h/d"), "u:***@h/d");
        assert_eq!(shown("user pw@h/d"), "***@h/d");
        assert_eq!(shown("localhost"), "localhost");
    }

    #[test]
    fn problems_are_found_before_connecting() {
        let problem = |text: &str| ConnectionString::parse(text).problem;
        assert_eq!(problem("postgres://u:p@h/d"), None);
        assert_eq!(problem("postgres://u:p@ss@h/d"), None);
        assert_eq!(problem("postgres://h/d?application_name=a@b"), None);
        assert!(
            problem("postgres:s3cret@host/db")
                .unwrap()
                .contains("no `//`")
        );
        assert!(problem("host=h password=x").unwrap().contains("key=value"));
        assert!(
            problem("postgres://u:1#x@h/d")
                .unwrap()
                .contains("percent-encode")
        );
        assert!(
            problem("postgres://u:1/x@h/d")
                .unwrap()
                .contains("percent-encode")
        );
        assert!(
            problem("postgres://u:12?x@h/d")
                .unwrap()
                .contains("percent-encode")
        );
    }

    #[test]
    fn short_passwords_are_replaced_only_as_credentials() {
        for password in ["e", "rror"] {
            let url = format!("postgres://u:{password}@h/d");
            let target = ConnectionString::parse(&url);
            let message = "error communicating with database: connection refused";
            assert_eq!(target.redact(message), message);
            assert_eq!(
                target.redact(&format!("cannot use {url}: no")),
                "cannot use postgres://u:***@h/d: no"
            );
            assert_eq!(
                target.redact(&format!("login u:{password}@h")),
                "login u:***@h"
            );
        }
    }

    #[test]
    fn long_passwords_are_replaced_in_every_form() {
        let target = ConnectionString::parse("postgres://u:p%40ss%2Fw%3Frd%23@h/d");
        for echoed in ["p@ss/w?rd#", "p%40ss%2Fw%3Frd%23"] {
            assert_eq!(target.redact(&format!("saw {echoed} here")), "saw *** here");
        }
        let query = ConnectionString::parse("postgres://h/d?password=top+secret%21");
        assert_eq!(query.redact("saw top secret! here"), "saw *** here");
        let pairs = ConnectionString::parse("host=h password='long secret'");
        assert_eq!(pairs.redact("saw long secret here"), "saw *** here");
    }

    #[test]
    fn scrub_replaces_causes_that_show_a_secret() {
        let target = ConnectionString::parse("postgres://u:hunter2@h/d");
        let io = std::io::Error::other("login as u:hunter2@h refused");
        let scrubbed = target.scrub(io);
        assert_eq!(scrubbed.to_string(), "login as u:***@h refused");
        assert!(!format!("{scrubbed:?}").contains("hunter2"));
        let kept = target.scrub(std::io::Error::other("connection refused"));
        assert!(kept.downcast_ref::<std::io::Error>().is_some());
    }
}
