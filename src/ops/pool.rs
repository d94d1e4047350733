//! Pooling over NHWC activations (max, average, global average): kernel `kernels/pool.cu`,
//! reference `src/reference/pool.rs`, tests `tests/pool.rs`, bench `benches/pool.rs`.

use super::consts;
use super::conv_geom::{Padding, Window};
use super::{
    Backend, aligned16, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, same_dtype,
    stride_grid,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

/// Geometry of a windowed pooling: PyTorch's `max_pool2d` / `avg_pool2d` with
/// `ceil_mode = False` (the only mode), or TensorFlow's SAME / VALID through [`Padding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2d {
    /// Window `(k_h, k_w)`.
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Dilation `(d_h, d_w)` (PyTorch's max_pool2d has it; average pooling usually keeps 1).
    pub dilation: (usize, usize),
    pub padding: Padding,
    /// Average pooling only: divide by `k_h·k_w` (`true`, PyTorch's default) or by the number
    /// of real (unpadded) positions (`false`; TensorFlow's SAME average pooling).
    pub count_include_pad: bool,
}

impl Pool2d {
    /// `kernel`, `stride` and `padding`; dilation 1, `count_include_pad = true`.
    pub fn new(kernel: (usize, usize), stride: (usize, usize), padding: Padding) -> Pool2d {
        Pool2d {
            kernel,
            stride,
            dilation: (1, 1),
            padding,
            count_include_pad: true,
        }
    }
    /// ResNet's stem max pool: 3×3, stride 2, padding 1 (112×112 → 56×56).
    pub fn resnet_stem() -> Pool2d {
        Pool2d::new((3, 3), (2, 2), Padding::symmetric(1, 1))
    }
    /// The resolved window over an `in_h × in_w` input, checked: an output of at least one
    /// pixel, and every window holding at least one real position (PyTorch's `pad <= k/2`
    /// rule, generalised to asymmetric padding and dilation).
    pub fn window(&self, op: &'static str, in_h: usize, in_w: usize) -> Result<Window> {
        let w = Window::new(
            op,
            (in_h, in_w),
            self.kernel,
            self.stride,
            self.dilation,
            self.padding,
        )?;
        let axis = |what: &str,
                    out: usize,
                    input: usize,
                    k: usize,
                    pos: &dyn Fn(usize, usize) -> isize| {
            for o in 0..out {
                if !(0..k).any(|kk| (0..input as isize).contains(&pos(o, kk))) {
                    return Err(Error::Invalid {
                        op,
                        arg: "padding",
                        detail: format!(
                            "{what}: output {o}'s window lies entirely in the padding ({:?}, input {input}, kernel {k}); expected padding at most half the dilated kernel",
                            self.padding
                        ),
                    });
                }
            }
            Ok(())
        };
        axis("height", w.out_h, in_h, w.k_h, &|o, k| w.in_row(o, k))?;
        axis("width", w.out_w, in_w, w.k_w, &|o, k| w.in_col(o, k))?;
        Ok(w)
    }
}

/// `[N, H, W, C]` of a rank-4 NHWC tensor with `C >= 1`, `H, W >= 1`.
pub(crate) fn nhwc_dims(op: &'static str, arg: &'static str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [n, h, w, c] if c >= 1 && h >= 1 && w >= 1 => Ok([n, h, w, c]),
        _ => Err(Error::Shape {
            op,
            arg,
            got: t.shape().to_vec(),
            expected: "[N, H, W, C] (NHWC) with H, W, C >= 1".into(),
        }),
    }
}

fn out_shape(op: &'static str, out: &Tensor, want: &[usize], dt: DType) -> Result<()> {
    same_dtype(op, "out", out, dt)?;
    if out.shape() != want {
        return Err(Error::Shape {
            op,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{want:?}"),
        });
    }
    Ok(())
}

