//! NCHW ↔ NHWC layout transforms: kernel `kernels/layout.cu`, reference
//! `src/reference/layout.rs`, tests `tests/layout.rs`, bench `benches/layout.rs`.
//!
//! Both directions are batched 2-D transposes (`[N][C][H·W]` ↔ `[N][H·W][C]`), a pure copy:
//! every dtype works (the kernels go by element size).

use super::consts;
use super::{Backend, as_i32, backend, dev, dev_mut, host, kernel_name, stride_grid};
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

/// `[N, C, H, W]` → `[N, H, W, C]`.
pub fn nchw_to_nhwc(x: &Tensor) -> Result<Tensor> {
    let [n, c, h, w] = dims4("nchw_to_nhwc", x)?;
    let mut y = Tensor::empty(&x.device(), &[n, h, w, c], x.dtype())?;
    nchw_to_nhwc_into(x, &mut y)?;
    Ok(y)
}

/// [`nchw_to_nhwc`] into `y` (`[N, H, W, C]`, x's dtype and device).
pub fn nchw_to_nhwc_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "nchw_to_nhwc";
    let [n, c, h, w] = dims4(OP, x)?;
    transpose_into(OP, x, y, (n, c, h * w), &[n, h, w, c])
}

/// `[N, H, W, C]` → `[N, C, H, W]`.
pub fn nhwc_to_nchw(x: &Tensor) -> Result<Tensor> {
    let [n, h, w, c] = dims4("nhwc_to_nchw", x)?;
    let mut y = Tensor::empty(&x.device(), &[n, c, h, w], x.dtype())?;
    nhwc_to_nchw_into(x, &mut y)?;
    Ok(y)
}

/// [`nhwc_to_nchw`] into `y` (`[N, C, H, W]`, x's dtype and device).
pub fn nhwc_to_nchw_into(x: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "nhwc_to_nchw";
    let [n, h, w, c] = dims4(OP, x)?;
    transpose_into(OP, x, y, (n, h * w, c), &[n, c, h, w])
}

fn dims4(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::Shape {
            op,
            arg: "x",
            got: x.shape().to_vec(),
            expected: if op == "nchw_to_nhwc" {
                "[N, C, H, W]".into()
            } else {
                "[N, H, W, C]".into()
            },
        }),
    }
}

/// `y [batch][cols][rows] = x [batch][rows][cols]`, `y` of shape `y_shape`.
fn transpose_into(
    op: &'static str,
    x: &Tensor,
    y: &mut Tensor,
    (batch, rows, cols): (usize, usize, usize),
    y_shape: &[usize],
) -> Result<()> {
    let dt = x.dtype();
    if y.dtype() != dt {
        return Err(Error::DType {
            op,
            arg: "y",
            got: y.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    if y.shape() != y_shape {
        return Err(Error::Shape {
            op,
            arg: "y",
            got: y.shape().to_vec(),
            expected: format!("{y_shape:?}"),
        });
    }
    match backend(op, x, &[("y", Some(y))])? {
        Backend::Cpu => {
            let v = reference::layout::transpose(&host(op, "x", x)?.to_f64(), batch, rows, cols);
            *y = Tensor::Host(HostTensor::from_f64(y_shape, &v, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            let total = x.len();
            if total == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let small = rows.min(cols) <= consts::LAYOUT_SMALL;
            let kernel = kernel_name(
                op,
                format!(
                    "transpose_{}_b{}",
                    if small { "small" } else { "tiled" },
                    dt.size()
                ),
            )?;
            let (batch_i, rows_i, cols_i) = (
                batch as i64,
                as_i32(op, "rows", rows)?,
                as_i32(op, "cols", cols)?,
            );
            as_i32(op, "one image (C·H·W)", rows * cols)?; // 32-bit indices within an image
            let cfg = if small {
                // (blocks per image, images): the kernel loops over images beyond 65535.
                let images = batch.min(65_535);
                let threads = consts::LAYOUT_THREADS;
                let per_image = (stride_grid(&gpu, total, threads) as usize).div_ceil(images);
                LaunchConfig {
                    grid_dim: (per_image.max(1) as u32, images as u32, 1),
                    block_dim: (threads as u32, 1, 1),
                    shared_mem_bytes: 0,
                }
            } else {
                let tile = consts::LAYOUT_TILE;
                let tiles = batch * rows.div_ceil(tile) * cols.div_ceil(tile);
                LaunchConfig {
                    grid_dim: (tiles.min(1 << 30) as u32, 1, 1),
                    block_dim: (tile as u32, consts::LAYOUT_TILE_ROWS as u32, 1),
                    shared_mem_bytes: 0,
                }
            };
            let xd = dev(op, "x", x)?;
            let yd = dev_mut(op, "y", y)?;
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut())
                .arg(xd.buffer())
                .arg(&batch_i)
                .arg(&rows_i)
                .arg(&cols_i);
            // SAFETY: matches `transpose_{tiled,small}_b{1,2,4}(y, x, batch, rows, cols)` of the
            // dtype's element size; x and y hold batch·rows·cols elements (checked), one image
            // below 2^31; tiled blocks are 32×8 threads as the kernel's tile loops assume.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
