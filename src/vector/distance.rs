//! The three distances, computed the way pgvector computes them, so that SQLite's
//! exact search ranks memories as PostgreSQL's does.
//!
//! pgvector's C code is built with vectorization and reassociation allowed, and picks an
//! AVX-512 + FMA version at run time where the CPU has it. Its sums then come out as: 16
//! float32 lanes of fused multiply-adds over each whole block of 16 elements, the lanes
//! added pairwise (8 + 8, 4 + 4, 2 + 2, 1 + 1); one block of 8 lanes the same way for 8
//! more elements, added on; the last few elements one at a time (multiplied then added
//! for L2 and inner product, fused in cosine's three sums). The sums
//! here follow that order, with fused multiply-adds where this CPU has them. Measured
//! against pgvector 0.8.2 on an x86-64 CPU with AVX-512, every distance is bit for bit
//! the same; on CPUs where either side takes another path, distances agree to float32
//! rounding (a relative 1e-6), and memories closer together than that may come in either
//! order.
//!
//! The sums read embeddings in their stored form (little-endian f32 bytes) in place, so
//! a scan allocates nothing per row.

use super::DistanceMetric;

/// Element `i` of little-endian f32 bytes.
#[inline(always)]
fn at(bytes: &[u8], i: usize) -> f32 {
    let b = &bytes[i * 4..i * 4 + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Adds the lanes pairwise: the first half onto the second's, until one is left.
#[inline(always)]
fn reduce<const N: usize>(mut lanes: [f32; N]) -> f32 {
    let mut width = N;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0]
}

/// The sum of `x * y` over the terms `term(0..n)`, in pgvector's order (see above);
/// `madd(x, y, acc)` is `x * y + acc`, fused or not; `fused_tail` says whether the last
/// elements use it too.
#[inline(always)]
fn sum(
    n: usize,
    fused_tail: bool,
    term: impl Fn(usize) -> (f32, f32),
    madd: impl Fn(f32, f32, f32) -> f32,
) -> f32 {
    let mut i = 0;
    let mut s = 0f32;
    if n >= 16 {
        let mut acc = [0f32; 16];
        while i + 16 <= n {
            for (l, a) in acc.iter_mut().enumerate() {
                let (x, y) = term(i + l);
                *a = madd(x, y, *a);
            }
            i += 16;
        }
        s = reduce(acc);
    }
    if n - i >= 8 {
        let mut acc = [0f32; 8];
        for (l, a) in acc.iter_mut().enumerate() {
            let (x, y) = term(i + l);
            *a = madd(x, y, *a);
        }
        i += 8;
        s += reduce(acc);
    }
    while i < n {
        let (x, y) = term(i);
        s = if fused_tail { madd(x, y, s) } else { s + x * y };
        i += 1;
    }
    s
}

/// The sums one distance needs: `a . b`, `|a|^2`, `|b|^2` or `|a - b|^2`.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    dot: f32,
    norm_a: f32,
    norm_b: f32,
    l2: f32,
}

macro_rules! sums_body {
    ($metric:expr, $n:expr, $a:expr, $b:expr, $madd:expr) => {{
        let (a, b) = ($a, $b);
        let mut s = Sums::default();
        match $metric {
            DistanceMetric::L2 => {
                s.l2 = sum(
                    $n,
                    false,
                    |i| {
                        let d = a(i) - b(i);
                        (d, d)
                    },
                    $madd,
                );
            }
            DistanceMetric::InnerProduct => s.dot = sum($n, false, |i| (a(i), b(i)), $madd),
            DistanceMetric::Cosine => {
                s.dot = sum($n, true, |i| (a(i), b(i)), $madd);
                s.norm_a = sum($n, true, |i| (a(i), a(i)), $madd);
                s.norm_b = sum($n, true, |i| (b(i), b(i)), $madd);
            }
        }
        s
    }};
}

#[inline(always)]
fn plain_madd(x: f32, y: f32, acc: f32) -> f32 {
    x * y + acc
}

fn sums_plain_bytes(metric: DistanceMetric, a: &[u8], b: &[u8], n: usize) -> Sums {
    sums_body!(metric, n, |i| at(a, i), |i| at(b, i), plain_madd)
}

fn sums_plain_slices(metric: DistanceMetric, a: &[f32], b: &[f32], n: usize) -> Sums {
    sums_body!(metric, n, |i: usize| a[i], |i: usize| b[i], plain_madd)
}

#[cfg(target_arch = "x86_64")]
mod fused {
    use super::{DistanceMetric, Sums, at, sum};

    #[inline(always)]
    fn madd(x: f32, y: f32, acc: f32) -> f32 {
        x.mul_add(y, acc)
    }

    /// # Safety
    /// The CPU must have FMA.
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn bytes(metric: DistanceMetric, a: &[u8], b: &[u8], n: usize) -> Sums {
        sums_body!(metric, n, |i| at(a, i), |i| at(b, i), madd)
    }

    /// # Safety
    /// The CPU must have FMA.
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn slices(metric: DistanceMetric, a: &[f32], b: &[f32], n: usize) -> Sums {
        sums_body!(metric, n, |i: usize| a[i], |i: usize| b[i], madd)
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
