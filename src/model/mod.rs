//! Models assembled from medkern ops: BERT-family encoders ([`bert`]), ResNet-18/34
//! ([`resnet`]), the sepsis classifier, autoencoder and k-means ([`sepsis`]), EfficientNet
//! B0–B7 and Lite0–Lite4 ([`efficientnet`]), the EXAM chest X-ray + EMR model ([`exam`], EMR
//! inputs in [`emr`]).

pub mod bert;
pub mod compress;
pub mod efficientnet;
pub mod emr;
pub mod exam;
pub mod linear;
pub mod resnet;
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
