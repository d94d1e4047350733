//! Fused attention (`kernels/attention.cu`, `src/ops/attention.rs`): GPU against the f64
//! reference in FlashAttention's manner (the kernel's error is at most twice that of the same
//! math done naively in the input precision), over ragged padded and packed batches, causal or
//! not, ALiBi, bias tensors with fully masked rows, every head dim, uneven head counts, separate
//! and packed QKV; packed and padded layouts must agree bit for bit; bad input is an `Err`.

mod common;
use common::*;
use medkern::ops::{self, Attention, BLOCK_ROWS, HEAD_DIMS, Qkv, SeqBatch};
use medkern::reference::attention::{self as reference, AttnProblem, SeqRows, Strides};
use medkern::{DType, Device, Error, Tensor};
use proptest::prelude::*;

/// Sequence lengths the issue names.
const LENS: [usize; 11] = [1, 7, 97, 128, 200, 256, 257, 384, 512, 1025, 2048];

/// One attention problem with its host data.
#[derive(Clone, Debug)]
struct Case {
    dt: DType,
    d: usize,
    heads: usize,
    q_lens: Vec<usize>,
    k_lens: Vec<usize>,
    /// Rows per sequence when padded (q, k); None = packed.
    padded: Option<(usize, usize)>,
    /// One `[tokens, 3, heads, d]` tensor (self-attention only).
    qkv_packed: bool,
    causal: bool,
    scale: Option<f32>,
    alibi: Option<Vec<f64>>,
    /// Values and shape `[1 or batch, heads, bq, bk]`.
    bias: Option<(Vec<f64>, [usize; 4])>,
    /// Forced query rows per CTA (64 or 128); None lets the launcher pick.
    block_rows: Option<usize>,
}

