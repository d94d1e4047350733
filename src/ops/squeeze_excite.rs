//! Squeeze-and-excitation (the EfficientNet SE block): kernel `kernels/squeeze_excite.cu`,
//! reference `src/reference/squeeze_excite.rs`, tests `tests/squeeze_excite.rs`, bench
//! `benches/squeeze_excite.rs`.
//!
//! Two GPU passes: [`se_scale_vector`] (squeeze + FC1 + SiLU + FC2 + sigmoid in one kernel, one
//! block per image; for a small batch with a large H·W the squeeze is first split over
//! position ranges by `se_pool`) writes `s [N, C]` f32, and [`channel_scale`] writes
//! `y = x ⊙ s`. The scale vector is public so a following op can fuse the channel scale.

use super::consts;
use super::pool::{channel_lanes, nhwc_dims};
use super::{
    Backend, aligned16, as_i32, backend, dev, dev_mut, float_dtype, host, host_f64, kernel_name,
    same_dtype, same_shape, stride_grid,
};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{DeviceTensor, HostTensor, Tensor};
use cudarc::driver::LaunchConfig;
use std::sync::Arc;

const OP: &str = "squeeze_excite";
/// Most channels the kernel's shared memory holds (EfficientNet-B7's widest SE has 3840;
/// common/consts.cuh).
pub const SE_MAX_CHANNELS: usize = consts::SE_MAX_CHANNELS;
/// Most hidden units (Cse) the kernel holds (common/consts.cuh).
pub const SE_MAX_HIDDEN: usize = consts::SE_MAX_HIDDEN;

/// The SE block's parameters, PyTorch Linear layout (timm's 1×1 `conv_reduce` / `conv_expand`
/// weights squeezed to 2-D): `w1 [Cse, C]`, `b1 [Cse]`, `w2 [C, Cse]`, `b2 [C]`. All four share
/// one dtype: f32, or x's dtype (f16/bf16 weights are widened to f32; every product and sum is
/// f32 either way).
#[derive(Clone, Copy, Debug)]
pub struct SqueezeExcite<'a> {
    pub w1: &'a Tensor,
    pub b1: &'a Tensor,
    pub w2: &'a Tensor,
    pub b2: &'a Tensor,
    /// GPU only: split each image's squeeze over this many position ranges (`se_pool`, then
    /// the excite kernel adds the partial sums in order). `None` picks: about two blocks per
    /// SM in all, at least 256 positions per range; `Some(1)` is the one-kernel path.
    pub spatial_splits: Option<usize>,
}

impl<'a> SqueezeExcite<'a> {
    pub fn new(w1: &'a Tensor, b1: &'a Tensor, w2: &'a Tensor, b2: &'a Tensor) -> Self {
        SqueezeExcite {
            w1,
            b1,
            w2,
            b2,
            spatial_splits: None,
        }
    }
}

/// `x ⊙ sigmoid(W2·SiLU(W1·mean_hw(x) + b1) + b2)` on NHWC `x` `[N, H, W, C]` (f32/f16/bf16):
/// `y` has x's shape and dtype; the product is f32, rounded once.
pub fn squeeze_excite(x: &Tensor, se: &SqueezeExcite) -> Result<Tensor> {
    let mut y = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    squeeze_excite_into(x, se, &mut y, None)?;
    Ok(y)
}

/// [`squeeze_excite`] into `y`, and the scale vector `[N, C]` f32 into `s_out` when given.
pub fn squeeze_excite_into(
    x: &Tensor,
    se: &SqueezeExcite,
    y: &mut Tensor,
    s_out: Option<&mut Tensor>,
) -> Result<()> {
    let [n, _, _, c] = nhwc_dims(OP, "x", x)?;
    same_dtype(OP, "y", y, x.dtype())?;
    same_shape(OP, "y", y, x.shape())?;
    let mut own;
    let s = match s_out {
        Some(s) => s,
        None => {
            own = Tensor::empty(&x.device(), &[n, c], DType::F32)?;
            &mut own
        }
    };
    se_scale_vector_into(x, se, s)?;
    channel_scale_into(x, s, y)
}

