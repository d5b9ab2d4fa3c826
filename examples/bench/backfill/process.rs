//! Child processes timed with their peak memory, and the programs they run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::harness::Result;

/// One timed child process.
#[derive(Debug, Serialize)]
pub(super) struct Measured {
    pub(super) seconds: f64,
    /// The last `VmHWM` read before it exited, in kB.
    pub(super) peak_rss_kb: Option<u64>,
    /// `(seconds since start, VmHWM kB)`, about once a second.
    pub(super) rss_timeline: Vec<(f64, u64)>,
    #[serde(skip)]
    pub(super) success: bool,
    #[serde(skip)]
    pub(super) log: PathBuf,
}

/// Runs `command` with its output in `log`, timing it and following its `VmHWM`.
pub(super) async fn measure(
    mut command: tokio::process::Command,
    log: PathBuf,
) -> Result<Measured> {
    let out = std::fs::File::create(&log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let status_path = child.id().map(|pid| format!("/proc/{pid}/status"));
    let (mut peak, mut timeline) = (None, Vec::new());
    let mut next_sample = Duration::ZERO;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(10)) => {
                // A zombie has no VmHWM: keep the last reading.
                if let Some(hwm) = status_path.as_deref().and_then(vm_hwm_kb) {
                    peak = Some(hwm);
                    if started.elapsed() >= next_sample {
                        timeline.push((started.elapsed().as_secs_f64(), hwm));
                        next_sample += Duration::from_secs(1);
                    }
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(peak) = peak {
        timeline.push((seconds, peak));
    }
    Ok(Measured {
        seconds,
        peak_rss_kb: peak,
        rss_timeline: timeline,
        success: status.success(),
        log,
    })
}

/// `VmHWM` of `/proc/PID/status`, in kB.
fn vm_hwm_kb(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last lines of a child's output, for an error message.
pub(super) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
/// The file of another example built next to this binary (`target/release/examples/`).
pub(super) fn sibling_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.parent()?.join(name);
    path.is_file().then_some(path)
}

/// `name` in a folder of `PATH`.
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

pub(super) fn summary_line(rows: usize, m: &Measured) -> String {
    format!(
        "{:.1}s, {:.0} rows/s, peak RSS {}",
        m.seconds,
        rows as f64 / m.seconds,
        m.peak_rss_kb.map_or("?".into(), mb)
    )
}

pub(super) fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}