struct Data {
    /// Separate q `[tq, h, d]`, k/v `[tk, h, d]`, or the packed `[t, 3, h, d]` in `q`.
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

impl Case {
    fn rows(&self) -> Vec<SeqRows> {
        let mut rows = Vec::new();
        let (mut qs, mut ks) = (0, 0);
        for (b, (&ql, &kl)) in self.q_lens.iter().zip(&self.k_lens).enumerate() {
            match self.padded {
                Some((mq, mk)) => rows.push(SeqRows {
                    q_start: b * mq,
                    q_len: ql,
                    k_start: b * mk,
                    k_len: kl,
                }),
                None => {
                    rows.push(SeqRows {
                        q_start: qs,
                        q_len: ql,
                        k_start: ks,
                        k_len: kl,
                    });
                    qs += ql;
                    ks += kl;
                }
            }
        }
        rows
    }
    fn tokens(&self) -> (usize, usize) {
        match self.padded {
            Some((mq, mk)) => (self.q_lens.len() * mq, self.q_lens.len() * mk),
            None => (self.q_lens.iter().sum(), self.k_lens.iter().sum()),
        }
    }
    fn batch(&self, dev: &Device) -> SeqBatch {
        match self.padded {
            Some((mq, mk)) => SeqBatch::padded_cross(dev, &self.q_lens, mq, &self.k_lens, mk),
            None => {
                let cu = |l: &[usize]| {
                    let mut c = vec![0];
                    for &x in l {
                        c.push(c.last().unwrap() + x);
                    }
                    c
                };
                SeqBatch::packed_cross(dev, &cu(&self.q_lens), &cu(&self.k_lens))
            }
        }
        .expect("batch")
    }
    fn data(&self, rng: &mut SeedRng) -> Data {
        let (tq, tk) = self.tokens();
        let hd = self.heads * self.d;
        if self.qkv_packed {
            Data {
                q: random_values(rng, tq * 3 * hd, 1.0, self.dt),
                k: vec![],
                v: vec![],
            }
        } else {
            Data {
                q: random_values(rng, tq * hd, 1.0, self.dt),
                k: random_values(rng, tk * hd, 1.0, self.dt),
                v: random_values(rng, tk * hd, 1.0, self.dt),
            }
        }
    }
    fn scale(&self) -> f64 {
        f64::from(self.scale.unwrap_or(1.0 / (self.d as f32).sqrt()))
    }
    /// The f64 reference, or with `round` the naive low-precision computation.
    fn reference(&self, x: &Data, round: Option<&dyn Fn(f64) -> f64>) -> Vec<f64> {
        let rows = self.rows();
        let hd = self.heads * self.d;
        let (st, offs) = if self.qkv_packed {
            (
                Strides {
                    tok: 3 * hd,
                    head: self.d,
                },
                [0, hd, 2 * hd],
            )
        } else {
            (
                Strides {
                    tok: hd,
                    head: self.d,
                },
                [0; 3],
            )
        };
        let (q, k, v) = if self.qkv_packed {
            (&x.q[offs[0]..], &x.q[offs[1]..], &x.q[offs[2]..])
        } else {
            (&x.q[..], &x.k[..], &x.v[..])
        };
        let bias_strides = self.bias.as_ref().map(|(_, s)| {
            [
                if s[0] == 1 { 0 } else { s[1] * s[2] * s[3] },
                s[2] * s[3],
                s[3],
            ]
        });
        let p = AttnProblem {
            seqs: &rows,
            heads: self.heads,
            head_dim: self.d,
            q: st,
            k: st,
            v: st,
            out_tokens: self.tokens().0,
            scale: self.scale(),
            causal: self.causal,
            alibi: self.alibi.as_deref(),
            bias: self
                .bias
                .as_ref()
                .map(|(b, _)| b.as_slice())
                .zip(bias_strides),
        };
        match round {
            None => reference::attention(q, k, v, &p),
            Some(r) => reference::attention_rounded(q, k, v, &p, r),
        }
    }
    /// Runs the fused op (or the unfused path) on `dev` into a poisoned output.
    fn run(&self, dev: &Device, x: &Data, unfused: bool) -> Result<Vec<f64>, Error> {
        let (tq, tk) = self.tokens();
        let (h, d, dt) = (self.heads, self.d, self.dt);
        let batch = self.batch(dev);
        let alibi = self
            .alibi
            .as_ref()
            .map(|a| upload(dev, &[h], a, DType::F32));
        let bias = self
            .bias
            .as_ref()
            .map(|(b, s)| upload(dev, s, b, DType::F32));
        let a = Attention {
            scale: self.scale,
            causal: self.causal,
            alibi: alibi.as_ref(),
            bias: bias.as_ref(),
            block_rows: self.block_rows,
        };
        let (qt, kt, vt);
        let qkv = if self.qkv_packed {
            qt = upload(dev, &[tq, 3, h, d], &x.q, dt);
            Qkv::Packed(&qt)
        } else {
            qt = upload(dev, &[tq, h, d], &x.q, dt);
            kt = upload(dev, &[tk, h, d], &x.k, dt);
            vt = upload(dev, &[tk, h, d], &x.v, dt);
            Qkv::Separate {
                q: &qt,
                k: &kt,
                v: &vt,
            }
        };
        let mut out = poisoned(dev, &[tq, h, d], dt);
        if unfused {
            ops::UnfusedPlan::new(qkv, &batch, &a)?.run_into(qkv, &batch, &a, &mut out)?;
        } else {
            ops::attention_into(qkv, &batch, &a, &mut out)?;
        }
        Ok(out.to_host()?.to_f64())
    }
}

/// Largest |a - b| (NaN counts as infinite).
fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let e = (x - y).abs();
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}

/// FlashAttention's criterion, per output row (one token of one head): the row's error against
/// the f64 reference at most twice the naive input-precision computation's error at that row's
/// scale, plus half an output ulp of the row's largest value and one rounding of P
/// (u·Σ p_j|v_j|). Taken as one number over the whole output, the largest rows' error budget
/// hid a dropped key in a small row.
fn check_fa_bound(case: &Case, x: &Data, got: &[f64], what: &str) -> Result<(), String> {
    let want = case.reference(x, None);
    let dt = case.dt;
    let naive = case.reference(x, Some(&|v| dt.round(v)));
    // Σ_j p_j·|v_j|: the scale of the error of rounding P to the dtype before P·V (the kernel
    // rounds P once, as the naive computation does).
    let mag = case.reference(&abs_v(case, x), None);
    let d = case.d;
    let u = dt.unit_roundoff();
    let rows: Vec<(f64, f64, f64)> = want
        .chunks(d)
        .zip(naive.chunks(d))
        .zip(mag.chunks(d))
        .map(|((w, n), a)| {
            let peak = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let mag = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            (max_err(n, w), peak, mag)
        })
        .collect();
    // The naive error of one row is a random variable that can be near zero by chance (in a row
    // with few keys, or where the roundings cancel), so a row's budget is twice the larger of
    // its own naive error and the worst naive error relative to scale over the whole output,
    // applied to this row's scale. A small row keeps a small budget: a dropped key fails there.
    let floor = min_step(dt) / u;
    let nu = rows
        .iter()
        .map(|&(n, peak, mag)| n / (peak + mag + floor))
        .fold(0.0f64, f64::max);
    // (ratio err/bound, row, err, bound, naive err) of the worst row.
    let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64, 0.0f64);
    for (r, (g, w)) in got.chunks(d).zip(want.chunks(d)).enumerate() {
        let (naive_err, peak, mag) = rows[r];
        let err = max_err(g, w);
        let bound =
            2.0 * naive_err.max(nu * (peak + mag + floor)) + u * (peak + mag) + min_step(dt);
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else {
            err / bound
        };
        if ratio > worst.0 {
            worst = (ratio, r, err, bound, naive_err);
        }
    }
    if worst.0 <= 1.0 {
        return Ok(());
    }
    let (_, r, err, bound, naive_err) = worst;
    let row = |v: &[f64]| {
        v[r * d..(r + 1) * d]
            .iter()
            .take(4)
            .copied()
            .collect::<Vec<_>>()
    };
    let (heads, tok) = (case.heads, r / case.heads);
    Err(format!(
        "{what}: row {r} (token {tok}, head {}): error {err:e} > bound {bound:e} (naive {naive_err:e}); got {:?}.. want {:?}..; case {:?}",
        r % heads,
        row(got),
        row(&want),
        Case {
            bias: case.bias.as_ref().map(|(_, s)| (vec![], *s)),
            ..case.clone()
        }
    ))
}

