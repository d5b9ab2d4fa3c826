//! The crate's one error type, and the redaction that keeps secrets out of it.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

/// A boxed cause, kept as a source so callers can walk or downcast the chain.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in memshift, grouped by what the caller does next.
///
/// `Display` gives this error's own message; the cause, when there is one, is its
/// [`source`](StdError::source). Use [`Chain`] to print the whole chain on one line.
/// No variant ever holds a password: connection targets are stored redacted, and a
/// cause whose text would reveal one is replaced by its redacted text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work: an unknown backend name, a missing `DATABASE_URL`,
    /// a malformed URL. Fix the settings and start again.
    #[error("configuration: {message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A value passed in cannot be stored as given (an agent name that cannot be a folder
    /// name, a key holding a NUL character, a NaN metric). Nothing was written.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument: `agent name`, `key`, `metadata`, ...
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The PostgreSQL database lacks tables, columns, constraints or extensions the
    /// library needs. Nothing was written.
    #[error("{target} is missing {}: {hint}", missing.join(", "))]
    SchemaMissing {
        /// The database, as a redacted URL.
        target: String,
        /// Each missing piece, e.g. `table agent_memories`, `extension vector`.
        missing: Vec<String>,
        /// How to create them.
        hint: &'static str,
    },

    /// The database could not be reached or refused the login.
    #[error("cannot connect to {target}")]
    Connect {
        /// The database, as a redacted URL.
        target: String,
        /// Why the connection failed.
        #[source]
        source: BoxError,
    },

    /// A SQLite file cannot be used: the path is a directory, cannot be created or
    /// written, or is not a SQLite database.
    #[error("sqlite file {}: {problem}", path.display())]
    SqliteFile {
        /// The file that was being opened.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A statement failed on an open database.
    #[error("{backend}: {operation} failed")]
    Database {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The operation and what it was for, e.g. `store memory "k" of agent "a"`.
        operation: String,
        /// The database's error.
        #[source]
        source: BoxError,
    },

    /// A stored or supplied value is not the JSON its reader expects.
    #[error("{context}: invalid JSON for its type")]
    Json {
        /// Which value, e.g. `memory "k" of agent "a"`.
        context: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Lets `?` take your own `serde_json` calls in a function returning this crate's
/// [`Result`]: the error becomes [`Error::Json`].
impl From<serde_json::Error> for Error {
    fn from(source: serde_json::Error) -> Self {
        Error::Json {
            context: "a JSON value".to_string(),
            source,
        }
    }
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    /// True when the cause is a lost, refused or timed-out connection: the kind of
    /// failure that a retry after the database comes back can cure. That includes the
    /// server ending the session (SQLSTATE `57P01` to `57P03`: an administrator's
    /// `pg_terminate_backend`, a shutdown, a server still starting) and SQLSTATE class
    /// `08` (connection exceptions). A refused login or a missing database is not.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Database { source, .. } => {
                match source.downcast_ref::<sqlx::Error>() {
                    Some(sqlx::Error::Database(db)) => {
                        db.code().is_some_and(|code| is_connection_sqlstate(&code))
                    }
                    Some(e) => matches!(
                        e,
                        sqlx::Error::Io(_)
                            | sqlx::Error::PoolTimedOut
                            | sqlx::Error::PoolClosed
                            | sqlx::Error::Tls(_)
                    ),
                    // The probe's own timeout, or an injected fault.
                    None => source.downcast_ref::<std::io::Error>().is_some(),
                }
            }
            _ => false,
        }
    }
}

impl Error {
    /// Whether retrying the same call cannot help: the database refuses this data
    /// itself (a value it cannot hold, a constraint, a record that cannot be read), as
    /// opposed to a side that is unreachable, busy, locked, full or slow, or a schema
    /// that is missing (fixed by an operator, after which everything passes again).
    pub fn is_lasting(&self) -> bool {
        match self {
            Error::InvalidInput { .. } | Error::Json { .. } => true,
            Error::Database { source, .. } => match source.downcast_ref::<sqlx::Error>() {
                Some(sqlx::Error::Database(db)) => {
                    db.code().is_some_and(|code| is_lasting_code(&code))
                }
                Some(sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }) => true,
                _ => false,
            },
            _ => false,
        }
    }
}

