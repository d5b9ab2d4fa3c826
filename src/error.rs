//! The crate's one error type, and the one rule that says what kind of failure an error
//! is. Secrets are kept out of it by reading connection strings once (see
//! [`redact_url`]).

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use crate::redact::ConnectionString;
pub use crate::redact::redact_url;

/// A boxed cause, kept as a source so callers can walk or downcast the chain.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in memshift, grouped by what the caller does next.
///
/// `Display` gives this error's own message; the cause, when there is one, is its
/// [`source`](StdError::source). Use [`Chain`] to print the whole chain on one line.
/// No variant holds a password: connection targets are stored as [`redact_url`] shows
/// them, and a cause whose text shows the URL, or its password as credentials
/// (`:password@`, `password=...`) or, when 8 bytes or longer, anywhere, is replaced by
/// its text with those parts as `***`.
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

    /// [`Error::Database`] for a statement of `backend` that failed with `cause`,
    /// classified ([`Fault`]) before `hide` may replace the cause by its redacted text.
    pub(crate) fn database(
        backend: &'static str,
        operation: impl Into<String>,
        cause: sqlx::Error,
        hide: Option<&ConnectionString>,
    ) -> Self {
        Error::Database {
            backend,
            operation: operation.into(),
            source: Classified::driver(cause, hide),
        }
    }

    /// [`Error::Connect`] to `target`, which failed with `cause`.
    pub(crate) fn connect(target: &ConnectionString, cause: sqlx::Error) -> Self {
        Error::Connect {
            target: target.shown().to_string(),
            source: Classified::driver(cause, Some(target)),
        }
    }

    /// [`Error::Connect`] to `target`, which did not answer in time: a lost connection.
    pub(crate) fn connect_timed_out(target: &ConnectionString, cause: std::io::Error) -> Self {
        Error::Connect {
            target: target.shown().to_string(),
            source: Classified::lost(cause),
        }
    }

    /// [`Error::Database`] for a call that could not reach `backend` at all (a server
    /// known to be down, an injected fault): a lost connection, whatever `cause` says.
    pub(crate) fn unreachable(
        backend: &'static str,
        operation: impl Into<String>,
        cause: std::io::Error,
    ) -> Self {
        Error::Database {
            backend,
            operation: operation.into(),
            source: Classified::lost(cause),
        }
    }

    /// What kind of failure this is (see [`Fault`]).
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Error::InvalidInput { .. } | Error::Json { .. } => Fault::Lasting,
            Error::Connect { source, .. } | Error::Database { source, .. } => {
                match source.downcast_ref::<Classified>() {
                    Some(classified) => classified.fault,
                    // A cause built outside the library: read by the same rule.
                    None => source
                        .downcast_ref::<sqlx::Error>()
                        .map_or(Fault::Other, Fault::of),
                }
            }
            _ => Fault::Other,
        }
    }

    /// True when the cause is a lost, refused or timed-out connection: the kind of
    /// failure that a retry after the database comes back can cure. That includes the
    /// server ending the session (SQLSTATE `57P01` to `57P03`: an administrator's
    /// `pg_terminate_backend`, a shutdown, a server still starting) and SQLSTATE class
    /// `08` (connection exceptions). A refused login or a missing database is not.
    pub fn is_connection(&self) -> bool {
        self.fault() == Fault::Connection
    }

    /// Whether retrying the same call cannot help: the database refuses this data
    /// itself (a value it cannot hold, a constraint, a record that cannot be read), as
    /// opposed to a side that is unreachable, busy, locked, full or slow, or a schema
    /// that is missing (fixed by an operator, after which everything passes again).
    pub fn is_lasting(&self) -> bool {
        self.fault() == Fault::Lasting
    }
}

/// What kind of failure a database error is, for a caller deciding whether to retry.
/// Decided once, by [`Fault::of`], where the driver's error becomes this crate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The session is gone or cannot be had: a retry after the database comes back can
    /// cure it.
    Connection,
    /// Two transactions collided (a deadlock, a serialization failure): the same call
    /// at once again can succeed.
    Collision,
    /// The database refuses this data itself: retrying the same call cannot help.
    Lasting,
    /// Anything else (a missing table, a full disk, a lock timeout, a refused login).
    Other,
}

