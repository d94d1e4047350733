//! Reference for `kernels/layernorm.cu` (launcher: `src/ops/layernorm.rs`).

use crate::dtype::DType;

/// LayerNorm over rows of length `n`: `h = round_dtype(x + residual)`,
/// `y = (h − mean) / sqrt(var + eps) · gamma + beta` with the biased variance.
/// Returns `(y, h)`; `h` is what the fused kernel stores as the residual stream.
pub fn layernorm(
    x: &[f64],
    residual: Option<&[f64]>,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    n: usize,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>) {
    let n = n.max(1);
    let h: Vec<f64> = match residual {
        Some(r) => x.iter().zip(r).map(|(a, b)| dtype.round(a + b)).collect(),
        None => x.to_vec(),
    };
    let mut y = vec![0.0; h.len()];
    for (hr, yr) in h.chunks(n).zip(y.chunks_mut(n)) {
        let mean = hr.iter().sum::<f64>() / n as f64;
        let var = hr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for c in 0..n {
            yr[c] = (hr[c] - mean) * rstd * gamma[c] + beta[c];
        }
    }
    (y, h)
}
