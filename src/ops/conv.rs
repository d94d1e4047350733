//! conv2d, NHWC, as an implicit GEMM on tensor cores with a fused folded-BatchNorm / residual /
//! activation epilogue: kernel `kernels/conv.cu`, reference `src/reference/conv.rs`, tests
//! `tests/conv.rs`, bench `benches/conv.rs`.
//!
//! Weights are prepared once ([`ConvWeight`]: OHWI rows zero-padded to a multiple of 8 so the
//! B tiles load with 16-byte copies). f16/bf16 run on tensor cores: the `vec` kernels when the
//! channels per group are a multiple of 8 (16-byte gathers), the `any` kernels otherwise (e.g.
//! the 3-channel first layer). f32 runs a direct SIMT kernel.

use super::consts;
use super::conv_geom::{Padding, Window};
use super::gemm::Tile;
use super::{Activation, Backend, as_i32, backend, dev, dev_mut, float_dtype, host, kernel_name};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference::conv::{self as refconv, ConvShape};
use crate::tensor::{Device, DeviceTensor, HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "conv2d";

/// A convolution weight prepared for the kernels: OHWI `[oc, k_h, k_w, c/groups]` flattened to
/// rows of `K = k_h·k_w·c/groups`, zero-padded to `kp` (a multiple of 8), on one device.
#[derive(Debug)]
pub struct ConvWeight {
    oc: usize,
    kh: usize,
    kw: usize,
    cg: usize,
    groups: usize,
    kp: usize,
    weight: Tensor,
}

impl ConvWeight {
    /// From an OHWI weight `[oc, k_h, k_w, c/groups]` (oc divisible by `groups`).
    pub fn new(w: &HostTensor, groups: usize, device: &Device) -> Result<Self> {
        let s = w.shape();
        if s.len() != 4 || s.contains(&0) {
            return Err(Error::Shape {
                op: OP,
                arg: "weight",
                got: s.to_vec(),
                expected: "[oc, k_h, k_w, c/groups] (OHWI), every dim >= 1".into(),
            });
        }
        float_dtype(OP, "weight", w.dtype())?;
        let (oc, kh, kw, cg) = (s[0], s[1], s[2], s[3]);
        if groups == 0 || oc % groups != 0 {
            return Err(Error::Invalid {
                op: OP,
                arg: "groups",
                detail: format!("{groups} groups do not divide the {oc} output channels"),
            });
        }
        let k = kh * kw * cg;
        let kp = k.div_ceil(8) * 8;
        let v = w.to_f64();
        let mut padded = vec![0.0; oc * kp];
        for o in 0..oc {
            padded[o * kp..o * kp + k].copy_from_slice(&v[o * k..(o + 1) * k]);
        }
        let weight = HostTensor::from_f64(&[oc, kp], &padded, w.dtype())?.to_device(device)?;
        Ok(ConvWeight {
            oc,
            kh,
            kw,
            cg,
            groups,
            kp,
            weight,
        })
    }

    /// From PyTorch's `[oc, c/groups, k_h, k_w]` (OIHW) layout.
    pub fn from_pytorch(w: &HostTensor, groups: usize, device: &Device) -> Result<Self> {
        let s = w.shape();
        if s.len() != 4 {
            return Err(Error::Shape {
                op: OP,
                arg: "weight",
                got: s.to_vec(),
                expected: "[oc, c/groups, k_h, k_w] (PyTorch OIHW)".into(),
            });
        }
        let v = refconv::oihw_to_ohwi(&w.to_f64(), s[0], s[1], s[2], s[3]);
        let ohwi = HostTensor::from_f64(&[s[0], s[2], s[3], s[1]], &v, w.dtype())?;
        Self::new(&ohwi, groups, device)
    }

    /// `[oc, k_h, k_w, c/groups]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.oc, self.kh, self.kw, self.cg]
    }
    pub fn groups(&self) -> usize {
        self.groups
    }
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// The unpadded OHWI weight as f64 (for the CPU path and tests).
    pub fn to_ohwi_f64(&self) -> Result<Vec<f64>> {
        let p = self.weight.to_host()?.to_f64();
        let k = self.kh * self.kw * self.cg;
        Ok((0..self.oc)
            .flat_map(|o| p[o * self.kp..o * self.kp + k].to_vec())
            .collect())
    }
}

