//! The conformance scenarios of `agent_memory::testing`, run against every backend.

mod sqlite {
    use std::sync::Arc;

    use agent_memory::{MemoryBackend, SqliteBackend};

    async fn fixture() -> (Arc<dyn MemoryBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        (Arc::new(SqliteBackend::new(dir.path())), dir)
    }

    agent_memory::conformance_suite!(fixture);
}

mod postgres {
    use std::sync::Arc;

    use agent_memory::MemoryBackend;
    use agent_memory::testing::postgres::TestDatabase;

    async fn fixture() -> (Arc<dyn MemoryBackend>, TestDatabase) {
        let db = TestDatabase::migrated().await;
        (Arc::new(db.backend().await), db)
    }

    agent_memory::conformance_suite!(fixture);
}
