//! Checked launchers. Each op validates shapes, dtypes and devices, then either runs the CPU
//! reference (host tensors) or makes the one `unsafe` launch of its kernel (device tensors).
//! `op_into` variants write a caller-provided output (tests poison it first); `op` variants
//! allocate it.

pub mod attention;
pub mod bn_fold;
pub mod conv;
pub mod conv_geom;
pub mod conv_transpose;
pub mod depthwise;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemm_int8;
pub mod gemm_sparse;
pub mod layernorm;
pub mod layout;
pub mod pool;
pub mod preprocess;
pub mod quantize;
pub mod softmax;
pub mod squeeze_excite;
pub mod upsample;

pub use attention::{
    Attention, BLOCK_ROWS, HEAD_DIMS, Qkv, SeqBatch, UnfusedPlan, attention, attention_into,
    attention_unfused,
};
pub use conv::{Conv2d, ConvWeight, conv2d, conv2d_into};
pub use conv_geom::{Padding, Window};
pub use conv_transpose::{ConvTranspose, conv_transpose2d, conv_transpose2d_into};
pub use depthwise::{Depthwise, depthwise, depthwise_into};
pub use elementwise::{
    Eltwise, activation, bias_add, cast, cast_into, eltwise, eltwise_into, residual_add, scale,
};
pub use gemm::{Gemm, Tile, gemm, gemm_into};
pub use gemm_int8::{GemmI8, gemm_i8, gemm_i8_into, gemm_i8_raw, gemm_i8_raw_into};
pub use gemm_sparse::{
    SparseWeight, gemm_sparse, gemm_sparse_i8, gemm_sparse_i8_into, gemm_sparse_i8_raw,
    gemm_sparse_into,
};
pub use layernorm::{layernorm, layernorm_into, layernorm_residual};
pub use layout::{nchw_to_nhwc, nchw_to_nhwc_into, nhwc_to_nchw, nhwc_to_nchw_into};
pub use pool::{
    Pool2d, avg_pool2d, avg_pool2d_into, global_avg_pool, global_avg_pool_into, max_pool2d,
    max_pool2d_into,
};
pub use preprocess::{PixelRange, Preprocess, preprocess, preprocess_into};
pub use quantize::{LnParams, dequantize_rows, layernorm_quantize, quantize_rows};
pub use softmax::{softmax, softmax_into};
pub use squeeze_excite::{
    SqueezeExcite, channel_scale, channel_scale_into, se_scale_vector, se_scale_vector_into,
    squeeze_excite, squeeze_excite_into,
};
pub use upsample::{UpsampleMode, scaled_size, upsample, upsample_into};

use crate::device::Gpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{DeviceTensor, HostTensor, Tensor};
use std::sync::Arc;

