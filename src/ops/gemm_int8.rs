//! Int8 GEMM (W8A8): kernel `kernels/gemm_int8.cu`, reference `src/reference/gemm_int8.rs`,
//! tests `tests/gemm_int8.rs`, bench `benches/gemm_int8.rs`.
//!
//! X `[..., K]` and W `[N, K]` (or `[B, M, K]` with `[B, N, K]`) are int8; K % 16 == 0.
//! [`gemm_i8_raw`] returns the exact int32 accumulators (like `torch._int_mm`); [`gemm_i8`]
//! dequantises them with an activation scale (per tensor or per token) and weight scales (per
//! output channel, or per group of K values as in Q-BERT), applies bias/activation/residual,
//! and writes f16/bf16/f32, or requantises to int8 for the next int8 layer.

use super::gemm::{GemmParams, Operands, Tile, gemm_dims, launch_gemm};
use super::{Activation, Backend, backend, consts, dev, dev_mut, host, host_f64, kernel_name};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::reference::gemm::GemmDims;
use crate::reference::gemm_int8::I8Epilogue;
use crate::tensor::{HostTensor, Tensor};

const OP: &str = "gemm_i8";

/// Scales and epilogue of a dequantising (or requantising) int8 GEMM.
#[derive(Clone, Copy, Debug)]
pub struct GemmI8<'a> {
    /// f32 activation scale: `[1]` (per tensor) or one per row of X (per token).
    pub x_scale: &'a Tensor,
    /// f32 weight scales: `[N]` per channel, or `[N, ceil(K / group_size)]` per group.
    pub w_scale: &'a Tensor,
    /// K values per weight-scale group (a multiple of the 64-value k-tile), or 0 for per-channel
    /// scales.
    pub group_size: usize,
    pub alpha: f32,
    /// f32 `[N]`, added after dequantisation.
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    /// Y's shape in the output dtype (not with int8 output).
    pub residual: Option<&'a Tensor>,
    /// f16, bf16, f32, or i8 (requantised with `out_scale`).
    pub out_dtype: DType,
    pub out_scale: f32,
    pub tile: Option<Tile>,
}

impl<'a> GemmI8<'a> {
    /// Dequantise to `out_dtype` with the given scales, no bias/activation/residual.
    pub fn new(x_scale: &'a Tensor, w_scale: &'a Tensor, out_dtype: DType) -> Self {
        GemmI8 {
            x_scale,
            w_scale,
            group_size: 0,
            alpha: 1.0,
            bias: None,
            act: Activation::Identity,
            residual: None,
            out_dtype,
            out_scale: 1.0,
            tile: None,
        }
    }
}

fn check_i8(x: &Tensor, w: &Tensor) -> Result<(GemmDims, Vec<usize>)> {
    for (arg, t) in [("x", x), ("w", w)] {
        if t.dtype() != DType::I8 {
            return Err(Error::DType {
                op: OP,
                arg,
                got: t.dtype(),
                expected: "i8".into(),
            });
        }
    }
    let (d, ys) = gemm_dims(OP, x, w)?;
    if d.k == 0 || d.k % 16 != 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x.shape().to_vec(),
            expected: format!("K a positive multiple of 16 for int8 (K = {})", d.k),
        });
    }
    if d.k >= 1 << 17 {
        return Err(Error::Invalid {
            op: OP,
            arg: "K",
            detail: format!("{} could overflow the int32 accumulators (max 131071)", d.k),
        });
    }
    Ok((d, ys))
}

/// Exact int32 accumulators of `x·wᵀ`.
pub fn gemm_i8_raw(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, ys) = check_i8(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, DType::I32)?;
    gemm_i8_raw_into(x, w, &mut out, None)?;
    Ok(out)
}

