//! Upsampling / resizing, NHWC: kernel `kernels/upsample.cu`, reference
//! `src/reference/upsample.rs`, tests `tests/upsample.rs`, bench `benches/upsample.rs`.
//!
//! PyTorch `F.interpolate(x, size=(out_h, out_w), mode=...)` semantics for any output size
//! (integer or fractional factors, also downsampling without antialiasing). For a
//! `scale_factor` s, pass `size = floor(in·s)` ([`scaled_size`]); PyTorch then indexes with
//! `1/s` unless `recompute_scale_factor=True`, which differs from `in/size` only when `in·s`
//! is not an integer.

use super::consts;
use super::{Backend, aligned16, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name};
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "upsample";

/// How [`upsample`] picks or blends source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpsampleMode {
    /// PyTorch `mode="nearest"`: `src = min(floor(dst·in/out), in − 1)`.
    Nearest,
    /// PyTorch `mode="nearest-exact"`: `src = min(floor((dst + 0.5)·in/out), in − 1)`.
    NearestExact,
    /// PyTorch `mode="bilinear"` with its `align_corners` flag.
    Bilinear { align_corners: bool },
}

/// PyTorch's output size for a scale factor: `floor(input·factor)`.
pub fn scaled_size(input: usize, factor: f64) -> usize {
    (input as f64 * factor).floor() as usize
}

/// Resamples `x` `[N, H, W, C]` to `[N, size.0, size.1, C]` on x's device.
pub fn upsample(x: &Tensor, size: (usize, usize), mode: UpsampleMode) -> Result<Tensor> {
    let &[n, _, _, c] = x.shape() else {
        return Err(bad_x(x));
    };
    let mut out = Tensor::empty(&x.device(), &[n, size.0, size.1, c], x.dtype())?;
    upsample_into(x, mode, &mut out)?;
    Ok(out)
}

fn bad_x(x: &Tensor) -> Error {
    Error::Shape {
        op: OP,
        arg: "x",
        got: x.shape().to_vec(),
        expected: "[N, H, W, C] (NHWC) with H, W, C >= 1".into(),
    }
}

/// [`upsample`] into `out` `[N, out_h, out_w, C]` (x's dtype and device): out's shape gives
/// the output size.
pub fn upsample_into(x: &Tensor, mode: UpsampleMode, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let &[n, h, w, c] = x.shape() else {
        return Err(bad_x(x));
    };
    if h == 0 || w == 0 || c == 0 {
        return Err(bad_x(x));
    }
    if out.dtype() != dt {
        return Err(Error::DType {
            op: OP,
            arg: "out",
            got: out.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    let (oh, ow) = match *out.shape() {
        [on, oh, ow, oc] if on == n && oc == c => (oh, ow),
        _ => {
            return Err(Error::Shape {
                op: OP,
                arg: "out",
                got: out.shape().to_vec(),
                expected: format!("[{n}, out_h, out_w, {c}] (x's batch and channels)"),
            });
        }
    };
    if oh == 0 || ow == 0 {
        return Err(Error::Invalid {
            op: OP,
            arg: "size",
            detail: format!("{oh}x{ow}: output size <= 0, expected at least 1x1"),
        });
    }
    match backend(OP, x, &[("out", Some(out))])? {
        Backend::Cpu => {
            let y = reference::upsample::upsample(
                &host(OP, "x", x)?.to_f64(),
                [n, h, w, c],
                (oh, ow),
                mode,
            );
            *out = Tensor::Host(HostTensor::from_f64(&[n, oh, ow, c], &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let (name, mode_code) = match mode {
                UpsampleMode::Nearest => ("nearest", 0),
                UpsampleMode::NearestExact => ("nearest", 1),
                UpsampleMode::Bilinear { align_corners } => ("bilinear", i32::from(align_corners)),
            };
            let kernel = kernel_name(OP, format!("upsample_{name}_{dt}"))?;
            let xd = dev(OP, "x", x)?;
            let yd = dev_mut(OP, "out", out)?;
            let vec_ok = c % consts::VEC == 0 && aligned16(&[Some(xd), Some(&*yd)]);
            let items = n * oh * ow * c.div_ceil(consts::VEC);
            let grid = items
                .div_ceil(consts::UP_THREADS)
                .clamp(1, gpu.sm_count() as usize * 16) as u32;
            let px = xd.addr();
            let py = yd.addr();
            let i = |arg, v| as_i32(OP, arg, v);
            let p = UpParams {
                x: px,
                y: py,
                n: i("N", n)?,
                h: i("H", h)?,
                w: i("W", w)?,
                c: i("C", c)?,
                oh: i("out_h", oh)?,
                ow: i("out_w", ow)?,
                scale_h: reference::upsample::scale(mode, h, oh),
                scale_w: reference::upsample::scale(mode, w, ow),
                mode: mode_code,
                vec_ok: i32::from(vec_ok),
            };
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (consts::UP_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(&p);
            // SAFETY: `p` mirrors mk::UpParams; x holds N·H·W·C and y N·out_h·out_w·C elements
            // (checked above) on this GPU; source indices stay inside [0, H) × [0, W); each
            // output is written once; vec_ok only with C % 8 == 0 and 16-byte-aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// The parameter block of the upsample kernels; mirrors `mk::UpParams`
/// (kernels/upsample.cu) field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UpParams {
    pub(crate) x: u64,
    pub(crate) y: u64,
    pub(crate) n: i32,
    pub(crate) h: i32,
    pub(crate) w: i32,
    pub(crate) c: i32,
    pub(crate) oh: i32,
    pub(crate) ow: i32,
    pub(crate) scale_h: f32,
    pub(crate) scale_w: f32,
    pub(crate) mode: i32,
    pub(crate) vec_ok: i32,
}
// SAFETY: plain-old-data with the exact C layout of mk::UpParams (two 8-byte pointers, then
// ten 4-byte fields, no padding: 56 bytes, asserted below).
crate::device::struct_param!(UpParams);
const _: () = assert!(std::mem::size_of::<UpParams>() == 56);
