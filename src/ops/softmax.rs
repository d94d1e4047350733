//! Row softmax: kernel `kernels/softmax.cu`, reference `src/reference/softmax.rs`,
//! tests `tests/softmax.rs`, bench `benches/softmax.rs`.

use super::aligned16;
use super::consts;
use super::{
    Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, row_len, same_dtype,
    same_shape,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "softmax";

/// `softmax(x·scale + mask)` over the last dimension. `mask` is f32 `[mask_rows, n]` (any
/// leading shape), additive (`-inf` drops a key whatever x holds there, NaN included, as in the
/// fused attention), and row `r` of x uses mask row `r / (rows / mask_rows)`: a `[batch,
/// seq_k]` padding mask covers `[batch, heads, seq_q, seq_k]` scores. Fully masked rows come
/// out as zeros; a row with a NaN score comes out all NaN, so that NaN never passes for
/// masking. The mask broadcasts over *outer* rows only: a `[seq_q, seq_k]` causal mask over
/// `[batch, heads, seq_q, seq_k]` scores needs to be expanded to one mask row per score row.
/// Arithmetic is f32 like the kernel: inputs whose `x·scale` overflows f32, and +inf entries,
/// give NaN rows (the f64 reference may not).
pub fn softmax(x: &Tensor, mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
    let mut out = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    softmax_into(x, mask, scale, &mut out)?;
    Ok(out)
}

/// [`softmax`] into `out` (x's shape, dtype and device).
pub fn softmax_into(x: &Tensor, mask: Option<&Tensor>, scale: f32, out: &mut Tensor) -> Result<()> {
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
    let rows = x.len() / n;
    same_dtype(OP, "out", out, dt)?;
    same_shape(OP, "out", out, x.shape())?;
    if !scale.is_finite() {
        return Err(Error::Invalid {
            op: OP,
            arg: "scale",
            detail: format!("{scale} is not finite"),
        });
    }
    let mut mask_div = 1usize;
    if let Some(m) = mask {
        if m.dtype() != DType::F32 {
            return Err(Error::DType {
                op: OP,
                arg: "mask",
                got: m.dtype(),
                expected: "f32 (additive mask)".into(),
            });
        }
        let mrows = if m.shape().last() == Some(&n) {
            m.len() / n
        } else {
            0
        };
        if mrows == 0 || rows % mrows != 0 {
            return Err(Error::Shape {
                op: OP,
                arg: "mask",
                got: m.shape().to_vec(),
                expected: format!(
                    "[k, {n}] with k dividing the {rows} rows of x (shape {:?})",
                    x.shape()
                ),
            });
        }
        mask_div = rows / mrows;
    }
    match backend(OP, x, &[("mask", mask), ("out", Some(out))])? {
        Backend::Cpu => {
            let m = mask
                .map(|m| host(OP, "mask", m).map(|h| h.to_f64()))
                .transpose()?;
            let y = reference::softmax::softmax(
                &host(OP, "x", x)?.to_f64(),
                n,
                m.as_deref(),
                f64::from(scale),
            );
            *out = Tensor::Host(HostTensor::from_f64(x.shape(), &y, dt)?);
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
                format!("softmax_{}_{dt}", if warp { "warp" } else { "block" }),
            )?;
            let (rows_i, n_i, div_i) = (
                as_i32(OP, "rows", rows)?,
                as_i32(OP, "n", n)?,
                as_i32(OP, "mask rows", mask_div)?,
            );
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
            let md = mask.map(|m| dev(OP, "mask", m)).transpose()?;
            let yd = dev_mut(OP, "out", out)?;
            let (null, vec_ok) = (
                0u64,
                i32::from(n % consts::VEC == 0 && aligned16(&[Some(xd), md, Some(&*yd)])),
            );
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut()).arg(xd.buffer());
            match md {
                Some(d) => b.arg(d.buffer()),
                None => b.arg(&null),
            };
            b.arg(&scale)
                .arg(&rows_i)
                .arg(&n_i)
                .arg(&div_i)
                .arg(&vec_ok);
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (consts::ROW_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: matches `softmax_{warp,block}_*(y, x, mask, scale, rows, n, mask_div,
            // vec_ok)`; x and y hold rows·n elements, the mask rows/mask_div·n f32 (checked);
            // vec_ok only when rows stay 8-element aligned in 256-byte-aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