/// [`gemm_i8_raw`] into `out` (i32, Y's shape), optionally forcing a tile.
pub fn gemm_i8_raw_into(
    x: &Tensor,
    w: &Tensor,
    out: &mut Tensor,
    tile: Option<Tile>,
) -> Result<()> {
    let (d, ys) = check_i8(x, w)?;
    if out.dtype() != DType::I32 || out.shape() != ys {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{ys:?} i32 (got {})", out.dtype()),
        });
    }
    match backend(OP, x, &[("w", Some(w)), ("out", Some(out))])? {
        Backend::Cpu => {
            let acc = reference::gemm_int8::gemm_i8_acc(
                host(OP, "x", x)?.as_slice()?,
                host(OP, "w", w)?.as_slice()?,
                d,
            );
            *out = Tensor::Host(HostTensor::new(
                &ys,
                acc.into_iter().map(|v| v as i32).collect::<Vec<i32>>(),
            )?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if d.m == 0 || d.n == 0 || d.batch == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let t = tile.unwrap_or_else(|| Tile::choose(d.m, d.n, d.batch, gpu.sm_count()));
            let kernel = kernel_name(OP, format!("gemm_i8_i32_{}", t.suffix()))?;
            let p = strides(d, 1.0, Activation::Identity, 0, false, 1.0);
            let ops = Operands::new(OP, x, w, None, None)?;
            launch_gemm(
                &gpu,
                OP,
                kernel,
                Some(t.geometry()),
                d,
                p,
                ops,
                dev_mut(OP, "out", out)?,
            )
        }
    }
}

fn strides(
    d: GemmDims,
    alpha: f32,
    act: Activation,
    group: usize,
    per_row: bool,
    out_scale: f32,
) -> GemmParams {
    GemmParams {
        stride_x: if d.batch > 1 { (d.m * d.k) as i64 } else { 0 },
        stride_w: if d.shared_w { 0 } else { (d.n * d.k) as i64 },
        stride_y: (d.m * d.n) as i64,
        stride_r: (d.m * d.n) as i64,
        alpha,
        act: act.code(),
        group_size: group as i32,
        sx_per_row: i32::from(per_row),
        out_scale,
        ..Default::default()
    }
}

/// Dequantising / requantising int8 GEMM into a new tensor.
pub fn gemm_i8(x: &Tensor, w: &Tensor, e: &GemmI8) -> Result<Tensor> {
    let (_, ys) = check_i8(x, w)?;
    let mut out = Tensor::empty(&x.device(), &ys, e.out_dtype)?;
    gemm_i8_into(x, w, e, &mut out)?;
    Ok(out)
}

/// [`gemm_i8`] into `out` (Y's shape, `e.out_dtype`).
pub fn gemm_i8_into(x: &Tensor, w: &Tensor, e: &GemmI8, out: &mut Tensor) -> Result<()> {
    let (d, ys) = check_i8(x, w)?;
    let odt = e.out_dtype;
    check_epilogue(OP, d, &ys, e)?;
    if out.dtype() != odt || out.shape() != ys {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{ys:?} {odt} (got {})", out.dtype()),
        });
    }
    let per_row = e.x_scale.len() != 1;
    let be = backend(
        OP,
        x,
        &[
            ("w", Some(w)),
            ("x_scale", Some(e.x_scale)),
            ("w_scale", Some(e.w_scale)),
            ("bias", e.bias),
            ("residual", e.residual),
            ("out", Some(out)),
        ],
    )?;
    match be {
        Backend::Cpu => {
            let (xv, wv) = (host(OP, "x", x)?.as_slice()?, host(OP, "w", w)?.as_slice()?);
            *out = Tensor::Host(cpu_gemm_i8(OP, xv, wv, d, e, &ys)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if d.m == 0 || d.n == 0 || d.batch == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let t = e
                .tile
                .unwrap_or_else(|| Tile::choose(d.m, d.n, d.batch, gpu.sm_count()));
            let kernel = kernel_name(OP, format!("gemm_i8_{odt}_{}", t.suffix()))?;
            let p = strides(d, e.alpha, e.act, e.group_size, per_row, e.out_scale);
            let ops = Operands {
                sx: Some(dev(OP, "x_scale", e.x_scale)?),
                sw: Some(dev(OP, "w_scale", e.w_scale)?),
                ..Operands::new(OP, x, w, e.bias, e.residual)?
            };
            launch_gemm(
                &gpu,
                OP,
                kernel,
                Some(t.geometry()),
                d,
                p,
                ops,
                dev_mut(OP, "out", out)?,
            )
        }
    }
}

