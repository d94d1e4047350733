//! Reference for `kernels/attention.cu` (launcher: `src/ops/attention.rs`).
//!
//! Scores, softmax and P·V in f64 per (sequence, head, query row), with exactly the kernel's
//! masking rules: keys `j >= k_len` dropped, causal keeps `j <= i + k_len - q_len`, ALiBi adds
//! `-slope·|i + k_len - q_len - j|`, an additive bias adds its entry; a row with no key left is
//! zeros. [`attention_rounded`] is the same math done naively in a low precision (scores, P and
//! O rounded), the yardstick of the FlashAttention-style error bound in the tests.

/// One sequence of a batch: its query and key rows in the token-major tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRows {
    pub q_start: usize,
    pub q_len: usize,
    pub k_start: usize,
    pub k_len: usize,
}

/// Where element `(token, head, d)` lives in each operand: `token·tok + head·head + d`.
#[derive(Clone, Copy, Debug)]
pub struct Strides {
    pub tok: usize,
    pub head: usize,
}

/// Everything but the tensors.
#[derive(Clone, Debug)]
pub struct AttnProblem<'a> {
    pub seqs: &'a [SeqRows],
    pub heads: usize,
    pub head_dim: usize,
    pub q: Strides,
    pub k: Strides,
    pub v: Strides,
    /// Rows of the output `[out_tokens, heads, head_dim]`.
    pub out_tokens: usize,
    pub scale: f64,
    pub causal: bool,
    /// `[heads]` ALiBi slopes.
    pub alibi: Option<&'a [f64]>,
    /// Additive bias and its (batch, head, query) strides; the key stride is 1.
    pub bias: Option<(&'a [f64], [usize; 3])>,
}

/// Attention in f64. Output rows not covered by a sequence (padding) are zeros.
pub fn attention(q: &[f64], k: &[f64], v: &[f64], p: &AttnProblem) -> Vec<f64> {
    run(q, k, v, p, &|x| x)
}

/// The same math with scores, softmax probabilities and outputs rounded by `round` (products
/// still accumulate in f64): what an unfused implementation in the input precision computes.
pub fn attention_rounded(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    p: &AttnProblem,
    round: &dyn Fn(f64) -> f64,
) -> Vec<f64> {
    run(q, k, v, p, round)
}

/// The additive term of key `j` for query `i` of sequence `b`, head `h` (-inf when masked).
pub fn mask_term(p: &AttnProblem, b: usize, h: usize, i: usize, j: usize) -> f64 {
    let s = p.seqs[b];
    let pos = i as i64 + s.k_len as i64 - s.q_len as i64;
    if j >= s.k_len || (p.causal && j as i64 > pos) {
        return f64::NEG_INFINITY;
    }
    let mut t = 0.0;
    if let Some(a) = p.alibi {
        t -= a[h] * (pos - j as i64).abs() as f64;
    }
    if let Some((bias, [sb, sh, sq])) = p.bias {
        t += bias[b * sb + h * sh + i * sq + j];
    }
    t
}

fn run(q: &[f64], k: &[f64], v: &[f64], p: &AttnProblem, round: &dyn Fn(f64) -> f64) -> Vec<f64> {
    let (hn, dn) = (p.heads, p.head_dim);
    let mut out = vec![0.0; p.out_tokens * hn * dn];
    let mut scores = Vec::new();
    for (b, s) in p.seqs.iter().enumerate() {
        for h in 0..hn {
            for i in 0..s.q_len {
                let qrow = &q[(s.q_start + i) * p.q.tok + h * p.q.head..][..dn];
                scores.clear();
                let mut max = f64::NEG_INFINITY;
                let mut nan = false;
                for j in 0..s.k_len {
                    // A masked key takes no part, whatever its values (NaN included), as in
                    // the kernel, which sets its score to -inf.
                    let t = mask_term(p, b, h, i, j);
                    let x = if t == f64::NEG_INFINITY {
                        t
                    } else {
                        let krow = &k[(s.k_start + j) * p.k.tok + h * p.k.head..][..dn];
                        let dot: f64 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                        round(dot * p.scale) + t
                    };
                    nan |= x.is_nan();
                    max = max.max(x);
                    scores.push(x);
                }
                let orow = &mut out[((s.q_start + i) * hn + h) * dn..][..dn];
                if nan {
                    // A NaN score makes the whole softmax row NaN (f64::max would drop it and
                    // a row of NaN scores would pass for fully masked).
                    orow.fill(f64::NAN);
                    continue;
                }
                if max == f64::NEG_INFINITY {
                    continue; // no key left: zeros
                }
                let sum: f64 = scores.iter().map(|&x| (x - max).exp()).sum();
                for (j, &x) in scores.iter().enumerate() {
                    let pj = round((x - max).exp() / sum);
                    if pj == 0.0 {
                        continue;
                    }
                    let vrow = &v[(s.k_start + j) * p.v.tok + h * p.v.head..][..dn];
                    for (o, &vv) in orow.iter_mut().zip(vrow) {
                        *o += pj * vv;
                    }
                }
                for o in orow.iter_mut() {
                    *o = round(*o);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem<'a>(seqs: &'a [SeqRows], causal: bool) -> AttnProblem<'a> {
        let st = Strides { tok: 2, head: 2 };
        AttnProblem {
            seqs,
            heads: 1,
            head_dim: 2,
            q: st,
            k: st,
            v: st,
            out_tokens: 3,
            scale: 1.0,
            causal,
            alibi: None,
            bias: None,
        }
    }

    #[test]
    fn two_keys_by_hand() {
        // q = (1, 0); keys (1, 0) and (0, 0) -> scores 1 and 0; values (2, 0) and (0, 4).
        let seqs = [SeqRows {
            q_start: 0,
            q_len: 1,
            k_start: 0,
            k_len: 2,
        }];
        let q = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let k = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let v = [2.0, 0.0, 0.0, 4.0, 0.0, 0.0];
        let o = attention(&q, &k, &v, &problem(&seqs, false));
        let e = std::f64::consts::E;
        let (p0, p1) = (e / (e + 1.0), 1.0 / (e + 1.0));
        assert!((o[0] - 2.0 * p0).abs() < 1e-15);
        assert!((o[1] - 4.0 * p1).abs() < 1e-15);
        assert_eq!(&o[2..], &[0.0; 4]); // rows outside the sequence stay zero
    }

    #[test]
    fn causal_bottom_right_and_fully_masked_rows() {
        // 3 queries over 1 key, causal bottom-right: only the last query sees key 0.
        let seqs = [SeqRows {
            q_start: 0,
            q_len: 3,
            k_start: 0,
            k_len: 1,
        }];
        let q = [1.0; 6];
        let k = [1.0, 1.0, 9.0, 9.0, 9.0, 9.0];
        let v = [3.0, -5.0, 7.0, 7.0, 7.0, 7.0];
        let o = attention(&q, &k, &v, &problem(&seqs, true));
        assert_eq!(&o[..4], &[0.0; 4]);
        assert_eq!(&o[4..], &[3.0, -5.0]);
    }
}
