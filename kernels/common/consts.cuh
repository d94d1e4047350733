// medkern common: the launch constants the kernels and their Rust launchers share (tiles,
// pipeline stages, block sizes, shared-memory sizes, kernel-selection limits), each defined once.
// build.rs turns every definition below into Rust ($OUT_DIR/kernel_consts.rs, `crate::ops::consts`),
// so a launcher's grid, block and shared memory come from the numbers the kernels are compiled
// with. Where a kernel derives a value itself (TileCfg::SMEM, SpCfg::THREADS, AttnCfg::SMEM, ...)
// it static_asserts that it equals the one here, so the two cannot drift.
//
// Restricted syntax, checked by build.rs (a line it cannot read fails the build): one definition
// per line,
//   MK_CONST(NAME, expr)         an int constant (Rust: `pub const NAME: usize`)
//   MK_LIST(NAME, expr, ...)     an int array (Rust: `pub const NAME: [usize; N]`)
//   MK_FN2(NAME, A, B, expr)     an int function of two ints (Rust: `pub const fn NAME(A, B)`)
// where expr is made of decimal integers, names defined above (and A, B), + - * / % and
// parentheses, and is never negative; a `//` comment on the lines right above a definition (or
// after it) becomes its Rust doc. Other lines: blank, comments, `#` lines, the namespace braces.
#pragma once

#define MK_CONST(name, value) constexpr int name = (value);
#define MK_LIST(name, ...) constexpr int name[] = {__VA_ARGS__};
#define MK_FN2(name, a, b, expr) __host__ __device__ constexpr int name(int a, int b) { return (expr); }

