//! The disk alone: what one durable small write costs, and two at once or one after
//! another, so the dual figures can be read against what the shared disk itself takes.
//!
//! Each write is a `pwrite` of [`WRITE_BYTES`] at the next offset of a file filled and
//! synced beforehand (as a write-ahead log appends to a file of its own), then
//! `fdatasync` (PostgreSQL's default `wal_sync_method`; SQLite syncs its WAL likewise).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::harness::{Result, Samples};

/// Bytes of each write: about a commit record with a 1 KB value.
const WRITE_BYTES: usize = 2048;
/// Size of each file the writes go round in.
const FILE_BYTES: u64 = 4 << 20;

/// p50s of the three ways of syncing, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct Disk {
    /// Writes timed in each way.
    pub(super) writes: usize,
    /// One write and sync, nothing else on the disk from this process.
    pub(super) alone_p50_us: f64,
    /// One of two writes and syncs to two files, issued at once from two threads: each
    /// thread's time.
    pub(super) concurrent_each_p50_us: f64,
    /// The same pair, until both are done.
    pub(super) concurrent_both_p50_us: f64,
    /// Two writes and syncs to the two files, one after the other (as the dual backend
    /// writes its two sides).
    pub(super) sequential_both_p50_us: f64,
}

impl Disk {
    /// Each concurrent sync over one alone: how much two syncs at once slow each other.
    pub(super) fn concurrency_ratio(&self) -> f64 {
        self.concurrent_each_p50_us / self.alone_p50_us
    }

    /// The median of each figure over `runs`.
    pub(super) fn median(runs: &[Disk]) -> Disk {
        let m = |f: fn(&Disk) -> f64| crate::harness::median(runs.iter().map(f).collect());
        Disk {
            writes: runs.iter().map(|d| d.writes).sum(),
            alone_p50_us: m(|d| d.alone_p50_us),
            concurrent_each_p50_us: m(|d| d.concurrent_each_p50_us),
            concurrent_both_p50_us: m(|d| d.concurrent_both_p50_us),
            sequential_both_p50_us: m(|d| d.sequential_both_p50_us),
        }
    }
}

/// A file of [`FILE_BYTES`] written through and synced, and the next offset to write.
struct Log {
    file: File,
    offset: u64,
}

impl Log {
    fn create(path: &Path) -> Result<Log> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let chunk = vec![0u8; 1 << 20];
        for at in (0..FILE_BYTES).step_by(chunk.len()) {
            file.write_all_at(&chunk, at)?;
        }
        file.sync_all()?;
        Ok(Log { file, offset: 0 })
    }

    /// One write and its sync; how long both took.
    fn write(&mut self, bytes: &[u8]) -> Result<Duration> {
        let started = Instant::now();
        self.file.write_all_at(bytes, self.offset)?;
        self.file.sync_data()?;
        self.offset = (self.offset + bytes.len() as u64) % (FILE_BYTES - bytes.len() as u64);
        Ok(started.elapsed())
    }
}

/// Times `writes` syncs each way, in two files under `folder` (removed after).
pub(super) async fn measure(folder: &Path, writes: usize) -> Result<Disk> {
    let folder = tempfile::Builder::new()
        .prefix("disk-")
        .tempdir_in(folder)?;
    let paths = [folder.path().join("a"), folder.path().join("b")];
    let disk = tokio::task::spawn_blocking(move || measure_blocking(&paths, writes)).await??;
    drop(folder);
    Ok(disk)
}

fn measure_blocking(paths: &[std::path::PathBuf; 2], writes: usize) -> Result<Disk> {
    let record: Vec<u8> = (0..WRITE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    let mut a = Log::create(&paths[0])?;
    let mut b = Log::create(&paths[1])?;
    // Warm-up, not counted.
    for _ in 0..writes.min(20) {
        a.write(&record)?;
        b.write(&record)?;
    }

    let mut alone = Samples::default();
    for i in 0..writes {
        // Both files take turns, so neither is favoured.
        alone.push(if i % 2 == 0 { &mut a } else { &mut b }.write(&record)?);
    }

    let mut sequential = Samples::default();
    for _ in 0..writes {
        let started = Instant::now();
        a.write(&record)?;
        b.write(&record)?;
        sequential.push(started.elapsed());
    }

    // Two threads, one file each, starting every pair of writes together and both
    // done before the next pair starts.
    let barrier = Arc::new(Barrier::new(2));
    let other = {
        let (barrier, record) = (barrier.clone(), record.clone());
        // A failed write is kept until the end, so both threads meet every barrier.
        std::thread::spawn(move || -> Result<(Samples, Vec<Instant>)> {
            let (mut samples, mut ends, mut failed) =
                (Samples::default(), Vec::with_capacity(writes), None);
            for _ in 0..writes {
                barrier.wait();
                match b.write(&record) {
                    Ok(took) => samples.push(took),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
                ends.push(Instant::now());
                barrier.wait();
            }
            failed.map_or(Ok((samples, ends)), Err)
        })
    };
    let (mut each, mut starts_ends, mut failed) =
        (Samples::default(), Vec::with_capacity(writes), None);
    for _ in 0..writes {
        barrier.wait();
        let started = Instant::now();
        match a.write(&record) {
            Ok(took) => each.push(took),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
        starts_ends.push((started, Instant::now()));
        barrier.wait();
    }
    let (theirs, their_ends) = other.join().map_err(|_| "the disk thread panicked")??;
    if let Some(e) = failed {
        return Err(e);
    }
    each.extend(&theirs);
    let mut both = Samples::default();
    for ((started, ended), theirs) in starts_ends.into_iter().zip(their_ends) {
        both.push(ended.max(theirs) - started);
    }
    Ok(Disk {
        writes,
        alone_p50_us: alone.summary().p50_us,
        concurrent_each_p50_us: each.summary().p50_us,
        concurrent_both_p50_us: both.summary().p50_us,
        sequential_both_p50_us: sequential.summary().p50_us,
    })
}
