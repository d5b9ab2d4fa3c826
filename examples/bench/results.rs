//! The saved results of the suites.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::chart::{self, Chart};
use crate::harness::{Machine, Result};

/// Writes a suite's results, with the machine's facts, as pretty JSON to
/// `<out>/<suite>.json`, and its chart to `<out>/<suite>.svg`; returns both paths.
pub fn write_results(
    out: &Path,
    suite: &str,
    machine: &Machine,
    results: Value,
    chart: &Chart,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create the results folder {}: {e}", out.display()))?;
    let document = json!({
        "suite": suite,
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "machine": machine,
        "results": results,
    });
    let (json_path, svg_path) = (
        out.join(format!("{suite}.json")),
        out.join(format!("{suite}.svg")),
    );
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(&json_path, serde_json::to_string_pretty(&document)? + "\n")?;
    write(&svg_path, chart::svg(chart)?)?;
    Ok((json_path, svg_path))
}
