//! The kernel table: every kernel medkern launches, the `.cu` module it lives in, and the
//! oldest compute capability it runs on. Launchers look kernels up here before loading, so a
//! GPU that is too old gets an [`Error::ArchTooLow`] naming the kernel and both archs.

use super::Arch;
use crate::error::{Error, Result};

/// One row of the kernel table.
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub name: &'static str,
    /// File stem under `kernels/` (`softmax` for `kernels/softmax.cu`).
    pub module: &'static str,
    pub min_arch: Arch,
    /// What the kernel is built on; tests/sass.rs holds its sm_90 SASS to it.
    pub features: Features,
}

/// A tensor-core MMA a kernel's main loop issues (`mma.sync` / `mma.sp.sync` in PTX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mma {
    /// f16 inputs, f32 accumulators: SASS `HMMA.16816.F32`.
    F16,
    /// bf16 inputs, f32 accumulators: SASS `HMMA.16816.F32.BF16`.
    Bf16,
    /// int8 inputs, int32 accumulators: SASS `IMMA.16832.S8.S8`.
    I8,
    /// 2:4 structured-sparse f16: SASS `HMMA.SP.16832.F32`.
    SparseF16,
    /// 2:4 structured-sparse bf16: SASS `HMMA.SP.16832.F32.BF16`.
    SparseBf16,
    /// 2:4 structured-sparse int8: SASS `IMMA.SP.16864.S8.S8`.
    SparseI8,
    /// Hopper warpgroup MMA (`wgmma.mma_async`, sm_90a), f16 inputs, f32 accumulators:
    /// SASS `HGMMA.64xNx16.F32`.
    WgmmaF16,
    /// Hopper warpgroup MMA, bf16 inputs: SASS `HGMMA.64xNx16.F32.BF16`.
    WgmmaBf16,
}

impl Mma {
    /// True for the 2:4 structured-sparse forms.
    pub const fn sparse(self) -> bool {
        matches!(self, Mma::SparseF16 | Mma::SparseBf16 | Mma::SparseI8)
    }

    /// True for Hopper's warpgroup MMA (sm_90a only).
    pub const fn wgmma(self) -> bool {
        matches!(self, Mma::WgmmaF16 | Mma::WgmmaBf16)
    }
}

/// What a kernel is built on, as its machine code must show it: the kernel table states it
/// per kernel so that a change that silently loses the tensor cores or the cp.async pipeline
/// (a type mismatch, an `#if` taking the fallback) fails tests/sass.rs instead of only
/// running slower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// The tensor-core MMA of the main loop; None: CUDA cores only (and no MMA may appear).
    pub mma: Option<Mma>,
    /// Global loads staged into shared memory by `cp.async` (SASS `LDGSTS`); false: none may
    /// appear.
    pub cp_async: bool,
    /// Tiles loaded by the Tensor Memory Accelerator (`cp.async.bulk.tensor`: SASS `UTMALDG`);
    /// false: none may appear.
    pub tma: bool,
}

impl Features {
    /// CUDA cores only, no cp.async.
    pub const PLAIN: Features = Features {
        mma: None,
        cp_async: false,
        tma: false,
    };

    /// Tensor-core MMA fed by a cp.async pipeline (every tensor-core kernel here).
    pub const fn pipelined(mma: Mma) -> Features {
        Features {
            mma: Some(mma),
            cp_async: true,
            tma: false,
        }
    }

    /// Hopper: wgmma fed by TMA loads (no cp.async).
    pub const fn tma(mma: Mma) -> Features {
        Features {
            mma: Some(mma),
            cp_async: false,
            tma: true,
        }
    }
}

/// Ahead-of-time images and sources of one `kernels/*.cu` file, embedded by build.rs.
#[derive(Debug)]
pub struct EmbeddedModule {
    pub name: &'static str,
    pub source: &'static str,
    /// FNV-1a of the source and every common header: the runtime-compile cache key.
    pub source_hash: u64,
    /// (sm arch as 80/90, CUBIN bytes); empty when build.rs had no NVRTC.
    pub cubins: &'static [(u32, &'static [u8])],
    /// compute_80 PTX that newer GPUs JIT; None when build.rs had no NVRTC.
    pub ptx: Option<&'static str>,
    pub resources: &'static [KernelResources],
}

