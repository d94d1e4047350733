//! Reference for `kernels/gemm_int8.cu` (launcher: `src/ops/gemm_int8.rs`).

use crate::ops::Activation;
use crate::reference::elementwise::activation;
use crate::reference::gemm::GemmDims;

/// Exact int32 accumulators `x·wᵀ` (i64 internally; the kernel's s32 cannot overflow for
/// K < 2^17). This is what the GPU's raw output must equal bit for bit.
pub fn gemm_i8_acc(x: &[i8], w: &[i8], d: GemmDims) -> Vec<i64> {
    // One group spanning K: the layout [batch·M, N, 1] is exactly [batch·M, N].
    gemm_i8_group_acc(x, w, d, d.k.max(1))
}

/// Exact per-group partial sums `Σ_{t in group g} x·w` as `[batch·M, N, groups]`.
pub fn gemm_i8_group_acc(x: &[i8], w: &[i8], d: GemmDims, group: usize) -> Vec<i64> {
    let GemmDims {
        batch,
        m,
        n,
        k,
        shared_w: _,
    } = d;
    let groups = k.div_ceil(group).max(1);
    let mut y = vec![0i64; batch * m * n * groups];
    for b in 0..batch {
        let (xb, wb) = d.operands(x, w, b);
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    y[((b * m + i) * n + j) * groups + t / group] +=
                        i64::from(xb[i * k + t]) * i64::from(wb[j * k + t]);
                }
            }
        }
    }
    y
}

/// Scales and epilogue of a dequantising int8 GEMM.
#[derive(Clone, Debug)]
pub struct I8Epilogue<'a> {
    /// Activation scale: one value, or one per row (`batch·M`, per token).
    pub sx: &'a [f64],
    /// Weight scales: `[N]` per channel, or `[N, groups]` with `group_size > 0`.
    pub sw: &'a [f64],
    pub group_size: usize,
    pub alpha: f64,
    pub bias: Option<&'a [f64]>,
    pub act: Activation,
    pub residual: Option<&'a [f64]>,
    /// Requantise to int8 with this scale (round half to even, saturate) instead of dequantising.
    pub out_scale: Option<f64>,
}

/// `act(alpha · sx[row] · Σ_g sw[col, g] · acc_g + bias) (+ residual)`, or its requantised int8
/// value, in f64 from the exact integer sums.
pub fn gemm_i8(x: &[i8], w: &[i8], d: GemmDims, e: &I8Epilogue) -> Vec<f64> {
    let rows = d.batch * d.m;
    let groups = if e.group_size > 0 {
        d.k.div_ceil(e.group_size).max(1)
    } else {
        1
    };
    let acc = if e.group_size > 0 {
        gemm_i8_group_acc(x, w, d, e.group_size)
    } else {
        gemm_i8_acc(x, w, d)
    };
    let mut y = vec![0.0; rows * d.n];
    for r in 0..rows {
        let sx = if e.sx.len() == 1 { e.sx[0] } else { e.sx[r] };
        for c in 0..d.n {
            let o = r * d.n + c;
            let dot: f64 = (0..groups)
                .map(|g| acc[o * groups + g] as f64 * e.sw[c * groups + g])
                .sum();
            let mut v = activation(e.act, dot * sx * e.alpha + e.bias.map_or(0.0, |b| b[c]));
            if let Some(s) = e.out_scale {
                v = (v / s).round_ties_even().clamp(-128.0, 127.0);
            } else if let Some(res) = e.residual {
                v += res[o];
            }
            y[o] = v;
        }
    }
    y
}
