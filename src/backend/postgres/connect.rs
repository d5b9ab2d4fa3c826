//! Connecting: the URL read once ([`PgTarget`]), a first connection that reports a
//! refusal at once, and the pool's settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::PostgresOptions;
use super::recycle::PoolHealth;
use crate::error::{Error, Result};
use crate::redact::ConnectionString;

/// A PostgreSQL database to connect to, read once: the driver's options, and the URL as
/// messages show it with the secrets it holds. `Debug` shows only the shown URL.
#[derive(Clone)]
pub(crate) struct PgTarget {
    pub(crate) url: ConnectionString,
    pub(crate) options: PgConnectOptions,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PgTarget").field(&self.url.shown()).finish()
    }
}

impl PgTarget {
    /// Reads `url`.
    ///
    /// # Errors
    /// [`Error::Config`] when it is not a PostgreSQL URL, or one the driver would
    /// misread (see [`ConnectionString::problem`]); the message shows no password.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let read = ConnectionString::parse(url);
        let invalid = |why: &dyn std::fmt::Display| {
            Error::config(format!(
                "{} is not a valid PostgreSQL URL: {why}",
                read.shown()
            ))
        };
        if let Some(problem) = read.problem() {
            return Err(invalid(&problem));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| invalid(&read.scrub(e)))?;
        Ok(PgTarget { url: read, options })
    }

    /// One connection, outside any pool, within `timeout`.
    ///
    /// # Errors
    /// [`Error::Connect`], showing no password.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<PgConnection> {
        tokio::time::timeout(timeout, PgConnection::connect_with(&self.options))
            .await
            .map_err(|_| {
                Error::connect_timed_out(
                    &self.url,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    ),
                )
            })?
            .map_err(|e| Error::connect(&self.url, e))
    }
}

/// Opens a pool to `url`, with errors that never show its password.
///
/// One connection is made first, outside the pool, so that a refused connection or a
/// failed login is reported at once with its real cause; a pool would retry until its
/// timeout and report only that it timed out.
pub(crate) async fn connect_pool(target: &PgTarget, options: &PostgresOptions) -> Result<PgPool> {
    connect_pool_with(target, options, Arc::new(PoolHealth::default())).await
}

/// [`connect_pool`], with the pool's connections checked as `health` asks.
pub(super) async fn connect_pool_with(
    target: &PgTarget,
    options: &PostgresOptions,
    health: Arc<PoolHealth>,
) -> Result<PgPool> {
    let probe = target.connect(options.connect_timeout).await?;
    // The probe only proves the server answers; closing it cleanly is a courtesy.
    let _ = probe.close().await;
    Ok(pool_options(options, health).connect_lazy_with(target.options.clone()))
}

/// The backend's pool settings: size and acquire timeout from `options`, and a check of
/// only the connections `health` says may be gone.
pub(super) fn pool_options(options: &PostgresOptions, health: Arc<PoolHealth>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.connect_timeout)
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let check = health.must_check(meta.idle_for);
            Box::pin(async move {
                if check {
                    // An error closes this connection; the pool tries another or a new one.
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}