/// Window and epilogue of one convolution.
#[derive(Clone, Copy, Debug)]
pub struct Conv2d<'a> {
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub padding: Padding,
    /// f32 `[oc]`: per-channel multiplier (folded BatchNorm γ/√(σ²+ε)).
    pub scale: Option<&'a Tensor>,
    /// f32 `[oc]`: per-channel bias (conv bias and/or folded BatchNorm shift).
    pub bias: Option<&'a Tensor>,
    /// y's shape and dtype, added before the activation (ResNet's `relu(bn(conv) + identity)`).
    pub residual: Option<&'a Tensor>,
    pub act: Activation,
    /// Force a tensor-core tile (tests cover each); None picks by shape.
    pub tile: Option<Tile>,
}

impl Default for Conv2d<'_> {
    fn default() -> Self {
        Conv2d {
            stride: (1, 1),
            dilation: (1, 1),
            padding: Padding::Valid,
            scale: None,
            bias: None,
            residual: None,
            act: Activation::Identity,
            tile: None,
        }
    }
}

/// Mirrors `mk::ConvParams` (kernels/conv.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConvParams {
    pub(crate) x: u64,
    pub(crate) w: u64,
    pub(crate) y: u64,
    pub(crate) scale: u64,
    pub(crate) bias: u64,
    pub(crate) residual: u64,
    pub(crate) n: i32,
    pub(crate) h: i32,
    pub(crate) w_: i32,
    pub(crate) c: i32,
    pub(crate) oc: i32,
    pub(crate) kh: i32,
    pub(crate) kw: i32,
    pub(crate) cg: i32,
    pub(crate) ocg: i32,
    pub(crate) k: i32,
    pub(crate) kp: i32,
    pub(crate) oh: i32,
    pub(crate) ow: i32,
    pub(crate) stride_h: i32,
    pub(crate) stride_w: i32,
    pub(crate) dil_h: i32,
    pub(crate) dil_w: i32,
    pub(crate) pad_top: i32,
    pub(crate) pad_left: i32,
    pub(crate) act: i32,
    pub(crate) m: i32,
    pub(crate) _pad: i32,
}
// SAFETY: plain-old-data with the C layout of mk::ConvParams (six pointers, then 21 ints and
// one trailing pad int that the kernel never reads; 136 bytes).
crate::device::struct_param!(ConvParams);
const _: () = assert!(std::mem::size_of::<ConvParams>() == 136);

/// Checks the call and returns (shape, window, y shape).
fn check(x: &Tensor, w: &ConvWeight, c: &Conv2d) -> Result<(ConvShape, Vec<usize>)> {
    let xs = x.shape();
    if xs.len() != 4 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: xs.to_vec(),
            expected: "[n, h, w, c] (NHWC)".into(),
        });
    }
    float_dtype(OP, "x", x.dtype())?;
    if w.dtype() != x.dtype() {
        return Err(Error::DType {
            op: OP,
            arg: "weight",
            got: w.dtype(),
            expected: format!("{} (the dtype of x)", x.dtype()),
        });
    }
    let (n, h, wd, ch) = (xs[0], xs[1], xs[2], xs[3]);
    if ch != w.cg * w.groups {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: xs.to_vec(),
            expected: format!(
                "{} channels (weight {:?} with {} groups)",
                w.cg * w.groups,
                w.shape(),
                w.groups
            ),
        });
    }
    let win = Window::new(OP, (h, wd), (w.kh, w.kw), c.stride, c.dilation, c.padding)?;
    let ys = vec![n, win.out_h, win.out_w, w.oc];
    for (arg, t) in [("scale", c.scale), ("bias", c.bias)] {
        if let Some(t) = t
            && (t.dtype() != DType::F32 || t.shape() != [w.oc])
        {
            return Err(Error::Shape {
                op: OP,
                arg,
                got: t.shape().to_vec(),
                expected: format!("f32 [{}] (one per output channel), got {}", w.oc, t.dtype()),
            });
        }
    }
    if let Some(r) = c.residual
        && (r.dtype() != x.dtype() || r.shape() != ys)
    {
        return Err(Error::Shape {
            op: OP,
            arg: "residual",
            got: r.shape().to_vec(),
            expected: format!("{ys:?} {} (the output)", x.dtype()),
        });
    }
    Ok((
        ConvShape {
            n,
            c: ch,
            oc: w.oc,
            groups: w.groups,
            win,
        },
        ys,
    ))
}