/// The same inputs with V replaced by |V| (in the packed layout, the V third of each token).
fn abs_v(case: &Case, x: &Data) -> Data {
    let hd = case.heads * case.d;
    if case.qkv_packed {
        let q =
            x.q.iter()
                .enumerate()
                .map(|(i, v)| if (i / hd) % 3 == 2 { v.abs() } else { *v })
                .collect();
        Data {
            q,
            k: vec![],
            v: vec![],
        }
    } else {
        Data {
            q: x.q.clone(),
            k: x.k.clone(),
            v: x.v.iter().map(|v| v.abs()).collect(),
        }
    }
}

/// The shape of a random case and its discrete choices, as the property tests draw (and shrink)
/// them; [`Spec::case`] fits it to a work budget and draws the bias values.
#[derive(Clone, Debug)]
struct Spec {
    bf16: bool,
    /// Index into HEAD_DIMS.
    d: usize,
    heads: usize,
    /// Per sequence: query rows; for cross-attention, no keys at all, or (the fraction) keys
    /// from half the query rows up to 1.5× + 8.
    seqs: Vec<(usize, bool, f64)>,
    packed: bool,
    cross: bool,
    /// Padding rows past the longest sequence (q, k), when not packed.
    pad: (usize, usize),
    causal: bool,
    alibi: bool,
    /// Rows and columns past the longest sequences, and one bias per batch entry (else one).
    bias: Option<(usize, usize, bool)>,
    /// The scale 0.05 + 0.3·u (None: 1/√d).
    scale: Option<f64>,
    qkv_packed: bool,
    /// Index into [None, Some(64), Some(128)].
    block_rows: usize,
}

/// Random problems: f16/bf16, every head dim, 1-3 heads, 1-4 sequences of the lengths
/// (two thirds of the draws) or any up to 300, packed or padded, a quarter cross-attention, a
/// quarter with ALiBi or a bias tensor, causal or not.
fn spec() -> impl Strategy<Value = Spec> {
    let len = Dim::default().uniform(11, 1, 300).sizes(2, &LENS);
    let seq = (len, prop::bool::weighted(0.25), 0.0..1.0f64);
    (
        (any::<bool>(), 0..HEAD_DIMS.len(), 1..=3usize),
        prop::collection::vec(seq, 1..=4),
        (
            any::<bool>(),
            prop::bool::weighted(0.25),
            (0..20usize, 0..20usize),
        ),
        (any::<bool>(), prop::bool::weighted(0.25)),
        prop::option::weighted(0.25, (0..3usize, 0..3usize, any::<bool>())),
        prop::option::weighted(1.0 / 3.0, 0.0..1.0f64),
        (any::<bool>(), 0..3usize),
    )
        .prop_map(
            |(
                (bf16, d, heads),
                seqs,
                (packed, cross, pad),
                (causal, alibi),
                bias,
                scale,
                (qkv_packed, block_rows),
            )| Spec {
                bf16,
                d,
                heads,
                seqs,
                packed,
                cross,
                pad,
                causal,
                alibi,
                bias,
                scale,
                qkv_packed,
                block_rows,
            },
        )
}

