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
