//! The SQLite backend's listings, filtered and limited in SQL (see
//! [`statement`](crate::backend::listing::statement)).

use sqlx::sqlite::{SqliteArguments, SqliteRow};

use super::SqliteBackend;
use super::rows::of_agent;
use crate::backend::codec::time_text;
use crate::backend::listing::{Dialect, Kind, bind, statement};
use crate::error::Result;
use crate::listing::Listing;
use crate::record::AgentId;

impl SqliteBackend {
    /// The records of a listing of `kind`, each read by `decode`; none for an agent
    /// without a file.
    pub(super) async fn list<T>(
        &self,
        agent: &AgentId,
        kind: Kind,
        listing: &Listing,
        decode: impl Fn(&SqliteRow, &str) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Some(bounds) = listing.bounds()? else {
            return Ok(Vec::new());
        };
        let Some(pool) = self.reader(agent).await? else {
            return Ok(Vec::new());
        };
        let mut args = SqliteArguments::default();
        bind(&mut args, &bounds, time_text)?;
        let sql = statement(kind, &bounds, Dialect::Sqlite);
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_all(&pool)
            .await
            .map_err(self.fail(|| format!("list {} of agent {agent:?}", kind.describe())))?;
        let whose = of_agent(agent);
        rows.iter().map(|row| decode(row, &whose)).collect()
    }
}