namespace mk {

// Memory-bound kernels move VEC elements per access (16 bytes of f16/bf16, 2 x 16 of f32); their
// launchers pass vec_ok only when rows are a multiple of VEC elements and buffers 16-byte aligned.
MK_CONST(VEC, 8)

// ---- Tensor-core GEMM tiles: common/mma.cuh TileCfg (kernels/gemm.cu, gemm_int8.cu, conv.cu),
// src/ops/gemm.rs Tile.

// Bytes of K per pipeline stage (64 f16/bf16 or int8 values: int8 weight groups are a multiple
// of it).
MK_CONST(GEMM_KB, 64)
// Padded shared row of one stage, bytes: 16 bytes of padding keep ldmatrix conflict-free.
MK_CONST(GEMM_ROW, GEMM_KB + 16)
// cp.async pipeline depth of every tile shape.
MK_CONST(GEMM_STAGES, 4)
// CfgS: block tile 32 x 64, warp tile 32 x 16 (4 warps): small M (batch-1 inference).
MK_CONST(GEMM_S_BM, 32)
MK_CONST(GEMM_S_BN, 64)
MK_CONST(GEMM_S_WM, 32)
MK_CONST(GEMM_S_WN, 16)
// CfgM: block tile 64 x 128, warp tile 32 x 32 (8 warps).
MK_CONST(GEMM_M_BM, 64)
MK_CONST(GEMM_M_BN, 128)
MK_CONST(GEMM_M_WM, 32)
MK_CONST(GEMM_M_WN, 32)
// CfgL: block tile 128 x 128, warp tile 64 x 32 (8 warps): large M, throughput.
MK_CONST(GEMM_L_BM, 128)
MK_CONST(GEMM_L_BN, 128)
MK_CONST(GEMM_L_WM, 64)
MK_CONST(GEMM_L_WN, 32)
// Threads per block of each tile shape: one warp per warp tile.
MK_CONST(GEMM_S_THREADS, (GEMM_S_BM / GEMM_S_WM) * (GEMM_S_BN / GEMM_S_WN) * 32)
MK_CONST(GEMM_M_THREADS, (GEMM_M_BM / GEMM_M_WM) * (GEMM_M_BN / GEMM_M_WN) * 32)
MK_CONST(GEMM_L_THREADS, (GEMM_L_BM / GEMM_L_WM) * (GEMM_L_BN / GEMM_L_WN) * 32)
// Dynamic shared memory of each tile shape: STAGES x (BM + BN) padded rows.
MK_CONST(GEMM_S_SMEM, GEMM_STAGES * (GEMM_S_BM + GEMM_S_BN) * GEMM_ROW)
MK_CONST(GEMM_M_SMEM, GEMM_STAGES * (GEMM_M_BM + GEMM_M_BN) * GEMM_ROW)
MK_CONST(GEMM_L_SMEM, GEMM_STAGES * (GEMM_L_BM + GEMM_L_BN) * GEMM_ROW)

// ---- Hopper GEMM (kernels/gemm_hopper.cu, sm_90a; src/ops/gemm_hopper.rs): a producer
// warpgroup feeding TMA loads into a GEMM_H_STAGES-deep mbarrier ring, two consumer
// warpgroups issuing wgmma m64n128k16 on 64-row halves of the block tile.

// Block tile rows (M): two consumer warpgroups of 64 rows.
MK_CONST(GEMM_H_BM, 128)
// Block tile columns (N): one wgmma n128 per consumer.
MK_CONST(GEMM_H_BN, 128)
// K elements per stage: one 128-byte swizzled row of f16/bf16.
MK_CONST(GEMM_H_BK, 64)
// TMA/mbarrier ring depth.
MK_CONST(GEMM_H_STAGES, 4)
// Threads: the producer warpgroup and two consumer warpgroups.
MK_CONST(GEMM_H_THREADS, 384)
// Dynamic shared memory: 1024 bytes of alignment slack (128-byte swizzle atoms are 1024-byte
// aligned), the stages (X and W tiles of 128-byte rows), a full and an empty mbarrier per stage.
MK_CONST(GEMM_H_SMEM, 1024 + GEMM_H_STAGES * (GEMM_H_BM + GEMM_H_BN) * 128 + 2 * GEMM_H_STAGES * 8)
// Tiles of one rasterisation group along M (consecutive tiles share W columns in L2).
MK_CONST(GEMM_H_GROUP, 8)

// The f32 SIMT GEMM (gemm_f32_f32): a 64 x 64 tile, 4 x 4 outputs per thread, static shared memory.
MK_CONST(GEMM_SIMT_BM, 64)
MK_CONST(GEMM_SIMT_BN, 64)
MK_CONST(GEMM_SIMT_THREADS, (GEMM_SIMT_BM / 4) * (GEMM_SIMT_BN / 4))

// ---- 2:4 sparse GEMM tiles: kernels/gemm_sparse.cu SpCfg (BN rows of W x BM rows of X per
// block), src/ops/gemm_sparse.rs geometry.

// cp.async pipeline depth of both tile shapes.
MK_CONST(GEMM_SP_STAGES, 3)
// Padded shared rows, bytes: 64 of compressed W, 128 of X per stage, 16 bytes of padding each.
MK_CONST(GEMM_SP_W_ROW, 64 + 16)
MK_CONST(GEMM_SP_X_ROW, 128 + 16)
// Metadata words per 16-row tile per mma step: f16/bf16 (selector 0) and int8.
MK_CONST(GEMM_SP_MW_F16, 16)
MK_CONST(GEMM_SP_MW_I8, 32)
// SpS: 64 W rows x 32 X rows, warp tile 32 x 16 (4 warps).
MK_CONST(GEMM_SP_S_BN, 64)
MK_CONST(GEMM_SP_S_BM, 32)
MK_CONST(GEMM_SP_S_WN, 32)
MK_CONST(GEMM_SP_S_WM, 16)
// SpL: 128 W rows x 128 X rows, warp tile 64 x 32 (8 warps).
MK_CONST(GEMM_SP_L_BN, 128)
MK_CONST(GEMM_SP_L_BM, 128)
MK_CONST(GEMM_SP_L_WN, 64)
MK_CONST(GEMM_SP_L_WM, 32)
MK_CONST(GEMM_SP_S_THREADS, (GEMM_SP_S_BN / GEMM_SP_S_WN) * (GEMM_SP_S_BM / GEMM_SP_S_WM) * 32)
MK_CONST(GEMM_SP_L_THREADS, (GEMM_SP_L_BN / GEMM_SP_L_WN) * (GEMM_SP_L_BM / GEMM_SP_L_WM) * 32)
// Dynamic shared memory: STAGES x (W rows + X rows + metadata words of the BN/16 tiles, 2 steps).
MK_CONST(GEMM_SP_S_SMEM_F16, GEMM_SP_STAGES * (GEMM_SP_S_BN * GEMM_SP_W_ROW + GEMM_SP_S_BM * GEMM_SP_X_ROW + (GEMM_SP_S_BN / 16) * 2 * GEMM_SP_MW_F16 * 4))
MK_CONST(GEMM_SP_S_SMEM_I8, GEMM_SP_STAGES * (GEMM_SP_S_BN * GEMM_SP_W_ROW + GEMM_SP_S_BM * GEMM_SP_X_ROW + (GEMM_SP_S_BN / 16) * 2 * GEMM_SP_MW_I8 * 4))
MK_CONST(GEMM_SP_L_SMEM_F16, GEMM_SP_STAGES * (GEMM_SP_L_BN * GEMM_SP_W_ROW + GEMM_SP_L_BM * GEMM_SP_X_ROW + (GEMM_SP_L_BN / 16) * 2 * GEMM_SP_MW_F16 * 4))
MK_CONST(GEMM_SP_L_SMEM_I8, GEMM_SP_STAGES * (GEMM_SP_L_BN * GEMM_SP_W_ROW + GEMM_SP_L_BM * GEMM_SP_X_ROW + (GEMM_SP_L_BN / 16) * 2 * GEMM_SP_MW_I8 * 4))

// ---- W4A16 GEMM: kernels/gemm_w4.cu W4Cfg, src/ops/gemm_w4.rs (int4 weights packed offline).

// Values of K per pipeline stage (k-tile); weight groups (64 or 128) are a multiple of it.
MK_CONST(GEMM_W4_KT, 64)
// Output columns per block: 4 warps side by side, 32 columns (4 mma n8 tiles) each.
MK_CONST(GEMM_W4_BN, 128)
// Columns of one packed block (a warp's share): N must be a multiple of it.
MK_CONST(GEMM_W4_NB, 32)
// cp.async pipeline depth.
MK_CONST(GEMM_W4_STAGES, 4)
// Padded shared row of X per stage, bytes: 64 f16/bf16 values + 16 bytes against bank conflicts.
MK_CONST(GEMM_W4_A_ROW, GEMM_W4_KT * 2 + 16)
// Packed int4 bytes per stage: BN columns x KT values at 4 bits.
MK_CONST(GEMM_W4_B_STAGE, GEMM_W4_BN * GEMM_W4_KT / 2)
// W4S: 16 rows of X, one m16 tile per warp, 4 warps (M <= 16: batch-1 decoding).
MK_CONST(GEMM_W4_S_BM, 16)
MK_CONST(GEMM_W4_S_THREADS, 128)
// W4M: 64 rows of X, 2 warps along M with two m16 tiles each, 8 warps.
MK_CONST(GEMM_W4_M_BM, 64)
MK_CONST(GEMM_W4_M_THREADS, 256)
MK_CONST(GEMM_W4_S_SMEM, GEMM_W4_STAGES * (GEMM_W4_S_BM * GEMM_W4_A_ROW + GEMM_W4_B_STAGE))
MK_CONST(GEMM_W4_M_SMEM, GEMM_W4_STAGES * (GEMM_W4_M_BM * GEMM_W4_A_ROW + GEMM_W4_B_STAGE))
// Largest N and K a W4 weight may have (the packed weight then stays under 2 GiB).
MK_CONST(GEMM_W4_MAX_DIM, 65536)

// ---- Fused attention: kernels/attention.cu AttnCfg, src/ops/attention.rs.

// Head dims the kernels are instantiated for (attention.cu static_asserts its list is this one).
MK_LIST(ATTN_HEAD_DIMS, 32, 64, 80, 96, 128)
// Query rows per CTA the kernels are instantiated for: ATTN_WARP_ROWS per warp, 4 or 8 warps.
MK_LIST(ATTN_BLOCK_ROWS, 64, 128)
// Query rows of one warp.
MK_CONST(ATTN_WARP_ROWS, 16)
// Keys per K/V block streamed through shared memory.
MK_CONST(ATTN_BLOCK_KEYS, 64)
// Dynamic shared memory of a CTA of BR query rows and head dim D: Q plus 2 stages x (K, V), rows
// of 2·D bytes padded by 16.
MK_FN2(ATTN_SMEM, BR, D, (BR + 4 * ATTN_BLOCK_KEYS) * (2 * D + 16))
// Block size of the gather/scatter kernels of the unfused path (grid-stride, no launch bounds).
MK_CONST(ATTN_MOVE_THREADS, 256)

// ---- Row kernels: layernorm_*, softmax_*, quantize_rows_*, layernorm_quant_* (warp and block
// modes).

// Threads per block (__launch_bounds__); a block-mode row is reduced by all of them.
MK_CONST(ROW_THREADS, 256)
// Rows per block in warp mode (one warp per row).
MK_CONST(ROW_WARP_ROWS, ROW_THREADS / 32)
// The launchers run rows of at most this many elements in warp mode, longer rows in block mode
// (launcher policy: both modes handle any row length).
MK_CONST(ROW_WARP_MAX_N, 1024)

// ---- Kernels without launch bounds (any block size works; the launchers use these).

// Grid-stride elementwise kernels: eltwise_*, cast_*, dequantize_rows_*.
MK_CONST(ELT_THREADS, 256)
// embedding_*: one warp per token row, so a block covers EMB_THREADS / 32 tokens.
MK_CONST(EMB_THREADS, 256)

// ---- Block sizes of the other kernels (their __launch_bounds__).

// conv2d_f32 (the direct SIMT convolution): threads per block.
MK_CONST(CONV_F32_THREADS, 256)
// conv_transpose_*: threads per block.
MK_CONST(CT_THREADS, 256)
// upsample_*: threads per block.
MK_CONST(UP_THREADS, 256)
// preprocess_*: threads per block.
MK_CONST(PRE_THREADS, 256)
// pool_* and gap_*: threads per block (gap's shared scratch holds POOL_THREADS x VEC floats).
MK_CONST(POOL_THREADS, 256)

// ---- Depthwise conv: kernels/depthwise.cu, src/ops/depthwise.rs Plan.

// Threads per CTA at most (the tile plan picks up to this many; __launch_bounds__).
MK_CONST(DW_MAX_THREADS, 256)
// Outputs per thread along W of each kernel variant.
MK_CONST(DW_R_K3S1, 4)
MK_CONST(DW_R_K3S2, 2)
MK_CONST(DW_R_K5S1, 4)
MK_CONST(DW_R_K5S2, 2)
MK_CONST(DW_R_ANY, 1)

// ---- Layout transposes: kernels/layout.cu, src/ops/layout.rs.

// transpose_tiled_* moves LAYOUT_TILE x LAYOUT_TILE tiles with blocks of LAYOUT_TILE x
// LAYOUT_TILE_ROWS threads.
MK_CONST(LAYOUT_TILE, 32)
MK_CONST(LAYOUT_TILE_ROWS, 8)
// Threads per block of both transposes (__launch_bounds__; transpose_small_* blocks are 1-D).
MK_CONST(LAYOUT_THREADS, LAYOUT_TILE * LAYOUT_TILE_ROWS)
// Rows or columns at most this many take transpose_small_* (launcher policy).
MK_CONST(LAYOUT_SMALL, 8)

// ---- Squeeze-and-excitation: kernels/squeeze_excite.cu, src/ops/squeeze_excite.rs.

// se_excite_* keeps the pooled channels and the hidden units in static shared memory, so C and
// Cse are bounded.
MK_CONST(SE_MAX_CHANNELS, 4096)
MK_CONST(SE_MAX_HIDDEN, 512)
// se_excite_*: threads per block (one block per image).
MK_CONST(SE_THREADS, 512)
// se_pool_*: threads per block (its shared scratch holds SE_POOL_THREADS x VEC floats).
MK_CONST(SE_POOL_THREADS, 256)
// se_scale_*: threads per block.
MK_CONST(SE_SCALE_THREADS, 256)

}  // namespace mk