/// The SE scale vector `s = sigmoid(W2·SiLU(W1·mean_hw(x) + b1) + b2)`, `[N, C]` f32.
pub fn se_scale_vector(x: &Tensor, se: &SqueezeExcite) -> Result<Tensor> {
    let [n, _, _, c] = nhwc_dims(OP, "x", x)?;
    let mut s = Tensor::empty(&x.device(), &[n, c], DType::F32)?;
    se_scale_vector_into(x, se, &mut s)?;
    Ok(s)
}

/// [`se_scale_vector`] into `s` (`[N, C]` f32, x's device).
pub fn se_scale_vector_into(x: &Tensor, se: &SqueezeExcite, s: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let [n, h, w, c] = nhwc_dims(OP, "x", x)?;
    let wdt = se.w1.dtype();
    if wdt != DType::F32 && wdt != dt {
        return Err(Error::DType {
            op: OP,
            arg: "w1",
            got: wdt,
            expected: format!("f32 or {dt} (the dtype of x)"),
        });
    }
    let cse = match *se.w1.shape() {
        [cse, cc] if cc == c && cse >= 1 => cse,
        _ => {
            return Err(Error::Shape {
                op: OP,
                arg: "w1",
                got: se.w1.shape().to_vec(),
                expected: format!("[Cse, {c}] with Cse >= 1 (x has {c} channels)"),
            });
        }
    };
    for (arg, t, want) in [
        ("b1", se.b1, vec![cse]),
        ("w2", se.w2, vec![c, cse]),
        ("b2", se.b2, vec![c]),
    ] {
        if t.dtype() != wdt {
            return Err(Error::DType {
                op: OP,
                arg,
                got: t.dtype(),
                expected: format!("{wdt} (the dtype of w1)"),
            });
        }
        if t.shape() != want.as_slice() {
            return Err(Error::Shape {
                op: OP,
                arg,
                got: t.shape().to_vec(),
                expected: format!("{want:?} (C = {c} from x, Cse = {cse} from w1)"),
            });
        }
    }
    if c > SE_MAX_CHANNELS || cse > SE_MAX_HIDDEN {
        return Err(Error::Invalid {
            op: OP,
            arg: "w1",
            detail: format!(
                "C = {c}, Cse = {cse}; expected C <= {SE_MAX_CHANNELS} and Cse <= {SE_MAX_HIDDEN} (the kernel's shared memory)"
            ),
        });
    }
    if s.dtype() != DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "s",
            got: s.dtype(),
            expected: "f32".into(),
        });
    }
    if s.shape() != [n, c] {
        return Err(Error::Shape {
            op: OP,
            arg: "s",
            got: s.shape().to_vec(),
            expected: format!("[{n}, {c}] ([N, C] of x)"),
        });
    }
    if se.spatial_splits == Some(0) {
        return Err(Error::Invalid {
            op: OP,
            arg: "spatial_splits",
            detail: "0; expected >= 1 (or None)".into(),
        });
    }
    let hw = h * w;
    let be = backend(
        OP,
        x,
        &[
            ("w1", Some(se.w1)),
            ("b1", Some(se.b1)),
            ("w2", Some(se.w2)),
            ("b2", Some(se.b2)),
            ("s", Some(s)),
        ],
    )?;
    match be {
        Backend::Cpu => {
            let p = |arg, t| -> Result<Vec<f64>> {
                Ok(host_f64(OP, arg, Some(t))?.unwrap_or_default())
            };
            let v = reference::squeeze_excite::se_scale_vector(
                &host(OP, "x", x)?.to_f64(),
                (n, hw, c),
                &p("w1", se.w1)?,
                &p("b1", se.b1)?,
                &p("w2", se.w2)?,
                &p("b2", se.b2)?,
            );
            *s = Tensor::Host(HostTensor::from_f64(&[n, c], &v, DType::F32)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            if n > 65_535 {
                return Err(Error::Invalid {
                    op: OP,
                    arg: "x",
                    detail: format!("batch {n} exceeds 65535 images per launch"),
                });
            }
            let splits = se
                .spatial_splits
                .unwrap_or_else(|| {
                    (2 * gpu.sm_count() as usize)
                        .div_ceil(n)
                        .min(hw / 256)
                        .max(1)
                })
                .min(hw);
            let xd = dev(OP, "x", x)?;
            let vec = c % consts::VEC == 0 && aligned16(&[Some(xd)]);
            let dims = SeDims {
                n,
                hw: as_i32(OP, "H·W", hw)?,
                c: c as i32,
                cse: cse as i32,
                splits: as_i32(OP, "spatial_splits", splits)?,
                vec,
            };
            let partials = if splits > 1 {
                let mut part = DeviceTensor::alloc(&gpu, &[n, splits, c], DType::F32)?;
                launch_pool(&gpu, dt, xd, &mut part, &dims)?;
                Some(part)
            } else {
                None
            };
            let sd = dev_mut(OP, "s", s)?;
            let weights = [
                dev(OP, "w1", se.w1)?,
                dev(OP, "b1", se.b1)?,
                dev(OP, "w2", se.w2)?,
                dev(OP, "b2", se.b2)?,
            ];
            launch_excite(&gpu, (dt, wdt), xd, partials.as_ref(), weights, sd, &dims)
        }
    }
}