/// Max pooling of NHWC `x` `[N, H, W, C]` → `[N, OH, OW, C]`. Padding never wins (padded
/// positions are skipped, not read as zeros or −inf); a NaN input wins, as in PyTorch.
pub fn max_pool2d(x: &Tensor, p: &Pool2d) -> Result<Tensor> {
    pool(x, p, true)
}

/// [`max_pool2d`] into `out` (`[N, OH, OW, C]`, x's dtype and device).
pub fn max_pool2d_into(x: &Tensor, p: &Pool2d, out: &mut Tensor) -> Result<()> {
    pool_into(x, p, true, out)
}

/// Average pooling of NHWC `x` (f32 sums, the division IEEE, rounded once); the divisor is set
/// by [`Pool2d::count_include_pad`].
pub fn avg_pool2d(x: &Tensor, p: &Pool2d) -> Result<Tensor> {
    pool(x, p, false)
}

/// [`avg_pool2d`] into `out`.
pub fn avg_pool2d_into(x: &Tensor, p: &Pool2d, out: &mut Tensor) -> Result<()> {
    pool_into(x, p, false, out)
}

fn pool(x: &Tensor, p: &Pool2d, max: bool) -> Result<Tensor> {
    let op = if max { "max_pool2d" } else { "avg_pool2d" };
    let [n, h, w, c] = nhwc_dims(op, "x", x)?;
    let win = p.window(op, h, w)?;
    let mut out = Tensor::empty(&x.device(), &[n, win.out_h, win.out_w, c], x.dtype())?;
    pool_into(x, p, max, &mut out)?;
    Ok(out)
}