impl Spec {
    /// The case, its query rows halved (longest first) until the f64 reference's work fits
    /// `budget`; the bias values (with -inf entries, a fully masked row and a row at -f32::MAX)
    /// come from `rng`.
    fn case(&self, budget: usize, rng: &mut SeedRng) -> Case {
        let d = HEAD_DIMS[self.d];
        let heads = self.heads;
        let nb = self.seqs.len();
        let mut q_lens: Vec<usize> = self.seqs.iter().map(|s| s.0).collect();
        fit_budget(&mut q_lens, heads * d, budget);
        let k_lens: Vec<usize> = if self.cross {
            q_lens
                .iter()
                .zip(&self.seqs)
                .map(|(&l, &(_, no_keys, f))| {
                    if no_keys {
                        0 // every query row is fully masked
                    } else {
                        (l / 2 + (f * (l + 8) as f64) as usize).max(1)
                    }
                })
                .collect()
        } else {
            q_lens.clone()
        };
        let padded = (!self.packed).then(|| {
            let mq = q_lens.iter().max().unwrap() + self.pad.0;
            let mk = k_lens.iter().max().unwrap() + self.pad.1;
            if self.cross { (mq, mk) } else { (mq, mq) }
        });
        let alibi = self.alibi.then(|| alibi_slopes(heads));
        let bias = self.bias.map(|(extra_q, extra_k, per_batch)| {
            let bq = q_lens.iter().max().unwrap() + extra_q;
            let bk = k_lens.iter().max().unwrap().max(&1) + extra_k;
            let bb = if per_batch { nb } else { 1 };
            bias_values(rng, [bb, heads, bq, bk])
        });
        Case {
            dt: if self.bf16 { DType::BF16 } else { DType::F16 },
            d,
            heads,
            q_lens,
            k_lens,
            padded,
            qkv_packed: !self.cross && self.qkv_packed,
            causal: self.causal,
            scale: self.scale.map(|u| 0.05 + u as f32 * 0.3),
            alibi,
            bias,
            block_rows: [None, Some(64), Some(128)][self.block_rows],
        }
    }
}

/// Halves the longest of `q_lens` until the f64 reference's work (Σ len² · `per_row`) fits
/// `budget`.
fn fit_budget(q_lens: &mut [usize], per_row: usize, budget: usize) {
    while q_lens.iter().map(|l| l * l).sum::<usize>() * per_row > budget {
        let i = q_lens
            .iter()
            .enumerate()
            .max_by_key(|(_, l)| **l)
            .map(|(i, _)| i)
            .unwrap();
        q_lens[i] = (q_lens[i] / 2).max(1);
    }
}

/// ALiBi slopes 2^-(1 + h) for `heads` heads.
fn alibi_slopes(heads: usize) -> Vec<f64> {
    (0..heads).map(|h| 2f64.powi(-(1 + h as i32))).collect()
}

/// Bias values of shape `[bb, heads, bq, bk]` from `rng`: random, a tenth -inf, and one fully
/// masked query row (head 0, first batch entry, row 0), and one row at -f32::MAX, the "minimum
/// float" masks of Hugging Face: a finite bias, so the row is the plain average of V, not zeros
/// (the kernel once overflowed it to -inf).
fn bias_values(rng: &mut SeedRng, shape: [usize; 4]) -> (Vec<f64>, [usize; 4]) {
    let [bb, heads, bq, bk] = shape;
    let mut v = random_values(rng, bb * heads * bq * bk, 1.0, DType::F32);
    for x in v.iter_mut() {
        if rng.below(10) == 0 {
            *x = f64::NEG_INFINITY;
        }
    }
    for x in v.iter_mut().take(bk) {
        *x = f64::NEG_INFINITY;
    }
    if bq > 1 {
        for x in v.iter_mut().skip(bk).take(bk) {
            *x = f64::from(f32::MIN);
        }
    }
    (v, shape)
}

