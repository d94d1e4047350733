//! Reference for `kernels/depthwise.cu` (launcher: `src/ops/depthwise.rs`).

use crate::ops::{Activation, Window};
use crate::reference::elementwise::activation;

/// Depthwise conv2d, NHWC, channel multiplier 1, with the fused epilogue:
/// `y[n,oh,ow,c] = act(scale[c]·Σ x[n, ih, iw, c]·w[kh, kw, c] + bias[c]) + residual[n,oh,ow,c]`
/// where `ih = oh·stride_h + kh·dil_h − pad_top` (likewise for columns) and positions outside
/// the image are zero padding. `x` is `[n, win.in_h, win.in_w, c]`, `w` is `[win.k_h, win.k_w, c]`,
/// `scale`/`bias` are `[c]` (missing: 1 / 0), the residual and `y` are `[n, win.out_h, win.out_w, c]`.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    x: &[f64],
    n: usize,
    c: usize,
    w: &[f64],
    win: &Window,
    scale: Option<&[f64]>,
    bias: Option<&[f64]>,
    act: Activation,
    residual: Option<&[f64]>,
) -> Vec<f64> {
    let (h, wd) = (win.in_h, win.in_w);
    let mut y = vec![0.0; n * win.out_h * win.out_w * c];
    for b in 0..n {
        for oh in 0..win.out_h {
            for ow in 0..win.out_w {
                let o = ((b * win.out_h + oh) * win.out_w + ow) * c;
                for kh in 0..win.k_h {
                    let ih = win.in_row(oh, kh);
                    if ih < 0 || ih as usize >= h {
                        continue;
                    }
                    for kw in 0..win.k_w {
                        let iw = win.in_col(ow, kw);
                        if iw < 0 || iw as usize >= wd {
                            continue;
                        }
                        let xi = ((b * h + ih as usize) * wd + iw as usize) * c;
                        let wi = (kh * win.k_w + kw) * c;
                        for ch in 0..c {
                            y[o + ch] += x[xi + ch] * w[wi + ch];
                        }
                    }
                }
                for ch in 0..c {
                    let v = y[o + ch] * scale.map_or(1.0, |s| s[ch]) + bias.map_or(0.0, |b| b[ch]);
                    y[o + ch] = activation(act, v) + residual.map_or(0.0, |r| r[o + ch]);
                }
            }
        }
    }
    y
}

/// PyTorch's depthwise weight `[C, 1, k_h, k_w]` (a `Conv2d(C, C, k, groups=C)`) in medkern's
/// `[k_h, k_w, C]` layout: `out[(kh·k_w + kw)·C + c] = w[(c·k_h + kh)·k_w + kw]`.
pub fn depthwise_weights_from_pytorch(w: &[f64], c: usize, k_h: usize, k_w: usize) -> Vec<f64> {
    let mut out = vec![0.0; c * k_h * k_w];
    for ch in 0..c {
        for t in 0..k_h * k_w {
            out[t * c + ch] = w[ch * k_h * k_w + t];
        }
    }
    out
}