/// PostgreSQL SQLSTATE classes `22` (data exception), `23` (integrity constraint
/// violation) and `54` (program limit exceeded, e.g. an index row too large); SQLite's
/// CONSTRAINT (19), TOOBIG (18), MISMATCH (20) and RANGE (25), extended codes included.
fn is_lasting_code(code: &str) -> bool {
    if let Ok(sqlite) = code.parse::<i64>() {
        return matches!(sqlite & 0xff, 18 | 19 | 20 | 25);
    }
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
}

/// Whether a PostgreSQL SQLSTATE says the session is gone or cannot be had: class `08`
/// (connection exception) or `57P01` to `57P03` (terminated by an administrator, by a
/// shutdown, or the server cannot accept connections now).
fn is_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Displays an error and all its causes on one line, joined by `: `.
///
/// ```
/// use memshift::{Chain, Error};
/// let err: Error = "nope".parse::<memshift::BackendKind>().unwrap_err();
/// assert!(Chain(&err).to_string().contains("nope"));
/// ```
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            // Many errors repeat their source in their own message; say it once.
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            next = cause.source();
        }
        Ok(())
    }
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

/// Returns `url` with its password replaced by `***`, ready for messages and logs.
///
/// Works on `postgres://user:pass@host/db` URLs and, as a fallback, on anything with a
/// `scheme://user:pass@` prefix or a `password=...` setting.
///
/// ```
/// assert_eq!(
///     memshift::redact_url("postgres://app:hunter2@db:5432/agents"),
///     "postgres://app:***@db:5432/agents"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url) {
        if parsed.password().is_some() {
            // set_password only fails for URLs that cannot have credentials at all.
            let _ = parsed.set_password(Some("***"));
        }
        let mut text = parsed.to_string();
        for secret in query_passwords(url) {
            text = text.replace(&secret, "***");
        }
        return text;
    }
    let mut text = url.to_string();
    for secret in url_secrets(url) {
        text = text.replace(&secret, "***");
    }
    text
}

/// The secrets a connection string carries, in every form they may be echoed back in:
/// as written (percent-encoded) and decoded.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let password = authority
            .rsplit_once('@')
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, password)| password);
        if let Some(password) = password {
            secrets.push(password.to_string());
            if let Ok(decoded) = percent_decode(password) {
                secrets.push(decoded);
            }
        }
    }
    secrets.extend(query_passwords(url));
    secrets.retain(|s| !s.is_empty() && s != "***");
    secrets.sort();
    secrets.dedup();
    secrets
}

fn query_passwords(url: &str) -> Vec<String> {
    url.split(['?', '&', ' '])
        .filter_map(|part| part.strip_prefix("password="))
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .collect()
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3);
        if bytes[i] == b'%' && hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            // Two ASCII hex digits always parse.
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'%'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// Boxes `err` as a cause, replacing it by its redacted text when any error in its chain
/// would show one of `secrets`.
pub(crate) fn scrub<E>(err: E, secrets: &[String]) -> BoxError
where
    E: StdError + Send + Sync + 'static,
{
    if secrets.is_empty() {
        return Box::new(err);
    }
    let text = format!("{} {:?}", Chain(&err), err);
    if secrets.iter().any(|s| text.contains(s.as_str())) {
        let mut shown = Chain(&err).to_string();
        for secret in secrets {
            shown = shown.replace(secret.as_str(), "***");
        }
        return Box::new(Redacted(shown));
    }
    Box::new(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5/d?sslmode=disable"),
            "postgres://u:***@h:5/d?sslmode=disable"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        assert_eq!(
            redact_url("postgres://h/d?user=u&password=topsecret"),
            "postgres://h/d?user=u&password=***"
        );
        assert_eq!(
            url_secrets("postgres://u:p%40ss@h/d"),
            vec!["p%40ss".to_string(), "p@ss".to_string()]
        );
    }

    #[test]
    fn connection_sqlstates() {
        for code in ["08000", "08003", "08006", "57P01", "57P02", "57P03"] {
            assert!(is_connection_sqlstate(code), "{code}");
        }
        // Cancelled by the user, out of disk, a failed login, a unique violation.
        for code in ["57014", "53100", "28P01", "23505", "57P04"] {
            assert!(!is_connection_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn scrub_replaces_causes_that_show_a_secret() {
        let io = std::io::Error::other("login as u:hunter2 refused");
        let scrubbed = scrub(io, &["hunter2".to_string()]);
        assert_eq!(scrubbed.to_string(), "login as u:*** refused");
        assert!(!format!("{scrubbed:?}").contains("hunter2"));
    }
}
