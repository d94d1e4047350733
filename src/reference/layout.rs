//! Reference for `kernels/layout.cu` (launcher: `src/ops/layout.rs`).

/// Batched transpose: `x [batch, rows, cols]` → `y [batch, cols, rows]`.
pub fn transpose(x: &[f64], batch: usize, rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; batch * rows * cols];
    for b in 0..batch {
        let base = b * rows * cols;
        for r in 0..rows {
            for c in 0..cols {
                y[base + c * rows + r] = x[base + r * cols + c];
            }
        }
    }
    y
}

/// `[n, c, h, w]` → `[n, h, w, c]`.
pub fn nchw_to_nhwc(x: &[f64], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<f64> {
    transpose(x, n, c, h * w)
}

/// `[n, h, w, c]` → `[n, c, h, w]`.
pub fn nhwc_to_nchw(x: &[f64], (n, h, w, c): (usize, usize, usize, usize)) -> Vec<f64> {
    transpose(x, n, h * w, c)
}
