//! `memshift._native`: the memshift library (the Rust crate in this repository) for
//! Python. Every storage decision is the library's; this crate turns Python values into
//! the library's calls and its answers and errors back into Python ones.
//!
//! The package's Python modules (memshift/) are the documented API; this module is
//! theirs to call.

use pyo3::prelude::*;

mod bridge;
mod convert;
#[cfg(unix)]
mod driven;
mod errors;
mod memory;

// The backfill program itself, the same source as `cargo run --example backfill` and the
// installed `backfill`: `python -m memshift.migrate` runs it.
#[path = "../../examples/backfill.rs"]
#[allow(dead_code, unreachable_pub)]
mod backfill;

/// Runs the backfill program with `argv` (`argv[0]` is the program's name, as shown in
/// its usage) and returns its exit status. The GIL is released while it runs.
#[pyfunction]
fn run_backfill(py: Python<'_>, argv: Vec<String>) -> u8 {
    py.detach(|| {
        backfill::run_program(
            "python -m memshift.migrate",
            argv.into_iter().map(Into::into),
        )
    })
}

/// The JSON text `value` is stored as (for tests and for seeing what will be stored).
#[pyfunction]
fn to_json_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(convert::to_json(value, "value")?.as_str().to_owned())
}

/// Applies the shipped PostgreSQL migrations `url`'s database has not had yet; the
/// versions applied.
#[pyfunction]
fn migrate_url<'py>(py: Python<'py>, url: String) -> PyResult<Bound<'py, PyAny>> {
    use errors::IntoPy;
    bridge::call(
        py,
        async move { memshift::migrate_url(&url).await.py_err() },
    )
}

/// `url` with its password replaced by `***`, as the library shows URLs.
#[pyfunction]
fn redact_url(url: &str) -> String {
    memshift::redact_url(url)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<memory::NativeMemory>()?;
    m.add_function(wrap_pyfunction!(memory::open, m)?)?;
    m.add_function(wrap_pyfunction!(memory::config_from_env, m)?)?;
    m.add_function(wrap_pyfunction!(memory::check_names, m)?)?;
    m.add_function(wrap_pyfunction!(run_backfill, m)?)?;
    m.add_function(wrap_pyfunction!(to_json_text, m)?)?;
    m.add_function(wrap_pyfunction!(redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(migrate_url, m)?)?;
    m.add_function(wrap_pyfunction!(bridge::quiesce, m)?)?;
    Ok(())
}
