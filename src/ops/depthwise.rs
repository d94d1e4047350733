//! Depthwise conv2d, NHWC: kernel `kernels/depthwise.cu`, reference
//! `src/reference/depthwise.rs`, tests `tests/depthwise.rs`, bench `benches/depthwise.rs`.
//!
//! Weights are `[k_h, k_w, C]` (TensorFlow's depthwise layout without its multiplier axis):
//! channels innermost, as in the NHWC activations, so one tap of 8 channels is one 16-byte
//! vector in both. PyTorch's `[C, 1, k_h, k_w]` converts with [`weights_from_pytorch`].

use super::consts;
use super::{
    Activation, Backend, Padding, Window, aligned16, as_i32, backend, dev, dev_mut, float_dtype,
    host, host_f64, kernel_name,
};
use crate::device::DEFAULT_DYNAMIC_SMEM;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "depthwise";
/// Threads per CTA at most (the kernels' `__launch_bounds__`).
const MAX_THREADS: usize = consts::DW_MAX_THREADS;
/// Shared memory a plan aims under (no opt-in needed), and the most it may take (opt-in; every
/// sm_80+ GPU allows at least 99 KiB per block).
const SMEM_TARGET: usize = DEFAULT_DYNAMIC_SMEM as usize;
const SMEM_MAX: usize = 96 * 1024;

/// Options of [`depthwise`]: window geometry and the fused epilogue
/// `act(scale[c]·conv + bias[c]) + residual`. `scale` and `bias` are f32 `[C]`, BatchNorm folded
/// in (`scale = γ/√(σ²+ε)`, `bias = β − μ·scale`: the pair
/// [`batchnorm_scale_shift`](super::bn_fold::batchnorm_scale_shift) returns); `residual` has the
/// output's shape and dtype.
#[derive(Clone, Copy, Debug)]
pub struct Depthwise<'a> {
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub padding: Padding,
    pub scale: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
    pub residual: Option<&'a Tensor>,
}

impl Default for Depthwise<'_> {
    fn default() -> Self {
        Depthwise {
            stride: (1, 1),
            dilation: (1, 1),
            padding: Padding::Valid,
            scale: None,
            bias: None,
            act: Activation::Identity,
            residual: None,
        }
    }
}

/// Converts a PyTorch depthwise weight `[C, 1, k_h, k_w]` (`Conv2d(C, C, k, groups=C)`) to
/// medkern's `[k_h, k_w, C]`, keeping the dtype (a host-side load-time permutation).
pub fn weights_from_pytorch(w: &HostTensor) -> Result<HostTensor> {
    let &[c, 1, k_h, k_w] = w.shape() else {
        return Err(Error::Shape {
            op: "depthwise::weights_from_pytorch",
            arg: "w",
            got: w.shape().to_vec(),
            expected: "[C, 1, k_h, k_w] (PyTorch depthwise Conv2d weight)".into(),
        });
    };
    let v = reference::depthwise::depthwise_weights_from_pytorch(&w.to_f64(), c, k_h, k_w);
    HostTensor::from_f64(&[k_h, k_w, c], &v, w.dtype())
}

/// The output window of `x` `[N, H, W, C]` under weights `[k_h, k_w, C]` and `d`'s geometry,
/// after checking both shapes: `[N, out_h, out_w, C]` is the output shape.
pub fn window(x_shape: &[usize], w_shape: &[usize], d: &Depthwise) -> Result<Window> {
    let &[_, h, w, c] = x_shape else {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x_shape.to_vec(),
            expected: "[N, H, W, C] (NHWC)".into(),
        });
    };
    if c == 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x_shape.to_vec(),
            expected: "C >= 1 channels".into(),
        });
    }
    let &[k_h, k_w, wc] = w_shape else {
        return Err(Error::Shape {
            op: OP,
            arg: "w",
            got: w_shape.to_vec(),
            expected: format!("[k_h, k_w, {c}] (channels of x last; see weights_from_pytorch)"),
        });
    };
    if wc != c {
        return Err(Error::Shape {
            op: OP,
            arg: "w",
            got: w_shape.to_vec(),
            expected: format!("[k_h, k_w, {c}]: {wc} channels but x has {c}"),
        });
    }
    Window::new(OP, (h, w), (k_h, k_w), d.stride, d.dilation, d.padding)
}