/// ptxas resource usage of one kernel on one arch, from the build's `-v` report.
#[derive(Clone, Copy, Debug)]
pub struct KernelResources {
    pub kernel: &'static str,
    pub arch: u32,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

mod generated {
    // Without NVRTC at build time the generated table has no resource rows.
    #[allow(unused_imports)]
    use super::{EmbeddedModule, KernelResources};
    include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));
}
pub use generated::{BUILD_NVRTC, BUILD_TARGETS, HEADERS, MODULES};

const SM80: Arch = Arch { major: 8, minor: 0 };
/// sm_90a: kernels with Hopper-only instructions (wgmma, setmaxnreg), which run on compute
/// capability 9.0 and nothing else (their module's first line: `// medkern-targets: sm_90a`).
const SM90A: Arch = Arch { major: 9, minor: 0 };

const PLAIN: Features = Features::PLAIN;
const fn pipelined(mma: Mma) -> Features {
    Features::pipelined(mma)
}
const fn tma(mma: Mma) -> Features {
    Features::tma(mma)
}

/// Rows of `"module" @ min_arch, features => [kernels]`; a module may take several rows (one
/// per feature set). build.rs reads this table too (the emulated GPU's registry).
macro_rules! table {
    ($($module:literal @ $arch:expr, $features:expr => [$($name:literal),* $(,)?]),* $(,)?) => {
        &[$($(KernelInfo { name: $name, module: $module, min_arch: $arch, features: $features },)*)*]
    };
}

