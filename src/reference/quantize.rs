//! Reference for `kernels/quantize.cu` (launcher: `src/ops/quantize.rs`). Quantisation is done
//! in f32 exactly as the kernel does it (IEEE division, round half to even), so `q` and the
//! scales match the GPU bit for bit; the LayerNorm in front of it is f64 like the other references.

/// Per-token symmetric scale in f32: `absmax / 127`, or 1 for an all-zero row.
pub fn scale_of(absmax: f32) -> f32 {
    if absmax > 0.0 { absmax / 127.0 } else { 1.0 }
}

/// `round_half_even(v / s)` saturated to int8, in f32 as the kernel computes it.
pub fn quant(v: f32, s: f32) -> i8 {
    (v / s).round_ties_even().clamp(-128.0, 127.0) as i8
}

/// Quantises each row of `x` (rows of length `n`, values already in f32 range) per token.
/// Returns `(q, scales)`.
pub fn quantize_rows(x: &[f64], n: usize) -> (Vec<i8>, Vec<f32>) {
    let n = n.max(1);
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / n);
    for row in x.chunks(n) {
        let absmax = row.iter().fold(0f32, |m, &v| m.max((v as f32).abs()));
        let s = scale_of(absmax);
        scales.push(s);
        q.extend(row.iter().map(|&v| quant(v as f32, s)));
    }
    (q, scales)
}

/// `q · s[row]` (or `s[0]` when `scales` has one entry).
pub fn dequantize_rows(q: &[i8], scales: &[f64], n: usize) -> Vec<f64> {
    let n = n.max(1);
    q.iter()
        .enumerate()
        .map(|(i, &v)| {
            f64::from(v)
                * if scales.len() == 1 {
                    scales[0]
                } else {
                    scales[i / n]
                }
        })
        .collect()
}
