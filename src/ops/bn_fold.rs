//! BatchNorm folding, offline (at load time), on host tensors: tests `tests/bn_fold.rs`. No
//! kernel: the folded weights feed the convolution / GEMM kernels, the per-channel
//! `(scale, shift)` pair their epilogues.
//!
//! Inference BatchNorm after a convolution, `BN(conv(x, w) + b) = (conv(x, w) + b − μ)·s + β`
//! with `s = γ/√(var + ε)`, equals `conv(x, w') + b'` with `w'[o, …] = w[o, …]·s[o]` and
//! `b' = (b − μ)·s + β`. Everything is computed in f64 from the stored values and rounded once.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

const OP: &str = "bn_fold";

/// Inference BatchNorm parameters, each `[OC]` (any float dtype): PyTorch's `weight` (γ),
/// `bias` (β), `running_mean`, `running_var` and `eps`.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a> {
    pub gamma: &'a HostTensor,
    pub beta: &'a HostTensor,
    pub running_mean: &'a HostTensor,
    pub running_var: &'a HostTensor,
    pub eps: f64,
}

/// A folded convolution: the weight in the original weight's dtype and shape, the bias `[OC]`
/// in the dtype asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct BnFolded {
    pub weight: HostTensor,
    pub bias: HostTensor,
}

/// The per-channel `(s, shift)` in f64: `s = γ/√(var + ε)`, `shift = (b − μ)·s + β`.
fn scale_shift(
    oc: usize,
    bias: Option<&HostTensor>,
    bn: &BatchNorm,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let vec = |arg: &'static str, t: &HostTensor| -> Result<Vec<f64>> {
        if !t.dtype().is_float() {
            return Err(Error::DType {
                op: OP,
                arg,
                got: t.dtype(),
                expected: "f32, f16 or bf16".into(),
            });
        }
        if t.shape() != [oc] {
            return Err(Error::Shape {
                op: OP,
                arg,
                got: t.shape().to_vec(),
                expected: format!("[{oc}] (the weight's output channels)"),
            });
        }
        Ok(t.to_f64())
    };
    if !(bn.eps.is_finite() && bn.eps >= 0.0) {
        return Err(Error::Invalid {
            op: OP,
            arg: "eps",
            detail: format!("{}; expected a finite value >= 0", bn.eps),
        });
    }
    let gamma = vec("gamma", bn.gamma)?;
    let beta = vec("beta", bn.beta)?;
    let mean = vec("running_mean", bn.running_mean)?;
    let var = vec("running_var", bn.running_var)?;
    let b = match bias {
        Some(t) => vec("bias", t)?,
        None => vec![0.0; oc],
    };
    let mut s = Vec::with_capacity(oc);
    for (o, &v) in var.iter().enumerate() {
        let d = v + bn.eps;
        if !(d.is_finite() && d > 0.0) {
            return Err(Error::Invalid {
                op: OP,
                arg: "running_var",
                detail: format!(
                    "channel {o}: var {v} + eps {} = {d}; expected a finite value > 0",
                    bn.eps
                ),
            });
        }
        s.push(gamma[o] / d.sqrt());
    }
    let shift = (0..oc).map(|o| (b[o] - mean[o]) * s[o] + beta[o]).collect();
    Ok((s, shift))
}

fn out_channels(w: &HostTensor) -> Result<usize> {
    match w.shape().first() {
        Some(&oc) if oc >= 1 && w.dtype().is_float() => Ok(oc),
        _ if !w.dtype().is_float() => Err(Error::DType {
            op: OP,
            arg: "weight",
            got: w.dtype(),
            expected: "f32, f16 or bf16".into(),
        }),
        _ => Err(Error::Shape {
            op: OP,
            arg: "weight",
            got: w.shape().to_vec(),
            expected: "[OC, ...] with OC >= 1 (e.g. [OC, KH, KW, IC])".into(),
        }),
    }
}

/// Folds `bn` into a convolution (or Linear) weight `w` `[OC, ...]` (any layout with output
/// channels first: `[OC, KH, KW, IC]`, `[OC, IC, KH, KW]`, `[OC, K]`) and its optional bias
/// `[OC]`: `w' = w·s`, `b' = (b − μ)·s + β`, `s = γ/√(var + ε)`. `w'` keeps w's dtype and shape;
/// `b'` is `[OC]` of `bias_dtype` (a float dtype).
pub fn fold_batchnorm(
    w: &HostTensor,
    bias: Option<&HostTensor>,
    bn: &BatchNorm,
    bias_dtype: DType,
) -> Result<BnFolded> {
    let oc = out_channels(w)?;
    if !bias_dtype.is_float() {
        return Err(Error::DType {
            op: OP,
            arg: "bias_dtype",
            got: bias_dtype,
            expected: "f32, f16 or bf16".into(),
        });
    }
    let (s, shift) = scale_shift(oc, bias, bn)?;
    let per = w.len() / oc;
    let wv: Vec<f64> = w
        .to_f64()
        .iter()
        .enumerate()
        .map(|(i, &v)| v * s[i / per.max(1)])
        .collect();
    Ok(BnFolded {
        weight: HostTensor::from_f64(w.shape(), &wv, w.dtype())?,
        bias: HostTensor::from_f64(&[oc], &shift, bias_dtype)?,
    })
}

/// The pair form for an epilogue `y = conv(x, w)·scale + shift` (the weights left as they
/// are): `scale = γ/√(var + ε)`, `shift = (b − μ)·scale + β`, both `[OC]` f32. `oc` is the
/// number of output channels; `bias` is the convolution's own bias, if any.
pub fn batchnorm_scale_shift(
    oc: usize,
    bias: Option<&HostTensor>,
    bn: &BatchNorm,
) -> Result<(HostTensor, HostTensor)> {
    let (s, shift) = scale_shift(oc, bias, bn)?;
    Ok((
        HostTensor::from_f64(&[oc], &s, DType::F32)?,
        HostTensor::from_f64(&[oc], &shift, DType::F32)?,
    ))
}

/// Inference BatchNorm on channels-last values `y [..., C]` in f64 (the reference the fold is
/// tested against): `(y − μ[c])/√(var[c] + ε)·γ[c] + β[c]`.
pub fn batchnorm_channels_last(
    y: &[f64],
    gamma: &[f64],
    beta: &[f64],
    mean: &[f64],
    var: &[f64],
    eps: f64,
) -> Vec<f64> {
    let c = gamma.len().max(1);
    y.iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = i % c;
            (v - mean[k]) / (var[k] + eps).sqrt() * gamma[k] + beta[k]
        })
        .collect()
}
