//! Progress of long passes (the backfill, the embedding fill), for a progress bar or log
//! lines: a seam of its own, so that neither pass depends on the other for it.

/// Told about progress as rows are read, for a progress bar or log lines.
pub trait Progress: Send + Sync {
    /// `rows` more rows were read and handled.
    fn rows(&self, rows: u64);
}

/// No progress reporting.
impl Progress for () {
    fn rows(&self, _: u64) {}
}
