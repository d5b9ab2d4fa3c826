//! The conformance scenarios of `memshift::testing`, run against every backend.

mod sqlite {
    use std::sync::Arc;

    use memshift::{MemoryBackend, SqliteBackend};

    async fn fixture() -> (Arc<dyn MemoryBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        (Arc::new(SqliteBackend::new(dir.path())), dir)
    }

    memshift::conformance_suite!(fixture);
}

/// SQLite reading through a memory map.
mod sqlite_mmap {
    use std::sync::Arc;

    use memshift::{MemoryBackend, SqliteBackend, SqliteOptions};

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

    memshift::conformance_suite!(fixture);
}

mod postgres {
    use std::sync::Arc;

    use memshift::MemoryBackend;
    use memshift::testing::postgres::TestDatabase;

    async fn fixture() -> (Arc<dyn MemoryBackend>, TestDatabase) {
        let db = TestDatabase::migrated().await;
        (Arc::new(db.backend().await), db)
    }

    memshift::conformance_suite!(fixture);
}

/// The dual backend in every stage, over a temporary agents folder and a fresh database.
macro_rules! dual_stage {
    ($module:ident, $stage:expr) => {
        mod $module {
            use std::sync::Arc;

            use memshift::backend::DualBackend;
            use memshift::testing::postgres::TestDatabase;
            use memshift::{MemoryBackend, SqliteBackend};

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

            memshift::conformance_suite!(fixture);
        }
    };
}

dual_stage!(dual_sqlite, memshift::config::Stage::Sqlite);
dual_stage!(dual_dualwrite, memshift::config::Stage::DualWrite);
dual_stage!(dual_shadow, memshift::config::Stage::Shadow);
dual_stage!(dual_live, memshift::config::Stage::Live);
dual_stage!(dual_rampdown, memshift::config::Stage::RampDown);
dual_stage!(dual_postgres, memshift::config::Stage::Postgres);

/// The fault-injecting wrapper, healthy, must be invisible.
mod faulty_passthrough {
    use std::sync::Arc;

    use memshift::testing::faulty::FaultyBackend;
    use memshift::{MemoryBackend, SqliteBackend};

    async fn fixture() -> (Arc<dyn MemoryBackend>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary agents folder");
        let inner = Arc::new(SqliteBackend::new(dir.path()));
        (Arc::new(FaultyBackend::new(inner)), dir)
    }

    memshift::conformance_suite!(fixture);
}
