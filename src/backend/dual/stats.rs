//! What the dual backend counts for operators: reads per side, fallbacks, lazy copies,
//! owed writes, shadow mismatches, errors and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::Stage;

/// A latency histogram: logarithmic buckets (8 per power of two, so a percentile is
/// within 9% of the truth), lock-free to record.
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BUCKETS: u32 = 8;
/// Powers of two from 2^3 to 2^63, 8 buckets each, after 8 single-value buckets.
const BUCKETS: usize = 62 * SUB_BUCKETS as usize;

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(micros: u64) -> usize {
        if micros < u64::from(SUB_BUCKETS) {
            return micros as usize;
        }
        let power = 63 - micros.leading_zeros(); // >= 3
        let sub = (micros >> (power - 3)) & u64::from(SUB_BUCKETS - 1);
        ((power - 2) * SUB_BUCKETS + sub as u32) as usize
    }

    /// The largest value a bucket holds.
    fn upper(index: usize) -> u64 {
        let index = index as u64;
        if index < u64::from(SUB_BUCKETS) {
            return index;
        }
        let power = index / u64::from(SUB_BUCKETS) + 2;
        let sub = index % u64::from(SUB_BUCKETS);
        let upper = (u128::from(u64::from(SUB_BUCKETS) + sub + 1) << (power - 3)) - 1;
        u64::try_from(upper).unwrap_or(u64::MAX)
    }

    pub(crate) fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(micros).min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let percentile = |p: f64| -> Option<u64> {
            if total == 0 {
                return None;
            }
            let rank = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            counts.iter().enumerate().find_map(|(i, n)| {
                seen += n;
                (seen >= rank).then(|| Self::upper(i))
            })
        };
        Latency {
            count: total,
            p50_us: percentile(0.50),
            p90_us: percentile(0.90),
            p99_us: percentile(0.99),
        }
    }
}

/// Latency percentiles of one kind of call on one side, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Calls measured.
    pub count: u64,
    /// Median.
    pub p50_us: Option<u64>,
    /// 90th percentile.
    pub p90_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
}

/// Calls to one side of the dual backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SideStats {
    /// Reads served by this side.
    pub reads: u64,
    /// Failed calls.
    pub errors: u64,
    /// Read latency.
    pub read_latency: Latency,
    /// Write latency.
    pub write_latency: Latency,
}

/// A snapshot of the dual backend's counters since it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DualStats {
    /// The stage now.
    pub stage: Stage,
    /// The SQLite side.
    pub sqlite: SideStats,
    /// The PostgreSQL side.
    pub postgres: SideStats,
    /// `live` reads that missed PostgreSQL and were answered by SQLite.
    pub fallback_hits: u64,
    /// Reads answered by SQLite because PostgreSQL could not be reached.
    pub fallback_on_error: u64,
    /// Rows copied into PostgreSQL by a read (lazy migration).
    pub lazy_copies: u64,
    /// Reads compared between the sides.
    pub shadow_compares: u64,
    /// Compared reads whose data differed.
    pub shadow_mismatches: u64,
    /// Writes one side missed, journaled for repair.
    pub owed_recorded: u64,
    /// Owed writes replayed by repair (counted when applied, before they leave the
    /// journal: an entry whose removal failed is replayed and counted again).
    pub owed_replayed: u64,
    /// Owed writes parked by repair after a failure that will not go away (the other
    /// side refuses them); they stay in the journal, shown by `memctl stats`, and are
    /// retried on request (`DualBackend::retry_parked`).
    pub owed_parked: u64,
    /// Owed writes waiting in the journals, when counted (see `DualBackend::owed_pending`).
    pub owed_pending: Option<u64>,
}

/// The live counters behind [`DualStats`].
pub(crate) struct Counters {
    pub(crate) sides: [SideCounters; 2],
    pub(crate) fallback_hits: AtomicU64,
    pub(crate) fallback_on_error: AtomicU64,
    pub(crate) lazy_copies: AtomicU64,
    pub(crate) shadow_compares: AtomicU64,
    pub(crate) shadow_mismatches: AtomicU64,
    pub(crate) owed_recorded: AtomicU64,
    pub(crate) owed_replayed: AtomicU64,
    pub(crate) owed_parked: AtomicU64,
}

pub(crate) struct SideCounters {
    pub(crate) reads: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) read_latency: Histogram,
    pub(crate) write_latency: Histogram,
}

impl SideCounters {
    fn new() -> Self {
        SideCounters {
            reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            read_latency: Histogram::new(),
            write_latency: Histogram::new(),
        }
    }

    fn snapshot(&self) -> SideStats {
        SideStats {
            reads: self.reads.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            read_latency: self.read_latency.summary(),
            write_latency: self.write_latency.summary(),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            sides: [SideCounters::new(), SideCounters::new()],
            fallback_hits: AtomicU64::new(0),
            fallback_on_error: AtomicU64::new(0),
            lazy_copies: AtomicU64::new(0),
            shadow_compares: AtomicU64::new(0),
            shadow_mismatches: AtomicU64::new(0),
            owed_recorded: AtomicU64::new(0),
            owed_replayed: AtomicU64::new(0),
            owed_parked: AtomicU64::new(0),
        }
    }

    pub(crate) fn snapshot(&self, stage: Stage) -> DualStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DualStats {
            stage,
            sqlite: self.sides[0].snapshot(),
            postgres: self.sides[1].snapshot(),
            fallback_hits: load(&self.fallback_hits),
            fallback_on_error: load(&self.fallback_on_error),
            lazy_copies: load(&self.lazy_copies),
            shadow_compares: load(&self.shadow_compares),
            shadow_mismatches: load(&self.shadow_mismatches),
            owed_recorded: load(&self.owed_recorded),
            owed_replayed: load(&self.owed_replayed),
            owed_parked: load(&self.owed_parked),
            owed_pending: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let h = Histogram::new();
        for micros in 1..=10_000u64 {
            h.record(Duration::from_micros(micros));
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        for (got, truth) in [
            (s.p50_us, 5_000.0),
            (s.p90_us, 9_000.0),
            (s.p99_us, 9_900.0),
        ] {
            let got = got.unwrap() as f64;
            assert!(got >= truth && got <= truth * 1.13, "{got} vs {truth}");
        }
        assert_eq!(Histogram::new().summary().p50_us, None);
        for i in 0..BUCKETS {
            assert_eq!(Histogram::index(Histogram::upper(i)), i, "bucket {i}");
        }
    }
}
