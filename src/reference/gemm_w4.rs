//! Reference for `kernels/gemm_w4.cu` (launcher: `src/ops/gemm_w4.rs`).

use crate::ops::Activation;
use crate::reference::gemm::{self, GemmDims};

/// The int4 weight `[N, K]` as exact f64 values `q · scale` (f16 scales, one per `group`
/// values of K, laid out `[N, K / group]` as `quant::QuantizedWeight` has them).
pub fn dequantize_w4(q: &[i8], scales: &[f64], n: usize, k: usize, group: usize) -> Vec<f64> {
    let groups = k.div_ceil(group.max(1));
    (0..n * k)
        .map(|i| f64::from(q[i]) * scales[(i / k) * groups + (i % k) / group.max(1)])
        .collect()
}

/// `y = act(alpha · x·wᵀ + bias) + residual` in f64 with `w = q · scale` exact: x is `[M, K]`
/// (already rounded to its dtype), bias `[N]`, residual `[M, N]`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_w4(
    x: &[f64],
    q: &[i8],
    scales: &[f64],
    (m, n, k, group): (usize, usize, usize, usize),
    alpha: f64,
    bias: Option<&[f64]>,
    act: Activation,
    residual: Option<&[f64]>,
) -> Vec<f64> {
    let w = dequantize_w4(q, scales, n, k, group);
    let d = GemmDims {
        batch: 1,
        m,
        n,
        k,
        shared_w: true,
    };
    gemm::gemm(x, &w, d, alpha, bias, act, residual)
}
