//! Reference for `kernels/conv_transpose.cu` (launcher: `src/ops/conv_transpose.rs`).

use crate::ops::Activation;
use crate::reference::elementwise::activation;

/// Shapes of one transposed conv2d (PyTorch `ConvTranspose2d`, dilation 1, groups 1), NHWC:
/// x `[n, in_h, in_w, c_in]`, w `[k_h, k_w, c_in, c_out]`, y `[n, out_h, out_w, c_out]` with
/// `out_h = (in_h − 1)·stride_h − 2·pad_h + k_h + output_padding_h` (likewise for columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransposeGeom {
    pub n: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// `y = act(bias + Σ x·w)` in scatter form (the kernel gathers): every input position and tap
/// adds `x[n,ih,iw,ci]·w[kh,kw,ci,co]` to output `(ih·stride_h − pad_h + kh, iw·stride_w −
/// pad_w + kw)` when that lies inside the output. `bias` is `[c_out]` (missing: 0).
pub fn conv_transpose(
    x: &[f64],
    w: &[f64],
    g: &TransposeGeom,
    bias: Option<&[f64]>,
    act: Activation,
) -> Vec<f64> {
    let (ci_n, co_n) = (g.c_in, g.c_out);
    let mut y = vec![0.0; g.n * g.out_h * g.out_w * co_n];
    for b in 0..g.n {
        for ih in 0..g.in_h {
            for iw in 0..g.in_w {
                let xp = &x[((b * g.in_h + ih) * g.in_w + iw) * ci_n..][..ci_n];
                for kh in 0..g.k_h {
                    let oh = (ih * g.stride_h + kh) as isize - g.pad_h as isize;
                    if oh < 0 || oh as usize >= g.out_h {
                        continue;
                    }
                    for kw in 0..g.k_w {
                        let ow = (iw * g.stride_w + kw) as isize - g.pad_w as isize;
                        if ow < 0 || ow as usize >= g.out_w {
                            continue;
                        }
                        let o = ((b * g.out_h + oh as usize) * g.out_w + ow as usize) * co_n;
                        let wt = &w[(kh * g.k_w + kw) * ci_n * co_n..][..ci_n * co_n];
                        for (ci, &xv) in xp.iter().enumerate() {
                            for co in 0..co_n {
                                y[o + co] += xv * wt[ci * co_n + co];
                            }
                        }
                    }
                }
            }
        }
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v = activation(act, *v + bias.map_or(0.0, |b| b[i % co_n]));
    }
    y
}

/// PyTorch's `ConvTranspose2d` weight `[c_in, c_out, k_h, k_w]` in medkern's
/// `[k_h, k_w, c_in, c_out]` layout.
pub fn conv_transpose_weights_from_pytorch(
    w: &[f64],
    c_in: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; w.len()];
    for ci in 0..c_in {
        for co in 0..c_out {
            for t in 0..k_h * k_w {
                out[(t * c_in + ci) * c_out + co] = w[(ci * c_out + co) * k_h * k_w + t];
            }
        }
    }
    out
}