fn pool_into(x: &Tensor, p: &Pool2d, max: bool, out: &mut Tensor) -> Result<()> {
    let op = if max { "max_pool2d" } else { "avg_pool2d" };
    let dt = x.dtype();
    float_dtype(op, "x", dt)?;
    let [n, h, w, c] = nhwc_dims(op, "x", x)?;
    let win = p.window(op, h, w)?;
    out_shape(op, out, &[n, win.out_h, win.out_w, c], dt)?;
    match backend(op, x, &[("out", Some(out))])? {
        Backend::Cpu => {
            let xv = host(op, "x", x)?.to_f64();
            let y = if max {
                reference::pool::max_pool(&xv, n, c, &win)
            } else {
                reference::pool::avg_pool(&xv, n, c, &win, p.count_include_pad)
            };
            *out = Tensor::Host(HostTensor::from_f64(out.shape(), &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            let total = out.len();
            if total == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(op, format!("pool_{}_{dt}", if max { "max" } else { "avg" }))?;
            let dims = [
                ("N", n),
                ("H", h),
                ("W", w),
                ("C", c),
                ("OH", win.out_h),
                ("OW", win.out_w),
                ("kernel h", win.k_h),
                ("kernel w", win.k_w),
                ("stride h", win.stride_h),
                ("stride w", win.stride_w),
                ("dilation h", win.dil_h),
                ("dilation w", win.dil_w),
                ("padding top", win.pad_top),
                ("padding left", win.pad_left),
            ]
            .iter()
            .map(|&(arg, v)| as_i32(op, arg, v))
            .collect::<Result<Vec<i32>>>()?;
            // The kernel decomposes output indices in 32 bits; input offsets are 64-bit, but
            // `oh·SH + kh·DH` is not.
            as_i32(op, "output elements", total)?;
            as_i32(
                op,
                "window reach",
                h + w + win.pad_top + win.pad_left + win.k_h * win.dil_h + win.k_w * win.dil_w,
            )?;
            let xd = dev(op, "x", x)?;
            let yd = dev_mut(op, "out", out)?;
            let vec_ok = i32::from(c % consts::VEC == 0 && aligned16(&[Some(xd), Some(&*yd)]));
            let include_pad = i32::from(p.count_include_pad);
            let threads = consts::POOL_THREADS;
            let cfg = LaunchConfig {
                grid_dim: (stride_grid(&gpu, total, threads), 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut()).arg(xd.buffer());
            for d in &dims {
                b.arg(d);
            }
            b.arg(&include_pad).arg(&vec_ok);
            // SAFETY: matches `pool_{max,avg}_*(y, x, N, H, W, C, OH, OW, KH, KW, SH, SW, DH, DW,
            // PT, PL, include_pad, vec_ok)`; x holds N·H·W·C and y N·OH·OW·C elements of `dt`
            // (checked); the kernel reads only in-range input positions; vec_ok only when C is
            // a multiple of 8 and both buffers are 16-byte aligned.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// Global average pool: NHWC `x` `[N, H, W, C]` → `[N, C]` in x's dtype (f32 sums).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "global_avg_pool";
    let [n, _, _, c] = nhwc_dims(OP, "x", x)?;
    let mut out = Tensor::empty(&x.device(), &[n, c], x.dtype())?;
    global_avg_pool_into(x, &mut out)?;
    Ok(out)
}

/// [`global_avg_pool`] into `out` `[N, C]`, of x's dtype or f32 (the classifier head and SE
/// can take the f32 means unrounded).
pub fn global_avg_pool_into(x: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "global_avg_pool";
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let [n, h, w, c] = nhwc_dims(OP, "x", x)?;
    let od = out.dtype();
    if od != dt && od != DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "out",
            got: od,
            expected: format!("{dt} (the dtype of x) or f32"),
        });
    }
    if out.shape() != [n, c] {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("[{n}, {c}] ([N, C] of x {:?})", x.shape()),
        });
    }
    let hw = h * w;
    match backend(OP, x, &[("out", Some(out))])? {
        Backend::Cpu => {
            let y = reference::pool::global_avg_pool(&host(OP, "x", x)?.to_f64(), n, hw, c);
            *out = Tensor::Host(HostTensor::from_f64(&[n, c], &y, od)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(OP, format!("gap_{dt}_{od}"))?;
            let xd = dev(OP, "x", x)?;
            let yd = dev_mut(OP, "out", out)?;
            let vec = c % consts::VEC == 0 && aligned16(&[Some(xd), Some(&*yd)]);
            let (lanes, chunks) = channel_lanes(c, vec);
            let grid_y = u32::try_from(n)
                .ok()
                .filter(|&g| g <= 65_535)
                .ok_or_else(|| Error::Invalid {
                    op: OP,
                    arg: "x",
                    detail: format!("batch {n} exceeds 65535 images per launch"),
                })?;
            let (hw_i, c_i, lanes_i, vec_ok) = (
                as_i32(OP, "H·W", hw)?,
                as_i32(OP, "C", c)?,
                lanes as i32,
                i32::from(vec),
            );
            let cfg = LaunchConfig {
                grid_dim: (chunks, grid_y, 1),
                block_dim: (consts::POOL_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut())
                .arg(xd.buffer())
                .arg(&hw_i)
                .arg(&c_i)
                .arg(&lanes_i)
                .arg(&vec_ok);
            // SAFETY: matches `gap_{in}_{out}(y, x, HW, C, lanes, vec_ok)`; x holds N·HW·C and y
            // N·C elements of their dtypes (checked); grid (ceil(C/(lanes·V)), N) with lanes a
            // power of two <= 32 dividing the 256 threads; vec_ok only for C % 8 == 0 and
            // 16-byte-aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// Channel lanes of a block for `common/spatial.cuh`'s `channel_sums` (a power of two <= 32,
/// so it divides the block) and the number of channel chunks of `lanes·V` channels.
pub(crate) fn channel_lanes(c: usize, vec: bool) -> (usize, u32) {
    // Every block that runs channel_sums (gap_*, se_pool_*, se_excite_*) is whole warps.
    const _: () = assert!(
        consts::POOL_THREADS % 32 == 0
            && consts::SE_POOL_THREADS % 32 == 0
            && consts::SE_THREADS % 32 == 0
    );
    let v = if vec { consts::VEC } else { 1 };
    let units = c.div_ceil(v).max(1);
    let lanes = units.next_power_of_two().min(32);
    (lanes, units.div_ceil(lanes) as u32)
}