/// Depthwise conv2d of `x` `[N, H, W, C]` with `w` `[k_h, k_w, C]` (x's dtype) and the fused
/// epilogue of `d`; returns `[N, out_h, out_w, C]` on x's device.
pub fn depthwise(x: &Tensor, w: &Tensor, d: &Depthwise) -> Result<Tensor> {
    let win = window(x.shape(), w.shape(), d)?;
    let shape = [x.shape()[0], win.out_h, win.out_w, x.shape()[3]];
    let mut out = Tensor::empty(&x.device(), &shape, x.dtype())?;
    depthwise_into(x, w, d, &mut out)?;
    Ok(out)
}

fn f32_channels(arg: &'static str, t: Option<&Tensor>, c: usize) -> Result<()> {
    let Some(t) = t else { return Ok(()) };
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op: OP,
            arg,
            got: t.dtype(),
            expected: "f32 (per-channel epilogue parameters)".into(),
        });
    }
    if t.shape() != [c] {
        return Err(Error::Shape {
            op: OP,
            arg,
            got: t.shape().to_vec(),
            expected: format!("[{c}] (one per channel of x)"),
        });
    }
    Ok(())
}

fn same_as(arg: &'static str, t: &Tensor, dt: DType, shape: &[usize]) -> Result<()> {
    if t.dtype() != dt {
        return Err(Error::DType {
            op: OP,
            arg,
            got: t.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    if t.shape() != shape {
        return Err(Error::Shape {
            op: OP,
            arg,
            got: t.shape().to_vec(),
            expected: format!("{shape:?} ([N, out_h, out_w, C])"),
        });
    }
    Ok(())
}

/// [`depthwise`] into `out` (`[N, out_h, out_w, C]`, x's dtype and device).
pub fn depthwise_into(x: &Tensor, w: &Tensor, d: &Depthwise, out: &mut Tensor) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let win = window(x.shape(), w.shape(), d)?;
    if w.dtype() != dt {
        return Err(Error::DType {
            op: OP,
            arg: "w",
            got: w.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    let (n, c) = (x.shape()[0], x.shape()[3]);
    let oshape = [n, win.out_h, win.out_w, c];
    f32_channels("scale", d.scale, c)?;
    f32_channels("bias", d.bias, c)?;
    if let Some(r) = d.residual {
        same_as("residual", r, dt, &oshape)?;
    }
    same_as("out", out, dt, &oshape)?;
    let be = backend(
        OP,
        x,
        &[
            ("w", Some(w)),
            ("scale", d.scale),
            ("bias", d.bias),
            ("residual", d.residual),
            ("out", Some(out)),
        ],
    )?;
    match be {
        Backend::Cpu => {
            let (s, b, r) = (
                host_f64(OP, "scale", d.scale)?,
                host_f64(OP, "bias", d.bias)?,
                host_f64(OP, "residual", d.residual)?,
            );
            let y = reference::depthwise::depthwise(
                &host(OP, "x", x)?.to_f64(),
                n,
                c,
                &host(OP, "w", w)?.to_f64(),
                &win,
                s.as_deref(),
                b.as_deref(),
                d.act,
                r.as_deref(),
            );
            *out = Tensor::Host(HostTensor::from_f64(&oshape, &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if out.is_empty() {
                return Ok(());
            }
            let gpu = gpu.clone();
            let plan = Plan::new(n, c, &win, dt.size())?;
            let kernel = kernel_name(OP, format!("depthwise_{}_{dt}", plan.variant))?;
            let xd = dev(OP, "x", x)?;
            let wd = dev(OP, "w", w)?;
            let sd = d.scale.map(|t| dev(OP, "scale", t)).transpose()?;
            let bd = d.bias.map(|t| dev(OP, "bias", t)).transpose()?;
            let rd = d.residual.map(|t| dev(OP, "residual", t)).transpose()?;
            let yd = dev_mut(OP, "out", out)?;
            let vec_ok = c % consts::VEC == 0 && aligned16(&[Some(xd), rd, Some(&*yd)]);
            let px = xd.addr();
            let pw = wd.addr();
            let gs = sd.map(|t| t.addr());
            let gb = bd.map(|t| t.addr());
            let gr = rd.map(|t| t.addr());
            let py = yd.addr();
            let i = |arg, v| as_i32(OP, arg, v);
            let p = DwParams {
                x: px,
                w: pw,
                scale: gs.unwrap_or(0),
                bias: gb.unwrap_or(0),
                residual: gr.unwrap_or(0),
                y: py,
                n: i("N", n)?,
                h: i("H", win.in_h)?,
                w_: i("W", win.in_w)?,
                c: i("C", c)?,
                oh: i("out_h", win.out_h)?,
                ow: i("out_w", win.out_w)?,
                kh: i("k_h", win.k_h)?,
                kw: i("k_w", win.k_w)?,
                sh: i("stride_h", win.stride_h)?,
                sw: i("stride_w", win.stride_w)?,
                dh: i("dilation_h", win.dil_h)?,
                dw: i("dilation_w", win.dil_w)?,
                pad_top: i("pad_top", win.pad_top)?,
                pad_left: i("pad_left", win.pad_left)?,
                act: d.act.code(),
                vec_ok: i32::from(vec_ok),
                ncv: plan.ncv as i32,
                th: plan.th as i32,
                twg: plan.twg as i32,
                tiles_w: plan.tiles_w as i32,
                in_rows: plan.in_rows as i32,
                in_cols: plan.in_cols as i32,
                row_pitch: plan.row_pitch as i32,
                w_off: plan.w_off as i32,
            };
            let cfg = LaunchConfig {
                grid_dim: plan.grid,
                block_dim: (plan.threads, 1, 1),
                shared_mem_bytes: plan.smem,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(&p);
            // SAFETY: `p` mirrors mk::DwParams; x holds N·H·W·C, w k_h·k_w·C, scale/bias C f32,
            // residual and y N·out_h·out_w·C elements (all checked above) on this GPU; the plan
            // keeps blockDim = ncv·th·twg <= 256 and sizes the dynamic shared memory for the
            // staged tile (in_rows·row_pitch elements) plus the f32 weights at w_off; the kernel
            // writes y only at in-range outputs; vec_ok only with C % 8 == 0 and aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// The parameter block of every depthwise kernel; mirrors `mk::DwParams`
/// (kernels/depthwise.cu) field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DwParams {
    pub(crate) x: u64,
    pub(crate) w: u64,
    pub(crate) scale: u64,
    pub(crate) bias: u64,
    pub(crate) residual: u64,
    pub(crate) y: u64,
    pub(crate) n: i32,
    pub(crate) h: i32,
    pub(crate) w_: i32,
    pub(crate) c: i32,
    pub(crate) oh: i32,
    pub(crate) ow: i32,
    pub(crate) kh: i32,
    pub(crate) kw: i32,
    pub(crate) sh: i32,
    pub(crate) sw: i32,
    pub(crate) dh: i32,
    pub(crate) dw: i32,
    pub(crate) pad_top: i32,
    pub(crate) pad_left: i32,
    pub(crate) act: i32,
    pub(crate) vec_ok: i32,
    pub(crate) ncv: i32,
    pub(crate) th: i32,
    pub(crate) twg: i32,
    pub(crate) tiles_w: i32,
    pub(crate) in_rows: i32,
    pub(crate) in_cols: i32,
    pub(crate) row_pitch: i32,
    pub(crate) w_off: i32,
}
// SAFETY: plain-old-data with the exact C layout of mk::DwParams (six 8-byte pointers, then
// 24 4-byte fields, no padding: 144 bytes, asserted below).
crate::device::struct_param!(DwParams);
const _: () = assert!(std::mem::size_of::<DwParams>() == 144);

/// The tile plan of one launch (see the kernel header): CTA tile, staged-tile geometry,
/// shared memory and grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Kernel variant: `k3s1`, `k3s2`, `k5s1`, `k5s2` or `any`.
    pub variant: &'static str,
    /// Outputs per thread along W (the variant's R).
    pub r: usize,
    pub ncv: usize,
    pub th: usize,
    pub twg: usize,
    pub tiles_w: usize,
    pub tiles_h: usize,
    pub in_rows: usize,
    pub in_cols: usize,
    /// Elements between staged rows.
    pub row_pitch: usize,
    /// Byte offset of the f32 weights.
    pub w_off: usize,
    pub smem: u32,
    pub threads: u32,
    pub grid: (u32, u32, u32),
}

impl Plan {
    /// Picks the kernel variant and the largest tile (up to 256 threads, 32 output columns,
    /// 32 channels) whose staged input fits in 48 KiB, shrinking rows, then columns, then
    /// channels; Err when even one output's window of 8 channels exceeds 96 KiB.
    pub(crate) fn new(n: usize, c: usize, win: &Window, elem: usize) -> Result<Plan> {
        let square = win.k_h == win.k_w && win.stride_h == win.stride_w;
        let unit = win.dil_h == 1 && win.dil_w == 1;
        let (variant, r) = match (square && unit, win.k_h, win.stride_h) {
            (true, 3, 1) => ("k3s1", consts::DW_R_K3S1),
            (true, 3, 2) => ("k3s2", consts::DW_R_K3S2),
            (true, 5, 1) => ("k5s1", consts::DW_R_K5S1),
            (true, 5, 2) => ("k5s2", consts::DW_R_K5S2),
            _ => ("any", consts::DW_R_ANY),
        };
        let strips = win.out_w.div_ceil(r);
        let mut ncv = c.div_ceil(consts::VEC).min(4);
        let mut twg = strips.min(32 / r);
        twg = strips.div_ceil(strips.div_ceil(twg));
        let mut th = win.out_h.min((MAX_THREADS / ncv / twg).max(1));
        th = win.out_h.div_ceil(win.out_h.div_ceil(th));
        loop {
            let p = Self::with(variant, r, n, c, win, elem, ncv, th, twg);
            if p.smem as usize <= SMEM_TARGET || (th == 1 && twg == 1 && ncv == 1) {
                if p.smem as usize > SMEM_MAX {
                    return Err(Error::Invalid {
                        op: OP,
                        arg: "window",
                        detail: format!(
                            "a {}x{} window with dilation {}x{} spans {}x{} inputs: {} bytes of \
                             shared memory for one output, expected at most {SMEM_MAX}",
                            win.k_h, win.k_w, win.dil_h, win.dil_w, p.in_rows, p.in_cols, p.smem
                        ),
                    });
                }
                let too_big = |what: &str, v: u32| Error::Invalid {
                    op: OP,
                    arg: "x",
                    detail: format!("{what} {v} exceeds the grid limit 65535"),
                };
                if p.grid.1 > 65_535 {
                    return Err(too_big("channel blocks", p.grid.1));
                }
                if p.grid.2 > 65_535 {
                    return Err(too_big("batch", p.grid.2));
                }
                if p.tiles_w * p.tiles_h > i32::MAX as usize || p.w_off > i32::MAX as usize {
                    return Err(Error::Invalid {
                        op: OP,
                        arg: "x",
                        detail: format!("{}x{} output tiles exceed the grid", p.tiles_h, p.tiles_w),
                    });
                }
                return Ok(p);
            }
            if th > 1 {
                th = th.div_ceil(2);
            } else if twg > 1 {
                twg = twg.div_ceil(2);
            } else {
                ncv = ncv.div_ceil(2);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn with(
        variant: &'static str,
        r: usize,
        n: usize,
        c: usize,
        win: &Window,
        elem: usize,
        ncv: usize,
        th: usize,
        twg: usize,
    ) -> Plan {
        let cb = ncv * consts::VEC;
        let in_rows = (th - 1) * win.stride_h + (win.k_h - 1) * win.dil_h + 1;
        let in_cols = (twg * r - 1) * win.stride_w + (win.k_w - 1) * win.dil_w + 1;
        let threads = ncv * th * twg;
        // Pad the row pitch in 16-byte steps to the fewest shared-memory wavefronts.
        let step = 16 / elem;
        let base = in_cols * cb;
        let row_pitch = (0..8)
            .map(|k| base + k * step)
            .min_by_key(|&rp| {
                wavefronts(
                    rp * elem,
                    win.stride_h,
                    r * win.stride_w * cb * elem,
                    ncv,
                    th,
                    threads,
                    elem,
                )
            })
            .unwrap_or(base);
        let w_off = (in_rows * row_pitch * elem).div_ceil(16) * 16;
        let smem = w_off + win.k_h * win.k_w * cb * 4;
        let tiles_w = win.out_w.div_ceil(twg * r);
        let tiles_h = win.out_h.div_ceil(th);
        let sat = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Plan {
            variant,
            r,
            ncv,
            th,
            twg,
            tiles_w,
            tiles_h,
            in_rows,
            in_cols,
            row_pitch,
            w_off,
            smem: sat(smem),
            threads: threads as u32,
            grid: (sat(tiles_w * tiles_h), sat(c.div_ceil(cb)), sat(n)),
        }
    }
}

/// Shared-memory wavefronts of one 16-byte read by every thread of the CTA (thread t: channel
/// vector t % ncv, row (t / ncv) % th, strip t / (ncv·th)): each quarter-warp costs as many
/// wavefronts as the most distinct addresses that fall in one 16-byte bank group.
fn wavefronts(
    row_bytes: usize,
    stride_h: usize,
    strip_bytes: usize,
    ncv: usize,
    th: usize,
    threads: usize,
    elem: usize,
) -> usize {
    let words = (consts::VEC * elem) / 16;
    let mut total = 0;
    for q0 in (0..threads).step_by(8) {
        for word in 0..words {
            // Per bank group: the distinct addresses seen (a quarter-warp has at most 8).
            let mut seen = [[usize::MAX; 8]; 8];
            let mut count = [0usize; 8];
            for t in q0..(q0 + 8).min(threads) {
                let (cv, gy, gx) = (t % ncv, (t / ncv) % th, t / (ncv * th));
                let a = gy * stride_h * row_bytes
                    + gx * strip_bytes
                    + cv * consts::VEC * elem
                    + word * 16;
                let g = (a / 16) % 8;
                if !seen[g][..count[g]].contains(&a) {
                    seen[g][count[g]] = a;
                    count[g] += 1;
                }
            }
            total += count.iter().max().copied().unwrap_or(0);
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn win(hw: usize, k: usize, s: usize, d: usize, pad: Padding) -> Window {
        Window::new(OP, (hw, hw), (k, k), (s, s), (d, d), pad).unwrap()
    }

    /// The plan covers the output, fits the limits, and matches the kernel's layout rules.
    #[test]
    fn plans_cover_the_output_and_fit() {
        let mut cases = vec![];
        for &(hw, c, k, s) in &[
            (112, 32, 3, 1),
            (112, 96, 3, 2),
            (56, 144, 5, 2),
            (28, 240, 3, 2),
            (14, 480, 3, 1),
            (14, 672, 5, 1),
            (7, 1152, 5, 1),
            (1, 3, 3, 1),
            (33, 20, 7, 3),
            (9, 8, 1, 1),
        ] {
            cases.push((c, win(hw, k, s, 1, Padding::symmetric(k / 2, k / 2))));
            cases.push((c, win(hw, k, s, 1, Padding::Same)));
        }
        cases.push((16, win(65, 3, 1, 16, Padding::Same)));
        cases.push((5, win(200, 31, 1, 1, Padding::Same)));
        for (c, w) in cases {
            for elem in [2, 4] {
                let p = Plan::new(2, c, &w, elem).unwrap();
                let cb = p.ncv * consts::VEC;
                assert!(p.threads as usize <= MAX_THREADS && p.threads > 0, "{p:?}");
                assert_eq!(p.threads as usize, p.ncv * p.th * p.twg);
                assert!(p.tiles_w * p.twg * p.r >= w.out_w && p.tiles_h * p.th >= w.out_h);
                assert!((p.grid.1 as usize) * cb >= c && p.grid.2 == 2);
                assert_eq!(p.grid.0 as usize, p.tiles_w * p.tiles_h);
                assert!(p.row_pitch >= p.in_cols * cb && (p.row_pitch * elem) % 16 == 0);
                assert!(p.w_off >= p.in_rows * p.row_pitch * elem && p.w_off % 16 == 0);
                assert_eq!(p.smem as usize, p.w_off + w.k_h * w.k_w * cb * 4);
                assert!(p.smem as usize <= SMEM_MAX);
                // Tiles are balanced: the last one is not mostly empty.
                assert!(
                    p.tiles_h * p.th < w.out_h + p.th
                        && p.tiles_w * p.twg * p.r < w.out_w + p.twg * p.r
                );
            }
        }
    }

    /// tests/threads.rs launches the general kernel at these dilations (7x7 window, 8 f32
    /// channels, valid, 6d+3 square input) from several threads: five distinct dynamic
    /// shared-memory sizes, two of them above the 48 KiB that needs the opt-in.
    #[test]
    fn the_thread_test_shapes_span_the_opt_in() {
        let smem: Vec<usize> = [1, 4, 6, 7, 8]
            .iter()
            .map(|&d| {
                let p = Plan::new(1, 8, &win(6 * d + 3, 7, 1, d, Padding::Valid), 4).unwrap();
                assert_eq!(p.variant, "any");
                p.smem as usize
            })
            .collect();
        assert!(smem.windows(2).all(|w| w[0] < w[1]), "{smem:?}");
        assert!(smem[2] <= SMEM_TARGET && smem[3] > SMEM_TARGET, "{smem:?}");
    }

    #[test]
    fn fast_variants_and_bank_padding() {
        let p = Plan::new(32, 32, &win(112, 3, 1, 1, Padding::symmetric(1, 1)), 2).unwrap();
        assert_eq!((p.variant, p.ncv), ("k3s1", 4));
        // The padded pitch spreads rows over the banks: close to one wavefront per
        // quarter-warp (the strip boundaries inside a warp may still collide), far fewer than
        // unpadded.
        let t = p.threads as usize;
        let waves = |rp: usize| wavefronts(rp * 2, 1, p.r * 32 * 2, p.ncv, p.th, t, 2);
        let ideal = t.div_ceil(8);
        assert!(
            waves(p.row_pitch) * 4 <= ideal * 5,
            "{} vs {ideal}",
            waves(p.row_pitch)
        );
        assert!(
            waves(p.in_cols * 32) >= ideal * 3 / 2,
            "{}",
            waves(p.in_cols * 32)
        );
        assert_eq!(
            Plan::new(1, 96, &win(112, 3, 2, 1, Padding::Same), 2)
                .unwrap()
                .variant,
            "k3s2"
        );
        assert_eq!(
            Plan::new(1, 96, &win(112, 3, 2, 2, Padding::Same), 2)
                .unwrap()
                .variant,
            "any"
        );
        let e = Plan::new(1, 8, &win(400, 61, 1, 1, Padding::Same), 4).unwrap_err();
        assert!(e.to_string().contains("shared memory"), "{e}");
    }
}
