// Dense GEMM: Y = act(alpha · X·W^T + bias) + residual, strided-batched over blockIdx.z.
//
// f16/bf16 inputs run on tensor cores (mma.sync m16n8k16, ldmatrix, 4-stage cp.async
// pipeline; common/mma.cuh) with f32 accumulation and the epilogue applied in registers before
// the single store (common/gemm.cuh). Requires K % 8 == 0 (16-byte rows). Kernels:
// gemm_{f16,bf16}_{same,f32}_{s,m,l} (tile configs CfgS/M/L) and gemm_f32_f32 (SIMT, any K).
// Launcher: src/ops/gemm.rs; reference: src/reference/gemm.rs.
#include "common/mma.cuh"
#include "common/gemm.cuh"

namespace mk {

template <typename T, typename O, typename Cfg>
__device__ __forceinline__ void gemm_tc(const GemmParams& p) {
    MK_DYN_SMEM(char, smem);
    const int m0 = blockIdx.y * Cfg::BM, n0 = blockIdx.x * Cfg::BN;
    const long long b = blockIdx.z;
    const char* X = reinterpret_cast<const char*>(static_cast<const T*>(p.x) + b * p.stride_x);
    const char* W = reinterpret_cast<const char*>(static_cast<const T*>(p.w) + b * p.stride_w);
    float acc[Cfg::MT][Cfg::NT][4];
#pragma unroll
    for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;
    mainloop<T, Cfg>(smem, X, W, p.M, p.N, (long long)p.K * (long long)sizeof(T), m0, n0, acc, [](int, int) {});

    O* Y = static_cast<O*>(p.y) + b * p.stride_y;
    const O* R = p.residual ? static_cast<const O*>(p.residual) + b * p.stride_r : nullptr;
    const T* B = static_cast<const T*>(p.bias);
    const float alpha = p.alpha;
    const int a = p.act;
    for_each_pair<Cfg>(m0, n0, [&](int mt, int nt, int h, int row, int col) {
        if (row >= p.M) return;
        store_pair<O>(Y, R, row, col, p.N, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1], [&](int c, float v) {
            v *= alpha;
            if (B) v += to_f32<T>(B[c]);
            return act_rt(a, v);
        });
    });
}

// f32 path (no tensor cores): 64x64 tile, 16-deep K slices, 4x4 outputs per thread (256 threads).
__device__ __forceinline__ void gemm_simt_f32(const GemmParams& p) {
    constexpr int BM = GEMM_SIMT_BM, BN = GEMM_SIMT_BN, BK = 16;
    static_assert(BM == 64 && BN == 64 && GEMM_SIMT_THREADS == 256,
                  "the indexing below is written for a 64x64 tile of 16x16 threads");
    MK_STATIC_SMEM(float, As, [BK][BM + 4]);
    MK_STATIC_SMEM(float, Ws, [BK][BN + 4]);
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const long long b = blockIdx.z;
    const float* X = static_cast<const float*>(p.x) + b * p.stride_x;
    const float* W = static_cast<const float*>(p.w) + b * p.stride_w;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < p.K; k0 += BK) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * GEMM_SIMT_THREADS, r = idx / BK, k = idx % BK;
            const bool kin = k0 + k < p.K;
            As[k][r] = (m0 + r < p.M && kin) ? X[(long long)(m0 + r) * p.K + k0 + k] : 0.f;
            Ws[k][r] = (n0 + r < p.N && kin) ? W[(long long)(n0 + r) * p.K + k0 + k] : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[4], w[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = As[k][ty * 4 + i];
                w[i] = Ws[k][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
        }
        __syncthreads();
    }
    float* Y = static_cast<float*>(p.y) + b * p.stride_y;
    const float* R = p.residual ? static_cast<const float*>(p.residual) + b * p.stride_r : nullptr;
    const float* B = static_cast<const float*>(p.bias);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + ty * 4 + i;
        if (row >= p.M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int col = n0 + tx * 4 + j;
            if (col >= p.N) continue;
            float v = acc[i][j] * p.alpha;
            if (B) v += B[col];
            v = act_rt(p.act, v);
            const long long o = (long long)row * p.N + col;
            if (R) v += R[o];
            Y[o] = v;
        }
    }
}

}  // namespace mk

#define MK_GEMM(T, TN, O, ON, CFG, CN)                                                        \
    extern "C" __global__ void __launch_bounds__(mk::CFG::THREADS)                            \
        gemm_##TN##_##ON##_##CN(const mk::GemmParams p) {                                     \
        mk::gemm_tc<T, O, mk::CFG>(p);                                                        \
    }
#define MK_GEMM_CFGS(T, TN, O, ON) \
    MK_GEMM(T, TN, O, ON, CfgS, s) MK_GEMM(T, TN, O, ON, CfgM, m) MK_GEMM(T, TN, O, ON, CfgL, l)
MK_GEMM_CFGS(mk::f16, f16, mk::f16, f16)
MK_GEMM_CFGS(mk::f16, f16, float, f32)
MK_GEMM_CFGS(mk::bf16, bf16, mk::bf16, bf16)
MK_GEMM_CFGS(mk::bf16, bf16, float, f32)

extern "C" __global__ void __launch_bounds__(mk::GEMM_SIMT_THREADS) gemm_f32_f32(const mk::GemmParams p) {
    mk::gemm_simt_f32(p);
}
