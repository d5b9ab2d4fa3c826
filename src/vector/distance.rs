//! The three distances, computed the way pgvector computes them: 32-bit float sums in
//! element order (fused multiply-add where the CPU has it, as pgvector's own build
//! uses), finished in 64 bits. So SQLite's exact search ranks memories as PostgreSQL's
//! does.
//!
//! The sums read embeddings in their stored form (little-endian f32 bytes) in place, so
//! a scan allocates nothing per row.

use super::DistanceMetric;

/// The sums one distance needs: `a . b`, `|a|^2`, `|b|^2` and `|a - b|^2`.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    dot: f32,
    norm_a: f32,
    norm_b: f32,
    l2: f32,
}

/// Element `i` of little-endian f32 bytes.
#[inline(always)]
fn at(bytes: &[u8], i: usize) -> f32 {
    let b = &bytes[i * 4..i * 4 + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

macro_rules! sums_body {
    ($metric:expr, $a:expr, $b:expr, $n:expr, $get:expr, $madd:expr) => {{
        let mut s = Sums::default();
        match $metric {
            DistanceMetric::L2 => {
                for i in 0..$n {
                    let d = $get($a, i) - $get($b, i);
                    s.l2 = $madd(d, d, s.l2);
                }
            }
            DistanceMetric::InnerProduct => {
                for i in 0..$n {
                    s.dot = $madd($get($a, i), $get($b, i), s.dot);
                }
            }
            DistanceMetric::Cosine => {
                for i in 0..$n {
                    let (x, y) = ($get($a, i), $get($b, i));
                    s.dot = $madd(x, y, s.dot);
                    s.norm_a = $madd(x, x, s.norm_a);
                    s.norm_b = $madd(y, y, s.norm_b);
                }
            }
        }
        s
    }};
}

#[inline(always)]
fn plain_madd(x: f32, y: f32, acc: f32) -> f32 {
    acc + x * y
}

#[inline(always)]
fn slice_at(v: &[f32], i: usize) -> f32 {
    v[i]
}

fn sums_plain_bytes(metric: DistanceMetric, a: &[u8], b: &[u8], n: usize) -> Sums {
    sums_body!(metric, a, b, n, at, plain_madd)
}

fn sums_plain_slices(metric: DistanceMetric, a: &[f32], b: &[f32], n: usize) -> Sums {
    sums_body!(metric, a, b, n, slice_at, plain_madd)
}

#[cfg(target_arch = "x86_64")]
mod fused {
    use super::{DistanceMetric, Sums, at, slice_at};

    #[inline(always)]
    fn madd(x: f32, y: f32, acc: f32) -> f32 {
        x.mul_add(y, acc)
    }

    /// # Safety
    /// The CPU must have FMA.
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn bytes(metric: DistanceMetric, a: &[u8], b: &[u8], n: usize) -> Sums {
        sums_body!(metric, a, b, n, at, madd)
    }

    /// # Safety
    /// The CPU must have FMA.
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn slices(metric: DistanceMetric, a: &[f32], b: &[f32], n: usize) -> Sums {
        sums_body!(metric, a, b, n, slice_at, madd)
    }

    pub(super) fn available() -> bool {
        static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FMA.get_or_init(|| std::arch::is_x86_feature_detected!("fma"))
    }
}

fn sums_bytes(metric: DistanceMetric, a: &[u8], b: &[u8]) -> Sums {
    let n = a.len().min(b.len()) / 4;
    #[cfg(target_arch = "x86_64")]
    if fused::available() {
        // SAFETY: the CPU has FMA (checked above).
        return unsafe { fused::bytes(metric, a, b, n) };
    }
    sums_plain_bytes(metric, a, b, n)
}

fn sums_slices(metric: DistanceMetric, a: &[f32], b: &[f32]) -> Sums {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if fused::available() {
        // SAFETY: the CPU has FMA (checked above).
        return unsafe { fused::slices(metric, a, b, n) };
    }
    sums_plain_slices(metric, a, b, n)
}

fn finish(metric: DistanceMetric, s: Sums) -> f64 {
    match metric {
        DistanceMetric::L2 => f64::from(s.l2).sqrt(),
        DistanceMetric::InnerProduct => -f64::from(s.dot),
        DistanceMetric::Cosine => {
            let similarity = f64::from(s.dot) / (f64::from(s.norm_a) * f64::from(s.norm_b)).sqrt();
            if similarity.is_nan() {
                f64::NAN
            } else {
                1.0 - similarity.clamp(-1.0, 1.0)
            }
        }
    }
}

/// The distance between `a` and `b` by `metric`, as pgvector computes it (NaN for a
/// cosine distance involving an all-zero vector). Vectors of different lengths are
/// compared over the shorter; searches only ever compare equal lengths.
pub fn distance(metric: DistanceMetric, a: &[f32], b: &[f32]) -> f64 {
    finish(metric, sums_slices(metric, a, b))
}

/// [`distance`] over two embeddings in their stored form, little-endian f32 bytes.
pub(crate) fn distance_bytes(metric: DistanceMetric, a: &[u8], b: &[u8]) -> f64 {
    finish(metric, sums_bytes(metric, a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::codec::embedding_bytes;

    #[test]
    fn known_distances() {
        let a = [1.0, 0.0, 0.0];
        let b = [0.0, 2.0, 0.0];
        assert_eq!(distance(DistanceMetric::L2, &a, &b), 5f64.sqrt());
        assert_eq!(
            distance(DistanceMetric::InnerProduct, &[1.0, 2.0], &[3.0, 4.0]),
            -11.0
        );
        assert!((distance(DistanceMetric::Cosine, &a, &b) - 1.0).abs() < 1e-12);
        assert_eq!(distance(DistanceMetric::Cosine, &a, &[2.0, 0.0, 0.0]), 0.0);
        assert!((distance(DistanceMetric::Cosine, &a, &[-1.0, 0.0, 0.0]) - 2.0).abs() < 1e-12);
        assert!(distance(DistanceMetric::Cosine, &a, &[0.0, 0.0, 0.0]).is_nan());
    }

    #[test]
    fn bytes_and_slices_agree() {
        let a: Vec<f32> = (0..387)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..387)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) / 3.0)
            .collect();
        for metric in DistanceMetric::ALL {
            assert_eq!(
                distance(metric, &a, &b).to_bits(),
                distance_bytes(metric, &embedding_bytes(&a), &embedding_bytes(&b)).to_bits(),
                "{metric}"
            );
        }
    }
}
