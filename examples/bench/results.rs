//! The saved results of the suites: each suite's `<suite>.json` and its chart, and
//! RESULTS.md, the one page of measured figures, written from the JSON files of a
//! results folder alone.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chart::{self, Chart};
use crate::harness::{Machine, Result, markdown_table};

/// The page of measured figures, beside the JSON files and charts.
pub const PAGE: &str = "RESULTS.md";

/// One suite as the saved results know it.
#[derive(Debug, Clone, Copy)]
pub struct Suite {
    /// Its name: `bench <name>`, `<name>.json`, `<name>.svg`.
    pub name: &'static str,
    /// What it measures, as its heading on the page says it.
    pub heading: &'static str,
    /// What the page and the chart show of its saved `results`.
    pub summary: fn(&Value) -> Result<Summary>,
}

/// What the page and the chart show of one suite's saved results.
#[derive(Debug)]
pub struct Summary {
    /// The chart, written as `<suite>.svg`.
    pub chart: Chart,
    /// The targets and their measured ratios, for the page's table of all targets.
    pub targets: Vec<Ratio>,
    /// The suite's section of the page below its chart: what ran, and its tables.
    pub markdown: String,
}

/// The summary of a suite whose saved results keep their targets' ratios: `S`, read
/// from `results`, gives the chart, the ratios and the section of the page.
pub fn summary_of<S: serde::de::DeserializeOwned>(
    results: &Value,
    chart: fn(&S) -> Chart,
    ratios: fn(&S) -> &[Ratio],
    markdown: fn(&S) -> String,
) -> Result<Summary> {
    let saved = S::deserialize(results)?;
    Ok(Summary {
        chart: chart(&saved),
        targets: ratios(&saved).to_vec(),
        markdown: markdown(&saved),
    })
}

/// A target, its measured value and verdict, as the suites save them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// A stable name for it.
    pub name: String,
    /// What is divided by what.
    pub formula: String,
    /// The measured ratio (`None`: not measured).
    pub value: Option<f64>,
    /// The limit.
    pub target: f64,
    /// Whether the ratio must be at least the limit (otherwise at most).
    #[serde(default)]
    pub at_least: bool,
    /// Whether it met the limit (`None`: not measured).
    pub pass: Option<bool>,
    /// The ratio in each repetition, where the suite has repetitions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_repetition: Vec<f64>,
}

impl Ratio {
    /// A measured ratio and its verdict against `target`.
    pub fn new(
        name: impl Into<String>,
        formula: impl Into<String>,
        value: Option<f64>,
        target: f64,
        at_least: bool,
    ) -> Ratio {
        let pass = value.map(|v| if at_least { v >= target } else { v <= target });
        Ratio {
            name: name.into(),
            formula: formula.into(),
            value,
            target,
            at_least,
            pass,
            per_repetition: Vec::new(),
        }
    }

    /// `≥` or `≤`.
    fn bound(&self) -> &'static str {
        if self.at_least { "≥" } else { "≤" }
    }
}

/// A suite's JSON file.
#[derive(Debug, Deserialize)]
struct Document {
    finished_at: DateTime<Utc>,
    machine: Machine,
    results: Value,
}

fn json_path(out: &Path, suite: &str) -> PathBuf {
    out.join(format!("{suite}.json"))
}

/// Writes a suite's results, with the machine's facts and the time, as pretty JSON to
/// `<out>/<suite>.json`; returns its path.
pub fn write_results(
    out: &Path,
    suite: &str,
    machine: &Machine,
    results: Value,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create the results folder {}: {e}", out.display()))?;
    let document = json!({
        "suite": suite,
        "finished_at": Utc::now().to_rfc3339(),
        "machine": machine,
        "results": results,
    });
    let path = json_path(out, suite);
    write(&path, serde_json::to_string_pretty(&document)? + "\n")?;
    Ok(path)
}

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

/// The suite's saved results in `out`, when it has a JSON file there, with what the page
/// and chart show of them.
fn read(out: &Path, suite: &Suite) -> Result<Option<(Document, Summary)>> {
    let path = json_path(out, suite.name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display()).into()),
    };
    let document: Document = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a suite's results: {e}", path.display()))?;
    let summary =
        (suite.summary)(&document.results).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((document, summary)))
}