/// Activation functions fused into elementwise kernels and epilogues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Activation {
    Identity = 0,
    Relu,
    Relu6,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))` (BERT).
    GeluErf,
    /// Tanh-approximated GELU, as PyTorch's `approximate="tanh"`.
    GeluTanh,
    Silu,
    Sigmoid,
    /// The BERT / ALBERT pooler's activation.
    Tanh,
}

impl Activation {
    pub const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Relu6,
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Tanh,
    ];
    /// The code GEMM epilogues switch on (kernels/common/act.cuh).
    pub fn code(self) -> i32 {
        self as i32
    }
    /// The name used in kernel names (`eltwise_gelu_erf_f16`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }
}

/// Requires a floating dtype the float kernels are built for.
pub(crate) fn float_dtype(op: &'static str, arg: &'static str, got: DType) -> Result<()> {
    if got.is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            arg,
            got,
            expected: "f32, f16 or bf16".into(),
        })
    }
}

pub(crate) fn same_dtype(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    want: DType,
) -> Result<()> {
    if t.dtype() == want {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            arg,
            got: t.dtype(),
            expected: format!("{want} (the dtype of x)"),
        })
    }
}

pub(crate) fn same_shape(
    op: &'static str,
    arg: &'static str,
    t: &Tensor,
    want: &[usize],
) -> Result<()> {
    if t.shape() == want {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            arg,
            got: t.shape().to_vec(),
            expected: format!("{want:?} (the shape of x)"),
        })
    }
}

/// The last dimension (row length) of a tensor of rank >= 1.
pub(crate) fn row_len(op: &'static str, t: &Tensor) -> Result<usize> {
    t.shape().last().copied().ok_or_else(|| Error::Shape {
        op,
        arg: "x",
        got: vec![],
        expected: "rank >= 1 ([..., n])".into(),
    })
}

/// Fits a count into the kernel's `int` argument.
pub(crate) fn as_i32(op: &'static str, arg: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Invalid {
        op,
        arg,
        detail: format!("{v} exceeds {}", i32::MAX),
    })
}

/// Where the operands of one call live.
pub(crate) enum Backend<'a> {
    Cpu,
    Gpu(&'a Arc<Gpu>),
}

/// The backend of `x`, checking that every other operand is on the same device.
pub(crate) fn backend<'a>(
    op: &'static str,
    x: &'a Tensor,
    others: &[(&'static str, Option<&Tensor>)],
) -> Result<Backend<'a>> {
    let be = match x {
        Tensor::Host(_) => Backend::Cpu,
        Tensor::Device(d) => Backend::Gpu(d.gpu()),
    };
    for (arg, t) in others {
        let Some(t) = t else { continue };
        let ok = match (&be, t) {
            (Backend::Cpu, Tensor::Host(_)) => true,
            (Backend::Gpu(g), Tensor::Device(d)) => Arc::ptr_eq(g, d.gpu()),
            _ => false,
        };
        if !ok {
            return Err(Error::Device {
                op,
                arg,
                got: t.device().describe(),
                expected: x.device().describe(),
            });
        }
    }
    Ok(be)
}

/// The device buffer of an operand already checked by [`backend`].
pub(crate) fn dev<'a>(
    op: &'static str,
    arg: &'static str,
    t: &'a Tensor,
) -> Result<&'a DeviceTensor> {
    match t {
        Tensor::Device(d) => Ok(d),
        Tensor::Host(_) => Err(Error::Device {
            op,
            arg,
            got: "cpu".into(),
            expected: "a GPU".into(),
        }),
    }
}

pub(crate) fn dev_mut<'a>(
    op: &'static str,
    arg: &'static str,
    t: &'a mut Tensor,
) -> Result<&'a mut DeviceTensor> {
    match t {
        Tensor::Device(d) => Ok(d),
        Tensor::Host(_) => Err(Error::Device {
            op,
            arg,
            got: "cpu".into(),
            expected: "a GPU".into(),
        }),
    }
}

/// An optional host operand widened to f64 (the CPU backend's inputs).
pub(crate) fn host_f64(
    op: &'static str,
    arg: &'static str,
    t: Option<&Tensor>,
) -> Result<Option<Vec<f64>>> {
    t.map(|t| host(op, arg, t).map(HostTensor::to_f64))
        .transpose()
}

pub(crate) fn host<'a>(
    op: &'static str,
    arg: &'static str,
    t: &'a Tensor,
) -> Result<&'a HostTensor> {
    match t {
        Tensor::Host(h) => Ok(h),
        Tensor::Device(_) => Err(Error::Device {
            op,
            arg,
            got: t.device().describe(),
            expected: "cpu".into(),
        }),
    }
}

/// Looks up `{stem}_{dtype}`-style kernel names in the static table, so the name passed to
/// the loader is `'static` and known to exist.
pub(crate) fn kernel_name(op: &'static str, name: String) -> Result<&'static str> {
    crate::device::kernels::kernel_info(&name)
        .map(|k| k.name)
        .map_err(|_| Error::Invalid {
            op,
            arg: "kernel",
            detail: format!("no kernel {name} in the table"),
        })
}

/// True when every given buffer allows the kernels' 16-byte vector accesses.
pub(crate) fn aligned16(bufs: &[Option<&DeviceTensor>]) -> bool {
    bufs.iter().flatten().all(|d| d.is_aligned(16))
}

/// Grid for a grid-stride memory-bound kernel: enough blocks to fill the GPU, at most one
/// thread per 8-element vector.
pub(crate) fn stride_grid(gpu: &Gpu, total: usize, threads: u32) -> u32 {
    let vecs = total.div_ceil(8).max(1);
    let blocks = vecs.div_ceil(threads as usize);
    let cap = (gpu.sm_count() as usize) * 16;
    blocks.clamp(1, cap.max(1)) as u32
}
