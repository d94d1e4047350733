//! Reference for `kernels/softmax.cu` (launcher: `src/ops/softmax.rs`).

/// Row softmax of `x` (rows of length `n`) after `v·scale + mask`, where the mask holds
/// `mask_rows` rows and row `r` uses mask row `r / (rows / mask_rows)`. An entry the mask drops
/// (-inf) takes no part whatever `x` holds there (as in the fused attention). A row with a NaN
/// score is all NaN: NaN must not pass for "fully masked". A row with no finite entry (fully
/// masked) is all zeros.
pub fn softmax(x: &[f64], n: usize, mask: Option<&[f64]>, scale: f64) -> Vec<f64> {
    let n = n.max(1);
    let rows = x.len() / n;
    let mask_div = mask
        .map(|m| rows / (m.len() / n).max(1))
        .unwrap_or(1)
        .max(1);
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        let v: Vec<f64> = (0..n)
            .map(|c| {
                let m = mask.map_or(0.0, |m| m[(r / mask_div) * n + c]);
                if m == f64::NEG_INFINITY {
                    m
                } else {
                    x[r * n + c] * scale + m
                }
            })
            .collect();
        let row = &mut y[r * n..][..n];
        if v.iter().any(|t| t.is_nan()) {
            // f64::max below would drop the NaN, and a row of NaN would come out as zeros.
            row.fill(f64::NAN);
            continue;
        }
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            continue;
        }
        let e: Vec<f64> = v.iter().map(|&t| (t - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (o, ec) in row.iter_mut().zip(&e) {
            *o = ec / sum;
        }
    }
    y
}
