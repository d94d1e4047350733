//! Reference for `kernels/upsample.cu` (launcher: `src/ops/upsample.rs`).
//!
//! Source positions follow PyTorch's `F.interpolate` given an output size, computed in f32
//! exactly as the kernel does (no fused multiply-add), so both pick the same source pixels; the
//! interpolation itself is f64.

use crate::ops::UpsampleMode;

/// The f32 scale PyTorch derives from the sizes: `in/out`, or `(in − 1)/(out − 1)` (0 for a
/// single output) for bilinear with `align_corners`.
pub fn scale(mode: UpsampleMode, input: usize, output: usize) -> f32 {
    match mode {
        UpsampleMode::Bilinear {
            align_corners: true,
        } => {
            if output > 1 {
                (input - 1) as f32 / (output - 1) as f32
            } else {
                0.0
            }
        }
        _ => input as f32 / output as f32,
    }
}

/// Nearest source index: `min(floor(dst·scale), in − 1)`, or with `(dst + 0.5)` for
/// nearest-exact.
pub fn nearest_index(dst: usize, scale: f32, input: usize, exact: bool) -> usize {
    let d = if exact { dst as f32 + 0.5 } else { dst as f32 };
    ((d * scale).floor() as usize).min(input - 1)
}

/// Bilinear source: (index, fraction, next index clamped to the input).
pub fn linear_source(
    dst: usize,
    scale: f32,
    input: usize,
    align_corners: bool,
) -> (usize, f64, usize) {
    let s = if align_corners {
        scale * dst as f32
    } else {
        (scale * (dst as f32 + 0.5) - 0.5).max(0.0)
    };
    let i0 = s as usize;
    (i0, f64::from(s) - i0 as f64, (i0 + 1).min(input - 1))
}

/// Resamples `x` `[n, in_h, in_w, c]` to `[n, out_h, out_w, c]`.
pub fn upsample(
    x: &[f64],
    [n, in_h, in_w, c]: [usize; 4],
    (out_h, out_w): (usize, usize),
    mode: UpsampleMode,
) -> Vec<f64> {
    let (sh, sw) = (scale(mode, in_h, out_h), scale(mode, in_w, out_w));
    let px = |b: usize, h: usize, w: usize| &x[((b * in_h + h) * in_w + w) * c..][..c];
    let mut y = Vec::with_capacity(n * out_h * out_w * c);
    for b in 0..n {
        for oh in 0..out_h {
            for ow in 0..out_w {
                match mode {
                    UpsampleMode::Nearest | UpsampleMode::NearestExact => {
                        let exact = mode == UpsampleMode::NearestExact;
                        let ih = nearest_index(oh, sh, in_h, exact);
                        let iw = nearest_index(ow, sw, in_w, exact);
                        y.extend_from_slice(px(b, ih, iw));
                    }
                    UpsampleMode::Bilinear { align_corners } => {
                        let (h0, lh, h1) = linear_source(oh, sh, in_h, align_corners);
                        let (w0, lw, w1) = linear_source(ow, sw, in_w, align_corners);
                        let (a, bb) = (px(b, h0, w0), px(b, h0, w1));
                        let (d, e) = (px(b, h1, w0), px(b, h1, w1));
                        for ch in 0..c {
                            y.push(
                                (1.0 - lh) * ((1.0 - lw) * a[ch] + lw * bb[ch])
                                    + lh * ((1.0 - lw) * d[ch] + lw * e[ch]),
                            );
                        }
                    }
                }
            }
        }
    }
    y
}
