// medkern-targets: sm_90a
// Hopper dense GEMM: Y = act(alpha · X·W^T + bias) + residual, f16/bf16 in, f32 accumulation,
// strided-batched — the epilogue and parameter block of kernels/gemm.cu, on Hopper's TMA and
// wgmma. Built only for sm_90a (wgmma has no other target); runs on compute capability 9.0
// when the Hopper kernels are switched on (Gpu::set_hopper_kernels, MEDKERN_HOPPER=1).
//
// Persistent blocks (grid.x of them per batch, grid.z = batch) walk the output tiles (GEMM_H_BM x GEMM_H_BN, grouped along M
// so neighbours share W in L2). Warp specialisation: warpgroup 0 is the producer — one thread
// issues the TMA loads of X and W (128-byte swizzled boxes of 64 K elements, zeros past the
// tensor's edges, so no tail code) into a GEMM_H_STAGES-deep ring of stages, each guarded by a
// "full" mbarrier (TMA bytes landed) and an "empty" one (all 8 consumer warps done reading).
// Warpgroups 1 and 2 are consumers: each runs wgmma m64n128k16 on its 64-row half of the
// tile straight from shared memory, keeps one wgmma group in flight (a stage is released
// when the group after it has been issued and the one reading it has retired), and applies
// the epilogue from registers while the producer already loads the next tile.
// Requires K % 8 == 0 (TMA row strides are multiples of 16 bytes). Kernels:
// gemm_hopper_{f16,bf16}_{same,f32}. Launcher: src/ops/gemm_hopper.rs; reference:
// src/reference/gemm.rs.
#include "common/hopper.cuh"
#include "common/gemm.cuh"

namespace mk {

constexpr int H_STAGE_BYTES = (GEMM_H_BM + GEMM_H_BN) * GEMM_H_BK * 2;
static_assert(GEMM_H_BK * 2 == 128, "a stage row is one 128-byte swizzle span");
static_assert(GEMM_H_THREADS == 3 * 128, "one producer and two consumer warpgroups");
static_assert(GEMM_H_SMEM == 1024 + GEMM_H_STAGES * H_STAGE_BYTES + 2 * GEMM_H_STAGES * 8, "consts.cuh");

// The tile a block handles at step `r` of the persistent walk over one batch: (m0, n0).
__device__ __forceinline__ void tile_of(int r, int tiles_m, int tiles_n, int& m0, int& n0) {
    const int span = GEMM_H_GROUP * tiles_n;
    const int first_m = (r / span) * GEMM_H_GROUP;
    const int rows = min(tiles_m - first_m, GEMM_H_GROUP);
    const int in_group = r % span;
    m0 = (first_m + in_group % rows) * GEMM_H_BM;
    n0 = (in_group / rows) * GEMM_H_BN;
}

template <typename T, typename O>
__device__ __forceinline__ void gemm_hopper(const GemmParams& p, const TmaMap* tx, const TmaMap* tw) {
    MK_DYN_SMEM(char, raw);
    // 128-byte swizzle atoms must start at 1024-byte aligned shared addresses.
    char* smem = raw + ((1024u - (shared_addr(raw) & 1023u)) & 1023u);
    unsigned long long* full = reinterpret_cast<unsigned long long*>(smem + GEMM_H_STAGES * H_STAGE_BYTES);
    unsigned long long* empty = full + GEMM_H_STAGES;
    const int wg = threadIdx.x / 128, t128 = threadIdx.x % 128;
    if (threadIdx.x == 0) {
        for (int s = 0; s < GEMM_H_STAGES; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrival per consumer warp
        }
        mbar_init_fence();
    }
    __syncthreads();

    const int tiles_m = (p.M + GEMM_H_BM - 1) / GEMM_H_BM, tiles_n = (p.N + GEMM_H_BN - 1) / GEMM_H_BN;
    const int tiles = tiles_m * tiles_n;
    const int b = blockIdx.z;  // the batch: blockIdx.x walks its tiles, gridDim.x blocks apart
    const int nk = (p.K + GEMM_H_BK - 1) / GEMM_H_BK;

    if (wg == 0) {
        regs_dec<40>();
        if (t128 != 0) return;
        int stage = 0;
        unsigned phase = 0;
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int m0, n0;
            tile_of(t, tiles_m, tiles_n, m0, n0);
            const int bx = p.stride_x ? b : 0, bw = p.stride_w ? b : 0;
            for (int kb = 0; kb < nk; ++kb) {
                mbar_wait(&empty[stage], phase ^ 1u);
                char* st = smem + stage * H_STAGE_BYTES;
                mbar_arrive_expect_tx(&full[stage], H_STAGE_BYTES);
                tma_load_3d(st, tx, kb * GEMM_H_BK, m0, bx, &full[stage]);
                tma_load_3d(st + GEMM_H_BM * 128, tw, kb * GEMM_H_BK, n0, bw, &full[stage]);
                if (++stage == GEMM_H_STAGES) {
                    stage = 0;
                    phase ^= 1u;
                }
            }
        }
        return;
    }

