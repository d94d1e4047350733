//! Hopper dense GEMM (sm_90a): the f16/bf16 path of [`super::gemm::gemm`] when the device's
//! Hopper kernels are on ([`Gpu::hopper_kernels`]). Kernel `kernels/gemm_hopper.cu` (TMA
//! loads into an mbarrier ring, warp-specialised producer and consumers, wgmma m64n128k16),
//! reference `src/reference/gemm.rs`, tests `tests/gemm_hopper.rs`, bench `benches/gemm.rs`.
//! Same operands, epilogue and limits as the sm_80 kernels (K % 8 == 0).

use super::consts;
use super::gemm::{GemmParams, Operands};
use super::{as_i32, kernel_name};
use crate::device::Gpu;
use crate::device::tma::{Swizzle, TensorMap};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::reference::gemm::GemmDims;
use crate::tensor::DeviceTensor;
use cudarc::driver::LaunchConfig;

const OP: &str = "gemm";

/// The TMA map of a `[batch, rows, K]` operand (batch 1 when `stride` is 0: shared by every
/// batch), loaded in boxes of GEMM_H_BK x `box_rows` with the 128-byte swizzle wgmma reads.
fn operand_map(
    gpu: &Gpu,
    t: &DeviceTensor,
    dt: DType,
    (rows, k): (usize, usize),
    batch: usize,
    stride: i64,
    box_rows: usize,
) -> Result<TensorMap> {
    let es = dt.size() as u64;
    let (rows, k) = (rows as u64, k as u64);
    let (nb, bstride) = if stride == 0 {
        (1, rows * k * es)
    } else {
        (batch as u64, stride as u64 * es)
    };
    TensorMap::tiled_3d(
        gpu,
        t.addr(),
        dt,
        [k, rows, nb],
        [k * es, bstride.max(16)],
        [consts::GEMM_H_BK as u32, box_rows as u32, 1],
        Swizzle::B128,
    )
}

/// One launch of `gemm_hopper_{dt}_{odt}` for the checked problem `d` (f16/bf16, K % 8 == 0,
/// M, N, batch > 0) with the epilogue fields of `p` set.
pub(crate) fn launch(
    gpu: &Gpu,
    dt: DType,
    odt: DType,
    d: GemmDims,
    mut p: GemmParams,
    o: Operands,
    y: &mut DeviceTensor,
) -> Result<()> {
    let kernel = kernel_name(OP, format!("gemm_hopper_{dt}_{odt}"))?;
    let tx = operand_map(
        gpu,
        o.x,
        dt,
        (d.m, d.k),
        d.batch,
        p.stride_x,
        consts::GEMM_H_BM,
    )?;
    let tw = operand_map(
        gpu,
        o.w,
        dt,
        (d.n, d.k),
        d.batch,
        p.stride_w,
        consts::GEMM_H_BN,
    )?;
    p.m = as_i32(OP, "M", d.m)?;
    p.n = as_i32(OP, "N", d.n)?;
    p.k = as_i32(OP, "K", d.k)?;
    p.x = o.x.addr();
    p.w = o.w.addr();
    p.y = y.addr();
    p.bias = o.bias.map_or(0, DeviceTensor::addr);
    p.residual = o.residual.map_or(0, DeviceTensor::addr);
    let tiles = d.m.div_ceil(consts::GEMM_H_BM) * d.n.div_ceil(consts::GEMM_H_BN);
    // Persistent blocks: one per SM over all batches, each walking its batch's tiles.
    let per_batch = (gpu.sm_count() as usize / d.batch).clamp(1, tiles);
    let grid_z = u32::try_from(d.batch)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| Error::Invalid {
            op: OP,
            arg: "shape",
            detail: format!("batch = {} exceeds the grid limit 65535", d.batch),
        })?;
    let cfg = LaunchConfig {
        grid_dim: (per_batch as u32, 1, grid_z),
        block_dim: (consts::GEMM_H_THREADS as u32, 1, 1),
        shared_mem_bytes: consts::GEMM_H_SMEM as u32,
    };
    let mut b = gpu.launcher(kernel);
    b.arg(&p).arg(&tx).arg(&tw);
    // SAFETY: `p` matches mk::GemmParams and the maps cover exactly X [batch?, M, K] and
    // W [batch?, N, K] (the TMA zero-fills beyond them); Y, bias and residual were checked
    // against (batch, M, N) by the caller, and the kernel stores only rows < M, cols < N.
    unsafe { b.launch(cfg) }
}