/// Convolution into a new NHWC tensor on x's device.
pub fn conv2d(x: &Tensor, w: &ConvWeight, c: &Conv2d) -> Result<Tensor> {
    let (_, ys) = check(x, w, c)?;
    let mut out = Tensor::empty(&x.device(), &ys, x.dtype())?;
    conv2d_into(x, w, c, &mut out)?;
    Ok(out)
}

/// Convolution into `out` (`[n, out_h, out_w, oc]`, x's dtype and device).
pub fn conv2d_into(x: &Tensor, w: &ConvWeight, c: &Conv2d, out: &mut Tensor) -> Result<()> {
    let (s, ys) = check(x, w, c)?;
    if out.shape() != ys || out.dtype() != x.dtype() {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{ys:?} {}", x.dtype()),
        });
    }
    let dt = x.dtype();
    let others = [
        ("weight", Some(&w.weight)),
        ("scale", c.scale),
        ("bias", c.bias),
        ("residual", c.residual),
        ("out", Some(&*out)),
    ];
    match backend(OP, x, &others)? {
        Backend::Cpu => {
            let f = |t: Option<&Tensor>, arg| {
                t.map(|t| host(OP, arg, t).map(HostTensor::to_f64))
                    .transpose()
            };
            let (sc, b, r) = (
                f(c.scale, "scale")?,
                f(c.bias, "bias")?,
                f(c.residual, "residual")?,
            );
            let y = refconv::conv2d(
                &host(OP, "x", x)?.to_f64(),
                &w.to_ohwi_f64()?,
                &s,
                sc.as_deref(),
                b.as_deref(),
                r.as_deref(),
                c.act,
            );
            *out = Tensor::Host(HostTensor::from_f64(&ys, &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            let gpu = gpu.clone();
            let win = s.win;
            let m = s.n * win.out_h * win.out_w;
            if m == 0 {
                return Ok(());
            }
            let ocg = w.oc / w.groups;
            let mut p = ConvParams {
                n: as_i32(OP, "n", s.n)?,
                h: as_i32(OP, "h", win.in_h)?,
                w_: as_i32(OP, "w", win.in_w)?,
                c: as_i32(OP, "c", s.c)?,
                oc: as_i32(OP, "oc", w.oc)?,
                kh: as_i32(OP, "k_h", w.kh)?,
                kw: as_i32(OP, "k_w", w.kw)?,
                cg: as_i32(OP, "c/groups", w.cg)?,
                ocg: as_i32(OP, "oc/groups", ocg)?,
                k: as_i32(OP, "K", w.kh * w.kw * w.cg)?,
                kp: as_i32(OP, "K", w.kp)?,
                oh: as_i32(OP, "out_h", win.out_h)?,
                ow: as_i32(OP, "out_w", win.out_w)?,
                stride_h: as_i32(OP, "stride", win.stride_h)?,
                stride_w: as_i32(OP, "stride", win.stride_w)?,
                dil_h: as_i32(OP, "dilation", win.dil_h)?,
                dil_w: as_i32(OP, "dilation", win.dil_w)?,
                pad_top: as_i32(OP, "padding", win.pad_top)?,
                pad_left: as_i32(OP, "padding", win.pad_left)?,
                act: c.act.code(),
                m: as_i32(OP, "n·out_h·out_w", m)?,
                ..Default::default()
            };
            // Every element offset must fit the kernels' 64-bit math and the input its int dims.
            as_i32(OP, "h·w", win.in_h * win.in_w)?;
            // oh·stride + kh·dilation (and the same across) stay far from i32 overflow.
            as_i32(
                OP,
                "window",
                (win.out_h * win.stride_h + win.k_h * win.dil_h + win.pad_top)
                    .max(win.out_w * win.stride_w + win.k_w * win.dil_w + win.pad_left),
            )?;
            let (kernel, grid, block, smem) = if dt == DType::F32 {
                let (total, threads) = (m * w.oc, consts::CONV_F32_THREADS);
                let blocks = total
                    .div_ceil(threads)
                    .clamp(1, gpu.sm_count() as usize * 64);
                let block = threads as u32;
                ("conv2d_f32".to_string(), (blocks as u32, 1, 1), block, 0)
            } else {
                let vec = w.cg % 8 == 0 && s.c % 8 == 0;
                let mut t = c
                    .tile
                    .unwrap_or_else(|| Tile::choose(m, ocg, w.groups, gpu.sm_count()));
                if !vec && t == Tile::L {
                    t = Tile::M; // the element-gather loader is built for S and M
                }
                let (bm, bn, threads) = t.dims();
                let gx = u32::try_from(m.div_ceil(bm)).map_err(|_| Error::Invalid {
                    op: OP,
                    arg: "x",
                    detail: format!("{m} output pixels exceed the grid"),
                })?;
                let gy = ocg.div_ceil(bn);
                if gy > 65_535 || w.groups > 65_535 {
                    return Err(Error::Invalid {
                        op: OP,
                        arg: "weight",
                        detail: format!(
                            "{ocg} channels per group x {} groups exceed the grid",
                            w.groups
                        ),
                    });
                }
                (
                    format!(
                        "conv2d_{dt}_{}_{}",
                        if vec { "vec" } else { "any" },
                        t.suffix()
                    ),
                    (gx, gy as u32, w.groups as u32),
                    threads,
                    t.smem(),
                )
            };
            let kernel = kernel_name(OP, kernel)?;
            let px = dev(OP, "x", x)?.addr();
            let pw = dev(OP, "weight", &w.weight)?.addr();
            fn opt(t: Option<&Tensor>, arg: &'static str) -> Result<Option<u64>> {
                t.map(|t| dev(OP, arg, t).map(DeviceTensor::addr))
                    .transpose()
            }
            let (gs, gb, gr) = (
                opt(c.scale, "scale")?,
                opt(c.bias, "bias")?,
                opt(c.residual, "residual")?,
            );
            let py = dev_mut(OP, "out", out)?.addr();
            p.x = px;
            p.w = pw;
            p.y = py;
            p.scale = gs.unwrap_or(0);
            p.bias = gb.unwrap_or(0);
            p.residual = gr.unwrap_or(0);
            let cfg = LaunchConfig {
                grid_dim: grid,
                block_dim: (block, 1, 1),
                shared_mem_bytes: smem,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(&p);
            // SAFETY: `p` matches mk::ConvParams; x is [n, h, w, c], the weight [oc, kp] with kp
            // a multiple of 8 (16-byte rows from 256-byte-aligned allocations), scale/bias [oc]
            // f32, residual and out [n, out_h, out_w, oc] (all checked); the kernel reads inputs
            // only inside the image and writes outputs only below (m, oc).
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}
