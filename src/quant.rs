//! Offline weight quantisation (Q8BERT / Q-BERT style): symmetric int8 with one scale per output
//! channel or per group of K values, absmax or percentile clipping, and the signal-to-
//! quantisation-noise ratio that tells how much a tensor lost. Runs once on load, on the CPU.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// How the clipping threshold of a channel (or group) is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clip {
    /// The largest |w|: no clipping error, coarser steps when there are outliers.
    AbsMax,
    /// The given percentile (0 < p ≤ 100) of |w|: clips outliers for finer steps.
    Percentile(f64),
}

/// An int8 weight `[N, K]` with its scales, ready for `ops::gemm_i8`.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    /// Row-major `[N, K]` int8 values.
    pub q: Vec<i8>,
    /// `[N]` (per channel) or `[N, ceil(K / group_size)]` f32 scales.
    pub scales: Vec<f32>,
    pub n: usize,
    pub k: usize,
    /// 0 for per-channel scales.
    pub group_size: usize,
    /// 8 (values in -128..=127, f32 scales) or 4 (values in -8..=7, scales rounded to f16: the
    /// W4A16 GEMM keeps them in f16).
    pub bits: u8,
    /// 10·log10(Σw² / Σ(w − q·s)²) over the whole tensor, in dB (infinite when exact).
    pub sqnr_db: f64,
}

impl QuantizedWeight {
    /// The int8 values as a `[N, K]` tensor.
    pub fn q_tensor(&self) -> Result<HostTensor> {
        HostTensor::new(&[self.n, self.k], self.q.clone())
    }
    /// The scales as the `w_scale` tensor `ops::gemm_i8` expects.
    pub fn scale_tensor(&self) -> Result<HostTensor> {
        let shape = if self.group_size > 0 {
            vec![self.n, self.k.div_ceil(self.group_size)]
        } else {
            vec![self.n]
        };
        HostTensor::new(&shape, self.scales.clone())
    }
    /// `q · s` back in f64, for error analysis.
    pub fn dequantize(&self) -> Vec<f64> {
        let groups = if self.group_size > 0 {
            self.k.div_ceil(self.group_size)
        } else {
            1
        };
        let gs = if self.group_size > 0 {
            self.group_size
        } else {
            self.k.max(1)
        };
        (0..self.n * self.k)
            .map(|i| {
                let (r, c) = (i / self.k, i % self.k);
                f64::from(self.q[i]) * f64::from(self.scales[r * groups + c / gs])
            })
            .collect()
    }
}

/// Quantises a float weight `[N, K]` (a Linear layer) to int8. `group_size` 0 gives one scale
/// per output channel; otherwise a multiple of 64 (what the int8 GEMM folds per k-tile).
pub fn quantize_weight(w: &HostTensor, group_size: usize, clip: Clip) -> Result<QuantizedWeight> {
    quantize_bits("quantize_weight", w, group_size, clip, 8)
}

/// Quantises a float weight `[N, K]` to int4 (Q-BERT-style group-wise low bit) for the W4A16
/// GEMM: symmetric, values in -8..=7 (step = threshold / 7), one f16 scale per `group_size`
/// (64 or 128) values along K. The scales are rounded to f16 here, so `dequantize` is exactly
/// what the kernel multiplies.
pub fn quantize_weight_int4(
    w: &HostTensor,
    group_size: usize,
    clip: Clip,
) -> Result<QuantizedWeight> {
    if group_size != 64 && group_size != 128 {
        return Err(Error::Invalid {
            op: "quantize_weight_int4",
            arg: "group_size",
            detail: format!("{group_size}; expected 64 or 128"),
        });
    }
    quantize_bits("quantize_weight_int4", w, group_size, clip, 4)
}

