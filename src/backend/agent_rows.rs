//! Which `agents` row an agent's PostgreSQL data hangs on.
//!
//! An agent is known by its name. The admin application may have registered it first,
//! under an id of its own (Prisma's cuid or uuid), so the contract tables' `agent_id` is
//! whatever `id` the `agents` row with that `name` has. Only when no row has the name is
//! one made, with `id` = the name.

use sqlx::PgConnection;

use crate::record::AgentId;

/// Why an agent's row could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentRowError {
    /// The database's error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// No row has the name, and the id the library would give it belongs to a row of
    /// another name.
    #[error(
        "no agents row is named {name:?}, and its id {name:?} is taken by the agent named \
         {holder:?}; rename one of them in the agents table, or register {name:?} under \
         an id of its own"
    )]
    IdTaken {
        /// The agent's name.
        name: String,
        /// The name of the row holding the id.
        holder: String,
    },
}

/// The `id` of the `agents` row named `agent`. Without `create`, `None` when there is
/// none; with it, the row is made (`id` = `name` = the agent's name) when missing.
pub(crate) async fn agent_row_id(
    conn: &mut PgConnection,
    agent: &AgentId,
    create: bool,
) -> Result<Option<String>, AgentRowError> {
    let find = "select id from agents where name = $1";
    if let Some(id) = sqlx::query_scalar(find)
        .bind(agent.as_str())
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(Some(id));
    }
    if !create {
        return Ok(None);
    }
    // Either constraint may be hit by a concurrent registration of the same name (then
    // the row is there now) or by another agent holding the id (reported below).
    sqlx::query(
        "insert into agents (id, name, created_at, updated_at)
         values ($1, $1, now(), now()) on conflict do nothing",
    )
    .bind(agent.as_str())
    .execute(&mut *conn)
    .await?;
    if let Some(id) = sqlx::query_scalar(find)
        .bind(agent.as_str())
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(Some(id));
    }
    let holder: Option<String> = sqlx::query_scalar("select name from agents where id = $1")
        .bind(agent.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Err(AgentRowError::IdTaken {
        name: agent.as_str().to_string(),
        holder: holder.unwrap_or_default(),
    })
}
