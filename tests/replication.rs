//! The replication scenarios (`agent_memory::testing::replication`) on both storage
//! backends: versions, ties, tombstones, restores and the outbox.

use std::sync::Arc;

use agent_memory::backend::Replica;

mod sqlite {
    use super::*;

    async fn fixture() -> (Arc<dyn Replica>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let backend = agent_memory::SqliteBackend::new(dir.path());
        (Arc::new(backend), dir)
    }

    agent_memory::replication_suite!(fixture);
}

mod postgres {
    use super::*;
    use agent_memory::testing::postgres::TestDatabase;

    async fn fixture() -> (Arc<dyn Replica>, TestDatabase) {
        let db = TestDatabase::migrated().await;
        (Arc::new(db.backend().await), db)
    }

    agent_memory::replication_suite!(fixture);
}
