//! Transposed conv2d, NHWC: kernel `kernels/conv_transpose.cu`, reference
//! `src/reference/conv_transpose.rs`, tests `tests/conv_transpose.rs`, bench
//! `benches/conv_transpose.rs`.
//!
//! PyTorch `ConvTranspose2d` semantics (stride, padding, output_padding; dilation 1, groups 1).
//! Weights are `[k_h, k_w, C_in, C_out]`: output channels innermost, so the 8 output channels a
//! thread accumulates are one 16-byte vector per input channel and tap. PyTorch's
//! `[C_in, C_out, k_h, k_w]` converts with [`weights_from_pytorch`].

use super::consts;
use super::{
    Activation, Backend, aligned16, as_i32, backend, dev, dev_mut, float_dtype, host, host_f64,
    kernel_name,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference;
use crate::reference::conv_transpose::TransposeGeom;
use crate::tensor::{HostTensor, Tensor};
use cudarc::driver::LaunchConfig;

const OP: &str = "conv_transpose2d";

/// Options of [`conv_transpose2d`]: PyTorch's `stride`, `padding` and `output_padding` as
/// (rows, columns), and the fused epilogue `act(conv + bias)` with `bias` f32 `[C_out]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvTranspose<'a> {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub output_padding: (usize, usize),
    pub bias: Option<&'a Tensor>,
    pub act: Activation,
}

impl Default for ConvTranspose<'_> {
    fn default() -> Self {
        ConvTranspose {
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            bias: None,
            act: Activation::Identity,
        }
    }
}

/// Converts a PyTorch `ConvTranspose2d` weight `[C_in, C_out, k_h, k_w]` to medkern's
/// `[k_h, k_w, C_in, C_out]`, keeping the dtype (a host-side load-time permutation).
pub fn weights_from_pytorch(w: &HostTensor) -> Result<HostTensor> {
    let &[c_in, c_out, k_h, k_w] = w.shape() else {
        return Err(Error::Shape {
            op: "conv_transpose2d::weights_from_pytorch",
            arg: "w",
            got: w.shape().to_vec(),
            expected: "[C_in, C_out, k_h, k_w] (PyTorch ConvTranspose2d weight)".into(),
        });
    };
    let v = reference::conv_transpose::conv_transpose_weights_from_pytorch(
        &w.to_f64(),
        c_in,
        c_out,
        k_h,
        k_w,
    );
    HostTensor::from_f64(&[k_h, k_w, c_in, c_out], &v, w.dtype())
}

/// The geometry of `x` `[N, H, W, C_in]` under weights `[k_h, k_w, C_in, C_out]` and `ct`,
/// after checking both shapes and the options; the output is `[N, out_h, out_w, C_out]`.
pub fn geometry(x_shape: &[usize], w_shape: &[usize], ct: &ConvTranspose) -> Result<TransposeGeom> {
    let &[n, in_h, in_w, c_in] = x_shape else {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x_shape.to_vec(),
            expected: "[N, H, W, C_in] (NHWC)".into(),
        });
    };
    if in_h == 0 || in_w == 0 || c_in == 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "x",
            got: x_shape.to_vec(),
            expected: "H, W, C_in >= 1".into(),
        });
    }
    let &[k_h, k_w, wc, c_out] = w_shape else {
        return Err(Error::Shape {
            op: OP,
            arg: "w",
            got: w_shape.to_vec(),
            expected: format!("[k_h, k_w, {c_in}, C_out] (see weights_from_pytorch)"),
        });
    };
    if wc != c_in || k_h == 0 || k_w == 0 || c_out == 0 {
        return Err(Error::Shape {
            op: OP,
            arg: "w",
            got: w_shape.to_vec(),
            expected: format!(
                "[k_h, k_w, {c_in}, C_out] with every size >= 1: x has {c_in} channels"
            ),
        });
    }
    let invalid = |arg, detail| Error::Invalid {
        op: OP,
        arg,
        detail,
    };
    let axis = |what: &str, input: usize, k: usize, s: usize, p: usize, op: usize| {
        if s == 0 {
            return Err(invalid(
                "stride",
                format!("{what}: stride 0, expected >= 1"),
            ));
        }
        if op >= s {
            return Err(invalid(
                "output_padding",
                format!("{what}: output_padding {op} must be smaller than the stride {s}"),
            ));
        }
        let full = (input - 1) * s + k + op;
        if full <= 2 * p {
            return Err(invalid(
                "padding",
                format!(
                    "{what}: (input {input} − 1)·stride {s} + kernel {k} + output_padding {op} \
                     − 2·padding {p} gives output size <= 0"
                ),
            ));
        }
        Ok(full - 2 * p)
    };
    let out_h = axis(
        "height",
        in_h,
        k_h,
        ct.stride.0,
        ct.padding.0,
        ct.output_padding.0,
    )?;
    let out_w = axis(
        "width",
        in_w,
        k_w,
        ct.stride.1,
        ct.padding.1,
        ct.output_padding.1,
    )?;
    Ok(TransposeGeom {
        n,
        in_h,
        in_w,
        c_in,
        c_out,
        k_h,
        k_w,
        stride_h: ct.stride.0,
        stride_w: ct.stride.1,
        pad_h: ct.padding.0,
        pad_w: ct.padding.1,
        out_h,
        out_w,
    })
}

