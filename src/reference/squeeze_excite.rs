//! Reference for `kernels/squeeze_excite.cu` (launcher: `src/ops/squeeze_excite.rs`).

use super::pool::global_avg_pool;

/// SiLU, `z·sigmoid(z)`.
pub fn silu(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

/// Logistic sigmoid.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The SE scale vector `s [n, c] = sigmoid(W2·SiLU(W1·mean_hw(x) + b1) + b2)` of NHWC `x`
/// `[n, hw, c]`, with `w1 [cse, c]`, `b1 [cse]`, `w2 [c, cse]`, `b2 [c]` (PyTorch Linear layout).
pub fn se_scale_vector(
    x: &[f64],
    (n, hw, c): (usize, usize, usize),
    w1: &[f64],
    b1: &[f64],
    w2: &[f64],
    b2: &[f64],
) -> Vec<f64> {
    let cse = b1.len();
    let pooled = global_avg_pool(x, n, hw, c);
    let mut s = vec![0.0; n * c];
    for b in 0..n {
        let p = &pooled[b * c..(b + 1) * c];
        let h: Vec<f64> = (0..cse)
            .map(|j| {
                let z: f64 = (0..c).map(|k| w1[j * c + k] * p[k]).sum();
                silu(z + b1[j])
            })
            .collect();
        for k in 0..c {
            let z: f64 = (0..cse).map(|j| w2[k * cse + j] * h[j]).sum();
            s[b * c + k] = sigmoid(z + b2[k]);
        }
    }
    s
}

/// `y[n, p, c] = x[n, p, c]·s[n, c]` over NHWC `x` `[n, hw, c]`.
pub fn channel_scale(x: &[f64], (n, hw, c): (usize, usize, usize), s: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; n * hw * c];
    for b in 0..n {
        for p in 0..hw {
            for k in 0..c {
                let i = (b * hw + p) * c + k;
                y[i] = x[i] * s[b * c + k];
            }
        }
    }
    y
}