/// A random case within a work budget, decoded from a SplitMix seed as the property tests did
/// before their shapes became proptest values ([`Spec`]): kept, its draws unchanged, so that
/// the seeds that once failed (fused_failing_seeds_stay_fixed) still decode to the same cases
/// and data.
fn legacy_case(rng: &mut SeedRng, budget: usize) -> Case {
    let dt = if rng.below(2) == 0 {
        DType::F16
    } else {
        DType::BF16
    };
    let d = HEAD_DIMS[rng.below(5) as usize];
    let heads = 1 + rng.below(3) as usize;
    let nb = 1 + rng.below(4) as usize;
    let pick = |rng: &mut SeedRng| {
        if rng.below(3) == 0 {
            1 + rng.below(300) as usize
        } else {
            LENS[rng.below(LENS.len() as u64) as usize]
        }
    };
    let mut q_lens: Vec<usize> = (0..nb).map(|_| pick(rng)).collect();
    fit_budget(&mut q_lens, heads * d, budget);
    let packed = rng.below(2) == 0;
    let cross = rng.below(4) == 0;
    let k_lens: Vec<usize> = if cross {
        q_lens
            .iter()
            .map(|&l| {
                if rng.below(4) == 0 {
                    0 // no keys at all: every query row is fully masked
                } else {
                    (l / 2 + rng.below(l as u64 + 8) as usize).max(1)
                }
            })
            .collect()
    } else {
        q_lens.clone()
    };
    let padded = (!packed).then(|| {
        let mq = q_lens.iter().max().unwrap() + rng.below(20) as usize;
        let mk = k_lens.iter().max().unwrap() + rng.below(20) as usize;
        if cross { (mq, mk) } else { (mq, mq) }
    });
    let causal = rng.below(2) == 0;
    let alibi = (rng.below(4) == 0).then(|| alibi_slopes(heads));
    let bias = (rng.below(4) == 0).then(|| {
        let bq = q_lens.iter().max().unwrap() + rng.below(3) as usize;
        let bk = k_lens.iter().max().unwrap().max(&1) + rng.below(3) as usize;
        let bb = if rng.below(2) == 0 { 1 } else { nb };
        bias_values(rng, [bb, heads, bq, bk])
    });
    let scale = (rng.below(3) == 0).then(|| 0.05 + rng.uniform() as f32 * 0.3);
    Case {
        dt,
        d,
        heads,
        q_lens,
        k_lens,
        padded,
        qkv_packed: !cross && rng.below(2) == 0,
        causal,
        scale,
        alibi,
        bias,
        block_rows: [None, Some(64), Some(128)][rng.below(3) as usize],
    }
}