/// Sizes shared by the two squeeze kernels (checked to fit their `int` arguments).
struct SeDims {
    n: usize,
    hw: i32,
    c: i32,
    cse: i32,
    splits: i32,
    vec: bool,
}

fn launch_pool(
    gpu: &Arc<Gpu>,
    dt: DType,
    xd: &DeviceTensor,
    part: &mut DeviceTensor,
    d: &SeDims,
) -> Result<()> {
    let kernel = kernel_name(OP, format!("se_pool_{dt}"))?;
    let (lanes, _) = channel_lanes(d.c as usize, d.vec);
    let (lanes_i, vec_ok) = (lanes as i32, i32::from(d.vec));
    let cfg = LaunchConfig {
        grid_dim: (d.splits as u32, d.n as u32, 1),
        block_dim: (consts::SE_POOL_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.launcher(kernel);
    b.arg(part.buffer_mut())
        .arg(xd.buffer())
        .arg(&d.hw)
        .arg(&d.c)
        .arg(&lanes_i)
        .arg(&vec_ok);
    // SAFETY: matches `se_pool_*(partials, x, HW, C, lanes, vec_ok)`; grid (splits, N) with
    // splits <= HW; x holds N·HW·C elements of `dt` and partials N·splits·C f32 (allocated
    // above); lanes is a power of two <= 32 (divides 256); vec_ok only for C % 8 == 0 and a
    // 16-byte-aligned x.
    unsafe { b.launch(cfg) }?;
    Ok(())
}

fn launch_excite(
    gpu: &Arc<Gpu>,
    (dt, wdt): (DType, DType),
    xd: &DeviceTensor,
    partials: Option<&DeviceTensor>,
    [w1, b1, w2, b2]: [&DeviceTensor; 4],
    sd: &mut DeviceTensor,
    d: &SeDims,
) -> Result<()> {
    let kernel = kernel_name(OP, format!("se_excite_{dt}_{wdt}"))?;
    let (lanes, _) = channel_lanes(d.c as usize, d.vec);
    let (lanes_i, vec_ok, null) = (lanes as i32, i32::from(d.vec), 0u64);
    let cfg = LaunchConfig {
        grid_dim: (d.n as u32, 1, 1),
        block_dim: (consts::SE_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.launcher(kernel);
    b.arg(sd.buffer_mut()).arg(xd.buffer());
    match partials {
        Some(p) => b.arg(p.buffer()),
        None => b.arg(&null),
    };
    b.arg(w1.buffer())
        .arg(b1.buffer())
        .arg(w2.buffer())
        .arg(b2.buffer())
        .arg(&d.hw)
        .arg(&d.c)
        .arg(&d.cse)
        .arg(&d.splits)
        .arg(&lanes_i)
        .arg(&vec_ok);
    // SAFETY: matches `se_excite_{x}_{w}(s, x, partials, w1, b1, w2, b2, HW, C, Cse, splits,
    // lanes, vec_ok)`; one 512-thread block per image; x holds N·HW·C elements of `dt`, the
    // partials (when not null) N·splits·C f32, w1/w2 Cse·C and b1/b2 Cse/C elements of `wdt`,
    // s N·C f32 (all checked); C <= 4096 and Cse <= 512 fit the kernel's shared arrays; lanes is
    // a power of two <= 32 (divides 512).
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// `y = x ⊙ s` per image and channel: NHWC `x` `[N, H, W, C]`, `s` `[N, C]` f32 (e.g. from
/// [`se_scale_vector`]); the product is f32, rounded once to x's dtype.
pub fn channel_scale(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let mut y = Tensor::empty(&x.device(), x.shape(), x.dtype())?;
    channel_scale_into(x, s, &mut y)?;
    Ok(y)
}

/// [`channel_scale`] into `y` (x's shape, dtype and device).
pub fn channel_scale_into(x: &Tensor, s: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "channel_scale";
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let [n, h, w, c] = nhwc_dims(OP, "x", x)?;
    if s.dtype() != DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg: "s",
            got: s.dtype(),
            expected: "f32".into(),
        });
    }
    if s.shape() != [n, c] {
        return Err(Error::Shape {
            op: OP,
            arg: "s",
            got: s.shape().to_vec(),
            expected: format!("[{n}, {c}] ([N, C] of x)"),
        });
    }
    same_dtype(OP, "y", y, dt)?;
    same_shape(OP, "y", y, x.shape())?;
    let hw = h * w;
    match backend(OP, x, &[("s", Some(s)), ("y", Some(y))])? {
        Backend::Cpu => {
            let v = reference::squeeze_excite::channel_scale(
                &host(OP, "x", x)?.to_f64(),
                (n, hw, c),
                &host(OP, "s", s)?.to_f64(),
            );
            *y = Tensor::Host(HostTensor::from_f64(x.shape(), &v, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if n == 0 {
                return Ok(());
            }
            if n > 65_535 {
                return Err(Error::Invalid {
                    op: OP,
                    arg: "x",
                    detail: format!("batch {n} exceeds 65535 images per launch"),
                });
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(OP, format!("se_scale_{dt}"))?;
            let per_image = hw * c;
            let threads = consts::SE_SCALE_THREADS;
            let blocks = (stride_grid(&gpu, x.len(), threads) as usize)
                .div_ceil(n)
                .max(1);
            let xd = dev(OP, "x", x)?;
            let sd = dev(OP, "s", s)?;
            let yd = dev_mut(OP, "y", y)?;
            let vec_ok =
                i32::from(c % consts::VEC == 0 && aligned16(&[Some(xd), Some(sd), Some(&*yd)]));
            as_i32(OP, "H·W·C", per_image)?; // 32-bit channel index in the kernel
            let (per_i, c_i) = (per_image as i64, as_i32(OP, "C", c)?);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, n as u32, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut())
                .arg(xd.buffer())
                .arg(sd.buffer())
                .arg(&per_i)
                .arg(&c_i)
                .arg(&vec_ok);
            // SAFETY: matches `se_scale_*(y, x, s, per_image, C, vec_ok)`; grid (blocks, N); x
            // and y hold N·per_image elements of `dt`, s N·C f32 (checked); vec_ok only for
            // C % 8 == 0 (a vector never leaves its row) and 16-byte-aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
