// Int8 GEMM (W8A8: Q8BERT / SmoothQuant / I-BERT style): s8 x s8 -> s32 on tensor cores
// (mma.sync m16n8k32), then, in registers:
//   i32 output: the raw accumulators (exact, like torch._int_mm);
//   otherwise v = acc · sx[row] · sw[col] (per-channel) or Σ_g acc_g · sw[col, g] · sx[row]
//   (group-wise along K, Q-BERT), then act(alpha·v + bias) (+ residual) → f16/bf16/f32, or
//   requantised to int8 (round(v / out_scale), saturated) for the next int8 layer.
// Requires K % 16 == 0 (16-byte rows). Kernels: gemm_i8_{i32,i8,f16,bf16,f32}_{s,m,l}.
// Launcher: src/ops/gemm_int8.rs; reference: src/reference/gemm_int8.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

template <typename O, typename Cfg>
__device__ __forceinline__ void gemm_i8(const GemmParams& p) {
    MK_DYN_SMEM(char, smem);
    const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
    const long long b = blockIdx.z;
    const char* X = static_cast<const char*>(p.x) + b * p.stride_x;
    const char* W = static_cast<const char*>(p.w) + b * p.stride_w;
    constexpr bool RAW = sizeof(O) == 4 && O(0.5f) == O(0);  // int32 output: no epilogue
    int acc[Cfg::MT][Cfg::NT][4];
    float facc[Cfg::MT][Cfg::NT][4];
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                acc[i][j][k] = 0;
                facc[i][j][k] = 0.f;
            }
    // The launcher guarantees 0 < K < 2^17 and group_size < 2^17, so this cannot overflow.
    const int groups = p.group_size > 0 ? (p.K + p.group_size - 1) / p.group_size : 0;
    const int tiles_per_group = p.group_size / Cfg::KB;
    // Group-wise scales: at the end of each K group, fold the exact s32 partial sums into f32
    // with that group's weight scale (group_size is a multiple of the 64-value k-tile).
    auto fold = [&](int kt, int ktiles) {
        if (RAW || groups == 0) return;
        if ((kt + 1) % tiles_per_group != 0 && kt + 1 != ktiles) return;
        const int g = kt / tiles_per_group;
        for_each_pair<Cfg>(m0, n0, [&](int mt, int nt, int h, int, int col) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int c = min(col + j, p.N - 1);
                facc[mt][nt][2 * h + j] += (float)acc[mt][nt][2 * h + j] * p.sw[(long long)c * groups + g];
                acc[mt][nt][2 * h + j] = 0;
            }
        });
    };
    mainloop<signed char, Cfg>(smem, X, W, p.M, p.N, (long long)p.K, m0, n0, acc, fold);

    O* Y = static_cast<O*>(p.y) + b * p.stride_y;
    if constexpr (RAW) {
        for_each_pair<Cfg>(m0, n0, [&](int mt, int nt, int h, int row, int col) {
            if (row >= p.M) return;
            const long long base = (long long)row * p.N + col;
            if (col < p.N) Y[base] = acc[mt][nt][2 * h];
            if (col + 1 < p.N) Y[base + 1] = acc[mt][nt][2 * h + 1];
        });
    } else {
        const O* R = p.residual ? static_cast<const O*>(p.residual) + b * p.stride_r : nullptr;
        const float* B = static_cast<const float*>(p.bias);
        const float alpha = p.alpha, out_scale = p.out_scale;
        const int a = p.act;
        constexpr bool REQUANT = sizeof(O) == 1;
        for_each_pair<Cfg>(m0, n0, [&](int mt, int nt, int h, int row, int col) {
            if (row >= p.M) return;
            const float sx = p.sx[p.sx_per_row ? b * p.M + row : 0];  // per token over all batches
            const float v0 = groups ? facc[mt][nt][2 * h] : (float)acc[mt][nt][2 * h];
            const float v1 = groups ? facc[mt][nt][2 * h + 1] : (float)acc[mt][nt][2 * h + 1];
            store_pair<O>(Y, R, row, col, p.N, v0, v1, [&](int c, float x) {
                x *= sx;
                if (!groups) x *= p.sw[c];
                x *= alpha;
                if (B) x += B[c];
                x = act_rt(a, x);
                return REQUANT ? x / out_scale : x;  // IEEE division, as the reference
            });
        });
    }
}

}  // namespace mk

#define MK_GEMM_I8(O, ON, CFG, CN)                                                             \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                             \
        gemm_i8_##ON##_##CN(const mk::GemmParams p) {                                          \
        mk::gemm_i8<O, mk::CFG>(p);                                                            \
    }
#define MK_GEMM_I8_CFGS(O, ON) MK_GEMM_I8(O, ON, CfgS, s) MK_GEMM_I8(O, ON, CfgM, m) MK_GEMM_I8(O, ON, CfgL, l)
MK_GEMM_I8_CFGS(int, i32)
MK_GEMM_I8_CFGS(signed char, i8)
MK_GEMM_I8_CFGS(mk::f16, f16)
MK_GEMM_I8_CFGS(mk::bf16, bf16)
MK_GEMM_I8_CFGS(float, f32)