impl Fault {
    /// The one rule, for both databases:
    ///
    /// - [`Connection`](Self::Connection): an I/O or TLS error, a pool that timed out or
    ///   closed; PostgreSQL's SQLSTATE class `08` (connection exception) and `57P01` to
    ///   `57P03` (terminated by an administrator, by a shutdown, or the server cannot
    ///   accept connections now).
    /// - [`Collision`](Self::Collision): SQLSTATE `40001` (serialization failure) and
    ///   `40P01` (deadlock).
    /// - [`Lasting`](Self::Lasting): SQLSTATE classes `22` (data exception), `23`
    ///   (integrity constraint violation) and `54` (program limit exceeded, e.g. an
    ///   index row too large); SQLite's CONSTRAINT (19), TOOBIG (18), MISMATCH (20) and
    ///   RANGE (25), extended codes included; a value that cannot be decoded.
    pub(crate) fn of(err: &sqlx::Error) -> Fault {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => Fault::Connection,
            sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => Fault::Lasting,
            sqlx::Error::Database(db) => {
                db.code().map_or(Fault::Other, |code| Fault::of_code(&code))
            }
            _ => Fault::Other,
        }
    }

    /// [`of`](Self::of) for a PostgreSQL SQLSTATE (always five characters, often all
    /// digits, like `23505`) or a SQLite result code (a number below 10,000).
    fn of_code(code: &str) -> Fault {
        if code.len() < 5
            && let Ok(sqlite) = code.parse::<i64>()
        {
            return match sqlite & 0xff {
                18 | 19 | 20 | 25 => Fault::Lasting,
                _ => Fault::Other,
            };
        }
        match code {
            "57P01" | "57P02" | "57P03" => Fault::Connection,
            "40001" | "40P01" => Fault::Collision,
            _ if code.starts_with("08") => Fault::Connection,
            _ if ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class)) =>
            {
                Fault::Lasting
            }
            _ => Fault::Other,
        }
    }
}

/// A database error's cause with its [`Fault`], fixed where the driver's error entered
/// the library, so that replacing a cause by its redacted text cannot lose it. It reads
/// as its cause: the same text, the same `Debug`, and the cause as its source.
struct Classified {
    fault: Fault,
    cause: BoxError,
}

impl Classified {
    fn driver(cause: sqlx::Error, hide: Option<&ConnectionString>) -> BoxError {
        let fault = Fault::of(&cause);
        let cause = match hide {
            Some(target) => target.scrub(cause),
            None => Box::new(cause),
        };
        Box::new(Classified { fault, cause })
    }

    /// A cause of the library's own that means the connection is lost.
    fn lost(cause: std::io::Error) -> BoxError {
        Box::new(Classified {
            fault: Fault::Connection,
            cause: Box::new(cause),
        })
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.cause, f)
    }
}

impl fmt::Debug for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.cause, f)
    }
}

impl StdError for Classified {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.cause)
    }
}

/// Displays an error and all its causes on one line, joined by `: `.
///
/// ```
/// use memshift::{Chain, Error};
/// let err: Error = "nope".parse::<memshift::BackendKind>().unwrap_err();
/// assert!(Chain(&err).to_string().contains("nope"));
/// ```
#[derive(Debug)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_decides_the_kind_of_failure() {
        for code in ["08000", "08003", "08006", "57P01", "57P02", "57P03"] {
            assert_eq!(Fault::of_code(code), Fault::Connection, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(Fault::of_code(code), Fault::Collision, "{code}");
        }
        // A unique violation, a bad value, a too-large index row; SQLite's CONSTRAINT
        // (plain and extended) and TOOBIG.
        for code in ["23505", "22P02", "54000", "19", "2067", "18"] {
            assert_eq!(Fault::of_code(code), Fault::Lasting, "{code}");
        }
        // Cancelled by the user, out of disk, a failed login, a lock timeout, SQLite's
        // BUSY and FULL.
        for code in ["57014", "53100", "28P01", "55P03", "57P04", "5", "13"] {
            assert_eq!(Fault::of_code(code), Fault::Other, "{code}");
        }
    }

    #[test]
    fn the_kind_survives_redaction_and_reads_as_its_cause() {
        let target = ConnectionString::parse("postgres://u:hunter2hunter2@h/d");
        let io = std::io::Error::other("lost u:hunter2hunter2@h");
        let err = Error::database("postgres", "store", sqlx::Error::Io(io), Some(&target));
        assert!(err.is_connection());
        assert!(
            !Chain(&err).to_string().contains("hunter2"),
            "{}",
            Chain(&err)
        );
        assert!(!format!("{err:?}").contains("hunter2"));

        let plain = Error::database("sqlite", "store", sqlx::Error::PoolClosed, None);
        let raw = Error::Database {
            backend: "sqlite",
            operation: "store".into(),
            source: Box::new(sqlx::Error::PoolClosed),
        };
        assert_eq!(Chain(&plain).to_string(), Chain(&raw).to_string());
        assert_eq!(format!("{plain:?}"), format!("{raw:?}"));
        assert!(plain.is_connection() && raw.is_connection());

        let down = Error::unreachable("postgres", "call", std::io::Error::other("down"));
        assert!(down.is_connection());
        assert!(!down.is_lasting());
    }
}