#[test]
fn fused_matches_reference_within_fa_bound() {
    let Some(dev) = test_device("fused_matches_reference_within_fa_bound") else {
        return;
    };
    check(file!(), 48, &(value_seed(), spec()), |(seed, spec)| {
        let mut rng = SeedRng::new(seed);
        let case = spec.case(1 << 23, &mut rng);
        let x = case.data(&mut rng);
        let got = case
            .run(&dev, &x, false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_fa_bound(&case, &x, &got, "fused").map_err(TestCaseError::fail)?;
        // Deterministic: a second launch is bit-identical.
        let again = case
            .run(&dev, &x, false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            got.iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "two launches differ"
        );
        Ok(())
    });
}

/// Seeds that failed once, kept. 820666393878681772 (fused, f16, d 32, causal, token 3 of 216
/// seeing four keys): the kernel's P rounding gave 7.6e-3 where the naive computation's happened
/// to give 4e-4 in that row. 16323035968386930955 (unfused, f16, d 32, 128 keys): 1.1e-2 against
/// a row whose naive error was 2.5e-3. Both failed a bound built from each row's own naive error
/// alone.
#[test]
fn fused_failing_seeds_stay_fixed() {
    let Some(dev) = test_device("fused_failing_seeds_stay_fixed") else {
        return;
    };
    // (seed, unfused path, budget of the test that drew it)
    let seeds: &[(u64, bool, usize)] = &[
        (820_666_393_878_681_772, false, 1 << 23),
        (16_323_035_968_386_930_955, true, 1 << 21),
    ];
    for &(seed, unfused, budget) in seeds {
        let mut rng = SeedRng::new(seed);
        let case = legacy_case(&mut rng, budget);
        let x = case.data(&mut rng);
        let got = case.run(&dev, &x, unfused).unwrap();
        check_fa_bound(&case, &x, &got, &format!("seed {seed}")).unwrap();
    }
}

#[test]
fn every_length_and_head_dim() {
    let Some(dev) = test_device("every_length_and_head_dim") else {
        return;
    };
    let mut rng = SeedRng::new(0xa77e);
    for (i, &len) in LENS.iter().enumerate() {
        for (j, &d) in HEAD_DIMS.iter().enumerate() {
            // The longest sequences with one head and the small head dims keep the CPU
            // reference affordable; every (length, head_dim) pair below 1025 runs.
            if len >= 1025 && d > 64 {
                continue;
            }
            let case = Case {
                dt: if (i + j) % 2 == 0 {
                    DType::F16
                } else {
                    DType::BF16
                },
                d,
                heads: if len >= 512 { 1 } else { 2 },
                q_lens: vec![len],
                k_lens: vec![len],
                padded: (j % 2 == 0).then_some((len + 3, len + 3)),
                qkv_packed: j % 2 == 1,
                causal: (i + j) % 3 == 0,
                scale: None,
                alibi: None,
                bias: None,
                // Independent of the dtype's parity (i + j): i / 2 walks 64, 64, 128, 128, ...
                // so every head dim meets all four (dtype, CTA rows) pairs among the first
                // four lengths. Pairing them (i + j or i alone) left a variant never launched.
                block_rows: Some(BLOCK_ROWS[(i / 2) % 2]),
            };
            let x = case.data(&mut rng);
            let got = case.run(&dev, &x, false).unwrap();
            check_fa_bound(&case, &x, &got, &format!("len {len} d {d}")).unwrap();
        }
    }
}

#[test]
fn packed_and_padded_agree_bit_for_bit() {
    let Some(dev) = test_device("packed_and_padded_agree_bit_for_bit") else {
        return;
    };
    // Same CTA shape for both layouts (the launcher's pick depends on the row count): drawn
    // here (`rows`), in place of the spec's.
    let strategy = (value_seed(), spec(), 0..BLOCK_ROWS.len());
    check(file!(), 16, &strategy, |(seed, spec, rows)| {
        let mut rng = SeedRng::new(seed);
        let mut case = spec.case(1 << 22, &mut rng);
        case.qkv_packed = false;
        case.bias = None; // bias coordinates are per sequence either way; keep it simple
        case.block_rows = Some(BLOCK_ROWS[rows]);
        let max_q = *case.q_lens.iter().max().unwrap();
        let max_k = *case.k_lens.iter().max().unwrap();
        let mut padded = case.clone();
        padded.padded = Some((max_q + 5, max_k + 3));
        let mut packed = case.clone();
        packed.padded = None;
        // Same per-sequence data in both layouts.
        let xp = packed.data(&mut rng);
        let (hd, (mq, mk)) = (case.heads * case.d, padded.padded.unwrap());
        let spread = |src: &[f64], lens: &[usize], max: usize| {
            let mut out = vec![0.0; lens.len() * max * hd];
            let mut at = 0;
            for (b, &l) in lens.iter().enumerate() {
                out[b * max * hd..][..l * hd].copy_from_slice(&src[at..at + l * hd]);
                at += l * hd;
            }
            out
        };
        let xd = Data {
            q: spread(&xp.q, &case.q_lens, mq),
            k: spread(&xp.k, &case.k_lens, mk),
            v: spread(&xp.v, &case.k_lens, mk),
        };
        let a = packed
            .run(&dev, &xp, false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b = padded
            .run(&dev, &xd, false)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let b_real = {
            let mut v = Vec::new();
            for (i, &l) in case.q_lens.iter().enumerate() {
                v.extend_from_slice(&b[i * mq * hd..][..l * hd]);
                // Padding rows are exact zeros.
                prop_assert!(
                    b[i * mq * hd + l * hd..(i + 1) * mq * hd]
                        .iter()
                        .all(|&z| z == 0.0 && z.is_sign_positive())
                );
            }
            v
        };
        prop_assert!(
            a.iter()
                .zip(&b_real)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "packed and padded layouts differ"
        );
        Ok(())
    });
}

#[test]
fn fully_masked_rows_are_zero() {
    let Some(dev) = test_device("fully_masked_rows_are_zero") else {
        return;
    };
    let mut rng = SeedRng::new(5);
    // Sequence 0 has no keys; sequence 1's row 0 is all -inf in the bias; sequence 2 is causal
    // with more queries than keys (its first rows see no key).
    for causal in [false, true] {
        let (h, d) = (3, 64);
        let q_lens = vec![9, 70, 20];
        let k_lens = vec![0, 70, 5];
        let (bq, bk) = (70, 70);
        let mut bias = random_values(&mut rng, 3 * h * bq * bk, 1.0, DType::F32);
        let b1 = h * bq * bk;
        for x in &mut bias[b1..b1 + bk] {
            *x = f64::NEG_INFINITY;
        }
        let case = Case {
            dt: DType::F16,
            d,
            heads: h,
            q_lens,
            k_lens,
            padded: Some((80, 72)),
            qkv_packed: false,
            causal,
            scale: None,
            alibi: None,
            bias: Some((bias, [3, h, bq, bk])),
            block_rows: Some(if causal { 128 } else { 64 }),
        };
        let x = case.data(&mut rng);
        let got = case.run(&dev, &x, false).unwrap();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "NaN or inf in the output"
        );
        let hd = h * d;
        assert!(got[..80 * hd].iter().all(|&v| v == 0.0), "no-key sequence");
        assert!(
            got[80 * hd..80 * hd + d].iter().all(|&v| v == 0.0),
            "bias row"
        );
        if causal {
            // Bottom-right: query i sees keys j <= i - 15, so rows 0..15 see nothing.
            assert!(
                got[160 * hd..175 * hd].iter().all(|&v| v == 0.0),
                "causal rows"
            );
        }
        check_fa_bound(&case, &x, &got, "masked").unwrap();
    }
}

#[test]
fn nan_scores_give_nan_rows() {
    // A NaN in one query makes that query's row NaN (not "fully masked" zeros); a NaN in a key
    // reaches only the rows that see that key: causally masked rows stay finite. The CPU
    // backend (the f64 reference) always, and the test device when there is one; the fused
    // op and the unfused path (whose softmax drops a masked key whatever its score, NaN
    // included: issue 15).
    let mut devs = vec![Device::Cpu];
    devs.extend(test_device("nan_scores_give_nan_rows"));
    let (h, d, len) = (2, 64, 40);
    let case = Case {
        dt: DType::F16,
        d,
        heads: h,
        q_lens: vec![len],
        k_lens: vec![len],
        padded: None,
        qkv_packed: false,
        causal: true,
        scale: None,
        alibi: None,
        bias: None,
        block_rows: None,
    };
    let mut x = case.data(&mut SeedRng::new(41));
    x.q[(5 * h) * d] = f64::NAN; // token 5, head 0
    x.k[(30 * h + 1) * d + 3] = f64::NAN; // token 30, head 1: seen by rows 30.. only
    let expect_nan = |tok: usize, head: usize| (tok == 5 && head == 0) || (head == 1 && tok >= 30);
    let want = case.reference(&x, None);
    for (dev, unfused) in devs.iter().flat_map(|d| [(d, false), (d, true)]) {
        let got = case.run(dev, &x, unfused).unwrap();
        for (r, (g, w)) in got.chunks(d).zip(want.chunks(d)).enumerate() {
            let (tok, head) = (r / h, r % h);
            let what = format!(
                "{} unfused {unfused}: token {tok} head {head}",
                dev.describe()
            );
            if expect_nan(tok, head) {
                assert!(
                    g.iter().all(|v| v.is_nan()),
                    "{what}: want NaN, got {:?}",
                    &g[..4]
                );
                assert!(w.iter().all(|v| v.is_nan()), "reference {what}");
            } else {
                for (a, b) in g.iter().zip(w) {
                    assert!(
                        (a - b).abs() <= 0.01 * (1.0 + b.abs()),
                        "{what}: got {a} want {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn unfused_path_matches_reference() {
    let Some(dev) = test_device("unfused_path_matches_reference") else {
        return;
    };
    check(file!(), 16, &(value_seed(), spec()), |(seed, spec)| {
        let mut rng = SeedRng::new(seed);
        let case = spec.case(1 << 21, &mut rng);
        let x = case.data(&mut rng);
        let got = case
            .run(&dev, &x, true)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The unfused path *is* the naive input-precision computation (with f32 softmax),
        // so it gets the same bound.
        check_fa_bound(&case, &x, &got, "unfused").map_err(TestCaseError::fail)?;
        Ok(())
    });
}

#[test]
fn unfused_pipeline_on_cpu_matches_reference() {
    // Runs everywhere: the unfused path's own plumbing (host gather, mask building, GEMM →
    // softmax → GEMM through the CPU backend, scatter) against the f64 reference.
    let mut rng = SeedRng::new(0x5eed);
    for spec in sample(&spec(), 12) {
        let case = spec.case(1 << 18, &mut rng);
        let x = case.data(&mut rng);
        let got = case.run(&Device::Cpu, &x, true).unwrap();
        check_fa_bound(&case, &x, &got, "unfused on cpu").unwrap();
    }
}

#[test]
fn cpu_backend_layouts_agree() {
    // Runs everywhere: the CPU path through the op's own offset handling, packed QKV vs separate.
    for (seed, spec) in (77..).zip(sample(&spec(), 4)) {
        cpu_layouts_case(&spec, seed);
    }
}

fn cpu_layouts_case(spec: &Spec, seed: u64) {
    let mut rng = SeedRng::new(seed);
    let mut case = spec.case(1 << 16, &mut rng);
    case.causal = seed % 2 == 0;
    case.k_lens = case.q_lens.clone();
    case.padded = None;
    case.qkv_packed = true;
    case.bias = None;
    case.alibi = None;
    let x = case.data(&mut rng);
    let got = case.run(&Device::Cpu, &x, false).unwrap();
    // Split the packed QKV into separate tensors and run again.
    let (t, hd) = (case.tokens().0, case.heads * case.d);
    let part = |p: usize| -> Vec<f64> {
        (0..t)
            .flat_map(|i| x.q[i * 3 * hd + p * hd..][..hd].to_vec())
            .collect()
    };
    let sep = Data {
        q: part(0),
        k: part(1),
        v: part(2),
    };
    let mut case2 = case.clone();
    case2.qkv_packed = false;
    let got2 = case2.run(&Device::Cpu, &sep, false).unwrap();
    assert_eq!(got, got2);
    // And it is softmax(scale·QKᵀ)·V, computed here from the packed layout directly (not through
    // the library's reference, which the CPU backend itself runs), rounded once to the dtype.
    let (h, d, dt) = (case.heads, case.d, case.dt);
    let scale = case.scale();
    let mut want = vec![0.0; t * hd];
    let mut start = 0;
    for &len in &case.q_lens {
        for head in 0..h {
            let at = |tok: usize, part: usize| (start + tok) * 3 * hd + part * hd + head * d;
            for i in 0..len {
                let keys = if case.causal { i + 1 } else { len };
                let s: Vec<f64> = (0..keys)
                    .map(|j| {
                        let (qi, kj) = (at(i, 0), at(j, 1));
                        scale * (0..d).map(|c| x.q[qi + c] * x.q[kj + c]).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 = (0..keys).map(|j| e[j] * x.q[at(j, 2) + c]).sum();
                    want[(start + i) * hd + head * d + c] = dt.round(o / z);
                }
            }
        }
        start += len;
    }
    // Both sides round an f64 value once: at most one ulp apart at a rounding boundary.
    check_close(
        "attention cpu vs direct",
        &got,
        &want,
        &|_| min_step(dt),
        2.0 * dt.unit_roundoff(),
    )
    .unwrap();
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Device::Cpu;
    let t = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::new(&cpu, shape, vec![half::f16::from_f32(0.25); n]).unwrap()
    };
    let batch = SeqBatch::padded(&cpu, &[3, 4], 4).unwrap();
    let a = Attention::default();
    // Unsupported head dim.
    let q = t(&[8, 2, 48]);
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &a,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                op: "attention",
                arg: "head_dim",
                ..
            }
        ) && e.to_string().contains("48"),
        "{e}"
    );
    // Lengths longer than the buffer; offsets not increasing; empty offsets.
    let e = SeqBatch::padded(&cpu, &[3, 5], 4).unwrap_err();
    assert!(e.to_string().contains("longer than the buffer"), "{e}");
    let e = SeqBatch::packed(&cpu, &[0, 5, 3]).unwrap_err();
    assert!(e.to_string().contains("not increasing"), "{e}");
    assert!(SeqBatch::packed(&cpu, &[0]).is_err());
    assert!(SeqBatch::packed(&cpu, &[2, 5]).is_err());
    // Token rows that do not match the batch.
    let q = t(&[7, 2, 64]);
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &a,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "q", .. }), "{e}");
    // k/v heads differ from q; dtype mismatch; packed QKV with the wrong shape.
    let q = t(&[8, 2, 64]);
    let k = t(&[8, 3, 64]);
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &k,
            v: &k,
        },
        &batch,
        &a,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "k", .. }), "{e}");
    let k32 = Tensor::new(&cpu, &[8, 2, 64], vec![0.5f32; 8 * 128]).unwrap();
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &k32,
            v: &k32,
        },
        &batch,
        &a,
    )
    .unwrap_err();
    assert!(matches!(e, Error::DType { arg: "k", .. }), "{e}");
    let e = ops::attention(Qkv::Packed(&t(&[8, 2, 2, 64])), &batch, &a).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "qkv", .. }), "{e}");
    // Bias too small for the longest sequence; ALiBi of the wrong length; non-finite scale.
    let small = Tensor::new(&cpu, &[1, 2, 4, 3], vec![0.0f32; 24]).unwrap();
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &Attention {
            bias: Some(&small),
            ..a
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "bias", .. }), "{e}");
    let slopes = Tensor::new(&cpu, &[3], vec![0.5f32; 3]).unwrap();
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &Attention {
            alibi: Some(&slopes),
            ..a
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "alibi", .. }), "{e}");
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &Attention {
            scale: Some(f32::NAN),
            ..a
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "scale", .. }), "{e}");
    let e = ops::attention(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &Attention {
            block_rows: Some(96),
            ..a
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "block_rows",
                ..
            }
        ),
        "{e}"
    );
    // An output of the wrong shape.
    let mut out = t(&[8, 2, 32]);
    let e = ops::attention_into(
        Qkv::Separate {
            q: &q,
            k: &q,
            v: &q,
        },
        &batch,
        &a,
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "out", .. }), "{e}");
}
