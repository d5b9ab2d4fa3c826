//! The PostgreSQL backend's listings, filtered and limited in SQL (see
//! [`statement`](crate::backend::listing::statement)).

use sqlx::Arguments;
use sqlx::postgres::{PgArguments, PgRow};

use super::PostgresBackend;
use crate::backend::listing::{Dialect, Kind, bind, statement};
use crate::error::{Error, Result};
use crate::listing::Listing;
use crate::record::AgentId;

impl PostgresBackend {
    /// The records of a listing of `kind`, each read by `decode`; none for an agent
    /// without an `agents` row.
    pub(super) async fn list<T>(
        &self,
        agent: &AgentId,
        kind: Kind,
        listing: &Listing,
        decode: impl Fn(&PgRow, &AgentId) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Some(bounds) = listing.bounds()? else {
            return Ok(Vec::new());
        };
        let Some(row_id) = self.agent_row_if_any(agent).await? else {
            return Ok(Vec::new());
        };
        let mut args = PgArguments::default();
        args.add(row_id)
            .map_err(|e| Error::invalid("listing", format!("cannot be bound: {e}")))?;
        bind(&mut args, &bounds, |since| *since)?;
        let sql = statement(kind, &bounds, Dialect::Postgres);
        let rows = self
            .on_lease(
                || format!("list {} of agent {agent:?}", kind.describe()),
                async |c| {
                    sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                        .fetch_all(c)
                        .await
                },
            )
            .await?;
        rows.iter().map(|row| decode(row, agent)).collect()
    }
}
