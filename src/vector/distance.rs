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
//! Stored embeddings (little-endian f32 bytes) are unpacked into two buffers each thread
//! keeps and reuses, so a scan allocates nothing per row.

#[cfg(feature = "sqlite")]
use std::cell::RefCell;

use super::DistanceMetric;

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

/// The sum of `x * y` over `(x, y) = term(a[i], b[i])`, in pgvector's order (see
/// above); `madd(x, y, acc)` is `x * y + acc`, fused or not; `fused_tail` says whether
/// the last elements use it too. Fixed-size blocks let the compiler use vector
/// registers.
#[inline(always)]
fn sum(
    a: &[f32],
    b: &[f32],
    fused_tail: bool,
    term: impl Fn(f32, f32) -> (f32, f32),
    madd: impl Fn(f32, f32, f32) -> f32,
) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let wide = n / 16 * 16;
    let mut s = 0f32;
    if wide > 0 {
        let mut acc = [0f32; 16];
        for (ca, cb) in a[..wide].chunks_exact(16).zip(b[..wide].chunks_exact(16)) {
            for l in 0..16 {
                let (x, y) = term(ca[l], cb[l]);
                acc[l] = madd(x, y, acc[l]);
            }
        }
        s = reduce(acc);
    }
    sum_rest(a, b, wide, s, fused_tail, &term, &madd)
}

/// What [`sum`] adds after its 16-element blocks (summed into `s`, up to `from`): one
/// block of 8 lanes, then the last elements one at a time.
#[inline(always)]
fn sum_rest(
    a: &[f32],
    b: &[f32],
    from: usize,
    mut s: f32,
    fused_tail: bool,
    term: &impl Fn(f32, f32) -> (f32, f32),
    madd: &impl Fn(f32, f32, f32) -> f32,
) -> f32 {
    let (n, mut i) = (a.len().min(b.len()), from);
    if n - i >= 8 {
        let mut acc = [0f32; 8];
        for l in 0..8 {
            let (x, y) = term(a[i + l], b[i + l]);
            acc[l] = madd(x, y, acc[l]);
        }
        i += 8;
        s += reduce(acc);
    }
    for (x, y) in a[i..n].iter().zip(&b[i..n]) {
        let (x, y) = term(*x, *y);
        s = if fused_tail { madd(x, y, s) } else { s + x * y };
    }
    s
}

#[cfg(feature = "sqlite")]
/// [`sum`] of `R` rows against one `b` at once: each row's sum in exactly `sum`'s order
/// (so the same bits), the rows interleaved so the processor works on `R` independent
/// chains of additions instead of waiting on one. Every row has `b`'s length.
#[inline(always)]
fn sum_rows<const R: usize>(
    rows: [&[f32]; R],
    b: &[f32],
    fused_tail: bool,
    term: impl Fn(f32, f32) -> (f32, f32),
    madd: impl Fn(f32, f32, f32) -> f32,
) -> [f32; R] {
    let n = b.len();
    let rows = rows.map(|r| &r[..n]);
    let wide = n / 16 * 16;
    let mut out = [0f32; R];
    if wide > 0 {
        let mut acc = [[0f32; 16]; R];
        for (c, cb) in b[..wide].chunks_exact(16).enumerate() {
            for r in 0..R {
                let ca = &rows[r][c * 16..c * 16 + 16];
                for l in 0..16 {
                    let (x, y) = term(ca[l], cb[l]);
                    acc[r][l] = madd(x, y, acc[r][l]);
                }
            }
        }
        for r in 0..R {
            out[r] = reduce(acc[r]);
        }
    }
    for r in 0..R {
        out[r] = sum_rest(rows[r], b, wide, out[r], fused_tail, &term, &madd);
    }
    out
}