/// Writes the chart of `suite`'s saved results in `out` to `<out>/<suite>.svg`; returns
/// its path (`None`: no results saved there).
pub fn write_chart(out: &Path, suite: &Suite) -> Result<Option<PathBuf>> {
    let Some((_, summary)) = read(out, suite)? else {
        return Ok(None);
    };
    let path = out.join(format!("{}.svg", suite.name));
    write(&path, chart::svg(&summary.chart)?)?;
    Ok(Some(path))
}

/// Writes `<out>/RESULTS.md` from the saved results of `suites` in `out`; returns its
/// path.
///
/// # Errors
///
/// When no suite has results there, or one's JSON file cannot be read as such.
pub fn write_page(out: &Path, suites: &[Suite]) -> Result<PathBuf> {
    let mut saved = Vec::new();
    for suite in suites {
        if let Some((document, summary)) = read(out, suite)? {
            saved.push((suite, document, summary));
        }
    }
    if saved.is_empty() {
        return Err(format!("no suite's results (<suite>.json) in {}", out.display()).into());
    }
    let path = out.join(PAGE);
    write(&path, page(&saved))?;
    Ok(path)
}

/// The page: how it is made, the machine, the runs, every target, then each suite.
fn page(saved: &[(&Suite, Document, Summary)]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# Benchmark results\n\n\
         Measured by `scripts/bench` on real, durable storage and written from the JSON \
         files beside this page (`<suite>.json`: every figure, with the machine's facts). \
         Do not edit it by hand: `scripts/bench all --out docs/bench` measures again, and \
         `scripts/bench report --out docs/bench` writes this page and the charts again from \
         the JSON files alone. docs/performance.md says what the suites measure.\n"
    );

    // One description per distinct machine, with the suites that ran on it.
    let mut machines: Vec<(&Machine, Vec<&str>)> = Vec::new();
    for (suite, document, _) in saved {
        let facts = &document.machine;
        match machines.iter_mut().find(|(m, _)| same_machine(m, facts)) {
            Some((_, names)) => names.push(suite.name),
            None => machines.push((facts, vec![suite.name])),
        }
    }
    let _ = writeln!(out, "## Machine\n");
    for (machine, names) in &machines {
        if machines.len() > 1 {
            let _ = writeln!(out, "Suites {}:\n", names.join(", "));
        }
        let _ = writeln!(
            out,
            "- **CPUs**: {} ({})\n\
             - **PostgreSQL**: {}; {}; data on {}\n\
             - **SQLite**: {}; files on {}\n\
             - {}\n",
            machine.nproc,
            machine.cpu_model,
            machine.server(),
            machine.postgres_settings_text(),
            machine.postgres_filesystem,
            machine.sqlite_settings,
            machine.sqlite_filesystem,
            machine.verdict(),
        );
    }

    let _ = writeln!(
        out,
        "## Runs\n\n\
         A load average over half the CPUs at the start means other work competed with the \
         run: its numbers are noisy.\n"
    );
    let rows: Vec<Vec<String>> = saved
        .iter()
        .map(|(suite, document, _)| {
            let machine = &document.machine;
            vec![
                format!("[`{}`](#{})", suite.name, anchor(&heading(suite))),
                document.finished_at.format("%Y-%m-%d %H:%M").to_string(),
                match machine.load_average {
                    Some(load) if machine.busy() => format!("{load:.2} (busy: noisy)"),
                    Some(load) => format!("{load:.2}"),
                    None => "not known".into(),
                },
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &["suite", "finished (UTC)", "load average at start"],
        &rows,
    ));

    let _ = writeln!(out, "\n## Targets\n");
    let rows: Vec<Vec<String>> = saved
        .iter()
        .flat_map(|(suite, _, summary)| {
            summary.targets.iter().map(|ratio| {
                vec![
                    format!("`{}`", suite.name),
                    format!("{} {} {:.2}", ratio.formula, ratio.bound(), ratio.target),
                    measured(ratio),
                    match ratio.pass {
                        Some(true) => "met",
                        Some(false) => "missed",
                        None => "not measured",
                    }
                    .to_string(),
                ]
            })
        })
        .collect();
    out.push_str(&markdown_table(
        &["suite", "target", "measured", "verdict"],
        &rows,
    ));

    for (suite, _, summary) in saved {
        let _ = writeln!(
            out,
            "\n## {}\n\n![{}]({}.svg)\n\n{}",
            heading(suite),
            summary.chart.title.replace(['[', ']'], ""),
            suite.name,
            summary.markdown.trim_end()
        );
    }
    out
}

/// Whether two runs' facts are the same machine (the load at the start aside).
fn same_machine(a: &Machine, b: &Machine) -> bool {
    a == &Machine {
        load_average: a.load_average,
        ..b.clone()
    }
}

fn heading(suite: &Suite) -> String {
    format!("{} (`{}`)", suite.heading, suite.name)
}

/// The anchor a Markdown renderer gives `heading`: lower case, spaces as `-`, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The measured value, with the spread over the repetitions when there are several.
fn measured(ratio: &Ratio) -> String {
    let Some(value) = ratio.value else {
        return "-".into();
    };
    let reps = &ratio.per_repetition;
    let low = reps.iter().copied().fold(f64::INFINITY, f64::min);
    let high = reps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match reps.len() {
        0 | 1 => format!("{value:.2}"),
        _ => format!("{value:.2} (repetitions {low:.2}-{high:.2})"),
    }
}

/// How figures over `n` repetitions were made: `medians of 5 repetitions`.
pub fn repetitions(n: usize) -> String {
    match n {
        1 => "from one repetition".into(),
        n => format!("medians of {n} repetitions"),
    }
}

/// Microseconds as `0.123 ms`.
pub fn ms_text(micros: f64) -> String {
    format!("{:.3} ms", micros / 1000.0)
}

/// Kilobytes as `17.8 MB` (of 1,024 kB).
pub fn mb_text(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The results in docs/bench, as the suites wrote them, read back into the page and
    /// the charts: a change to what a suite saves that the reader cannot follow fails here.
    #[test]
    fn the_committed_results_make_the_page_and_charts() -> Result<()> {
        let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
        let out = tempfile::tempdir()?;
        for suite in &crate::ALL {
            let name = format!("{}.json", suite.name);
            std::fs::copy(committed.join(&name), out.path().join(&name))?;
        }
        let page = std::fs::read_to_string(write_page(out.path(), &crate::ALL)?)?;
        for suite in &crate::ALL {
            let svg = write_chart(out.path(), suite)?.ok_or("no chart written")?;
            assert!(std::fs::read_to_string(svg)?.starts_with("<svg"));
            assert!(
                page.contains(&format!("\n## {}\n", heading(suite))),
                "{page}"
            );
            assert!(page.contains(&format!("]({}.svg)", suite.name)), "{page}");
            assert!(
                page.contains(&format!("| `{}` | ", suite.name)),
                "targets: {page}"
            );
        }
        assert!(page.contains("- **CPUs**: "), "{page}");
        Ok(())
    }

    #[test]
    fn a_folder_without_results_makes_no_page() -> Result<()> {
        let out = tempfile::tempdir()?;
        assert!(write_page(out.path(), &crate::ALL).is_err());
        assert!(write_chart(out.path(), &crate::ALL[0])?.is_none());
        assert!(!out.path().join(PAGE).exists());
        Ok(())
    }

    #[test]
    fn anchors_follow_the_heading() {
        assert_eq!(anchor("Everyday calls (`ops`)"), "everyday-calls-ops");
        assert_eq!(anchor("Vector search (`vector`)"), "vector-search-vector");
    }

    #[test]
    fn measured_shows_the_spread_of_repetitions() {
        let mut ratio = Ratio::new("r", "a / b", Some(0.914), 1.0, true);
        assert_eq!(measured(&ratio), "0.91");
        ratio.per_repetition = vec![0.9, 1.03, 0.95];
        assert_eq!(measured(&ratio), "0.91 (repetitions 0.90-1.03)");
        assert_eq!(measured(&Ratio::new("r", "a / b", None, 1.0, true)), "-");
    }
}
