//! Reference for `kernels/pool.cu` (launcher: `src/ops/pool.rs`). NHWC throughout.

use crate::ops::conv_geom::Window;

/// Windowed max pooling of `x` `[n, in_h, in_w, c]` over the resolved window `w`: output
/// `[n, out_h, out_w, c]`. Padded positions are skipped (padding never wins); a NaN in the
/// window wins, as in PyTorch. A window with no real position gives −inf (the launcher rejects
/// such geometries).
pub fn max_pool(x: &[f64], n: usize, c: usize, w: &Window) -> Vec<f64> {
    window_pool(x, n, c, w, |vals| {
        vals.iter().fold(
            f64::NEG_INFINITY,
            |m, &v| {
                if v > m || v.is_nan() { v } else { m }
            },
        )
    })
}

/// Windowed average pooling: the sum of the real positions divided by `k_h·k_w`
/// (`count_include_pad`, PyTorch's default; with `ceil_mode = false` every window lies inside
/// the padded input) or by the number of real positions (TensorFlow's SAME average).
pub fn avg_pool(x: &[f64], n: usize, c: usize, w: &Window, count_include_pad: bool) -> Vec<f64> {
    let full = (w.k_h * w.k_w) as f64;
    window_pool(x, n, c, w, |vals| {
        let s: f64 = vals.iter().sum();
        s / if count_include_pad {
            full
        } else {
            vals.len() as f64
        }
    })
}

fn window_pool(
    x: &[f64],
    n: usize,
    c: usize,
    w: &Window,
    reduce: impl Fn(&[f64]) -> f64,
) -> Vec<f64> {
    let mut y = vec![0.0; n * w.out_h * w.out_w * c];
    let mut vals = Vec::with_capacity(w.k_h * w.k_w);
    for b in 0..n {
        for oh in 0..w.out_h {
            for ow in 0..w.out_w {
                for ch in 0..c {
                    vals.clear();
                    for kh in 0..w.k_h {
                        let ih = w.in_row(oh, kh);
                        if ih < 0 || ih >= w.in_h as isize {
                            continue;
                        }
                        for kw in 0..w.k_w {
                            let iw = w.in_col(ow, kw);
                            if iw < 0 || iw >= w.in_w as isize {
                                continue;
                            }
                            let (ih, iw) = (ih as usize, iw as usize);
                            vals.push(x[((b * w.in_h + ih) * w.in_w + iw) * c + ch]);
                        }
                    }
                    y[((b * w.out_h + oh) * w.out_w + ow) * c + ch] = reduce(&vals);
                }
            }
        }
    }
    y
}

/// Global average pool `[n, hw, c]` (any spatial shape flattened to `hw` positions) → `[n, c]`.
pub fn global_avg_pool(x: &[f64], n: usize, hw: usize, c: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * c];
    for b in 0..n {
        for p in 0..hw {
            for ch in 0..c {
                y[b * c + ch] += x[(b * hw + p) * c + ch];
            }
        }
    }
    let d = hw.max(1) as f64;
    y.iter_mut().for_each(|v| *v /= d);
    y
}
