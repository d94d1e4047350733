//! Elementwise family: kernel `kernels/elementwise.cu`, reference `src/reference/elementwise.rs`,
//! tests `tests/elementwise.rs`, bench `benches/elementwise.rs`.

use super::aligned16;
use super::consts;
use super::host_f64;
use super::{
    Activation, Backend, backend, dev, dev_mut, float_dtype, host, kernel_name, row_len,
    same_dtype, same_shape, stride_grid,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

/// `y = act(x·alpha + bias) + residual`; `bias` has the length of x's last dimension and is
/// broadcast over rows; `residual` has x's shape. Every part is optional.
#[derive(Clone, Copy, Debug)]
pub struct Eltwise<'a> {
    pub alpha: f32,
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    pub residual: Option<&'a Tensor>,
}

impl Default for Eltwise<'_> {
    fn default() -> Self {
        Eltwise {
            alpha: 1.0,
            bias: None,
            act: Activation::Identity,
            residual: None,
        }
    }
}

const OP: &str = "eltwise";

/// Runs [`Eltwise`] on `x` into a new tensor on x's device.
pub fn eltwise(x: &Tensor, e: &Eltwise) -> Result<Tensor> {
    let mut out = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    eltwise_into(x, e, &mut out)?;
    Ok(out)
}

/// `x + bias` (bias broadcast along rows).
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    eltwise(
        x,
        &Eltwise {
            bias: Some(bias),
            ..Default::default()
        },
    )
}
/// `act(x)`.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    eltwise(
        x,
        &Eltwise {
            act,
            ..Default::default()
        },
    )
}
/// `x + residual`.
pub fn residual_add(x: &Tensor, residual: &Tensor) -> Result<Tensor> {
    eltwise(
        x,
        &Eltwise {
            residual: Some(residual),
            ..Default::default()
        },
    )
}
/// `x · alpha`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    eltwise(
        x,
        &Eltwise {
            alpha,
            ..Default::default()
        },
    )
}

/// Runs [`Eltwise`] on `x`, writing `out` (same shape, dtype and device as x).
pub fn eltwise_into(x: &Tensor, e: &Eltwise, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let n = row_len(OP, x)?;
    if let Some(b) = e.bias {
        same_dtype(OP, "bias", b, dt)?;
        if b.shape() != [n] {
            return Err(Error::Shape {
                op: OP,
                arg: "bias",
                got: b.shape().to_vec(),
                expected: format!("[{n}] (x's last dimension)"),
            });
        }
    }
    if let Some(r) = e.residual {
        same_dtype(OP, "residual", r, dt)?;
        same_shape(OP, "residual", r, x.shape())?;
    }
    same_dtype(OP, "out", out, dt)?;
    same_shape(OP, "out", out, x.shape())?;
    if !e.alpha.is_finite() {
        return Err(Error::Invalid {
            op: OP,
            arg: "alpha",
            detail: format!("{} is not finite", e.alpha),
        });
    }
    let be = backend(
        OP,
        x,
        &[
            ("bias", e.bias),
            ("residual", e.residual),
            ("out", Some(out)),
        ],
    )?;
    let total = x.len();
    match be {
        Backend::Cpu => {
            let (b, r) = (
                host_f64(OP, "bias", e.bias)?,
                host_f64(OP, "residual", e.residual)?,
            );
            let y = reference::elementwise::eltwise(
                &host(OP, "x", x)?.to_f64(),
                n,
                f64::from(e.alpha),
                b.as_deref(),
                e.act,
                r.as_deref(),
            );
            *out = Tensor::Host(HostTensor::from_f64(x.shape(), &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if total == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(OP, format!("eltwise_{}_{}", e.act.name(), dt))?;
            let xd = dev(OP, "x", x)?;
            let bd = e.bias.map(|b| dev(OP, "bias", b)).transpose()?;
            let rd = e.residual.map(|r| dev(OP, "residual", r)).transpose()?;
            let yd = dev_mut(OP, "out", out)?;
            // A bias row must not straddle a vector, and every buffer must be 16-byte aligned.
            let vec_ok = i32::from(
                (e.bias.is_none() || n % consts::VEC == 0)
                    && aligned16(&[Some(xd), bd, rd, Some(&*yd)]),
            );
            let (total_i, n_i, null) = (total as i64, n as i64, 0u64);
            let cfg = LaunchConfig {
                grid_dim: (stride_grid(&gpu, total, consts::ELT_THREADS), 1, 1),
                block_dim: (consts::ELT_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut()).arg(xd.buffer());
            match bd {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            match rd {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            b.arg(&e.alpha).arg(&total_i).arg(&n_i).arg(&vec_ok);
            // SAFETY: argument list matches `eltwise_*` in kernels/elementwise.cu (y, x, bias,
            // res, alpha, total, n, vec_ok); every buffer holds `total` (bias: `n`) elements of
            // `dt`, checked above; the kernel writes only y[0..total).
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// Converts between float dtypes with round-to-nearest-even.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let mut out = Tensor::empty(&x.device(), x.shape(), to)?;
    cast_into(x, &mut out)?;
    Ok(out)
}

/// Casts `x` into `out` (same shape and device; float dtypes; may equal x's dtype on CPU).
pub fn cast_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "cast";
    float_dtype(OP, "x", x.dtype())?;
    float_dtype(OP, "out", out.dtype())?;
    same_shape(OP, "out", out, x.shape())?;
    let (from, to) = (x.dtype(), out.dtype());
    match backend(OP, x, &[("out", Some(out))])? {
        Backend::Cpu => {
            let v = host(OP, "x", x)?.to_f64();
            *out = Tensor::Host(HostTensor::from_f64(x.shape(), &v, to)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if from == to {
                return Err(Error::Invalid {
                    op: OP,
                    arg: "out",
                    detail: format!("casting {from} to itself on a GPU; copy the tensor instead"),
                });
            }
            let total = x.len();
            if total == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(OP, format!("cast_{from}_{to}"))?;
            let xd = dev(OP, "x", x)?;
            let yd = dev_mut(OP, "out", out)?;
            let (total_i, vec_ok) = (total as i64, i32::from(aligned16(&[Some(xd), Some(&*yd)])));
            let cfg = LaunchConfig {
                grid_dim: (stride_grid(&gpu, total, consts::ELT_THREADS), 1, 1),
                block_dim: (consts::ELT_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut())
                .arg(xd.buffer())
                .arg(&total_i)
                .arg(&vec_ok);
            // SAFETY: matches `cast_{src}_{dst}(y, x, total, vec_ok)`; both buffers hold `total`
            // elements of their dtypes (checked above) and are 256-byte aligned.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
