//! Helpers shared by the integration tests: running the memctl example binary.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The memctl example binary, which `cargo test` builds beside the test binaries.
pub fn memctl_path() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("memctl");
    assert!(
        path.is_file(),
        "{} is missing: run the tests with cargo test, which builds the examples",
        path.display()
    );
    path
}

pub fn memctl(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(memctl_path());
    command
        .args(args)
        .env_remove("MEMORY_BACKEND")
        .env_remove("DATABASE_URL")
        .env_remove("AGENTS_PATH")
        .env_remove("MEMORY_STAGE");
    command.envs(env.iter().copied());
    command.output().expect("run memctl")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops (`stop`) or starts again (`start-existing`) the test server, on the same port.
pub fn pg(action: &str) {
    let dir = std::env::var("AGENT_MEMORY_TEST_PG_DIR")
        .expect("AGENT_MEMORY_TEST_PG_DIR is not set: run the tests with scripts/test");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg");
    let status = Command::new(script)
        .args([action, &dir])
        .output()
        .expect("run scripts/pg");
    assert!(
        status.status.success(),
        "scripts/pg {action} failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Starts the test server again when dropped, so a failing test cannot leave it down
/// for the test binaries after it.
pub struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        pg("start-existing");
    }
}
