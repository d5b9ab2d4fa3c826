//! A backfill whose PostgreSQL restarts mid-run: its batches are retried with backoff,
//! and the run (or a re-run) ends with every row exactly once. Stops the real test
//! server, so this file holds one test.

mod common;

use std::time::Duration;

use common::{RestartOnDrop, legacy_file, memory_rows_once, memory_table, pg};
use memshift::backfill::{self, BackfillOptions};
use memshift::testing::postgres::TestDatabase;
use sqlx::{Connection, PgConnection};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_survives_a_postgres_restart() {
    let dir = tempfile::tempdir().unwrap();
    for file in 0..4 {
        legacy_file(
            &dir.path().join(format!("agent{file}/data.db")),
            &memory_table(4000),
        )
        .await;
    }
    let db = TestDatabase::migrated().await;
    let mut options = BackfillOptions::new(dir.path());
    options.read.batch_size = 250;
    let running = {
        let (url, options) = (db.url.clone(), options.clone());
        tokio::spawn(async move { backfill::run(&url, &options, &()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let _restart = RestartOnDrop;
        pg("stop");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let first = running.await.unwrap();
    eprintln!(
        "run through the restart: {:?}",
        first.as_ref().map(|r| &r.totals)
    );
    // Whatever the first run managed, a re-run finishes the job without second copies.
    let second = backfill::run(&db.url, &options, &())
        .await
        .expect("re-run after the restart");
    assert!(second.succeeded(), "{:#?}", second.totals);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let (total, distinct) = memory_rows_once(&mut conn).await;
    assert_eq!(
        (total, distinct),
        (16_000, 16_000),
        "every row exactly once"
    );
    assert!(backfill::verify(&db.url, &options).await.unwrap().passed());
}