/// Every kernel, by module. bf16 arithmetic and the PTX fallback need sm_80.
pub static KERNELS: &[KernelInfo] = table![
    "attention" @ SM80, pipelined(Mma::F16) => [
        "attention_f16_d32_m64", "attention_f16_d32_m128", "attention_f16_d64_m64",
        "attention_f16_d64_m128", "attention_f16_d80_m64", "attention_f16_d80_m128",
        "attention_f16_d96_m64", "attention_f16_d96_m128", "attention_f16_d128_m64",
        "attention_f16_d128_m128",
    ],
    "attention" @ SM80, pipelined(Mma::Bf16) => [
        "attention_bf16_d32_m64", "attention_bf16_d32_m128", "attention_bf16_d64_m64",
        "attention_bf16_d64_m128", "attention_bf16_d80_m64", "attention_bf16_d80_m128",
        "attention_bf16_d96_m64", "attention_bf16_d96_m128", "attention_bf16_d128_m64",
        "attention_bf16_d128_m128",
    ],
    "attention" @ SM80, PLAIN => [
        "attention_gather_f16", "attention_gather_bf16", "attention_scatter_f16",
        "attention_scatter_bf16",
    ],
    "conv" @ SM80, pipelined(Mma::F16) => [
        "conv2d_f16_vec_s", "conv2d_f16_vec_m", "conv2d_f16_vec_l", "conv2d_f16_any_s",
        "conv2d_f16_any_m",
    ],
    "conv" @ SM80, pipelined(Mma::Bf16) => [
        "conv2d_bf16_vec_s", "conv2d_bf16_vec_m", "conv2d_bf16_vec_l", "conv2d_bf16_any_s",
        "conv2d_bf16_any_m",
    ],
    "conv" @ SM80, PLAIN => ["conv2d_f32"],
    "conv_transpose" @ SM80, PLAIN => [
        "conv_transpose_vec_f32", "conv_transpose_vec_f16", "conv_transpose_vec_bf16",
        "conv_transpose_any_f32", "conv_transpose_any_f16", "conv_transpose_any_bf16",
    ],
    "depthwise" @ SM80, PLAIN => [
        "depthwise_k3s1_f32", "depthwise_k3s1_f16", "depthwise_k3s1_bf16",
        "depthwise_k3s2_f32", "depthwise_k3s2_f16", "depthwise_k3s2_bf16",
        "depthwise_k5s1_f32", "depthwise_k5s1_f16", "depthwise_k5s1_bf16",
        "depthwise_k5s2_f32", "depthwise_k5s2_f16", "depthwise_k5s2_bf16",
        "depthwise_any_f32", "depthwise_any_f16", "depthwise_any_bf16",
    ],
    "embedding" @ SM80, PLAIN => ["embedding_f32", "embedding_f16", "embedding_bf16"],
    "elementwise" @ SM80, PLAIN => [
        "eltwise_identity_f32", "eltwise_identity_f16", "eltwise_identity_bf16",
        "eltwise_relu_f32", "eltwise_relu_f16", "eltwise_relu_bf16",
        "eltwise_relu6_f32", "eltwise_relu6_f16", "eltwise_relu6_bf16",
        "eltwise_gelu_erf_f32", "eltwise_gelu_erf_f16", "eltwise_gelu_erf_bf16",
        "eltwise_gelu_tanh_f32", "eltwise_gelu_tanh_f16", "eltwise_gelu_tanh_bf16",
        "eltwise_silu_f32", "eltwise_silu_f16", "eltwise_silu_bf16",
        "eltwise_sigmoid_f32", "eltwise_sigmoid_f16", "eltwise_sigmoid_bf16",
        "eltwise_tanh_f32", "eltwise_tanh_f16", "eltwise_tanh_bf16",
        "cast_f32_f16", "cast_f32_bf16", "cast_f16_f32", "cast_bf16_f32", "cast_f16_bf16",
        "cast_bf16_f16",
    ],
    "gemm" @ SM80, pipelined(Mma::F16) => [
        "gemm_f16_f16_s",
        "gemm_f16_f16_m",
        "gemm_f16_f16_l",
        "gemm_f16_f32_s",
        "gemm_f16_f32_m",
        "gemm_f16_f32_l",
    ],
    "gemm" @ SM80, pipelined(Mma::Bf16) => [
        "gemm_bf16_bf16_s",
        "gemm_bf16_bf16_m",
        "gemm_bf16_bf16_l",
        "gemm_bf16_f32_s",
        "gemm_bf16_f32_m",
        "gemm_bf16_f32_l",
    ],
    "gemm" @ SM80, PLAIN => ["gemm_f32_f32"],
    "gemm_hopper" @ SM90A, tma(Mma::WgmmaF16) => ["gemm_hopper_f16_f16", "gemm_hopper_f16_f32"],
    "gemm_hopper" @ SM90A, tma(Mma::WgmmaBf16) => ["gemm_hopper_bf16_bf16", "gemm_hopper_bf16_f32"],
    "gemm_int8" @ SM80, pipelined(Mma::I8) => [
        "gemm_i8_i32_s",
        "gemm_i8_i32_m",
        "gemm_i8_i32_l",
        "gemm_i8_i8_s",
        "gemm_i8_i8_m",
        "gemm_i8_i8_l",
        "gemm_i8_f16_s",
        "gemm_i8_f16_m",
        "gemm_i8_f16_l",
        "gemm_i8_bf16_s",
        "gemm_i8_bf16_m",
        "gemm_i8_bf16_l",
        "gemm_i8_f32_s",
        "gemm_i8_f32_m",
        "gemm_i8_f32_l",
    ],
    "gemm_w4" @ SM80, pipelined(Mma::F16) => [
        "gemm_w4_f16_f16_s",
        "gemm_w4_f16_f16_m",
        "gemm_w4_f16_f32_s",
        "gemm_w4_f16_f32_m",
    ],
    "gemm_w4" @ SM80, pipelined(Mma::Bf16) => [
        "gemm_w4_bf16_bf16_s",
        "gemm_w4_bf16_bf16_m",
        "gemm_w4_bf16_f32_s",
        "gemm_w4_bf16_f32_m",
    ],
    "gemm_sparse" @ SM80, pipelined(Mma::SparseF16) => [
        "gemm_sp_f16_f16_s",
        "gemm_sp_f16_f16_l",
        "gemm_sp_f16_f32_s",
        "gemm_sp_f16_f32_l",
    ],
    "gemm_sparse" @ SM80, pipelined(Mma::SparseBf16) => [
        "gemm_sp_bf16_bf16_s",
        "gemm_sp_bf16_bf16_l",
        "gemm_sp_bf16_f32_s",
        "gemm_sp_bf16_f32_l",
    ],
    "gemm_sparse" @ SM80, pipelined(Mma::SparseI8) => [
        "gemm_sp_i8_i32_s",
        "gemm_sp_i8_i32_l",
        "gemm_sp_i8_i8_s",
        "gemm_sp_i8_i8_l",
        "gemm_sp_i8_f16_s",
        "gemm_sp_i8_f16_l",
        "gemm_sp_i8_bf16_s",
        "gemm_sp_i8_bf16_l",
        "gemm_sp_i8_f32_s",
        "gemm_sp_i8_f32_l",
    ],
    "layernorm" @ SM80, PLAIN => [
        "layernorm_warp_f32", "layernorm_warp_f16", "layernorm_warp_bf16",
        "layernorm_block_f32", "layernorm_block_f16", "layernorm_block_bf16",
    ],
    "layout" @ SM80, PLAIN => [
        "transpose_tiled_b1", "transpose_tiled_b2", "transpose_tiled_b4",
        "transpose_small_b1", "transpose_small_b2", "transpose_small_b4",
    ],
    "pool" @ SM80, PLAIN => [
        "pool_max_f32", "pool_max_f16", "pool_max_bf16", "pool_avg_f32", "pool_avg_f16",
        "pool_avg_bf16", "gap_f32_f32", "gap_f16_f16", "gap_f16_f32", "gap_bf16_bf16",
        "gap_bf16_f32",
    ],
    "preprocess" @ SM80, PLAIN => [
        "preprocess_u8_f32", "preprocess_u8_f16", "preprocess_u8_bf16",
        "preprocess_u16_f32", "preprocess_u16_f16", "preprocess_u16_bf16",
    ],
    "quantize" @ SM80, PLAIN => [
        "quantize_rows_warp_f32",
        "quantize_rows_warp_f16",
        "quantize_rows_warp_bf16",
        "quantize_rows_block_f32",
        "quantize_rows_block_f16",
        "quantize_rows_block_bf16",
        "layernorm_quant_warp_f32",
        "layernorm_quant_warp_f16",
        "layernorm_quant_warp_bf16",
        "layernorm_quant_block_f32",
        "layernorm_quant_block_f16",
        "layernorm_quant_block_bf16",
        "dequantize_rows_f32",
        "dequantize_rows_f16",
        "dequantize_rows_bf16",
    ],
    "softmax" @ SM80, PLAIN => [
        "softmax_warp_f32", "softmax_warp_f16", "softmax_warp_bf16",
        "softmax_block_f32", "softmax_block_f16", "softmax_block_bf16",
    ],
    "squeeze_excite" @ SM80, PLAIN => [
        "se_excite_f32_f32", "se_excite_f16_f16", "se_excite_f16_f32", "se_excite_bf16_bf16",
        "se_excite_bf16_f32", "se_pool_f32", "se_pool_f16", "se_pool_bf16", "se_scale_f32",
        "se_scale_f16", "se_scale_bf16",
    ],
    "upsample" @ SM80, PLAIN => [
        "upsample_nearest_f32", "upsample_nearest_f16", "upsample_nearest_bf16",
        "upsample_bilinear_f32", "upsample_bilinear_f16", "upsample_bilinear_bf16",
    ],
];