/// Transposed conv2d of `x` `[N, H, W, C_in]` with `w` `[k_h, k_w, C_in, C_out]` (x's dtype)
/// and the fused bias + activation; returns `[N, out_h, out_w, C_out]` on x's device.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, ct: &ConvTranspose) -> Result<Tensor> {
    let g = geometry(x.shape(), w.shape(), ct)?;
    let mut out = Tensor::empty(&x.device(), &[g.n, g.out_h, g.out_w, g.c_out], x.dtype())?;
    conv_transpose2d_into(x, w, ct, &mut out)?;
    Ok(out)
}

/// [`conv_transpose2d`] into `out` (`[N, out_h, out_w, C_out]`, x's dtype and device).
pub fn conv_transpose2d_into(
    x: &Tensor,
    w: &Tensor,
    ct: &ConvTranspose,
    out: &mut Tensor,
) -> Result<()> {
    let dt = x.dtype();
    float_dtype(OP, "x", dt)?;
    let g = geometry(x.shape(), w.shape(), ct)?;
    if w.dtype() != dt {
        return Err(Error::DType {
            op: OP,
            arg: "w",
            got: w.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    if let Some(b) = ct.bias {
        if b.dtype() != DType::F32 {
            return Err(Error::DType {
                op: OP,
                arg: "bias",
                got: b.dtype(),
                expected: "f32".into(),
            });
        }
        if b.shape() != [g.c_out] {
            return Err(Error::Shape {
                op: OP,
                arg: "bias",
                got: b.shape().to_vec(),
                expected: format!("[{}] (C_out)", g.c_out),
            });
        }
    }
    let oshape = [g.n, g.out_h, g.out_w, g.c_out];
    if out.dtype() != dt {
        return Err(Error::DType {
            op: OP,
            arg: "out",
            got: out.dtype(),
            expected: format!("{dt} (the dtype of x)"),
        });
    }
    if out.shape() != oshape {
        return Err(Error::Shape {
            op: OP,
            arg: "out",
            got: out.shape().to_vec(),
            expected: format!("{oshape:?} ([N, out_h, out_w, C_out])"),
        });
    }
    match backend(
        OP,
        x,
        &[("w", Some(w)), ("bias", ct.bias), ("out", Some(out))],
    )? {
        Backend::Cpu => {
            let b = host_f64(OP, "bias", ct.bias)?;
            let y = reference::conv_transpose::conv_transpose(
                &host(OP, "x", x)?.to_f64(),
                &host(OP, "w", w)?.to_f64(),
                &g,
                b.as_deref(),
                ct.act,
            );
            *out = Tensor::Host(HostTensor::from_f64(&oshape, &y, dt)?);
            Ok(())
        }
        Backend::Gpu(gpu) => {
            if g.n == 0 {
                return Ok(());
            }
            let gpu = gpu.clone();
            let xd = dev(OP, "x", x)?;
            let wd = dev(OP, "w", w)?;
            let bd = ct.bias.map(|t| dev(OP, "bias", t)).transpose()?;
            let yd = dev_mut(OP, "out", out)?;
            let vec = g.c_in % consts::VEC == 0
                && g.c_out % consts::VEC == 0
                && aligned16(&[Some(xd), Some(wd), Some(&*yd)]);
            let kernel = kernel_name(
                OP,
                format!("conv_transpose_{}_{dt}", if vec { "vec" } else { "any" }),
            )?;
            let phases = g.stride_h * g.stride_w;
            let grid_y = u32::try_from(phases)
                .ok()
                .filter(|&p| p <= 65_535)
                .ok_or_else(|| Error::Invalid {
                    op: OP,
                    arg: "stride",
                    detail: format!(
                        "{}x{} stride phases exceed the grid limit 65535",
                        g.stride_h, g.stride_w
                    ),
                })?;
            // Work items of the largest phase: one per output pixel × VEC output channels.
            let items = g.n
                * g.out_h.div_ceil(g.stride_h)
                * g.out_w.div_ceil(g.stride_w)
                * g.c_out.div_ceil(consts::VEC);
            let cap = (gpu.sm_count() as usize * 16).div_ceil(phases).max(1);
            let grid_x = items.div_ceil(consts::CT_THREADS).clamp(1, cap) as u32;
            let px = xd.addr();
            let pw = wd.addr();
            let gb = bd.map(|t| t.addr());
            let py = yd.addr();
            let i = |arg, v| as_i32(OP, arg, v);
            let p = CtParams {
                x: px,
                w: pw,
                bias: gb.unwrap_or(0),
                y: py,
                n: i("N", g.n)?,
                h: i("H", g.in_h)?,
                w_: i("W", g.in_w)?,
                c_in: i("C_in", g.c_in)?,
                c_out: i("C_out", g.c_out)?,
                oh: i("out_h", g.out_h)?,
                ow: i("out_w", g.out_w)?,
                kh: i("k_h", g.k_h)?,
                kw: i("k_w", g.k_w)?,
                sh: i("stride_h", g.stride_h)?,
                sw: i("stride_w", g.stride_w)?,
                ph: i("padding_h", g.pad_h)?,
                pw: i("padding_w", g.pad_w)?,
                act: ct.act.code(),
            };
            let cfg = LaunchConfig {
                grid_dim: (grid_x, grid_y, 1),
                block_dim: (consts::CT_THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.launcher(kernel);
            b.arg(&p);
            // SAFETY: `p` mirrors mk::CtParams; x holds N·H·W·C_in, w k_h·k_w·C_in·C_out, bias
            // C_out f32 and y N·out_h·out_w·C_out elements (checked above) on this GPU; the
            // kernel reads x only at in-range positions and writes each output once; the vec
            // kernel only with C_in, C_out % 8 == 0 and 16-byte-aligned buffers.
            unsafe { b.launch(cfg) }?;
            Ok(())
        }
    }
}

/// The parameter block of the transposed-conv kernels; mirrors `mk::CtParams`
/// (kernels/conv_transpose.cu) field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CtParams {
    pub(crate) x: u64,
    pub(crate) w: u64,
    pub(crate) bias: u64,
    pub(crate) y: u64,
    pub(crate) n: i32,
    pub(crate) h: i32,
    pub(crate) w_: i32,
    pub(crate) c_in: i32,
    pub(crate) c_out: i32,
    pub(crate) oh: i32,
    pub(crate) ow: i32,
    pub(crate) kh: i32,
    pub(crate) kw: i32,
    pub(crate) sh: i32,
    pub(crate) sw: i32,
    pub(crate) ph: i32,
    pub(crate) pw: i32,
    pub(crate) act: i32,
}
// SAFETY: plain-old-data with the exact C layout of mk::CtParams (four 8-byte pointers, then
// 14 4-byte fields, no padding: 88 bytes, asserted below).
crate::device::struct_param!(CtParams);
const _: () = assert!(std::mem::size_of::<CtParams>() == 88);