fn quantize_bits(
    op: &'static str,
    w: &HostTensor,
    group_size: usize,
    clip: Clip,
    bits: u8,
) -> Result<QuantizedWeight> {
    if !w.dtype().is_float() {
        return Err(Error::DType {
            op,
            arg: "w",
            got: w.dtype(),
            expected: "f32, f16 or bf16".into(),
        });
    }
    let &[n, k] = w.shape() else {
        return Err(Error::Shape {
            op,
            arg: "w",
            got: w.shape().to_vec(),
            expected: "[N, K]".into(),
        });
    };
    if group_size % 64 != 0 {
        return Err(Error::Invalid {
            op,
            arg: "group_size",
            detail: format!("{group_size} is not 0 or a multiple of 64"),
        });
    }
    if let Clip::Percentile(p) = clip {
        if !(p > 0.0 && p <= 100.0) {
            return Err(Error::Invalid {
                op,
                arg: "clip",
                detail: format!("percentile {p} not in (0, 100]"),
            });
        }
    }
    let v = w.to_f64();
    let gs = if group_size > 0 { group_size } else { k.max(1) };
    let groups = k.div_ceil(gs).max(1);
    let mut q = vec![0i8; n * k];
    let mut scales = vec![1f32; n * groups];
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for r in 0..n {
        for g in 0..groups {
            let (c0, c1) = (g * gs, ((g + 1) * gs).min(k));
            let vals = &v[r * k + c0..r * k + c1];
            let mut mags: Vec<f64> = vals.iter().map(|x| x.abs()).collect();
            let thr = match clip {
                Clip::AbsMax => mags.iter().copied().fold(0.0, f64::max),
                Clip::Percentile(p) => {
                    mags.sort_by(f64::total_cmp);
                    let idx = ((p / 100.0) * (mags.len() as f64 - 1.0)).round() as usize;
                    mags.get(idx.min(mags.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(0.0)
                }
            };
            let s = if bits == 4 {
                // f16 scale; never below the smallest normal f16 so x / s stays finite.
                let s = DType::F16.round((thr / 7.0).max(6.103_515_625e-5));
                if !s.is_finite() {
                    return Err(Error::Invalid {
                        op,
                        arg: "w",
                        detail: format!(
                            "row {r}, group {g}: |w| up to {thr} needs a scale beyond f16's range (65504)"
                        ),
                    });
                }
                if thr > 0.0 { s as f32 } else { 1.0 }
            } else if thr > 0.0 {
                (thr / 127.0) as f32
            } else {
                1.0
            };
            scales[r * groups + g] = s;
            for (j, &x) in vals.iter().enumerate() {
                let qi = if bits == 4 {
                    (x / f64::from(s)).round_ties_even().clamp(-8.0, 7.0) as i8
                } else {
                    DType::I8.round(x / f64::from(s)) as i8
                };
                q[r * k + c0 + j] = qi;
                signal += x * x;
                let e = x - f64::from(qi) * f64::from(s);
                noise += e * e;
            }
        }
    }
    let sqnr_db = if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    };
    Ok(QuantizedWeight {
        q,
        scales,
        n,
        k,
        group_size,
        bits,
        sqnr_db,
    })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn int4_groups_round_within_half_a_step() {
        let (n, k) = (3, 200);
        // A smooth ramp with one planted outlier per row.
        let v: Vec<f64> = (0..n * k)
            .map(|i| {
                if i % k == 17 {
                    40.0
                } else {
                    ((i * 37 % 101) as f64 - 50.0) * 0.013
                }
            })
            .collect();
        let w = HostTensor::from_f64(&[n, k], &v, DType::F32).expect("tensor");
        let q = quantize_weight_int4(&w, 64, Clip::AbsMax).expect("quantize");
        assert_eq!((q.bits, q.group_size, q.scales.len()), (4, 64, n * 4));
        assert!(q.q.iter().all(|&x| (-8..=7).contains(&x)));
        for &s in &q.scales {
            assert_eq!(
                f64::from(s),
                DType::F16.round(f64::from(s)),
                "scale {s} not f16"
            );
        }
        let d = q.dequantize();
        let wv = w.to_f64();
        for i in 0..n * k {
            let s = f64::from(q.scales[(i / k) * 4 + (i % k) / 64]);
            assert!((d[i] - wv[i]).abs() <= 0.5 * s + 1e-12, "element {i}");
        }
        // The outlier's group keeps it exactly representable at the top of the range.
        assert_eq!(q.q[17], 7);
    }

    #[test]
    fn int4_refuses_bad_groups_and_huge_weights() {
        let w = HostTensor::from_f64(&[1, 64], &[1.0; 64], DType::F32).expect("tensor");
        let e = quantize_weight_int4(&w, 32, Clip::AbsMax).expect_err("group 32");
        assert!(e.to_string().contains("64 or 128"), "{e}");
        let big = HostTensor::from_f64(&[1, 64], &[1e6; 64], DType::F32).expect("tensor");
        let e = quantize_weight_int4(&big, 64, Clip::AbsMax).expect_err("huge");
        assert!(e.to_string().contains("f16"), "{e}");
    }
}