#[cfg(feature = "sqlite")]
/// [`Sums`] of `R` rows against a query whose `|b|^2` is known, and the rows' `|a|^2`
/// (`norms`, for cosine: a row's own sum, the same bits whatever it is compared with).
macro_rules! sums_rows_body {
    ($metric:expr, $rows:expr, $norms:expr, $b:expr, $norm_b:expr, $madd:expr) => {{
        let mut out = [Sums::default(); R];
        match $metric {
            DistanceMetric::L2 => {
                let l2 = sum_rows($rows, $b, false, |x, y| (x - y, x - y), $madd);
                for r in 0..R {
                    out[r].l2 = l2[r];
                }
            }
            DistanceMetric::InnerProduct => {
                let dot = sum_rows($rows, $b, false, |x, y| (x, y), $madd);
                for r in 0..R {
                    out[r].dot = dot[r];
                }
            }
            DistanceMetric::Cosine => {
                let dot = sum_rows($rows, $b, true, |x, y| (x, y), $madd);
                for r in 0..R {
                    out[r] = Sums {
                        dot: dot[r],
                        norm_a: $norms[r],
                        norm_b: $norm_b,
                        l2: 0.0,
                    };
                }
            }
        }
        out
    }};
}

#[cfg(feature = "sqlite")]
fn sums_rows_plain<const R: usize>(
    metric: DistanceMetric,
    rows: [&[f32]; R],
    norms: [f32; R],
    b: &[f32],
    norm_b: f32,
) -> [Sums; R] {
    sums_rows_body!(metric, rows, norms, b, norm_b, plain_madd)
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
    ($metric:expr, $a:expr, $b:expr, $madd:expr) => {{
        let (a, b) = ($a, $b);
        let mut s = Sums::default();
        match $metric {
            DistanceMetric::L2 => {
                s.l2 = sum(a, b, false, |x, y| (x - y, x - y), $madd);
            }
            DistanceMetric::InnerProduct => s.dot = sum(a, b, false, |x, y| (x, y), $madd),
            DistanceMetric::Cosine => {
                s.dot = sum(a, b, true, |x, y| (x, y), $madd);
                s.norm_a = sum(a, b, true, |x, _| (x, x), $madd);
                s.norm_b = sum(a, b, true, |_, y| (y, y), $madd);
            }
        }
        s
    }};
}

#[inline(always)]
fn plain_madd(x: f32, y: f32, acc: f32) -> f32 {
    x * y + acc
}

fn sums_plain(metric: DistanceMetric, a: &[f32], b: &[f32]) -> Sums {
    sums_body!(metric, a, b, plain_madd)
}

#[cfg(target_arch = "x86_64")]
mod fused {
    #[cfg(feature = "sqlite")]
    use super::sum_rows;
    use super::{DistanceMetric, Sums, sum};

    #[inline(always)]
    fn madd(x: f32, y: f32, acc: f32) -> f32 {
        x.mul_add(y, acc)
    }

    /// # Safety
    /// The CPU must have FMA and AVX.
    #[target_feature(enable = "avx,fma")]
    pub(super) unsafe fn sums(metric: DistanceMetric, a: &[f32], b: &[f32]) -> Sums {
        sums_body!(metric, a, b, madd)
    }

    /// # Safety
    /// The CPU must have FMA and AVX.
    #[cfg(feature = "sqlite")]
    #[target_feature(enable = "avx,fma")]
    pub(super) unsafe fn sums_rows<const R: usize>(
        metric: DistanceMetric,
        rows: [&[f32]; R],
        norms: [f32; R],
        b: &[f32],
        norm_b: f32,
    ) -> [Sums; R] {
        sums_rows_body!(metric, rows, norms, b, norm_b, madd)
    }

    pub(super) fn available() -> bool {
        static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FMA.get_or_init(|| {
            std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx")
        })
    }
}

fn sums(metric: DistanceMetric, a: &[f32], b: &[f32]) -> Sums {
    #[cfg(target_arch = "x86_64")]
    if fused::available() {
        // SAFETY: the CPU has FMA and AVX (checked above).
        return unsafe { fused::sums(metric, a, b) };
    }
    sums_plain(metric, a, b)
}

#[cfg(feature = "sqlite")]
thread_local! {
    /// Where [`distance_bytes`] unpacks its two embeddings: grown once per thread, then
    /// reused, so a scan of many rows allocates nothing per row.
    static UNPACKED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Unpacks little-endian f32 bytes into `into` (resized to fit).
#[cfg(feature = "sqlite")]
#[inline(always)]
fn unpack(bytes: &[u8], into: &mut Vec<f32>) {
    into.clear();
    into.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
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
    finish(metric, sums(metric, a, b))
}

/// A query prepared for many distances: for cosine, its own `|query|^2`, summed once
/// (it is the same bits for every row).
#[cfg(feature = "sqlite")]
pub(crate) struct PreparedQuery<'q> {
    metric: DistanceMetric,
    vector: &'q [f32],
    norm: f32,
}