/// Looks a kernel up in the table.
pub fn kernel_info(name: &str) -> Result<&'static KernelInfo> {
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| Error::UnknownKernel {
            kernel: name.to_string(),
        })
}

impl KernelInfo {
    /// True for an sm_90a kernel: it runs on compute capability 9.0 only.
    pub const fn sm90a_only(&self) -> bool {
        self.features.tma
            || match self.features.mma {
                Some(m) => m.wgmma(),
                None => false,
            }
    }
}

/// Checks that a GPU of compute capability `actual` can run `kernel`.
pub fn check_arch(kernel: &str, actual: Arch) -> Result<&'static KernelInfo> {
    let info = kernel_info(kernel)?;
    if info.sm90a_only() && actual != SM90A {
        return Err(Error::ArchMismatch {
            kernel: info.name,
            needed: SM90A,
            actual,
        });
    }
    if actual < info.min_arch {
        return Err(Error::ArchTooLow {
            kernel: info.name,
            needed: info.min_arch,
            actual,
        });
    }
    Ok(info)
}

/// The embedded module a kernel lives in.
pub fn module(name: &str) -> Result<&'static EmbeddedModule> {
    MODULES
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::UnknownKernel {
            kernel: format!("module {name}"),
        })
}

/// The archs with an ahead-of-time CUBIN for `module`, or empty (runtime compile).
pub fn precompiled_archs(module: &EmbeddedModule) -> Vec<u32> {
    module.cubins.iter().map(|(a, _)| *a).collect()
}
