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

/// SQLite reading through a memory map.
mod sqlite_mmap {
    use std::sync::Arc;

    use agent_memory::{MemoryBackend, SqliteBackend, SqliteOptions};

    async fn fixture() -> (Arc<dyn MemoryBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let options = SqliteOptions {
            mmap_size: 64 << 20,
            ..SqliteOptions::default()
        };
        (
            Arc::new(SqliteBackend::with_options(dir.path(), options)),
            dir,
        )
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

/// The dual backend in every stage, over a temporary agents folder and a fresh database.
macro_rules! dual_stage {
    ($module:ident, $stage:expr) => {
        mod $module {
            use std::sync::Arc;

            use agent_memory::backend::DualBackend;
            use agent_memory::testing::postgres::TestDatabase;
            use agent_memory::{MemoryBackend, SqliteBackend};

            async fn fixture() -> (Arc<dyn MemoryBackend>, (tempfile::TempDir, TestDatabase)) {
                let dir = tempfile::tempdir().expect("temporary agents folder");
                let db = TestDatabase::migrated().await;
                let dual = DualBackend::new(
                    Arc::new(SqliteBackend::new(dir.path())),
                    Arc::new(db.backend().await),
                    $stage,
                );
                (Arc::new(dual), (dir, db))
            }

            agent_memory::conformance_suite!(fixture);
        }
    };
}

dual_stage!(dual_sqlite, agent_memory::config::Stage::Sqlite);
dual_stage!(dual_dualwrite, agent_memory::config::Stage::DualWrite);
dual_stage!(dual_shadow, agent_memory::config::Stage::Shadow);
dual_stage!(dual_live, agent_memory::config::Stage::Live);
dual_stage!(dual_rampdown, agent_memory::config::Stage::RampDown);
dual_stage!(dual_postgres, agent_memory::config::Stage::Postgres);

/// The fault-injecting wrapper, healthy, must be invisible.
mod faulty_passthrough {
    use std::sync::Arc;

    use agent_memory::testing::faulty::FaultyBackend;
    use agent_memory::{MemoryBackend, SqliteBackend};

    async fn fixture() -> (Arc<dyn MemoryBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let inner = Arc::new(SqliteBackend::new(dir.path()));
        (Arc::new(FaultyBackend::new(inner)), dir)
    }

    agent_memory::conformance_suite!(fixture);
}