#[cfg(feature = "sqlite")]
impl<'q> PreparedQuery<'q> {
    pub(crate) fn new(metric: DistanceMetric, vector: &'q [f32]) -> Self {
        let norm = match metric {
            DistanceMetric::Cosine => sums(metric, vector, vector).norm_b,
            _ => 0.0,
        };
        PreparedQuery {
            metric,
            vector,
            norm,
        }
    }

    /// [`distance`](Self::distance) of `R` rows at once, the same bits, faster; `norms`
    /// holds each row's [`row_norm`] (used by cosine only).
    #[inline]
    pub(crate) fn distances<const R: usize>(&self, rows: [&[f32]; R], norms: [f32; R]) -> [f64; R] {
        #[cfg(target_arch = "x86_64")]
        if fused::available() {
            // SAFETY: the CPU has FMA and AVX (checked above).
            let sums =
                unsafe { fused::sums_rows(self.metric, rows, norms, self.vector, self.norm) };
            return sums.map(|s| finish(self.metric, s));
        }
        sums_rows_plain(self.metric, rows, norms, self.vector, self.norm)
            .map(|s| finish(self.metric, s))
    }
}

/// A row's own `|row|^2` as cosine sums it, for [`PreparedQuery::distances`].
#[cfg(feature = "sqlite")]
pub(crate) fn row_norm(row: &[f32]) -> f32 {
    sums(DistanceMetric::Cosine, row, row).norm_a
}

/// [`distance`] over two embeddings in their stored form, little-endian f32 bytes.
#[cfg(feature = "sqlite")]
pub(crate) fn distance_bytes(metric: DistanceMetric, a: &[u8], b: &[u8]) -> f64 {
    UNPACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (x, y) = &mut *buffers;
            unpack(a, x);
            unpack(b, y);
            distance(metric, x, y)
        }
        // Never re-entered in practice; stay correct if it were.
        Err(_) => {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            unpack(a, &mut x);
            unpack(b, &mut y);
            distance(metric, &x, &y)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prepared query gives the bits of `distance`, on both paths (fused and plain),
    /// for every length around the 16- and 8-element blocks, zero vectors included.
    #[cfg(feature = "sqlite")]
    #[test]
    fn a_prepared_query_gives_the_same_bits() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for n in (1..=70).chain([384, 1536]) {
            for _ in 0..20 {
                let a: Vec<f32> = (0..n).map(|_| next() * 3.0).collect();
                let b: Vec<f32> = (0..n).map(|_| next()).collect();
                for metric in DistanceMetric::ALL {
                    for (row, query) in
                        [(&a, &b), (&b, &a), (&vec![0.0; n], &a), (&a, &vec![0.0; n])]
                    {
                        let want = distance(metric, row, query);
                        let prepared = PreparedQuery::new(metric, query);
                        let norm = row_norm(row);
                        let one = prepared.distances([row], [norm])[0];
                        let four = prepared
                            .distances([row, query, row, row], [norm, row_norm(query), norm, norm])
                            [2];
                        let plain_norm = match metric {
                            DistanceMetric::Cosine => sums_plain(metric, query, query).norm_b,
                            _ => 0.0,
                        };
                        let plain = finish(
                            metric,
                            sums_rows_plain(
                                metric,
                                [row],
                                [sums_plain(DistanceMetric::Cosine, row, row).norm_a],
                                query,
                                plain_norm,
                            )[0],
                        );
                        let plain_want = finish(metric, sums_plain(metric, row, query));
                        for (got, want) in [(one, want), (four, want), (plain, plain_want)] {
                            assert!(
                                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                                "{metric} n={n}: {want} != {got}"
                            );
                        }
                    }
                }
            }
        }
    }

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
    #[cfg(feature = "sqlite")]
    fn bytes_and_slices_agree() {
        use crate::backend::codec::embedding_bytes;

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