/// Validates the scales, bias, residual and scalars of an int8 epilogue for Y of shape `ys`.
pub(crate) fn check_epilogue(
    op: &'static str,
    d: GemmDims,
    ys: &[usize],
    e: &GemmI8,
) -> Result<()> {
    let odt = e.out_dtype;
    if !matches!(odt, DType::F16 | DType::BF16 | DType::F32 | DType::I8) {
        return Err(Error::DType {
            op,
            arg: "out_dtype",
            got: odt,
            expected: "f16, bf16, f32 or i8 (the raw variant for i32)".into(),
        });
    }
    let rows = d.batch * d.m;
    let f32_arg = |arg: &'static str, t: &Tensor| {
        if t.dtype() == DType::F32 {
            Ok(())
        } else {
            Err(Error::DType {
                op,
                arg,
                got: t.dtype(),
                expected: "f32".into(),
            })
        }
    };
    f32_arg("x_scale", e.x_scale)?;
    f32_arg("w_scale", e.w_scale)?;
    match e.x_scale.len() {
        1 => {}
        l if l == rows => {}
        _ => {
            return Err(Error::Shape {
                op,
                arg: "x_scale",
                got: e.x_scale.shape().to_vec(),
                expected: format!("[1] (per tensor) or [{rows}] (per token)"),
            });
        }
    };
    let groups = if e.group_size > 0 {
        // The kernel folds a group's scale after whole k-tiles of GEMM_KB int8 values.
        if e.group_size % consts::GEMM_KB != 0 || e.group_size >= 1 << 17 {
            return Err(Error::Invalid {
                op,
                arg: "group_size",
                detail: format!("{} is not a multiple of {}", e.group_size, consts::GEMM_KB),
            });
        }
        d.k.div_ceil(e.group_size)
    } else {
        1
    };
    let want_sw: Vec<usize> = if e.group_size > 0 {
        vec![d.n, groups]
    } else {
        vec![d.n]
    };
    if e.w_scale.shape() != want_sw {
        return Err(Error::Shape {
            op,
            arg: "w_scale",
            got: e.w_scale.shape().to_vec(),
            expected: format!("{want_sw:?}"),
        });
    }
    if let Some(b) = e.bias {
        f32_arg("bias", b)?;
        if b.shape() != [d.n] {
            return Err(Error::Shape {
                op,
                arg: "bias",
                got: b.shape().to_vec(),
                expected: format!("[{}] (N)", d.n),
            });
        }
    }
    if let Some(r) = e.residual {
        if odt == DType::I8 {
            return Err(Error::Invalid {
                op,
                arg: "residual",
                detail: "not supported with int8 (requantised) output".into(),
            });
        }
        if r.dtype() != odt || r.shape() != ys {
            return Err(Error::Shape {
                op,
                arg: "residual",
                got: r.shape().to_vec(),
                expected: format!("{ys:?} {odt} (got {})", r.dtype()),
            });
        }
    }
    if !(e.alpha.is_finite() && e.out_scale.is_finite() && e.out_scale > 0.0) {
        return Err(Error::Invalid {
            op,
            arg: "alpha/out_scale",
            detail: format!(
                "alpha {} and out_scale {} must be finite, out_scale > 0",
                e.alpha, e.out_scale
            ),
        });
    }
    Ok(())
}

/// The CPU backend of a dequantising / requantising int8 GEMM: the f64 reference from the
/// exact integer sums, rounded to `e.out_dtype`.
pub(crate) fn cpu_gemm_i8(
    op: &'static str,
    x: &[i8],
    w: &[i8],
    d: GemmDims,
    e: &GemmI8,
    ys: &[usize],
) -> Result<HostTensor> {
    let (sx, sw) = (
        host(op, "x_scale", e.x_scale)?.to_f64(),
        host(op, "w_scale", e.w_scale)?.to_f64(),
    );
    let (b, r) = (
        host_f64(op, "bias", e.bias)?,
        host_f64(op, "residual", e.residual)?,
    );
    let epi = I8Epilogue {
        sx: &sx,
        sw: &sw,
        group_size: e.group_size,
        alpha: f64::from(e.alpha),
        bias: b.as_deref(),
        act: e.act,
        residual: r.as_deref(),
        out_scale: (e.out_dtype == DType::I8).then_some(f64::from(e.out_scale)),
    };
    HostTensor::from_f64(
        ys,
        &reference::gemm_int8::gemm_i8(x, w, d, &epi),
        e.out_dtype,
    )
}
