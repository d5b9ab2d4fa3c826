//! Throwaway PostgreSQL databases for tests, on the server the test command started.

use sqlx::{Connection, PgConnection};

use crate::backend::{PostgresBackend, PostgresOptions};

/// The variable holding the test server's superuser URL; `scripts/test` sets it.
pub const URL_VAR: &str = "MEMSHIFT_TEST_DATABASE_URL";

/// The test server's superuser URL.
///
/// # Panics
/// When [`URL_VAR`] is unset: PostgreSQL tests never pass by skipping.
pub fn admin_url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set. Run the tests with `scripts/test`, which starts a throwaway \
             PostgreSQL 18 with pgvector and sets it; or start one with \
             `eval \"$(scripts/pg start)\"` and run cargo test in that shell."
        )
    })
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("the test URL is a valid URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A database of its own for one test, left in place afterwards so a failure can be
/// inspected (the whole server is thrown away when the test command ends).
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// Its URL, with the test server's password.
    pub url: String,
}

impl TestDatabase {
    /// A new empty database: no tables, no extensions.
    pub async fn empty() -> Self {
        let admin = admin_url();
        let name = format!("am_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {URL_VAR}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        conn.close().await.ok();
        TestDatabase {
            url: with_database(&admin, &name),
            name,
        }
    }

    /// A new database with the shipped migrations applied.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        crate::migrate_url(&db.url)
            .await
            .expect("apply the shipped migrations to a test database");
        db
    }

    /// A PostgreSQL backend on this database, with a small pool.
    pub async fn backend(&self) -> PostgresBackend {
        PostgresBackend::connect_with(
            &self.url,
            PostgresOptions {
                max_connections: 8,
                ..PostgresOptions::default()
            },
        )
        .await
        .expect("connect to the test database")
    }
}
