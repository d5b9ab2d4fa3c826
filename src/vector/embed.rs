//! Turning text into vectors: the [`Embedder`] trait, and [`HashEmbedder`], a
//! deterministic one for tests and demonstrations.

use async_trait::async_trait;

use crate::error::{Error, Result};

/// Makes embeddings from text: a model behind an API, a local model, or
/// [`HashEmbedder`]. [`fill_embeddings`](super::fill_embeddings) calls it in batches.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// A name for reports, such as the model's id.
    fn name(&self) -> String;

    /// The dimension of every vector it returns.
    fn dimensions(&self) -> usize;

    /// One vector per text, in the same order, each of [`dimensions`](Self::dimensions)
    /// finite numbers.
    ///
    /// # Errors
    /// Whatever stops the embedding (the fill pass stops and reports it).
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// A deterministic embedder without a model: each word (lower-cased letters and
/// digits) adds ±1 at a position chosen by its hash, and the vector is scaled to unit
/// length. Texts that share words get nearby vectors, the same text always the same
/// vector, on every machine. Meant for tests and demonstrations, not for meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashEmbedder {
    dimensions: usize,
}

impl HashEmbedder {
    /// An embedder of `dimensions` (at least 1).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for 0 or more than 16,000 dimensions.
    pub fn new(dimensions: usize) -> Result<Self> {
        if !(1..=super::MAX_DIMENSIONS).contains(&dimensions) {
            return Err(Error::invalid(
                "embedder dimensions",
                format!("{dimensions} is outside 1 to {}", super::MAX_DIMENSIONS),
            ));
        }
        Ok(HashEmbedder { dimensions })
    }

    /// The vector of one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimensions];
        let mut words = 0;
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            self.add(&mut v, &word.to_lowercase());
            words += 1;
        }
        if words == 0 {
            // No words: the text itself decides, so the vector is never all zeros.
            self.add(&mut v, text);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn add(&self, v: &mut [f32], token: &str) {
        let h = fnv1a(token.as_bytes());
        let at = (h % self.dimensions as u64) as usize;
        v[at] += if h >> 63 == 0 { 1.0 } else { -1.0 };
    }
}

/// 64-bit FNV-1a: small, fast and the same everywhere.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn name(&self) -> String {
        format!("hash-{}", self.dimensions)
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vector::{DistanceMetric, distance};

    #[test]
    fn deterministic_unit_and_shared_words_are_near() {
        let e = HashEmbedder::new(64).unwrap();
        let a = e.embed_one("the refund was paid");
        assert_eq!(a, e.embed_one("The REFUND was paid!"));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let near = distance(DistanceMetric::Cosine, &a, &e.embed_one("refund paid"));
        let far = distance(
            DistanceMetric::Cosine,
            &a,
            &e.embed_one("warehouse shipping delayed"),
        );
        assert!(near < far, "{near} vs {far}");
        assert!(e.embed_one("").iter().any(|x| *x != 0.0));
        assert!(HashEmbedder::new(0).is_err());
    }
}
