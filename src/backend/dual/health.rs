//! Whether PostgreSQL is reachable: after a connection error it is skipped (its writes
//! journaled at once) until a background ping finds it back, so an agent does not wait
//! out a connection timeout on every call while the server is down. The embedded
//! SQLite side is always tried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::Error;

use super::Side;

/// Settings of the dual backend.
#[derive(Debug, Clone)]
pub struct DualOptions {
    /// Longest a call to PostgreSQL may take before it counts as a connection failure.
    pub side_timeout: Duration,
    /// How often an unreachable side is pinged until it answers.
    pub retry_after: Duration,
    /// In `live`, one read in this many that PostgreSQL answers is compared with SQLite
    /// in the background (1 compares every read). The compare costs a SQLite read of
    /// CPU, not latency.
    pub live_compare_every: u32,
}

impl Default for DualOptions {
    fn default() -> Self {
        DualOptions {
            side_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            live_compare_every: 8,
        }
    }
}

/// One side's reachability.
#[derive(Default)]
pub(crate) struct Health {
    down: AtomicBool,
}

impl Health {
    /// An error for a call skipped because the side is down, or `None` to go ahead.
    pub(crate) fn refuse(&self, side: Side) -> Option<Error> {
        self.down.load(Ordering::SeqCst).then(|| {
            unreachable(
                side,
                "marked unreachable after a connection failure; retrying in the background",
            )
        })
    }

    /// Marks the side down; returns true when it was up (so the caller starts a prober).
    pub(crate) fn mark_down(&self) -> bool {
        !self.down.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn mark_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

/// A connection-class error for `side` (so [`Error::is_connection`] holds).
pub(crate) fn unreachable(side: Side, why: &str) -> Error {
    let backend = match side {
        Side::Sqlite => "sqlite",
        Side::Postgres => "postgres",
    };
    let cause = std::io::Error::new(std::io::ErrorKind::NotConnected, why.to_string());
    Error::unreachable(backend, "call", cause)
}
