//! Reference for `kernels/preprocess.cu` (launcher: `src/ops/preprocess.rs`).

/// Source position and the two neighbours' weights of output index `dst` along one axis, as
/// PyTorch's `upsample_bilinear2d` (align_corners = false, no antialias) computes them:
/// `src = max((dst + 0.5)·in/out − 0.5, 0)`, `i0 = floor(src)`, `i1 = min(i0 + 1, in − 1)`.
/// Returns `(i0, i1, weight of i0, weight of i1)`.
pub fn bilinear_taps(dst: usize, input: usize, output: usize) -> (usize, usize, f64, f64) {
    let scale = input as f64 / output as f64;
    let src = ((dst as f64 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(input - 1);
    let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
    let l1 = src - i0 as f64;
    (i0, i1, 1.0 - l1, l1)
}

/// How raw values become `t` before resizing: `t = (v − lo) / range`, clamped to `[0, 1]`
/// when `clamp01`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueMap {
    pub lo: f64,
    pub range: f64,
    pub clamp01: bool,
}

impl ValueMap {
    pub fn apply(&self, v: f64) -> f64 {
        let t = (v - self.lo) / self.range;
        if self.clamp01 { t.clamp(0.0, 1.0) } else { t }
    }
}

/// `x [n, hin, win, cin]` raw pixels → `[n, hout, wout, cout]`: per source pixel `t = map(v)`,
/// bilinear resize, then `(r − mean[c]) / std[c]`. Output channel `c` reads input channel
/// `c` (colour; RGBA's alpha is never read) or 0 (grey, replicated when `cout == 3`).
pub fn preprocess<T: Copy + Into<f64>>(
    x: &[T],
    (n, hin, win, cin): (usize, usize, usize, usize),
    (hout, wout, cout): (usize, usize, usize),
    map: ValueMap,
    mean: &[f64],
    std: &[f64],
) -> Vec<f64> {
    let mut y = vec![0.0; n * hout * wout * cout];
    for b in 0..n {
        for oh in 0..hout {
            let (y0, y1, wy0, wy1) = bilinear_taps(oh, hin, hout);
            for ow in 0..wout {
                let (x0, x1, wx0, wx1) = bilinear_taps(ow, win, wout);
                for c in 0..cout {
                    let ci = if cin == 1 { 0 } else { c };
                    let t = |yy: usize, xx: usize| {
                        map.apply(x[((b * hin + yy) * win + xx) * cin + ci].into())
                    };
                    let r = wy0 * (wx0 * t(y0, x0) + wx1 * t(y0, x1))
                        + wy1 * (wx0 * t(y1, x0) + wx1 * t(y1, x1));
                    y[((b * hout + oh) * wout + ow) * cout + c] = (r - mean[c]) / std[c];
                }
            }
        }
    }
    y
}
