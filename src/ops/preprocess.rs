//! Image preprocessing (value map, bilinear resize, per-channel normalisation) into an NHWC
//! float tensor, in one kernel: `kernels/preprocess.cu`, reference `src/reference/preprocess.rs`,
//! tests `tests/preprocess.rs`, bench `benches/preprocess.rs`.

use super::consts;
use super::{Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name, stride_grid};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::reference::preprocess::ValueMap;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "preprocess";

/// torchvision's ImageNet statistics (RGB, for values in [0, 1]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How raw pixel values map to the values that are resized and normalised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PixelRange {
    /// `t = v / scale`, no clamping: u8 images with `scale = 255` give torchvision's
    /// `ToTensor` values in [0, 1].
    Scale(f32),
    /// `t = clamp((v − lo) / (hi − lo), 0, 1)`: a display window over raw values, for u16 grey
    /// images (DICOM-like). The caller gives it in raw stored units: `(0, 4095)` for 12-bit
    /// data, `(0, 65535)` for 16-bit, or a DICOM window centre `c` / width `w` as
    /// `(c − w/2, c + w/2)` after undoing the rescale slope/intercept (`(x − b)/m`) on both
    /// ends. Values outside the window saturate (the clamp happens per source pixel, before
    /// the resize).
    Window { lo: f32, hi: f32 },
}

/// What [`preprocess`] does to a batch of same-size images.
#[derive(Clone, Copy, Debug)]
pub struct Preprocess<'a> {
    /// Output size `(H, W)`; equal to the input size, the resize is the identity.
    pub out_size: (usize, usize),
    pub range: PixelRange,
    /// Per output channel (3, or 1 for grey kept grey), in the units of `t`.
    pub mean: &'a [f32],
    pub std: &'a [f32],
    /// A 1-channel (grey) input is written as 3 identical channels (ImageNet-trained models).
    pub grey_to_rgb: bool,
}

impl Preprocess<'static> {
    /// torchvision's ImageNet pipeline for u8 RGB(A): `ToTensor` (÷255), `Resize(out_size,
    /// antialias=False)`, `Normalize(IMAGENET_MEAN, IMAGENET_STD)`.
    pub fn imagenet(out_size: (usize, usize)) -> Preprocess<'static> {
        Preprocess {
            out_size,
            range: PixelRange::Scale(255.0),
            mean: &IMAGENET_MEAN,
            std: &IMAGENET_STD,
            grey_to_rgb: false,
        }
    }
}

/// Preprocesses raw images `x` into a normalised NHWC tensor `[N, out_h, out_w, C_out]` of
/// `dtype` (f32/f16/bf16).
///
/// Input: u8 `[N, H, W, C]` with C = 1 (grey), 3 (RGB) or 4 (RGBA: alpha dropped), or u16
/// `[N, H, W, 1]`; rank 3 `[N, H, W]` is grey. Per source pixel `t` = [`PixelRange`] of the
/// value, then the bilinear resize (align_corners = false, **no antialias**: PyTorch's
/// `F.interpolate(mode="bilinear")` / torchvision `Resize(antialias=False)`), then
/// `(t − mean[c]) / std[c]`. `C_out` is 3 for colour, and for grey 3 with `grey_to_rgb`, else 1.
/// The kernel computes in f32 (source positions as PyTorch does) and rounds once.
pub fn preprocess(x: &Tensor, p: &Preprocess, dtype: DType) -> Result<Tensor> {
    let g = geometry(x.dtype(), x.shape(), p)?;
    let mut out = Tensor::empty(
        &x.device(),
        &[g.n, p.out_size.0, p.out_size.1, g.cout],
        dtype,
    )?;
    preprocess_into(x, p, &mut out)?;
    Ok(out)
}

struct Geometry {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
}

/// [`preprocess`] on the CPU of host pixels where they are: no copy of the image is made to
/// wrap it in a [`Tensor`] (what [`crate::input::RawImage::preprocess`] uses on the CPU).
pub fn preprocess_host(x: &HostTensor, p: &Preprocess, dtype: DType) -> Result<HostTensor> {
    let g = geometry(x.dtype(), x.shape(), p)?;
    float_dtype(OP, "dtype", dtype)?;
    cpu(x, &g, p, dtype)
}

/// The CPU path: resampled straight from the u8/u16 pixels, with no f64 copy of the whole
/// image (8x a u8 image's bytes) before it is shrunk to the model's input size.
fn cpu(x: &HostTensor, g: &Geometry, p: &Preprocess, dtype: DType) -> Result<HostTensor> {
    let (lo, range, clamp01) = value_map(p.range);
    let (oh, ow) = p.out_size;
    let f = |v: &[f32]| v.iter().map(|&t| f64::from(t)).collect::<Vec<f64>>();
    let (mean, std) = (f(p.mean), f(p.std));
    let map = ValueMap {
        lo: f64::from(lo),
        range: f64::from(range),
        clamp01,
    };
    let y = match x.dtype() {
        DType::U8 => reference::preprocess::preprocess(
            x.as_slice::<u8>()?,
            (g.n, g.h, g.w, g.cin),
            (oh, ow, g.cout),
            map,
            &mean,
            &std,
        ),
        _ => reference::preprocess::preprocess(
            x.as_slice::<u16>()?,
            (g.n, g.h, g.w, g.cin),
            (oh, ow, g.cout),
            map,
            &mean,
            &std,
        ),
    };
    HostTensor::from_f64(&[g.n, oh, ow, g.cout], &y, dtype)
}

