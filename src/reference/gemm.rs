//! Reference for `kernels/gemm.cu` (launcher: `src/ops/gemm.rs`).

use crate::ops::Activation;
use crate::reference::elementwise::activation;

/// Shapes of one (strided-batched) GEMM: `batch` problems of Y[M,N] = X[M,K]·W[N,K]ᵀ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// W is shared by all batches (a Linear layer) rather than one per batch.
    pub shared_w: bool,
}

impl GemmDims {
    /// X `[M, K]` and W `[N, K]` of batch `b`.
    pub fn operands<'a, T>(&self, x: &'a [T], w: &'a [T], b: usize) -> (&'a [T], &'a [T]) {
        let (m, n, k) = (self.m, self.n, self.k);
        let wb = if self.shared_w {
            &w[..n * k]
        } else {
            &w[b * n * k..(b + 1) * n * k]
        };
        (&x[b * m * k..(b + 1) * m * k], wb)
    }
}

/// `y = act(alpha · x·wᵀ + bias) + residual` in f64 for each batch; bias is `[N]`, residual has
/// y's shape `[batch, M, N]`.
pub fn gemm(
    x: &[f64],
    w: &[f64],
    d: GemmDims,
    alpha: f64,
    bias: Option<&[f64]>,
    act: Activation,
    residual: Option<&[f64]>,
) -> Vec<f64> {
    let GemmDims {
        batch,
        m,
        n,
        k,
        shared_w: _,
    } = d;
    let mut y = vec![0.0; batch * m * n];
    for b in 0..batch {
        let (xb, wb) = d.operands(x, w, b);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|t| xb[i * k + t] * wb[j * k + t]).sum();
                let mut v = alpha * dot + bias.map_or(0.0, |bb| bb[j]);
                v = activation(act, v);
                let o = (b * m + i) * n + j;
                if let Some(r) = residual {
                    v += r[o];
                }
                y[o] = v;
            }
        }
    }
    y
}
