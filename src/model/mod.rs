//! Models assembled from medkern ops: BERT-family encoders ([`bert`]), ResNet-18/34
//! ([`resnet`]), the sepsis classifier, autoencoder and k-means ([`sepsis`]), EfficientNet
//! B0–B7 and Lite0–Lite4 ([`efficientnet`]), the EXAM chest X-ray + EMR model ([`exam`], EMR
//! inputs in [`emr`]); ImageNet-1k class names in [`imagenet`]; a folder's text encoder
//! (tokenizer, pooling, normalisation) in [`encoder`], with sentence-transformers folders read
//! by [`sentence`] and hub ids found in the local cache by [`hub`].

/// The batch-limit methods of an image model whose struct has a `max_batch` field (checked
/// in its forward before anything is allocated for the batch).
macro_rules! max_batch_methods {
    () => {
        /// Sets the most images one call takes (default
        /// [`DEFAULT_MAX_BATCH`](crate::input::DEFAULT_MAX_BATCH), 4096): a larger batch is an
        /// error before its activations are allocated.
        pub fn with_max_batch(mut self, n: usize) -> Self {
            self.max_batch = n;
            self
        }

        /// The limit set by `with_max_batch`.
        pub fn max_batch(&self) -> usize {
            self.max_batch
        }
    };
}
pub(crate) use max_batch_methods;

pub mod bert;
pub mod classify;
pub mod compress;
pub mod efficientnet;
pub mod emr;
pub mod encoder;
pub mod exam;
pub mod hub;
pub mod imagenet;
pub mod linear;
pub mod mobilebert;
pub mod resnet;
pub mod sentence;
pub mod sepsis;

/// Probabilities from one row of a classification head's logits: softmax in f64 with the
/// maximum subtracted first (the CLI's and the server's labels and scores).
pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = v.iter().map(|&x| f64::from(x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&x| (x / s) as f32).collect()
}

/// The values of a float safetensors tensor (F64, F32, F16, BF16, little endian) as f64; None
/// for other dtypes (each loader says what it expected).
pub(crate) fn float_values(t: &safetensors::tensor::TensorView) -> Option<Vec<f64>> {
    use safetensors::Dtype as S;
    let d = t.data();
    Some(match t.dtype() {
        S::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        S::F32 => d
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        S::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        S::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn softmax_matches_hand_values_and_survives_large_logits() {
        // e^0 : e^{ln 3} = 1 : 3.
        let p = super::softmax(&[0.0, 3f32.ln()]);
        assert!(
            (p[0] - 0.25).abs() < 1e-6 && (p[1] - 0.75).abs() < 1e-6,
            "{p:?}"
        );
        // Without the maximum subtracted, e^1000 would overflow to inf and give NaN.
        let p = super::softmax(&[1000.0, 1000.0]);
        assert_eq!(p, [0.5, 0.5]);
    }
}
