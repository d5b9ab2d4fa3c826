//! The cargo features: a build with one backend leaves the other database's crates out
//! and still compiles (and refuses, at run time, the backend it lacks), and
//! `--features cli` builds the `memctl` and `backfill` programs.
//!
//! These tests run cargo itself on this package, all in one target folder of their own,
//! `features/` inside the one `cargo test` uses, so that a second run only redoes what
//! changed. Cold, that folder costs one more compile of the dependencies for each
//! configuration; warm, each cargo run takes seconds. Each run's time is printed (see it
//! with `--nocapture`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

/// The target folder of these tests' cargo runs: `features/` beside `debug/` in the
/// target folder that built this test (its binary is `<target>/debug/deps/features-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps")
        .join("features")
}

/// Runs `cargo SUBCOMMAND ARGS...` on this package in [`target_dir`], printing how long
/// it took; fails the test when cargo fails.
fn cargo(subcommand: &str, args: &[&str]) -> Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let shown = format!("cargo {subcommand} {}", args.join(" "));
    let started = Instant::now();
    let output = Command::new(cargo)
        .arg(subcommand)
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir())
        // No debug info: these builds are run, never debugged, and it is most of their
        // size on disk.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .output()
        .unwrap_or_else(|e| panic!("{shown}: cannot run cargo: {e}"));
    println!("{shown}: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "{shown} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The names of the packages in this package's normal dependency tree (neither build
/// nor dev dependencies) with `features`.
fn packages(features: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["-e", "normal", "--prefix", "none", "--format", "{p}"];
    args.extend(features);
    let tree = cargo("tree", &args);
    String::from_utf8(tree.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Asserts that `tree` (built with `features`) holds every one of `present` and none of
/// `absent`.
fn assert_tree(features: &[&str], present: &[&str], absent: &[&str]) {
    let tree = packages(features);
    for name in present {
        assert!(
            tree.contains(*name),
            "{features:?}: {name} is missing from the tree: {tree:?}"
        );
    }
    for name in absent {
        assert!(
            !tree.contains(*name),
            "{features:?}: {name} is in the tree, which should not need it"
        );
    }
}

#[test]
fn sqlite_alone_leaves_out_the_postgres_driver_and_pgvector() {
    assert_tree(
        &["--no-default-features", "--features", "sqlite"],
        &["sqlx-sqlite", "libsqlite3-sys"],
        &["sqlx-postgres", "pgvector"],
    );
}

#[test]
fn postgres_alone_leaves_out_sqlite() {
    assert_tree(
        &["--no-default-features", "--features", "postgres"],
        &["sqlx-postgres", "pgvector"],
        &["sqlx-sqlite", "libsqlite3-sys"],
    );
}

#[test]
fn the_defaults_hold_both_backends_and_not_the_programs_crates() {
    assert_tree(
        &[],
        &["sqlx-sqlite", "libsqlite3-sys", "sqlx-postgres", "pgvector"],
        &[
            "clap",
            "indicatif",
            "tracing-subscriber",
            "signal-hook-registry",
        ],
    );
}

/// The programs stop cleanly on SIGINT and SIGTERM, with tokio's `signal`; the library
/// (above) leaves signal handling to its users.
#[test]
fn cli_brings_signal_handling() {
    assert_tree(
        &["--features", "cli"],
        &["clap", "signal-hook-registry"],
        &[],
    );
}

/// Warnings in the one-backend builds are code the other backend alone uses, left
/// outside its `cfg`: fixing them keeps `cfg` at the module where it belongs.
#[test]
fn each_backend_alone_compiles_without_warnings() {
    for backend in ["sqlite", "postgres"] {
        let output = cargo(
            "check",
            &["--lib", "--no-default-features", "--features", backend],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("warning"),
            "the {backend}-only library has warnings:\n{stderr}"
        );
    }
}

/// The library's own tests in a build without PostgreSQL, among them one asking for
/// `memory_backend = postgres` and `dual`, which must be refused with an error naming
/// the feature that adds them.
#[test]
fn a_sqlite_only_build_passes_its_unit_tests_and_refuses_postgres() {
    let output = cargo(
        "test",
        &["--lib", "--no-default-features", "--features", "sqlite"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("a_sqlite_only_build_refuses_postgres_and_dual ... ok"),
        "the refusal test did not run:\n{stdout}"
    );
}

#[test]
fn cli_builds_memctl_and_backfill_that_run() {
    cargo("build", &["--bins", "--features", "cli"]);
    for program in ["memctl", "backfill"] {
        let path = target_dir()
            .join("debug")
            .join(format!("{program}{}", std::env::consts::EXE_SUFFIX));
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        let stdout = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.status.success() && stdout.contains(&format!("Usage: {program}")),
            "{program} --help ({}):\n{stdout}{}",
            help.status,
            String::from_utf8_lossy(&help.stderr)
        );
    }
}