    regs_inc<232>();
    const int c = wg - 1;  // consumer: rows [64c, 64c + 64) of the tile
    const int warp = t128 / 32, lane = t128 % 32;
    const float alpha = p.alpha;
    const int a = p.act;
    const T* B = static_cast<const T*>(p.bias);
    int stage = 0;
    unsigned phase = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int m0, n0;
        tile_of(t, tiles_m, tiles_n, m0, n0);
        float acc[64];
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = 0.f;
        fence_regs(acc);
        int prev = -1;  // the stage the group in flight reads
        for (int kb = 0; kb < nk; ++kb) {
            mbar_wait(&full[stage], phase);
            const unsigned sa = shared_addr(smem + stage * H_STAGE_BYTES + c * 64 * 128);
            const unsigned sb = shared_addr(smem + stage * H_STAGE_BYTES + GEMM_H_BM * 128);
            fence_regs(acc);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < GEMM_H_BK / 16; ++kk)
                Wgmma<T>::run(acc, desc_k128(sa + kk * 32), desc_k128(sb + kk * 32), 1);
            wgmma_commit();
            // The group before this one has retired (for this warp's threads: each warp releases
            // the stage for itself): its stage goes back to the producer.
            wgmma_wait<1>();
            fence_regs(acc);
            if (prev >= 0 && lane == 0) mbar_arrive(&empty[prev]);
            prev = stage;
            if (++stage == GEMM_H_STAGES) {
                stage = 0;
                phase ^= 1u;
            }
        }
        wgmma_wait<0>();
        fence_regs(acc);
        if (prev >= 0 && lane == 0) mbar_arrive(&empty[prev]);

        O* Y = static_cast<O*>(p.y) + b * p.stride_y;
        const O* R = p.residual ? static_cast<const O*>(p.residual) + b * p.stride_r : nullptr;
#pragma unroll
        for (int j = 0; j < GEMM_H_BN / 8; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = m0 + c * 64 + warp * 16 + lane / 4 + 8 * h;
                const int col = n0 + 8 * j + 2 * (lane % 4);
                if (row >= p.M || col >= p.N) continue;
                store_pair<O>(Y, R, row, col, p.N, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], [&](int cc, float v) {
                    v *= alpha;
                    if (B) v += to_f32<T>(B[cc]);
                    return act_rt(a, v);
                });
            }
    }
}

}  // namespace mk

#define MK_GEMM_HOPPER(T, TN, O, ON)                                                                          \
    extern "C" __global__ void __launch_bounds__(mk::GEMM_H_THREADS, 1) gemm_hopper_##TN##_##ON(             \
        const mk::GemmParams p, const MK_GRID_CONSTANT mk::TmaMap tx, const MK_GRID_CONSTANT mk::TmaMap tw) { \
        mk::gemm_hopper<T, O>(p, &tx, &tw);                                                                   \
    }
MK_GEMM_HOPPER(mk::f16, f16, mk::f16, f16)
MK_GEMM_HOPPER(mk::f16, f16, float, f32)
MK_GEMM_HOPPER(mk::bf16, bf16, mk::bf16, bf16)
MK_GEMM_HOPPER(mk::bf16, bf16, float, f32)
