//! LayerNorm with fused residual: kernel `kernels/layernorm.cu`, reference
//! `src/reference/layernorm.rs`, tests `tests/layernorm.rs`, bench `benches/layernorm.rs`.

use super::aligned16;
use super::consts;
use super::{
    Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, row_len, same_dtype,
    same_shape,
};
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "layernorm";

/// `LayerNorm(x + residual)` over the last dimension (residual optional).
pub fn layernorm(
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let mut y = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    layernorm_into(x, residual, gamma, beta, eps, &mut y, None)?;
    Ok(y)
}

/// `(LayerNorm(h), h)` with `h = x + residual` rounded to x's dtype: the pre-LN block needs `h`
/// as its next residual, and gets it from the same pass.
pub fn layernorm_residual(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let mut y = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    let mut h = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    layernorm_into(x, Some(residual), gamma, beta, eps, &mut y, Some(&mut h))?;
    Ok((y, h))
}

/// LayerNorm into `y`, and the summed input into `h_out` when given.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_into(
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &mut Tensor,
    h_out: Option<&mut Tensor>,
) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let n = row_len(OP, x)?;
    if n == 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x.shape().to_vec(),
            expected: "a last dimension >= 1".into(),
        });
    }
    for (arg, t) in [("gamma", gamma), ("beta", beta)] {
        same_dtype(OP, arg, t, dt)?;
        if t.shape() != [n] {
            return Err(Error::Shape {
                op: OP,
                arg,
                got: t.shape().to_vec(),
                expected: format!("[{n}] (x's last dimension)"),
            });
        }
    }
    if let Some(r) = residual {
        same_dtype(OP, "residual", r, dt)?;
        same_shape(OP, "residual", r, x.shape())?;
    }
    same_dtype(OP, "y", y, dt)?;
    same_shape(OP, "y", y, x.shape())?;
    if let Some(h) = h_out.as_deref() {
        same_dtype(OP, "h_out", h, dt)?;
        same_shape(OP, "h_out", h, x.shape())?;
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Invalid {
            op: OP,
            arg: "eps",
            detail: format!("{eps}; expected a finite value > 0"),
        });
    }
    let rows = x.len() / n;
    let be = backend(
        OP,
        x,
        &[
            ("residual", residual),
            ("gamma", Some(gamma)),
            ("beta", Some(beta)),
            ("y", Some(y)),
            ("h_out", h_out.as_deref()),
        ],
    )?;
    match be {
        Backend::Cpu => {
            let r = residual
                .map(|r| host(OP, "residual", r).map(|h| h.to_f64()))
                .transpose()?;
            let (yv, hv) = reference::layernorm::layernorm(
                &host(OP, "x", x)?.to_f64(),
                r.as_deref(),
                &host(OP, "gamma", gamma)?.to_f64(),
                &host(OP, "beta", beta)?.to_f64(),
                f64::from(eps),
                n,
                dt,
            );
            *y = Tensor::Host(HostTensor::from_f64(x.shape(), &yv, dt)?);
            if let Some(h) = h_out {
                *h = Tensor::Host(HostTensor::from_f64(x.shape(), &hv, dt)?);
            }
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if rows == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let warp = n <= consts::ROW_WARP_MAX_N;
            let kernel = kernel_name(
                OP,
                format!("layernorm_{}_{dt}", if warp { "warp" } else { "block" }),
            )?;
            let (rows_i, n_i) = (as_i32(OP, "rows", rows)?, as_i32(OP, "n", n)?);
            let grid = if warp {
                rows.div_ceil(consts::ROW_WARP_ROWS)
            } else {
                rows
            };
            let grid = u32::try_from(grid).map_err(|_| Error::Invalid {
                op: OP,
                arg: "rows",
                detail: format!("{rows} rows exceed the grid limit"),
            })?;
            let xd = dev(OP, "x", x)?;
            let rd = residual.map(|r| dev(OP, "residual", r)).transpose()?;
            let (gd, bd) = (dev(OP, "gamma", gamma)?, dev(OP, "beta", beta)?);
            let yd = dev_mut(OP, "y", y)?;
            let hd = match h_out {
                Some(h) => Some(dev_mut(OP, "h_out", h)?),
                None => None,
            };
            let all = [Some(xd), rd, Some(gd), Some(bd), Some(&*yd), hd.as_deref()];
            let (null, vec_ok) = (0u64, i32::from(n % consts::VEC == 0 && aligned16(&all)));
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut());
            match hd {
                Some(h) => b.arg(h.buffer_mut()),
                None => b.arg(&null),
            };
            b.arg(xd.buffer());
            match rd {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            b.arg(gd.buffer())
                .arg(bd.buffer())
                .arg(&eps)
                .arg(&rows_i)
                .arg(&n_i)
                .arg(&vec_ok);
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (consts::ROW_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `layernorm_{warp,block}_*(y, h_out, x, res, gamma, beta, eps, rows,
            // n, vec_ok)`; x, res, y, h_out hold rows·n elements and gamma/beta n (checked).
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
