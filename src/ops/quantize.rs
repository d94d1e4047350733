//! Activation quantisation: kernel `kernels/quantize.cu`, reference `src/reference/quantize.rs`,
//! tests `tests/quantize.rs`, bench `benches/quantize.rs`.

use super::consts;
use super::{
    Backend, aligned16, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, row_len,
    same_dtype, same_shape, stride_grid,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

/// Per-token dynamic int8 quantisation of `x [..., n]`: returns `(q i8, scale f32 [rows])` with
/// `x ≈ q · scale[row]`.
pub fn quantize_rows(x: &Tensor) -> Result<(Tensor, Tensor)> {
    quantize_impl("quantize_rows", x, None)
}

/// LayerNorm parameters for [`layernorm_quantize`].
#[derive(Clone, Copy, Debug)]
pub struct LnParams<'a> {
    pub residual: Option<&'a Tensor>,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f32,
}

/// `quantize_rows(LayerNorm(x + residual))` in one kernel: the int8 input of the next Linear
/// straight from the LayerNorm, without writing the normalised floats.
pub fn layernorm_quantize(x: &Tensor, ln: &LnParams) -> Result<(Tensor, Tensor)> {
    quantize_impl("layernorm_quantize", x, Some(ln))
}

fn quantize_impl(op: &'static str, x: &Tensor, ln: Option<&LnParams>) -> Result<(Tensor, Tensor)> {
    let dt = x.dtype();
    float_dtype(op, "x", dt)?;
    let n = row_len(op, x)?;
    if n == 0 {
        return Err(Error::Shape {
            op,
            arg: "x",
            got: x.shape().to_vec(),
            expected: "a last dimension >= 1".into(),
        });
    }
    let rows = x.len() / n;
    if let Some(l) = ln {
        for (arg, t) in [("gamma", l.gamma), ("beta", l.beta)] {
            same_dtype(op, arg, t, dt)?;
            if t.shape() != [n] {
                return Err(Error::Shape {
                    op,
                    arg,
                    got: t.shape().to_vec(),
                    expected: format!("[{n}]"),
                });
            }
        }
        if let Some(r) = l.residual {
            same_dtype(op, "residual", r, dt)?;
            same_shape(op, "residual", r, x.shape())?;
        }
        if !(l.eps.is_finite() && l.eps > 0.0) {
            return Err(Error::Invalid {
                op,
                arg: "eps",
                detail: format!("{}; expected a finite value > 0", l.eps),
            });
        }
    }
    let others = ln.map_or(vec![], |l| {
        vec![
            ("residual", l.residual),
            ("gamma", Some(l.gamma)),
            ("beta", Some(l.beta)),
        ]
    });
    match backend(op, x, &others)? {
        Backend::Cpu => {
            let xv = host(op, "x", x)?.to_f64();
            let vals = match ln {
                None => xv,
                Some(l) => {
                    let r = l
                        .residual
                        .map(|r| host(op, "residual", r).map(|h| h.to_f64()))
                        .transpose()?;
                    let (g, b) = (
                        host(op, "gamma", l.gamma)?.to_f64(),
                        host(op, "beta", l.beta)?.to_f64(),
                    );
                    reference::layernorm::layernorm(
                        &xv,
                        r.as_deref(),
                        &g,
                        &b,
                        f64::from(l.eps),
                        n,
                        dt,
                    )
                    .0
                }
            };
            let (q, s) = reference::quantize::quantize_rows(&vals, n);
            Ok((
                Tensor::Host(HostTensor::new(x.shape(), q)?),
                Tensor::Host(HostTensor::new(&[rows], s)?),
            ))
        }
        Backend::Gpu(gpu) => {
            let gpu = gpu.clone();
            let mut q = Tensor::empty(&x.device(), x.shape(), DType::I8)?;
            let mut s = Tensor::empty(&x.device(), &[rows], DType::F32)?;
            if rows == 0 {
                return Ok((q, s));
            }
            let warp = n <= consts::ROW_WARP_MAX_N;
            let stem = if ln.is_some() {
                "layernorm_quant"
            } else {
                "quantize_rows"
            };
            let kernel = kernel_name(
                op,
                format!("{stem}_{}_{dt}", if warp { "warp" } else { "block" }),
            )?;
            let (rows_i, n_i) = (as_i32(op, "rows", rows)?, as_i32(op, "n", n)?);
            let grid = if warp {
                rows.div_ceil(consts::ROW_WARP_ROWS)
            } else {
                rows
            };
            let grid = u32::try_from(grid).map_err(|_| Error::Invalid {
                op,
                arg: "rows",
                detail: format!("{rows} rows exceed the grid limit"),
            })?;
            let xd = dev(op, "x", x)?;
            let rd = ln
                .and_then(|l| l.residual)
                .map(|r| dev(op, "residual", r))
                .transpose()?;
            let gd = ln.map(|l| dev(op, "gamma", l.gamma)).transpose()?;
            let bd = ln.map(|l| dev(op, "beta", l.beta)).transpose()?;
            let qd = dev_mut(op, "q", &mut q)?;
            let sd = dev_mut(op, "scale", &mut s)?;
            let vec_ok =
                i32::from(n % consts::VEC == 0 && aligned16(&[Some(xd), rd, gd, bd, Some(&*qd)]));
            let (null, eps) = (0u64, ln.map_or(0.0, |l| l.eps));
            let mut b = gpu.launcher(kernel);
            b.arg(qd.buffer_mut()).arg(sd.buffer_mut()).arg(xd.buffer());
            if ln.is_some() {
                match rd {
                    Some(r) => b.arg(r.buffer()),
                    None => b.arg(&null),
                };
                if let (Some(g), Some(be)) = (gd, bd) {
                    b.arg(g.buffer()).arg(be.buffer()).arg(&eps);
                }
            }
            b.arg(&rows_i).arg(&n_i).arg(&vec_ok);
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (consts::ROW_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches quantize_rows_*(q, scale, x, rows, n, vec_ok) or layernorm_quant_*(q,
            // scale, x, res, gamma, beta, eps, rows, n, vec_ok); x/res/q hold rows·n elements,
            // gamma/beta n, scale rows (all checked or allocated above).
            unsafe { b.launch(cfg) }?;
            Ok((q, s))
        }
    }
}

/// `q · scale` back to `dtype`: `scale` is f32 `[rows]` (per token) or `[1]` (per tensor).
pub fn dequantize_rows(q: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "dequantize_rows";
    if q.dtype() != DType::I8 {
        return Err(Error::DType {
            op: OP,
            arg: "q",
            got: q.dtype(),
            expected: "i8".into(),
        });
    }
    if scale.dtype() != DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "scale",
            got: scale.dtype(),
            expected: "f32".into(),
        });
    }
    float_dtype(OP, "dtype", dtype)?;
    let n = row_len(OP, q)?.max(1);
    let rows = q.len() / n;
    let per_row = match scale.len() {
        1 => false,
        l if l == rows => true,
        _ => {
            return Err(Error::Shape {
                op: OP,
                arg: "scale",
                got: scale.shape().to_vec(),
                expected: format!("[1] or [{rows}]"),
            });
        }
    };
    match backend(OP, q, &[("scale", Some(scale))])? {
        Backend::Cpu => {
            let qv: &[i8] = host(OP, "q", q)?.as_slice()?;
            let y =
                reference::quantize::dequantize_rows(qv, &host(OP, "scale", scale)?.to_f64(), n);
            Ok(Tensor::Host(HostTensor::from_f64(q.shape(), &y, dtype)?))
        }
        Backend::Gpu(gpu) => {
            let gpu = gpu.clone();
            let mut y = Tensor::empty(&q.device(), q.shape(), dtype)?;
            let total = q.len();
            if total == 0 {
                return Ok(y);
            }
            let kernel = kernel_name(OP, format!("dequantize_rows_{dtype}"))?;
            let (qd, sd) = (dev(OP, "q", q)?, dev(OP, "scale", scale)?);
            let yd = dev_mut(OP, "y", &mut y)?;
            let (total_i, n_i, pr) = (total as i64, n as i64, i32::from(per_row));
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut())
                .arg(qd.buffer())
                .arg(sd.buffer())
                .arg(&total_i)
                .arg(&n_i)
                .arg(&pr);
            let cfg = LaunchConfig {
                grid_dim: (stride_grid(&gpu, total, consts::ELT_THREADS), 1, 1),
                block_dim: (consts::ELT_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches dequantize_rows_*(y, q, s, total, n, per_row); q and y hold `total`
            // elements, s holds rows (per_row) or 1 entries (checked above).
            unsafe { b.launch(cfg) }?;
            Ok(y)
        }
    }
}
