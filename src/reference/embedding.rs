//! Reference for `kernels/embedding.cu` (launcher: `src/ops/embedding.rs`).

/// `y[t] = word[ids[t]] + pos[positions[t]] + types[type_ids[t]]` with rows of length `h`
/// (the optional tables as `(table, ids)` pairs).
pub fn embedding(ids: &[u32], word: &[f64], extra: &[(&[f64], &[u32])], h: usize) -> Vec<f64> {
    let mut y = vec![0.0; ids.len() * h];
    for (t, &id) in ids.iter().enumerate() {
        let row = &mut y[t * h..(t + 1) * h];
        row.copy_from_slice(&word[id as usize * h..][..h]);
        for (table, tid) in extra {
            for (o, v) in row.iter_mut().zip(&table[tid[t] as usize * h..][..h]) {
                *o += v;
            }
        }
    }
    y
}
