//! The replication scenarios (`memshift::testing::replication`) on both storage
//! backends: versions, ties, tombstones, restores and the outbox.

use std::sync::Arc;

use memshift::backend::Replica;

mod sqlite {
    use super::*;

    async fn fixture() -> (Arc<dyn Replica>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let backend = memshift::SqliteBackend::new(dir.path());
        (Arc::new(backend), dir)
    }

    memshift::replication_suite!(fixture);
}

mod postgres {
    use super::*;
    use memshift::testing::postgres::TestDatabase;

    async fn fixture() -> (Arc<dyn Replica>, TestDatabase) {
        let db = TestDatabase::migrated().await;
        (Arc::new(db.backend().await), db)
    }

    memshift::replication_suite!(fixture);
}
