//! The throwaway PostgreSQL database and SQLite agents folder of one run.

use std::path::Path;

use memshift::redact_url;
use memshift::testing::postgres::with_database;
use sqlx::{Connection, PgConnection};

use super::{Machine, Result};

/// A fresh PostgreSQL database and SQLite agents folder for one run, removed at the end.
pub struct Env {
    admin_url: String,
    /// The bench database's name (`agent_memory_bench_<random>`).
    pub database: String,
    /// Its URL (the admin URL's credentials).
    pub url: String,
    agents: tempfile::TempDir,
    /// Where and on what the run happens.
    pub machine: Machine,
    /// Further databases made by [`Env::fresh_database`] and not dropped yet.
    extra: std::sync::Mutex<Vec<String>>,
}

/// A further empty database of one run (see [`Env::fresh_database`]).
#[derive(Debug, Clone)]
pub struct Database {
    /// Its name (`<bench database>_<label>`).
    pub name: String,
    /// Its URL (the admin URL's credentials).
    pub url: String,
}

impl Env {
    /// Creates the database named after a random suffix from `DATABASE_URL` (a
    /// superuser or database owner), applies the shipped migrations, and makes a temporary
    /// agents folder.
    pub async fn setup() -> Result<Env> {
        let admin_url = std::env::var("DATABASE_URL").map_err(|_| {
            "DATABASE_URL is not set; run `scripts/bench SUITE`, which starts a server, or \
             point it at a PostgreSQL superuser URL"
        })?;
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", redact_url(&admin_url)))?;
        let agents = tempfile::Builder::new()
            .prefix("memshift-bench-")
            .tempdir()?;
        let machine = Machine::probe(&mut conn, agents.path()).await?;
        let database = format!(
            "agent_memory_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {database}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        let mut env = Env {
            url: with_database(&admin_url, &database),
            admin_url,
            database,
            agents,
            machine,
            extra: std::sync::Mutex::new(Vec::new()),
        };
        if let Err(err) = memshift::migrate_url(&env.url).await {
            env.teardown().await.ok();
            return Err(err.into());
        }
        env.machine.probe_pgvector(&env.url).await;
        Ok(env)
    }

    /// The folder SQLite agent files go in.
    pub fn agents_path(&self) -> &Path {
        self.agents.path()
    }

    /// Creates a further empty database, `<database>_<label>` (`label`: lower-case ASCII
    /// letters, digits and `_`), with the shipped migrations applied when `migrate`, for
    /// a suite that needs a fresh one per measurement. [`Env::drop_database`] drops it
    /// early; [`Env::teardown`] drops whatever is left.
    pub async fn fresh_database(&self, label: &str, migrate: bool) -> Result<Database> {
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("database label {label:?} is not [a-z0-9_]+").into());
        }
        let name = format!("{}_{label}", self.database);
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        let url = with_database(&self.admin_url, &name);
        if migrate {
            memshift::migrate_url(&url).await?;
        }
        Ok(Database { name, url })
    }

    /// Drops a database made by [`Env::fresh_database`] (closing any connection still
    /// open), so its disk is free for the next measurement.
    pub async fn drop_database(&self, database: &Database) -> Result<()> {
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name| *name != database.name);
        drop_databases(&self.admin_url, std::slice::from_ref(&database.name)).await
    }

    /// Drops the database and every further one still there (closing any connection
    /// still open), and the agents folder.
    pub async fn teardown(self) -> Result<()> {
        let mut names = std::mem::take(&mut *self.extra.lock().unwrap_or_else(|p| p.into_inner()));
        names.push(self.database.clone());
        drop_databases(&self.admin_url, &names).await?;
        self.agents.close()?;
        Ok(())
    }
}

/// Drops the databases `names`, closing any connection still open to them.
async fn drop_databases(admin_url: &str, names: &[String]) -> Result<()> {
    let mut conn = PgConnection::connect(admin_url).await?;
    for name in names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop database if exists {name} with (force)"
        )))
        .execute(&mut conn)
        .await?;
    }
    conn.close().await.ok();
    Ok(())
}
