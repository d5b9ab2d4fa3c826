//! Timing calls: latency percentiles, concurrent tasks, medians of repetitions.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::Result;

/// Latency samples of one kind of call, in a histogram of nanoseconds to three
/// significant figures (values within 0.1%), which grows to the largest sample.
#[derive(Debug)]
pub struct Samples(Histogram<u64>);

/// Significant figures the latency histograms keep.
const SIGNIFICANT_FIGURES: u8 = 3;

impl Default for Samples {
    fn default() -> Self {
        // An auto-resizing histogram with a valid precision (0 to 5 figures) always builds.
        Samples(Histogram::new(SIGNIFICANT_FIGURES).expect("3 significant figures are valid"))
    }
}

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // `record` grows the histogram to take the value (`saturating_record` would clamp
        // it to the range so far); it fails only when it cannot grow.
        if self.0.record(nanos).is_err() {
            self.0.saturating_record(nanos);
        }
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: &Samples) {
        // Cannot fail: this histogram resizes to take `other`'s largest value.
        self.0
            .add(&other.0)
            .expect("an auto-resizing histogram takes any other");
    }

    /// Count, p50, p99 (nearest rank) and mean, in microseconds, within 0.1%.
    pub fn summary(self) -> Latency {
        let micros = |nanos: f64| nanos / 1000.0;
        if self.0.is_empty() {
            return Latency::default();
        }
        Latency {
            count: usize::try_from(self.0.len()).unwrap_or(usize::MAX),
            p50_us: micros(self.0.value_at_quantile(0.50) as f64),
            p99_us: micros(self.0.value_at_quantile(0.99) as f64),
            mean_us: micros(self.0.mean()),
        }
    }
}

/// Percentiles of one kind of call, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Calls measured.
    pub count: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// How long `call` took, and what it returned.
pub async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = call.await;
    (out, started.elapsed())
}

/// Runs `work` on every item at once, one task each, and returns the items (as the
/// tasks hand them back) and the wall time until the last task finished.
pub async fn concurrently<T, F, Fut>(items: Vec<T>, work: F) -> Result<(Vec<T>, Duration)>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = items.into_iter().map(|i| tokio::spawn(work(i))).collect();
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await??);
    }
    Ok((done, started.elapsed()))
}

/// Lets background work of the previous pass (lazy copies, compares, repairs) finish so
/// it does not land in the next one.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_within_a_thousandth() {
        let (mut low, mut high) = (Samples::default(), Samples::default());
        for us in 1..=500 {
            low.push(Duration::from_micros(us));
            high.push(Duration::from_micros(us + 500));
        }
        low.extend(&high);
        let latency = low.summary();
        assert_eq!(latency.count, 1000);
        let near = |measured: f64, exact: f64| (measured - exact).abs() <= exact * 0.001;
        assert!(near(latency.p50_us, 500.0), "{latency:?}");
        assert!(near(latency.p99_us, 990.0), "{latency:?}");
        assert!(near(latency.mean_us, 500.5), "{latency:?}");
        assert_eq!(Samples::default().summary().count, 0);
    }
}
