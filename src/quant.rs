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
    const OP: &str = "quantize_weight";
    if !w.dtype().is_float() {
        return Err(Error::DType {
            op: OP,
            arg: "w",
            got: w.dtype(),
            expected: "f32, f16 or bf16".into(),
        });
    }
    let &[n, k] = w.shape() else {
        return Err(Error::Shape {
            op: OP,
            arg: "w",
            got: w.shape().to_vec(),
            expected: "[N, K]".into(),
        });
    };
    if group_size % 64 != 0 {
        return Err(Error::Invalid {
            op: OP,
            arg: "group_size",
            detail: format!("{group_size} is not 0 or a multiple of 64"),
        });
    }
    if let Clip::Percentile(p) = clip {
        if !(p > 0.0 && p <= 100.0) {
            return Err(Error::Invalid {
                op: OP,
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
            let s = if thr > 0.0 { (thr / 127.0) as f32 } else { 1.0 };
            scales[r * groups + g] = s;
            for (j, &x) in vals.iter().enumerate() {
                let qi = DType::I8.round(x / f64::from(s)) as i8;
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
        sqnr_db,
    })
}
