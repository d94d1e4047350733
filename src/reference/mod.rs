//! The CPU reference: every op in plain Rust, accumulating in f64. It is the oracle the GPU
//! tests compare against and the backend ops use on [`crate::Device::Cpu`]. Inputs and outputs
//! are f64 slices holding values already representable in the op's dtype; callers round the
//! outputs to the dtype (`DType::round`). Public so users can cross-check their own results.

pub mod attention;
pub mod conv;
pub mod conv_transpose;
pub mod depthwise;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemm_int8;
pub mod gemm_w4;
pub mod layernorm;
pub mod layout;
pub mod pool;
pub mod preprocess;
pub mod quantize;
pub mod softmax;
pub mod squeeze_excite;
pub mod upsample;