fn geometry(src: DType, shape: &[usize], p: &Preprocess) -> Result<Geometry> {
    if src != DType::U8 && src != DType::U16 {
        return Err(Error::DType {
            op: OP,
            arg: "x",
            got: src,
            expected: "u8 (grey/RGB/RGBA images) or u16 (grey)".into(),
        });
    }
    let (n, h, w, cin) = match *shape {
        [n, h, w] => (n, h, w, 1),
        [n, h, w, c] => (n, h, w, c),
        _ => (0, 0, 0, 0),
    };
    let ok_c = if src == DType::U8 {
        matches!(cin, 1 | 3 | 4)
    } else {
        cin == 1
    };
    if h == 0 || w == 0 || !ok_c {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: shape.to_vec(),
            expected: if src == DType::U8 {
                "[N, H, W, C] with H, W >= 1 and C = 1, 3 or 4 (or [N, H, W] grey)".into()
            } else {
                "[N, H, W] or [N, H, W, 1] with H, W >= 1 (u16 is grey)".into()
            },
        });
    }
    let (oh, ow) = p.out_size;
    if oh == 0 || ow == 0 {
        return Err(Error::Invalid {
            op: OP,
            arg: "out_size",
            detail: format!("{:?}: output size <= 0; expected both >= 1", p.out_size),
        });
    }
    if p.grey_to_rgb && cin != 1 {
        return Err(Error::Invalid {
            op: OP,
            arg: "grey_to_rgb",
            detail: format!("set for a {cin}-channel input; expected a 1-channel (grey) input"),
        });
    }
    let cout = if cin == 1 && !p.grey_to_rgb { 1 } else { 3 };
    for (arg, v) in [("mean", p.mean), ("std", p.std)] {
        if v.len() != cout {
            return Err(Error::Invalid {
                op: OP,
                arg,
                detail: format!(
                    "{} values; expected {cout} (one per output channel: {})",
                    v.len(),
                    if cout == 3 { "RGB" } else { "grey" }
                ),
            });
        }
    }
    if !p.mean.iter().all(|m| m.is_finite()) || !p.std.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(Error::Invalid {
            op: OP,
            arg: "std",
            detail: format!(
                "mean {:?}, std {:?}; expected finite means and finite std > 0",
                p.mean, p.std
            ),
        });
    }
    match p.range {
        PixelRange::Scale(s) if s.is_finite() && s > 0.0 => {}
        PixelRange::Window { lo, hi } if lo.is_finite() && hi.is_finite() && hi > lo => {}
        r => {
            return Err(Error::Invalid {
                op: OP,
                arg: "range",
                detail: format!("{r:?}; expected a finite scale > 0 or a window with lo < hi"),
            });
        }
    }
    Ok(Geometry { n, h, w, cin, cout })
}

/// The value map the kernel applies: `(lo, range, clamp01)`.
fn value_map(r: PixelRange) -> (f32, f32, bool) {
    match r {
        PixelRange::Scale(s) => (0.0, s, false),
        PixelRange::Window { lo, hi } => (lo, hi - lo, true),
    }
}

/// [`preprocess`] into `out` (`[N, out_h, out_w, C_out]`, f32/f16/bf16, x's device).
pub fn preprocess_into(x: &Tensor, p: &Preprocess, out: &mut Tensor) -> Result<()> {
    let g = geometry(x.dtype(), x.shape(), p)?;
    let od = out.dtype();
    float_dtype(OP, "out", od)?;
    let (oh, ow) = p.out_size;
    let want = [g.n, oh, ow, g.cout];
    if out.shape() != want {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{want:?}"),
        });
    }
    let (lo, range, clamp01) = value_map(p.range);
    match backend(OP, x, &[("out", Some(out))])? {
        Backend::Cpu => {
            *out = Tensor::Host(cpu(host(OP, "x", x)?, &g, p, od)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            let pixels = g.n * oh * ow;
            if pixels == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let kernel = kernel_name(OP, format!("preprocess_{}_{od}", x.dtype()))?;
            as_i32(OP, "output pixels", pixels)?; // 32-bit index arithmetic in the kernel
            let ints = [
                as_i32(OP, "N", g.n)?,
                as_i32(OP, "H", g.h)?,
                as_i32(OP, "W", g.w)?,
                g.cin as i32,
                as_i32(OP, "out_h", oh)?,
                as_i32(OP, "out_w", ow)?,
                g.cout as i32,
            ];
            let (scale_h, scale_w) = (g.h as f32 / oh as f32, g.w as f32 / ow as f32);
            let clamp_i = i32::from(clamp01);
            let pad3 = |v: &[f32], fill: f32| [0, 1, 2].map(|i| v.get(i).copied().unwrap_or(fill));
            let (mean, std) = (pad3(p.mean, 0.0), pad3(p.std, 1.0));
            let xd = dev(OP, "x", x)?;
            let yd = dev_mut(OP, "out", out)?;
            let threads = consts::PRE_THREADS;
            let cfg = LaunchConfig {
                // One thread per output pixel (stride_grid counts VEC-element vectors).
                grid_dim: (stride_grid(&gpu, pixels * consts::VEC, threads), 1, 1),
                block_dim: (threads as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(yd.buffer_mut()).arg(xd.buffer());
            for v in &ints {
                b.arg(v);
            }
            b.arg(&scale_h)
                .arg(&scale_w)
                .arg(&lo)
                .arg(&range)
                .arg(&clamp_i);
            for v in mean.iter().chain(&std) {
                b.arg(v);
            }
            // SAFETY: matches `preprocess_{u8,u16}_{out}(y, x, N, Hin, Win, Cin, Hout, Wout, Cout,
            // scale_h, scale_w, lo, range, clamp01, m0, m1, m2, s0, s1, s2)`; x holds
            // N·Hin·Win·Cin source elements and y N·Hout·Wout·Cout outputs (checked); every
            // source index is clamped to the image; Cout <= 3 matches the three mean/std slots.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
