//! CPU time of this process and of a PostgreSQL server on this machine, from /proc.

use sqlx::PgPool;

/// Clock ticks per second of /proc/<pid>/stat times (`CLK_TCK`, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// Fields of /proc/<pid>/stat after the command name (which may hold spaces).
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// CPU seconds (user and system) process `pid` has used so far.
pub(super) fn process_cpu(pid: u32) -> Option<f64> {
    let fields = proc_stat(pid)?;
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / CLOCK_TICKS)
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    proc_stat(pid)?.get(1)?.parse().ok()
}

/// CPU seconds used so far by the PostgreSQL server whose postmaster is `postmaster`
/// and all its processes (backends, WAL writer, checkpointer, ...); `None` when the
/// server is not on this machine.
pub(super) fn server_cpu(postmaster: Option<u32>) -> Option<f64> {
    let postmaster = postmaster?;
    let mut total = process_cpu(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(postmaster) {
            total += process_cpu(pid).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The postmaster of the server behind `pool`, when it runs on this machine.
pub(super) async fn postmaster_of(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let postmaster = parent_of(u32::try_from(backend).ok()?)?;
    // Only a server on this machine has that backend as its child here.
    (std::fs::read_to_string(format!("/proc/{postmaster}/comm"))
        .ok()?
        .trim_end()
        == "postgres")
        .then_some(postmaster)
}
